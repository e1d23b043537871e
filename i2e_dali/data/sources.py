"""Discover and validate image data sets: ImageNet-style class folders and the CIFAR python batches.

A *source* is a plain description of a split: ``samples`` (list of ``(path-or-stem, label)``),
``classes`` (names, index = label), and the paper's defaults for it (``default_ratio``, sizes).
The DALI pipelines (``pipelines/``) read what a source lists; ``i2e_dali.data.event_loader.EventLoader`` joins
the two. Problems that are cheap to find (missing folders, empty classes, non-image files, zero-byte
files, missing CIFAR batches) are refused here, before DALI starts, with an error that names the
file or folder and says what to do; files that only a decoder can reject are found by ``i2e-check``.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ..errors import DatasetError, MissingDataError, UndecodableImageError
from .base import InMemorySource
from .folder_index import IMAGE_EXTENSIONS, index_folder, is_s3
from .folder_source import ImageFolderSource

__all__ = [
    "DatasetError",
    "MissingDataError",
    "UndecodableImageError",
    "IMAGE_EXTENSIONS",
    "FolderScan",
    "scan_image_folder",
    "ImageFolderSource",
    "CifarSource",
    "open_source",
    "DATASETS",
    "dali_error_detail",
]

DATASETS = ("imagenet", "folder", "cifar10", "cifar100", "mnist", "fashionmnist", "caltech101", "caltech256",
            "mini-imagenet")
# Class-folder sets without train/val folders (the authors' catalog): the folder the archive unpacks to,
# and classes left out (torchvision's rule: Caltech-101 without BACKGROUND_Google); split per class, seeded.
_UNSPLIT_SETS = {"caltech101": ("101_ObjectCategories", ("BACKGROUND_Google",)),
                 "caltech256": ("256_ObjectCategories", ()),
                 "mini-imagenet": ("images", ())}
DEFAULT_VAL_FRACTION = 0.2


def dali_error_detail(message: str) -> str:
    """The informative line of a DALI error message (DALI wraps it in generic pipeline context)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("encountered:") and i + 1 < len(lines):
            return lines[i + 1].rstrip(" :")
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------------
# ImageNet-style folders
# --------------------------------------------------------------------------------------------------
@dataclass
class FolderScan:
    """What a walk over ``root/<class>/...`` found. Hidden files (``.DS_Store`` ...) are ignored."""

    root: Path
    classes: list[str] = field(default_factory=list)
    samples: list[tuple[str, int]] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)  # extension DALI does not decode
    empty_files: list[Path] = field(default_factory=list)  # zero bytes
    empty_classes: list[Path] = field(default_factory=list)  # class folder without one image
    stray_files: list[Path] = field(default_factory=list)  # files directly in root (not in a class)

    @property
    def bad_files(self) -> list[Path]:
        return self.not_images + self.empty_files


def scan_image_folder(root: str | os.PathLike, *, progress: bool | None = None) -> FolderScan:
    """Walk ``root/<class>/**`` (sorted, following links) without opening any image (``index_folder``'s
    walk, as Python lists: for tools that want every path, e.g. ``i2e-check``).

    Classes are the sorted names of root's sub-folders (torchvision's ImageFolder rule); images in
    nested folders below a class belong to it.
    """
    idx = index_folder(root if is_s3(root) else Path(root).expanduser(), progress=progress)
    return FolderScan(
        root=Path(idx.root) if not is_s3(idx.root) else idx.root, classes=list(idx.classes),
        samples=list(zip((idx.join(r) for r in idx.rel_paths()), idx.labels.tolist())),
        not_images=[Path(idx.join(r)) for r in idx.not_images],
        empty_files=[Path(idx.join(r)) for r in idx.empty_files],
        empty_classes=[Path(idx.join(r)) for r in idx.empty_classes],
        stray_files=[Path(idx.join(r)) for r in idx.stray_files])


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python batches
# --------------------------------------------------------------------------------------------------
_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", b"label_names"),
        "labels": b"labels",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", b"fine_label_names"),
        "labels": b"fine_labels",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    },
}


