"""Test helpers for the loader/pipeline/check tests: small real data sets written on the fly."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 RGB image (smooth gradients + blobs + a little noise), not flat noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fy, fx, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.28)
        img[..., c] = 127 + 90 * np.sin(fy * yy + ph) * np.cos(fx * xx - ph)
    cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, max(4, min(height, width) / 2))
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, counts: dict[str, int], *, size=(40, 48), seed: int = 0, ext: str = ".JPEG",
                vary: bool = True) -> Path:
    """root/<class>/<class>_<i>.JPEG with counts[class] images; sizes vary a little around ``size``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for cls, n in counts.items():
        (root / cls).mkdir(exist_ok=True)
        for i in range(n):
            h, w = size
            if vary:
                h, w = h + int(rng.integers(0, 9)), w + int(rng.integers(0, 9))
            Image.fromarray(smooth_image(rng, h, w)).save(root / cls / f"{cls}_{i:03d}{ext}", quality=92)
    return root


def write_cifar(root: Path, variant: str = "cifar10", per_batch: int = 6, seed: int = 0,
                skip: tuple[str, ...] = ()) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Write official-format python batches (tiny). Returns the folder and {batch: (images HWC, labels)}."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        names, tests, meta, key, ncls = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", b"labels", 10
        meta_obj = {b"label_names": [f"class{i}".encode() for i in range(ncls)], b"num_vis": 3072}
    else:
        folder = root / "cifar-100-python"
        names, tests, meta, key, ncls = ["train"], ["test"], "meta", b"fine_labels", 100
        meta_obj = {b"fine_label_names": [f"fine{i}".encode() for i in range(ncls)],
                    b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names + tests:
        if name in skip:
            continue
        imgs = np.stack([smooth_image(rng, 32, 32) for _ in range(per_batch)])
        labels = rng.integers(0, ncls, per_batch)
        batch = {
            b"batch_label": name.encode(),
            key: labels.tolist(),
            b"data": imgs.transpose(0, 3, 1, 2).reshape(per_batch, -1),
            b"filenames": [f"{name}_img_{i:04d}.png".encode() for i in range(per_batch)],
        }
        if variant == "cifar100":
            batch[b"coarse_labels"] = (labels // 5).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        out[name] = (imgs, labels)
    if meta not in skip:
        with open(folder / meta, "wb") as f:
            pickle.dump(meta_obj, f)
    return folder, out


def dali_pixels(files, *, view: str, crop: int, resize: int | None = None, device_id=None) -> list[np.ndarray]:
    """Decode + eval-view the files with a DALI pipeline built here (not the project's), uint8 CHW each."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(files), num_threads=1, device_id=device_id)
    def pipe():
        enc, _ = fn.readers.file(files=[str(f) for f in files], name="R")
        img = fn.decoders.image(enc, device="mixed" if device_id is not None else "cpu", output_type=types.RGB)
        if view == "decode":
            return fn.transpose(img, perm=[2, 0, 1])
        if view == "crop":
            img = fn.resize(img, resize_shorter=resize, antialias=True)
            return fn.crop_mirror_normalize(img, crop=(crop, crop), dtype=types.UINT8, output_layout="CHW")
        img = fn.resize(img, resize_x=crop, resize_y=crop, antialias=True)
        return fn.transpose(img, perm=[2, 0, 1])

    p = pipe()
    p.build()
    (out,) = p.run()
    if device_id is not None:
        out = out.as_cpu()
    return [np.array(out[i]) for i in range(len(files))]


_CONVERSION_KEYS = ("ratio", "timesteps", "order", "per_sample", "dtype", "impl", "threshold", "threshold_value",
                    "random_motion", "output")
_DALI_KEYS = {"decode": "decode", "num_threads": "num_threads", "prefetch_queue_depth": "prefetch_queue_depth",
              "hw_decoder_load": "hw_decoder_load", "pipeline_options": "extra"}


def event_loader(source, batch_size, **kw):
    """EventLoader with its settings spelled flat, as these tests (written before ``Conversion`` and
    ``DaliOptions`` grouped them) spell them: the flat names go into the two values."""
    from i2e_dali.convert import Conversion
    from i2e_dali.data.event_loader import DaliOptions, EventLoader

    conv = {k: kw.pop(k) for k in _CONVERSION_KEYS if k in kw}
    if kw.pop("convert", True) is False:
        conv["output"] = "images"
    dali = {new: kw.pop(old) for old, new in _DALI_KEYS.items() if old in kw}
    return EventLoader(source, batch_size, conversion=Conversion(**conv) if conv else kw.pop("conversion", None),
                       dali=DaliOptions(**dali) if dali else kw.pop("dali", None), **kw)
