"""MNIST and Fashion-MNIST in their original IDX files, as an in-memory image source.

Files (plain or ``.gz``): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, found in ``root``, ``root/raw`` or torchvision's ``root/MNIST/raw`` /
``root/FashionMNIST/raw``. IDX: a big-endian magic (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the data in C order.

The 28x28 grey images become RGB (the authors' protocol converts every source to RGB) uint8
``[N, 28, 28, 3]`` and go through the CIFAR graph (an in-memory array source, ``kind = "cifar"``), whose
evaluation view resizes to ``out_size`` (32 for the catalog's I2E-MNIST).
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError, MissingDataError
from .base import InMemorySource

__all__ = ["IdxSource", "read_idx", "MNIST_CLASSES", "FASHION_CLASSES"]

MNIST_CLASSES = [str(i) for i in range(10)]
# torchvision's names with "/" replaced (class names become folder names in an npz export)
FASHION_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_MAX_IDX_BYTES = 2**30  # MNIST's largest file is 47 MB; anything past 1 GiB is damage
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_URLS = {"mnist": "https://yann.lecun.com/exdb/mnist/ (or a mirror)",
         "fashionmnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion)"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array of one IDX file (``.gz`` or plain); DatasetError naming the file when it is not IDX."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read(_MAX_IDX_BYTES + 1)  # bounded: a damaged .gz cannot inflate without end
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream inside the .gz
        raise DatasetError(f"{path}: cannot be read ({exc}); download it again") from exc
    if len(raw) > _MAX_IDX_BYTES:
        raise DatasetError(f"{path}: more than {_MAX_IDX_BYTES:,} bytes of data; not an MNIST-family IDX file")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic {raw[:4].hex()}); download it again")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(raw) < head:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw[4:head], dtype=">u4"))
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - head != need:
        raise DatasetError(f"{path}: header says {shape} ({need} bytes) but the file holds {len(raw) - head}; "
                           "it is truncated or damaged - download it again")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape)


def _find(root: Path, stem: str, variant: str) -> Path:
    sub = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[variant]
    for folder in (root, root / "raw", root / sub / "raw", root / sub):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise MissingDataError(
        f"{root}: no {stem}[.gz] (looked in {root}, {root}/raw and {root}/{sub}/raw); download the four IDX "
        f"files of {variant} from {_URLS[variant]}")


class IdxSource(InMemorySource):
    """One split of MNIST / Fashion-MNIST: ``images`` uint8 ``[N, 28, 28, 3]``, ``samples`` ``(stem, label)``.

    Same interface as ``CifarSource`` (``kind = "cifar"``: in-memory arrays through the CIFAR graph).
    """

    kind = "cifar"
    default_crop_size = 28
    default_out_size = 32

    def __init__(self, root: str | os.PathLike, train: bool, variant: str = "mnist"):
        if variant not in ("mnist", "fashionmnist"):
            raise ValueError(f"variant must be 'mnist' or 'fashionmnist', got {variant!r}")
        self.variant = variant
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MissingDataError(f"{variant} folder {self.root} does not exist; download the IDX files from {_URLS[variant]}")
        self.train = bool(train)
        self.default_ratio = 0.10 if variant == "mnist" else 0.15  # the authors' catalog
        prefix = "train" if train else "t10k"
        img_path = _find(self.root, f"{prefix}-images-idx3-ubyte", variant)
        lab_path = _find(self.root, f"{prefix}-labels-idx1-ubyte", variant)
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetError(f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(f"{lab_path}: {len(labels)} labels for {len(images)} images in {img_path.name}")
        self.classes = list(MNIST_CLASSES if variant == "mnist" else FASHION_CLASSES)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DatasetError(f"{lab_path}: labels outside 0..{len(self.classes) - 1}")
        self.images = np.ascontiguousarray(np.repeat(images[..., None], 3, axis=-1))  # grey -> RGB
        self.label_array = labels.astype(np.int64)
        self.samples = [(f"{prefix}_{i:05d}", int(lab)) for i, lab in enumerate(self.label_array.tolist())]

    def __repr__(self) -> str:
        return f"IdxSource({str(self.root)!r}, {'train' if self.train else 't10k'}, {self.variant}, {len(self.samples)} images)"
