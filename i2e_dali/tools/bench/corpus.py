"""Benchmark corpus: ImageNet-like JPEG folders made from real photographs.

Decode speed depends on what is in a JPEG (resolution, detail, quality), so a benchmark fed with tiny
solid-colour files measures nothing. This generator builds ``train/<class>/*.JPEG`` and
``val/<class>/*.JPEG`` whose statistics resemble ImageNet's: sizes spread around 500x375 (landscape
and portrait, several aspect ratios), file sizes around 110 KB, content taken from real photographs
(the authors' official samples, 224x224 ImageNet images): every image is a mosaic of resampled
crops of random samples at or a little below native scale, flipped, colour-jittered, lightly sharpened
and given sensor-like grain (the sources are soft 224-px JPEGs), then encoded at the JPEG quality
(70-98) that brings the file closest to a size drawn around 110 KB.

Deterministic: image ``i`` of a split depends only on (seed, split, i), so runs repeat byte for byte
and the work spreads over processes. Atomic: each file is written to a temporary name and renamed;
``corpus.json`` (settings and measured statistics) is written last, so a folder without it is
incomplete, and running again with the same settings finishes it.

CLI: ``i2e-bench corpus --out DIR --images N`` (see :mod:`i2e_dali.tools.bench`).
"""
from __future__ import annotations

import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from tqdm import tqdm

from ...fsio import atomic_write, atomic_write_text
from ...placement import DEFAULT_SEED, usable_cores
from ...errors import CorpusError

__all__ = ["CorpusConfig", "CorpusError", "default_samples_dir", "describe", "generate_corpus", "make_image", "load_sources"]

MANIFEST = "corpus.json"
# (width, height) aspect ratios seen most in ImageNet, drawn uniformly from this list: 80 % landscape
# (mostly 500x375 / 500x333), some square and portrait, like the real set.
_ASPECTS = ((4, 3), (4, 3), (4, 3), (4, 3), (4, 3), (3, 2), (3, 2), (1, 1), (3, 4), (2, 3))