class _CifarUnpickler(pickle._Unpickler):
    """The CIFAR batches are pickles; only let them rebuild plain containers and numpy arrays, so a
    tampered file cannot run code.

    Python's own unpickler, not the C one: the C unpickler sizes its memo table from the index a PUT
    opcode names, so one damaged byte (LONG_BINPUT 1044009057, found by the fuzz tests) makes it allocate
    gigabytes for half a minute; the Python one keeps the memo in a dict. A batch is one large bytes
    object and a few lists, so the Python unpickler loads it about as fast."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")


# What unpickling a damaged batch can raise (a mangled opcode stream: IndexError/KeyError from the memo,
# struct.error, OverflowError, RecursionError for deep nesting, UnicodeDecodeError inside ValueError).
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                  struct.error, OverflowError, RecursionError, MemoryError, ImportError, OSError)


def _load_pickle(path: Path) -> dict:
    try:
        # Unpickled from memory: a damaged length field then reads past the end and fails at once, where
        # from a file the unpickler first allocates what the field claims (gigabytes; found by the fuzz tests).
        with open(path, "rb") as f:
            data = _CifarUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except FileNotFoundError:
        raise MissingDataError(f"{path} does not exist; re-download and unpack the data set") from None
    except _PICKLE_ERRORS as exc:
        raise DatasetError(
            f"{path} is not a readable CIFAR python batch ({type(exc).__name__}: {exc}); re-download and "
            "unpack the data set"
        ) from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a CIFAR python batch (it holds a {type(data).__name__}, not a dict); "
                           "re-download and unpack the data set")
    return data


def _batch_arrays(path: Path, batch: dict, label_key: bytes, name: str, variant: str):
    """(images uint8 [N, 32, 32, 3], labels int64 [N], stems) of one batch; DatasetError naming the file."""
    try:
        data = batch[b"data"]
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data is a {type(data).__name__}, not an array")
        data = np.asarray(data, dtype=np.uint8)
        lab = np.asarray(batch[label_key], dtype=np.int64)
        files = batch.get(b"filenames", [f"{name}_{i:05d}".encode() for i in range(len(lab))])
        stems = [os.path.splitext(f.decode() if isinstance(f, bytes) else str(f))[0] for f in files]
    except KeyError as exc:
        raise DatasetError(f"{path} lacks the field {exc}; is it a {variant} batch?") from exc
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:  # incl. UnicodeDecodeError
        raise DatasetError(f"{path}: malformed CIFAR batch ({type(exc).__name__}: {exc}); re-download and "
                           "unpack the data set") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or lab.ndim != 1 or len(lab) != data.shape[0] \
            or len(stems) != len(lab):
        raise DatasetError(
            f"{path}: expected data [N, 3072] with N labels and N file names, got {data.shape}, "
            f"{lab.shape} and {len(stems)}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), lab, stems


def resolve_cifar_root(root: str | os.PathLike, variant: str) -> Path:
    """The folder holding the batches: ``root`` itself or its ``cifar-10-batches-py`` /
    ``cifar-100-python`` child."""
    if variant not in _CIFAR:
        raise ValueError(f"variant must be one of {tuple(_CIFAR)}, got {variant!r}")
    spec = _CIFAR[variant]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(
            f"CIFAR folder {root} does not exist; download {spec['url']} and unpack it there"
        )
    probe = spec["train"][0]
    if (root / probe).exists() or (root / spec["test"][0]).exists():
        return root
    if (root / spec["folder"]).is_dir():
        return root / spec["folder"]
    other = "cifar100" if variant == "cifar10" else "cifar10"
    if (root / _CIFAR[other]["folder"]).is_dir() or (root / _CIFAR[other]["train"][0]).exists():
        raise DatasetError(f"{root} holds {other}, not {variant}; pass --dataset {other} or the right folder")
    return root  # the per-file check below names what is missing


class CifarSource(InMemorySource):
    """CIFAR-10/100 split from the official python batches (``data_batch_1..5``/``test_batch``, or
    CIFAR-100's ``train``/``test`` with fine labels).

    ``images`` is uint8 ``[N, 32, 32, 3]`` (HWC, what the DALI graph consumes); ``samples`` holds
    ``(stem, label)`` with the file stem stored in the batches (e.g. ``"leptodactylus_pentadactylus_s_000004"``).
    """

    kind = "cifar"
    default_ratio = 0.07
    default_crop_size = 32
    default_out_size = 128

    def __init__(self, root: str | os.PathLike, train: bool, variant: str = "cifar10"):
        self.variant = variant
        self.root = resolve_cifar_root(root, variant)
        self.train = bool(train)
        spec = _CIFAR[variant]
        names = spec["train"] if train else spec["test"]
        wanted = names + [spec["meta"][0]]
        missing = [n for n in wanted if not (self.root / n).is_file()]
        if missing:
            raise MissingDataError(
                f"CIFAR folder {self.root} lacks {', '.join(missing)} (expected {', '.join(wanted)}). "
                f"Re-download {spec['url']} and unpack it completely."
            )
        meta_path = self.root / spec["meta"][0]
        meta = _load_pickle(meta_path)
        try:
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["meta"][1]]]
        except KeyError as exc:
            raise DatasetError(f"{meta_path} lacks the field {exc}; is it {variant}'s meta file?") from exc
        except (TypeError, ValueError) as exc:  # incl. UnicodeDecodeError
            raise DatasetError(f"{meta_path}: malformed class names ({exc}); re-download the data set") from exc
        if not self.classes:
            raise DatasetError(f"{meta_path} lists no class names; re-download the data set")
        images, labels, stems = [], [], []
        for name in names:
            img, lab, st = _batch_arrays(self.root / name, _load_pickle(self.root / name), spec["labels"], name,
                                         variant)
            images.append(img)
            labels.append(lab)
            stems += st
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.label_array = np.concatenate(labels)
        if self.label_array.size and (self.label_array.min() < 0 or self.label_array.max() >= len(self.classes)):
            raise DatasetError(f"{self.root}: labels outside 0..{len(self.classes) - 1}")
        self.samples = list(zip(stems, self.label_array.tolist()))


    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"CifarSource({str(self.root)!r}, {split}, {self.variant}, {len(self.samples)} images)"


# --------------------------------------------------------------------------------------------------
def open_source(data_root: str | os.PathLike, split: str, dataset: str = "imagenet", **kwargs):
    """The source for ``split`` ("train" or "val") of ``dataset``.

    - imagenet / folder: ``<data_root>/train`` and ``<data_root>/val`` in the class-folder layout;
    - cifar10 / cifar100: ``data_root`` is the folder with the batches or its parent; "val" is the
      official test split.
    - an ``s3://bucket/prefix`` data root: ``prefix/train`` and ``prefix/val`` (class folders only).
    ``kwargs`` go to the source (e.g. ``skip_invalid=True`` for folders); for folders ``index`` is None (scan
    now), "auto" (``<split>/.i2e-index.npz``) or a folder holding ``<split>.i2e-index.npz`` (written once by
    rank 0 when missing; see ``i2e_dali.data.folder_index``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if kwargs.get("index") not in (None, "auto"):  # a folder of index files, one per split
        kwargs["index"] = Path(kwargs["index"]).expanduser() / f"{split}.i2e-index.npz"
    if is_s3(data_root):
        if dataset not in ("imagenet", "folder"):
            raise ValueError(f"s3:// data roots are read for class-folder sets (imagenet, folder), not {dataset}")
        return ImageFolderSource(f"{str(data_root).rstrip('/')}/{split}", **kwargs)
    root = Path(data_root).expanduser()
    if dataset in ("mnist", "fashionmnist"):
        from .idx import IdxSource

        return IdxSource(root, train=split == "train", variant=dataset, **kwargs)
    if dataset in _UNSPLIT_SETS and not ((root / "train").is_dir() and (root / "val").is_dir()):
        return split_class_folders(root, split, dataset, **kwargs)
    if dataset in ("cifar10", "cifar100"):
        return CifarSource(root, train=split == "train", variant=dataset, **kwargs)
    if not root.is_dir():
        raise MissingDataError(f"data folder {root} does not exist (expected {root}/train and {root}/val)")
    path = root / split
    if not path.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        hint = ""
        if split == "val" and (root / "validation").is_dir():
            hint = f" Found {root}/validation: rename it to val."
        elif present and split == "train" and not (root / "val").is_dir():
            hint = (f" {root} itself looks like a class folder set ({len(present)} sub-folders); "
                    f"put it under {root}/train and the validation images under {root}/val.")
        raise MissingDataError(
            f"{path} does not exist. An ImageNet-style data set needs {root}/train/<class>/<image> and "
            f"{root}/val/<class>/<image> with the same class folders.{hint}"
        )
    return ImageFolderSource(path, **kwargs)


def split_class_folders(root: str | os.PathLike, split: str, dataset: str, *,
                        val_fraction: float = DEFAULT_VAL_FRACTION, seed: int | None = None,
                        **kwargs) -> ImageFolderSource:
    """``split`` of a class-folder set that has no train/val folders (Caltech-101/256, Mini-ImageNet as 100
    class folders): per class, a seeded permutation puts ``round(n * val_fraction)`` images (at least one
    when the class has two) in "val" and the rest in "train"; both keep the sorted file order. Files DALI
    cannot read (Caltech-256's stray non-image files) are left out."""
    from ..placement import DEFAULT_SEED

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    seed = DEFAULT_SEED if seed is None else int(seed)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(f"data folder {root} does not exist")
    sub, excluded = _UNSPLIT_SETS.get(dataset, ("", ()))
    folder = root / sub if sub and (root / sub).is_dir() else root
    if dataset == "mini-imagenet" and any((folder / d).is_dir() for d in ("train", "val", "test")):
        raise DatasetError(
            f"{folder} holds train/val/test folders with different classes (the few-shot split); for I2E-Mini-"
            "ImageNet put all 100 class folders into one folder (or give train/ and val/ with the same classes)")
    kwargs.setdefault("skip_invalid", True)
    src = ImageFolderSource(folder, **kwargs)
    keep = [c for c in src.classes if c not in excluded]
    new_label = np.full(len(src.classes), -1, np.int64)
    for i, c in enumerate(keep):
        new_label[src.classes.index(c)] = i
    labels = new_label[src.label_array]
    chosen = []
    for label in range(len(keep)):
        idx = np.flatnonzero(labels == label)
        n = len(idx)
        n_val = 0 if n < 2 else min(n - 1, max(1, round(n * val_fraction)))
        perm = np.random.default_rng([seed, label]).permutation(n)
        picked = perm[:n_val] if split == "val" else perm[n_val:]
        chosen.append(idx[np.sort(picked)])
    chosen = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    out = src.subset(chosen)
    out.classes = keep
    out.label_array = labels[chosen]
    return out
