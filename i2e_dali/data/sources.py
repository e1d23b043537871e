"""Discover and validate image data sets: ImageNet-style class folders and the CIFAR python batches.

A *source* is a plain description of a split: ``samples`` (list of ``(path-or-stem, label)``),
``classes`` (names, index = label), and the paper's defaults for it (``default_ratio``, sizes).
The DALI pipelines (``pipelines/``) read what a source lists; ``i2e_dali.loader.EventLoader`` joins
the two. Problems that are cheap to find (missing folders, empty classes, non-image files, zero-byte
files, missing CIFAR batches) are refused here, before DALI starts, with an error that names the
file or folder and says what to do; files that only a decoder can reject are found by ``i2e-check``.
"""
from __future__ import annotations

import copy
import io
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm
from ..errors import DatasetError, MissingDataError, UndecodableImageError
from .base import InMemorySource
from .exclude import ExcludeList

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

# Formats DALI's image decoders read (by content, so a PNG named .JPEG still decodes).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
                    ".jp2", ".j2k")
DATASETS = ("imagenet", "folder", "cifar10", "cifar100", "mnist", "fashionmnist", "caltech101", "caltech256",
            "mini-imagenet")
# Class-folder sets without train/val folders (the authors' catalog): the folder the archive unpacks to,
# and classes left out (torchvision's rule: Caltech-101 without BACKGROUND_Google); split per class, seeded.
_UNSPLIT_SETS = {"caltech101": ("101_ObjectCategories", ("BACKGROUND_Google",)),
                 "caltech256": ("256_ObjectCategories", ()),
                 "mini-imagenet": ("images", ())}
DEFAULT_VAL_FRACTION = 0.2
_MAX_LISTED = 20  # files named in one error message; the rest are counted