def default_samples_dir() -> Path:
    """``$I2E_OFFICIAL_SAMPLES``, else ``<repo>/../shared/data/official-samples``."""
    env = os.environ.get("I2E_OFFICIAL_SAMPLES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "data" / "official-samples"

@dataclass
class CorpusConfig:
    out: Path
    images: int = 1000  # training images in total
    val_images: int | None = None  # None: a tenth of ``images`` (at least one per class)
    classes: int = 100  # class folders (ImageNet has 1000)
    samples: Path = field(default_factory=default_samples_dir)
    seed: int = DEFAULT_SEED
    long_side: int = 500  # mean long side in pixels
    file_kb: float = 110.0  # mean JPEG file size (ImageNet train: ~110 KB)
    workers: int | None = None  # processes; None = all cores
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self.samples = Path(self.samples)
        if not isinstance(self.images, int) or self.images < 1:
            raise CorpusError(f"--images must be a positive integer, got {self.images!r}")
        if not isinstance(self.classes, int) or not 1 <= self.classes <= 1000:
            raise CorpusError(f"--classes must be in 1..1000 (ImageNet has 1000), got {self.classes!r}")
        if self.classes > self.images:
            raise CorpusError(f"--classes ({self.classes}) cannot exceed --images ({self.images}): "
                              "every class folder needs at least one image")
        if self.val_images is None:
            self.val_images = max(self.classes, self.images // 10)
        if not isinstance(self.val_images, int) or self.val_images < 0:
            raise CorpusError(f"--val-images must be a non-negative integer, got {self.val_images!r}")
        if not 5 <= self.file_kb <= 5000:
            raise CorpusError(f"--file-kb must be in 5..5000 KB, got {self.file_kb}")
        if not 64 <= self.long_side <= 4096:
            raise CorpusError(f"--long-side must be in 64..4096 pixels, got {self.long_side}")

    def settings(self) -> dict:
        d = asdict(self)
        for key in ("out", "workers", "progress"):
            d.pop(key)
        d["samples"] = str(self.samples)
        return d

def class_names(count: int) -> list[str]:
    """WordNet-id-like folder names, n00000000 ... (sorted order = label order)."""
    return [f"n{index:08d}" for index in range(count)]

def load_sources(folder: Path) -> list[np.ndarray]:
    """The official samples (``*_rgb.jpg``) as RGB uint8 arrays; clear error if the folder is absent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(
            f"sample folder {folder} not found: the corpus is built from the authors' official samples "
            "(shared/data/official-samples, *_rgb.jpg); pass --samples DIR or set I2E_OFFICIAL_SAMPLES"
        )
    files = sorted(folder.glob("*_rgb.jpg")) or sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not files:
        raise CorpusError(f"no *_rgb.jpg (or other .jpg/.png) images in {folder}; pass --samples DIR")
    sources = []
    for path in files:
        try:
            with Image.open(path) as im:
                sources.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise CorpusError(f"cannot read source image {path}: {exc}") from exc
    return sources

def _output_size(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    aw, ah = _ASPECTS[rng.integers(len(_ASPECTS))]
    side = int(np.clip(rng.normal(long_side, 0.12 * long_side), 0.6 * long_side, 1.6 * long_side))
    if aw >= ah:
        return side, max(16, round(side * ah / aw))
    return max(16, round(side * aw / ah)), side

def _crop_piece(rng, source: np.ndarray, width: int, height: int) -> Image.Image:
    """A width x height piece of ``source`` at a random scale of 0.5-1x (downsampling adds detail per pixel), flipped and jittered."""
    sh, sw = source.shape[:2]
    # Shrink the scale up where the source is too small to cover the piece.
    scale = max(float(rng.uniform(0.5, 1.0)), width / sw, height / sh)
    cw, ch = min(sw, max(1, round(width / scale))), min(sh, max(1, round(height / scale)))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    piece = Image.fromarray(source[y0 : y0 + ch, x0 : x0 + cw]).resize((width, height), Image.BICUBIC)
    if rng.random() < 0.5:
        piece = ImageOps.mirror(piece)
    piece = ImageEnhance.Brightness(piece).enhance(float(rng.uniform(0.8, 1.2)))
    piece = ImageEnhance.Contrast(piece).enhance(float(rng.uniform(0.8, 1.25)))
    return ImageEnhance.Color(piece).enhance(float(rng.uniform(0.7, 1.3)))

def _target_bytes(rng: np.random.Generator, mean_kb: float) -> int:
    """A file size drawn around ``mean_kb`` (log-normal, sigma 0.35, like ImageNet's spread)."""
    sigma = 0.35
    median = mean_kb * 1e3 / math.exp(sigma**2 / 2)
    return int(np.clip(rng.lognormal(math.log(median), sigma), 0.3 * mean_kb * 1e3, 3.0 * mean_kb * 1e3))

def _encode(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()

def encode_near(image: Image.Image, target: int, low: int = 70, high: int = 98) -> bytes:
    """JPEG bytes at the quality in [low, high] whose file size is closest to ``target``: size grows
    with quality, so bisect for the last quality at or below the target and compare with the next."""
    below = _encode(image, low)
    if len(below) >= target:
        return below
    q_below, top = low, high
    while q_below < top:
        mid = (q_below + top + 1) // 2
        data = _encode(image, mid)
        if len(data) <= target:
            q_below, below = mid, data
        else:
            top = mid - 1
    if q_below == high:
        return below
    above = _encode(image, q_below + 1)
    return above if len(above) - target < target - len(below) else below

def make_image(sources: list[np.ndarray], rng: np.random.Generator, long_side: int = 500) -> Image.Image:
    """One corpus image: a mosaic of real crops (cells of 100-220 px), sharpened, with grain."""
    width, height = _output_size(rng, long_side)
    # Cells of about 100-220 px keep the 224-px sources at or below native scale (real detail, not blur).
    cols = max(1, round(width / rng.uniform(100, 220)))
    rows = max(1, round(height / rng.uniform(100, 220)))
    xs = np.linspace(0, width, cols + 1) + np.r_[0, rng.uniform(-0.15, 0.15, cols - 1) * width / cols, 0]
    ys = np.linspace(0, height, rows + 1) + np.r_[0, rng.uniform(-0.15, 0.15, rows - 1) * height / rows, 0]
    xs, ys = [int(round(x)) for x in xs], [int(round(y)) for y in ys]
    canvas = Image.new("RGB", (width, height))
    for r in range(rows):
        for c in range(cols):
            w, h = xs[c + 1] - xs[c], ys[r + 1] - ys[r]
            source = sources[int(rng.integers(len(sources)))]
            canvas.paste(_crop_piece(rng, source, w, h), (xs[c], ys[r]))
    # The sources are 224-px JPEGs, softer than camera files: restore some edge contrast, add grain.
    canvas = canvas.filter(ImageFilter.UnsharpMask(radius=2, percent=60, threshold=2))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.normal(0.0, float(rng.uniform(3.0, 6.0)), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))

# Per-process state for the pool: the decoded sources, loaded once per worker.
_WORKER_SOURCES: list[np.ndarray] | None = None

def _init_worker(folder: str) -> None:
    global _WORKER_SOURCES  # pool initialiser: the one way to hand big read-only data to workers once
    _WORKER_SOURCES = load_sources(Path(folder))

def _job_seed(seed: int, split: str, index: int) -> list[int]:
    return [seed, 0 if split == "train" else 1, index]

def _make_one(job: tuple[str, int, str, int, int, float]) -> tuple[int, int, int]:
    path, seed, split, index, long_side, file_kb = job
    path = Path(path)
    if path.exists():  # finished by an earlier, interrupted run (files appear only complete)
        with Image.open(path) as im:
            return im.width, im.height, path.stat().st_size
    rng = np.random.default_rng(_job_seed(seed, split, index))
    image = make_image(_WORKER_SOURCES, rng, long_side)
    data = encode_near(image, _target_bytes(rng, file_kb))
    atomic_write(path, lambda f: f.write(data))
    return image.width, image.height, len(data)

def _plan(cfg: CorpusConfig) -> list[tuple[str, int, str, int, int, float]]:
    names = class_names(cfg.classes)
    jobs = []
    for split, count in (("train", cfg.images), ("val", cfg.val_images)):
        for index in range(count):
            cls = names[index % cfg.classes]  # round robin: classes differ by at most one image
            path = cfg.out / split / cls / f"{split}_{index:08d}.JPEG"
            jobs.append((str(path), cfg.seed, split, index, cfg.long_side, cfg.file_kb))
    return jobs

def generate_corpus(cfg: CorpusConfig) -> dict:
    """Write the corpus (resuming an unfinished one with the same settings); returns the manifest."""
    manifest_path = cfg.out / MANIFEST
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        if existing.get("settings") == cfg.settings():
            return existing
        raise CorpusError(f"{cfg.out} already holds a corpus with other settings ({manifest_path}); "
                          "choose another --out or delete that folder")
    if cfg.out.exists() and any(p.name not in ("train", "val") for p in cfg.out.iterdir()):
        raise CorpusError(f"{cfg.out} is not empty and holds no corpus: choose an empty or new --out folder")
    load_sources(cfg.samples)  # fail early, in this process, with the clear message
    jobs = _plan(cfg)
    for folder in sorted({str(Path(j[0]).parent) for j in jobs}):
        Path(folder).mkdir(parents=True, exist_ok=True)
    workers = cfg.workers or usable_cores()
    chunk = max(1, min(16, len(jobs) // (4 * workers) or 1))
    if workers == 1:
        _init_worker(str(cfg.samples))
        results = map(_make_one, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(cfg.samples),))
        results = pool.map(_make_one, jobs, chunksize=chunk)
    try:
        stats = list(tqdm(results, total=len(jobs), desc=f"corpus -> {cfg.out}", unit="img", disable=not cfg.progress))
    finally:
        if pool is not None:
            pool.shutdown()
    sizes = np.array([s[2] for s in stats], dtype=np.float64)
    widths = np.array([s[0] for s in stats])
    heights = np.array([s[1] for s in stats])
    manifest = {
        "settings": cfg.settings(),
        "layout": "train/<class>/*.JPEG, val/<class>/*.JPEG",
        "classes": cfg.classes,
        "train_images": cfg.images,
        "val_images": cfg.val_images,
        "file_kb": {"mean": sizes.mean() / 1e3, "median": float(np.median(sizes)) / 1e3,
                    "p10": float(np.percentile(sizes, 10)) / 1e3, "p90": float(np.percentile(sizes, 90)) / 1e3},
        "width": {"mean": float(widths.mean()), "min": int(widths.min()), "max": int(widths.max())},
        "height": {"mean": float(heights.mean()), "min": int(heights.min()), "max": int(heights.max())},
        "total_mb": float(sizes.sum()) / 1e6,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest

def describe(manifest: dict) -> str:
    kb, w, h = manifest["file_kb"], manifest["width"], manifest["height"]
    return (
        f"{manifest['train_images']} train + {manifest['val_images']} val JPEGs in {manifest['classes']} classes, "
        f"{manifest['total_mb']:.1f} MB; file size mean {kb['mean']:.0f} KB (p10 {kb['p10']:.0f}, p90 {kb['p90']:.0f}); "
        f"mean size {w['mean']:.0f}x{h['mean']:.0f} (widths {w['min']}-{w['max']}, heights {h['min']}-{h['max']})"
    )

