"""The embedded demo data set: small labelled JPEGs drawn procedurally, in the ImageNet folder layout.

``python train_dali.py`` with no ``--data`` trains on this set so that a new user sees the whole path
(JPEG files -> DALI decode/augment -> I2E events -> MS-ResNet) work on any machine in a few minutes.

Ten classes of shapes and textures, drawn with PIL in random colours, sizes and positions and saved as
real JPEGs (so DALI's decoder does real work). Every image is a pure function of (seed, split, class,
index): the set is identical on every machine. It is generated once into a cache folder: built in a
temporary sibling folder and renamed into place, so an interrupted run never leaves a half-made set.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm
from ..placement import DEFAULT_SEED

__all__ = ["DemoConfig", "CLASSES", "default_cache_root", "ensure_demo_dataset", "draw_sample"]

CLASSES = (
    "circle",
    "square",
    "triangle",
    "ring",
    "cross",
    "h_stripes",
    "v_stripes",
    "diag_stripes",
    "checker",
    "dots",
)
_FORMAT_VERSION = 1  # bump when drawing changes, so caches regenerate
_DONE = "demo.json"


@dataclass(frozen=True)
class DemoConfig:
    train_per_class: int = 160
    val_per_class: int = 40
    image_size: int = 64
    seed: int = DEFAULT_SEED
    quality: int = 90
    num_classes: int = len(CLASSES)

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be in 2..{len(CLASSES)}, got {self.num_classes}")
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise ValueError("train_per_class and val_per_class must be >= 1")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": _FORMAT_VERSION}, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]


def default_cache_root() -> Path:
    """``$I2E_DALI_CACHE/demo`` if set, else ``$XDG_CACHE_HOME/i2e-dali/demo`` or ``~/.cache/i2e-dali/demo``."""
    if os.environ.get("I2E_DALI_CACHE"):
        return Path(os.environ["I2E_DALI_CACHE"]) / "demo"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "i2e-dali" / "demo"


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Foreground/background colours whose HSV value (max of RGB, what I2E sees) differs clearly."""
    while True:
        fg = rng.integers(0, 256, 3)
        bg = rng.integers(0, 256, 3)
        if abs(int(fg.max()) - int(bg.max())) >= 70:
            return tuple(int(c) for c in fg), tuple(int(c) for c in bg)


def draw_sample(cls: int, rng: np.random.Generator, size: int) -> Image.Image:
    """Draw one image of class ``cls`` (index into CLASSES) with randomness from ``rng``."""
    fg, bg = _colours(rng)
    s = size
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    name = CLASSES[cls]
    r = rng.uniform(0.22, 0.38) * s  # shape radius
    cx, cy = rng.uniform(r + 2, s - r - 2, 2)
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "triangle":
        a0 = rng.uniform(0, 2 * math.pi)
        pts = [(cx + r * math.cos(a0 + k * 2 * math.pi / 3), cy + r * math.sin(a0 + k * 2 * math.pi / 3)) for k in range(3)]
        d.polygon(pts, fill=fg)
    elif name == "ring":
        w = max(2, int(r * rng.uniform(0.25, 0.4)))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=w)
    elif name == "cross":
        w = r * rng.uniform(0.25, 0.4)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    elif name in ("h_stripes", "v_stripes", "diag_stripes"):
        period = rng.uniform(0.12, 0.22) * s
        phase = rng.uniform(0, period)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        coord = {"h_stripes": yy, "v_stripes": xx, "diag_stripes": (xx + yy) / math.sqrt(2)}[name]
        if name == "diag_stripes" and rng.random() < 0.5:
            coord = (xx - yy) / math.sqrt(2)
        mask = ((coord + phase) % period) < period / 2
        arr = np.where(mask[..., None], np.array(fg, np.uint8), np.array(bg, np.uint8))
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
    elif name == "checker":
        cell = rng.uniform(0.12, 0.22) * s
        ox, oy = rng.uniform(0, cell, 2)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        mask = (((xx + ox) // cell + (yy + oy) // cell) % 2).astype(bool)
        arr = np.where(mask[..., None], np.array(fg, np.uint8), np.array(bg, np.uint8))
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
    elif name == "dots":
        n = int(rng.integers(8, 16))
        rd = max(1.5, s * rng.uniform(0.03, 0.05))
        for x, y in rng.uniform(rd, s - rd, (n, 2)):
            d.ellipse([x - rd, y - rd, x + rd, y + rd], fill=fg)
    else:  # pragma: no cover - CLASSES and this function are edited together
        raise AssertionError(name)
    # mild sensor-like noise and blur so that the task is not pixel-trivial
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (s, s, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return img


def _generate(out: Path, cfg: DemoConfig, progress: bool) -> None:
    jobs = [
        (split, c, i)
        for split, n in (("train", cfg.train_per_class), ("val", cfg.val_per_class))
        for c in range(cfg.num_classes)
        for i in range(n)
    ]
    for split in ("train", "val"):
        for c in range(cfg.num_classes):
            (out / split / CLASSES[c]).mkdir(parents=True, exist_ok=True)
    split_id = {"train": 0, "val": 1}
    for split, c, i in tqdm(jobs, desc="demo data", unit="img", disable=not progress, leave=False):
        rng = np.random.default_rng([cfg.seed, split_id[split], c, i])
        img = draw_sample(c, rng, cfg.image_size)
        img.save(out / split / CLASSES[c] / f"{CLASSES[c]}_{i:05d}.jpg", "JPEG", quality=cfg.quality)


def ensure_demo_dataset(root: str | os.PathLike | None = None, cfg: DemoConfig | None = None,
                        *, progress: bool = True) -> Path:
    """Return the folder of the demo set (``train/`` and ``val/`` inside), generating it if needed.

    ``root``: cache folder (default :func:`default_cache_root`); the set lives in a sub-folder named
    after its settings, so different settings never mix.
    """
    cfg = cfg or DemoConfig()
    root = Path(root) if root is not None else default_cache_root()
    final = root / f"v{_FORMAT_VERSION}-{cfg.key()}"
    if (final / _DONE).is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the demo cache folder {root}: {e}; pass --demo-dir to a writable folder") from e
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        _generate(tmp, cfg, progress)
        (tmp / _DONE).write_text(json.dumps({**asdict(cfg), "classes": CLASSES[: cfg.num_classes],
                                             "format_version": _FORMAT_VERSION}, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            # another process finished first (rename onto a non-empty folder fails): use theirs
            if not (final / _DONE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