def _listing(paths: Iterable, limit: int = _MAX_LISTED) -> str:
    paths = [str(p) for p in paths]
    shown = "\n  ".join(paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n  {shown}{more}"


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
    """Walk ``root/<class>/**`` (sorted, following links) without opening any image.

    Classes are the sorted names of root's sub-folders (torchvision's ImageFolder rule); images in
    nested folders below a class belong to it.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingDataError(f"data folder {root} does not exist; pass the folder that holds one sub-folder per class")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder; pass the folder that holds one sub-folder per class")
    scan = FolderScan(root=root)
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    scan.classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    scan.stray_files = [Path(e.path) for e in entries if e.is_file() and not e.name.startswith(".")]
    bar = tqdm(scan.classes, desc=f"scanning {root.name}", unit="class", disable=True if progress is False else None,
               leave=False)
    for label, name in enumerate(bar):
        found = 0
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                path = os.path.join(dirpath, fname)
                if not fname.lower().endswith(IMAGE_EXTENSIONS):
                    scan.not_images.append(Path(path))
                    continue
                try:
                    size = os.stat(path).st_size
                except OSError:  # dangling link or unreadable entry: DALI could not read it either
                    scan.empty_files.append(Path(path))
                    continue
                if size == 0:
                    scan.empty_files.append(Path(path))
                    continue
                scan.samples.append((path, label))
                found += 1
        if found == 0:
            scan.empty_classes.append(root / name)
    return scan


class ImageFolderSource:
    """One split in the ImageNet layout: ``root/<class>/<image>``; label = index of the sorted class name.

    Refuses (``DatasetError`` naming the files) class folders holding non-image or zero-byte files,
    and empty class folders, unless ``skip_invalid=True`` (leave such files out) or
    ``allow_empty_classes=True`` (keep the class index, with no images). Undecodable images with an
    image extension cannot be found without decoding: run ``i2e-check ROOT`` for those.
    """

    kind = "folder"
    default_ratio = 0.12
    default_crop_size = 224
    default_resize_size = 256

    def __init__(self, root: str | os.PathLike, *, skip_invalid: bool = False, allow_empty_classes: bool = False,
                 progress: bool | None = None, exclude=None):
        scan = scan_image_folder(root, progress=progress)
        self.root = scan.root
        # exclude: paths to leave out (an ExcludeList from read_exclude_list, e.g. i2e-check --list's file,
        # or any iterable of paths); what was dropped is kept in .excluded and told by .exclusion_note
        excl = ExcludeList.of(exclude)
        self.exclude_origin = excl.origin if len(excl) else None
        self.excluded: list[str] = []
        if len(excl):
            kept, dropped = excl.split([p for p, _ in scan.samples], scan.root)
            self.excluded = [scan.samples[i][0] for i in dropped]
            scan.samples = [scan.samples[i] for i in kept]
            for attr in ("not_images", "empty_files"):
                files = getattr(scan, attr)
                kept, dropped = excl.split(files, scan.root)
                self.excluded += [str(files[i]) for i in dropped]
                setattr(scan, attr, [files[i] for i in kept])
        if not scan.classes:
            hint = (
                f" It holds {len(scan.stray_files)} files directly; move them into one sub-folder per class."
                if scan.stray_files else ""
            )
            raise DatasetError(
                f"{self.root} has no class sub-folders. Expected the ImageNet layout {self.root}/<class>/<image>."
                + hint
            )
        if scan.bad_files and not skip_invalid:
            parts = []
            if scan.not_images:
                parts.append(f"{len(scan.not_images)} file(s) that are not images (by extension; DALI reads "
                             f"{', '.join(IMAGE_EXTENSIONS)}):" + _listing(scan.not_images))
            if scan.empty_files:
                parts.append(f"{len(scan.empty_files)} empty (zero-byte) or unreadable file(s):"
                             + _listing(scan.empty_files))
            raise DatasetError(
                f"{self.root} contains files the loader cannot use:\n" + "\n".join(parts)
                + "\nRemove or replace them (or pass skip_invalid=True to leave them out), then run "
                f"`i2e-check {self.root}` to find images that do not decode."
            )
        if scan.empty_classes and not allow_empty_classes:
            raise DatasetError(
                f"{len(scan.empty_classes)} class folder(s) in {self.root} hold no images:"
                + _listing(scan.empty_classes)
                + "\nAdd images or delete the folder(s) (class indices follow the sorted folder names, so train "
                "and val must have the same classes), or pass allow_empty_classes=True."
            )
        self.classes: list[str] = scan.classes
        self.samples: list[tuple[str, int]] = scan.samples
        self.skipped: list[Path] = scan.bad_files
        if not self.samples:
            raise DatasetError(f"{self.root} holds no images; expected {self.root}/<class>/<image>.JPEG")

    @property
    def exclusion_note(self) -> str | None:
        """"N images excluded (listed in ORIGIN)" when an exclude list was given, else None."""
        if self.exclude_origin is None:
            return None
        return f"{len(self.excluded)} image(s) of {self.root} excluded (listed in {self.exclude_origin})"

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def files(self) -> list[str]:
        return [p for p, _ in self.samples]

    @property
    def labels(self) -> list[int]:
        return [lab for _, lab in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices) -> "ImageFolderSource":
        """The same source listing only ``indices`` (in that order); classes are kept."""
        sub = copy.copy(self)
        sub.samples = [self.samples[i] for i in indices]
        return sub

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, {len(self.samples)} images, {len(self.classes)} classes)"


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
    ``kwargs`` go to the source (e.g. ``skip_invalid=True`` for folders).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
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
    new_label = {src.classes.index(c): i for i, c in enumerate(keep)}
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(src.samples):
        if label in new_label:
            by_class.setdefault(new_label[label], []).append(i)
    chosen = []
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        n_val = 0 if n < 2 else min(n - 1, max(1, round(n * val_fraction)))
        perm = np.random.default_rng([seed, label]).permutation(n)
        picked = perm[:n_val] if split == "val" else perm[n_val:]
        chosen += [idx[j] for j in sorted(picked.tolist())]
    chosen.sort()
    out = src.subset(chosen)
    out.classes = keep
    out.samples = [(path, new_label[label]) for path, label in out.samples]
    return out
