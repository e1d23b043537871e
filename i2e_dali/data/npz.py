"""Read (and write) I2E event datasets stored as one ``.npz`` per sample (docs/concepts/i2e.md).

Layout: ``<root>/<split>/<class>/<name>.npz``; class index = position in the sorted class folder names
(torchvision ImageFolder's rule, the same the live loader uses).

Two per-sample formats, detected from the file itself:

* dense: ``arr_0`` bool ``[T, 2, H, W]``, channel 0 = ON, channel 1 = OFF;
* sparse: ``arr_0`` integer ``[N, 4]`` rows ``(t, p, x, y)`` with p = 1 for ON and p = 0 for OFF
  (note the flip: dense channel = 1 - p). uint8 while T, H and W are at most 256.

A sparse matrix does not say how large the frame is. Files written by ``i2e_dali.tools.export`` carry it as a
second array ``shape = [T, H, W]`` (``arr_0`` stays first, so readers of the published format still find
it) and the export also writes ``i2e_meta.json`` per split. For the authors' files, which hold only the
matrix, give ``timesteps``/``size`` explicitly or let the reader infer them from a sample of files
(with a warning that says what it assumed).
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from ..errors import NpzFormatError

__all__ = [
    "NpzFormatError",
    "NpzInfo",
    "META_NAME",
    "SHAPE_KEY",
    "dense_to_sparse",
    "sparse_to_dense",
    "sparse_dtype",
    "read_npz_info",
    "read_npz_arrays",
    "load_events",
    "write_npz",
    "read_meta",
    "NpzEventDataset",
    "open_npz_splits",
]

META_NAME = "i2e_meta.json"
SHAPE_KEY = "shape"
# Frame sizes of the published I2E datasets (CIFAR resized to 128, ImageNet 224); used only when a
# sparse set carries no size at all and the reader has to guess.
_KNOWN_SIZES = (128, 224)
_INFER_FILES = 32


@dataclass(frozen=True)
class NpzInfo:
    """What the header of one file says, without decompressing the events."""

    format: str  # "dense" or "sparse"
    shape: tuple[int, ...]  # arr_0's shape
    dtype: np.dtype
    frame_shape: tuple[int, int, int] | None  # (T, H, W): dense always, sparse when stored


# --------------------------------------------------------------------------------------------------
# conversions between the two layouts
# --------------------------------------------------------------------------------------------------
def sparse_dtype(timesteps: int, height: int, width: int) -> np.dtype:
    """Smallest unsigned dtype holding t, x and y: uint8 while all are <= 256 (the spec's rule)."""
    biggest = max(timesteps, height, width) - 1
    for dt in (np.uint8, np.uint16, np.uint32):
        if biggest <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"frame shape {(timesteps, height, width)} is too large for the sparse format")


def dense_to_sparse(events: np.ndarray) -> np.ndarray:
    """bool ``[T, 2, H, W]`` -> ``[N, 4]`` rows ``(t, p, x, y)``, p = 1 ON / 0 OFF.

    Rows are sorted by t, then polarity (ON first), then y, then x.
    """
    events = np.asarray(events)
    if events.ndim != 4 or events.shape[1] != 2:
        raise ValueError(f"events must be [T, 2, H, W], got shape {events.shape}")
    t, c, y, x = np.nonzero(events)
    dt = sparse_dtype(events.shape[0], events.shape[2], events.shape[3])
    out = np.empty((t.size, 4), dtype=dt)
    out[:, 0] = t
    out[:, 1] = 1 - c  # dense channel 0 is ON, sparse p = 1 is ON
    out[:, 2] = x
    out[:, 3] = y
    return out


def sparse_to_dense(rows: np.ndarray, frame_shape: Sequence[int], *, path: str | os.PathLike = "<array>") -> np.ndarray:
    """``[N, 4]`` rows ``(t, p, x, y)`` -> bool ``[T, 2, H, W]``; out-of-range rows raise NpzFormatError."""
    rows = np.asarray(rows)
    T, H, W = (int(v) for v in frame_shape)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise NpzFormatError(f"{path}: sparse events must be an [N, 4] matrix (t, p, x, y), got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.integer):
        raise NpzFormatError(f"{path}: sparse events must be integers, got dtype {rows.dtype}")
    dense = np.zeros((T, 2, H, W), dtype=bool)
    if rows.shape[0] == 0:
        return dense
    rows = rows.astype(np.int64, copy=False)
    t, p, x, y = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    for name, col, limit in (("t", t, T), ("p", p, 2), ("x", x, W), ("y", y, H)):
        lo, hi = int(col.min()), int(col.max())
        if lo < 0 or hi >= limit:
            raise NpzFormatError(
                f"{path}: sparse column {name} has values in [{lo}, {hi}] but the frame shape (T, H, W) = "
                f"{(T, H, W)} allows 0..{limit - 1}; pass the right --timesteps/--size for this dataset"
            )
    dense[t, 1 - p, y, x] = True
    return dense


# --------------------------------------------------------------------------------------------------
# single files
# --------------------------------------------------------------------------------------------------
# Everything a damaged or hostile file can make the zip/npy readers raise; each becomes an NpzFormatError
# naming the file (zipfile: NotImplementedError for an unknown compression method, struct.error and
# OverflowError for mangled headers; numpy's header parser: SyntaxError, tokenize.TokenError, TypeError,
# ValueError; the last two found by tests/test_fuzz_readers.py).
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, zlib.error, KeyError,
                NotImplementedError, struct.error, OverflowError, SyntaxError, tokenize.TokenError, TypeError,
                IndexError, RuntimeError, MemoryError)
# deflate cannot expand data more than ~1032x: a member cannot hold more bytes than this times its
# compressed size, whatever its headers claim
_MAX_DEFLATE_RATIO = 1100
_MAX_FRAME_BYTES = 2**31  # a dense [T, 2, H, W] bool frame stack larger than 2 GiB is not an I2E sample


def _unreadable(path, exc: BaseException) -> NpzFormatError:
    return NpzFormatError(
        f"{path}: not a readable npz file ({type(exc).__name__}: {exc}); it is corrupt or truncated - "
        "delete it and export/download it again"
    )


@contextlib.contextmanager
def _open_npz(path: Path):
    """The npz at ``path`` as an open ZipFile; whatever goes wrong inside becomes an NpzFormatError naming it."""
    try:
        with zipfile.ZipFile(path) as zf:
            yield zf
    except FileNotFoundError:
        raise NpzFormatError(f"{path}: file not found") from None
    except NpzFormatError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def _read_npy_header(zf: zipfile.ZipFile, key: str, path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with zf.open(f"{key}.npy") as f:
            shape, dtype = _header(f, path)
    except KeyError:
        raise NpzFormatError(f"{path}: no array '{key}' in the npz (has {zf.namelist()})") from None
    return shape, dtype


def _header(f, path) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    dtype = np.dtype(dtype)
    if dtype.hasobject or fortran:
        raise NpzFormatError(f"{path}: holds a {'Fortran-order ' if fortran else ''}{dtype} array; I2E event "
                             "files hold plain C-order bool or integer arrays")
    return tuple(int(s) for s in shape), dtype


def _read_member(zf: zipfile.ZipFile, key: str, path) -> np.ndarray:
    """One array of an npz, its size checked against what the member can hold before anything is allocated."""
    info = zf.getinfo(f"{key}.npy")
    with zf.open(info) as f:
        shape, dtype = _header(f, path)
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        packed = min(info.compress_size, os.path.getsize(path))  # a forged directory cannot outgrow the file
        can_hold = min(info.file_size, packed if info.compress_type == zipfile.ZIP_STORED
                       else packed * _MAX_DEFLATE_RATIO + 4096)
        if claimed > can_hold:
            raise NpzFormatError(
                f"{path}: array '{key}' claims shape {list(shape)} ({claimed:,} bytes) but the file holds at most "
                f"{can_hold:,}; the file is corrupt - delete it and export/download it again"
            )
    with zf.open(info) as f:  # read_array parses the header again, from the start
        return np.lib.format.read_array(f, allow_pickle=False)


def read_npz_arrays(path: str | os.PathLike, keys: Sequence[str], *, required: str = "arr_0",
                    what: str = "an I2E event file") -> dict[str, np.ndarray]:
    """The named arrays that exist in the npz at ``path`` (``required`` must), each checked against what
    the file can hold before it is allocated; every failure is an NpzFormatError naming the file."""
    path = Path(path)
    with _open_npz(path) as zf:
        names = set(zf.namelist())
        if f"{required}.npy" not in names:
            stems = sorted(n[:-4] if n.endswith(".npy") else n for n in names)
            raise NpzFormatError(f"{path}: no array '{required}' in the npz (has {stems}); not {what}")
        return {k: _read_member(zf, k, path) for k in keys if f"{k}.npy" in names}


def _frame_shape(values, path, what: str) -> tuple[int, int, int]:
    """(T, H, W) from a stored shape array or metadata, refused when absurd (before a frame is allocated)."""
    try:
        T, H, W = (int(v) for v in np.asarray(values).reshape(-1))
    except (ValueError, TypeError, OverflowError) as exc:
        raise NpzFormatError(f"{path}: {what} must hold [T, H, W], got {values!r}") from exc
    if min(T, H, W) < 1 or T * 2 * H * W > _MAX_FRAME_BYTES:
        raise NpzFormatError(f"{path}: {what} [T, H, W] = {[T, H, W]} is not a plausible frame shape "
                             f"(each >= 1, at most {_MAX_FRAME_BYTES:,} bytes of frames); the file is corrupt")
    return T, H, W


def read_npz_info(path: str | os.PathLike) -> NpzInfo:
    """Format, shape and dtype of ``arr_0`` from the file's headers (cheap: no decompression of events).

    Raises NpzFormatError for a file that is not a complete npz (a truncated file has no zip directory).
    """
    path = Path(path)
    with _open_npz(path) as zf:
        shape, dtype = _read_npy_header(zf, "arr_0", path)
        frame_shape = None
        if f"{SHAPE_KEY}.npy" in zf.namelist():
            stored = _read_member(zf, SHAPE_KEY, path)
            if stored.shape != (3,):
                raise NpzFormatError(f"{path}: '{SHAPE_KEY}' must hold [T, H, W], got {stored!r}")
            frame_shape = _frame_shape(stored, path, f"'{SHAPE_KEY}'")
    if len(shape) == 4 and shape[1] == 2:
        return NpzInfo("dense", shape, dtype, (shape[0], shape[2], shape[3]))
    if len(shape) == 2 and shape[1] == 4:
        return NpzInfo("sparse", shape, dtype, frame_shape)
    raise NpzFormatError(
        f"{path}: arr_0 has shape {shape}; expected dense [T, 2, H, W] or sparse [N, 4] (t, p, x, y) events"
    )


def load_events(
    path: str | os.PathLike,
    frame_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Events of one file as bool ``[T, 2, H, W]`` (dense or sparse).

    ``frame_shape`` (T, H, W) is needed for a sparse file that does not store its shape; for a file that
    stores it, a given ``frame_shape`` overrides it.
    """
    path = Path(path)
    arrays = read_npz_arrays(path, ("arr_0", SHAPE_KEY))
    arr, stored = arrays["arr_0"], arrays.get(SHAPE_KEY)
    if arr.ndim == 4 and arr.shape[1] == 2:
        if arr.dtype != np.bool_:
            if not np.issubdtype(arr.dtype, np.integer):
                raise NpzFormatError(f"{path}: dense events must be bool (or 0/1 integers), got dtype {arr.dtype}")
            arr = arr != 0
        return arr
    if arr.ndim == 2 and arr.shape[1] == 4:
        if frame_shape is None:
            if stored is None:
                raise NpzFormatError(
                    f"{path}: sparse events without a stored frame shape; give timesteps and size "
                    "(e.g. --timesteps 8 --size 224)"
                )
            frame_shape = stored
        return sparse_to_dense(arr, _frame_shape(frame_shape, path, "the frame shape"), path=path)
    raise NpzFormatError(
        f"{path}: arr_0 has shape {arr.shape}; expected dense [T, 2, H, W] or sparse [N, 4] (t, p, x, y) events"
    )


def _savez(fileobj, arrays: dict, level: int | None) -> None:
    # np.savez_compressed's container (ZIP_DEFLATED, zip64 members, .npy payloads) with a choosable
    # zlib level; level None is zlib's default (6), i.e. the same archive np.savez_compressed writes.
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True,
                         compresslevel=level) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def write_npz(fileobj, events: np.ndarray, fmt: str, *, level: int | None = None) -> None:
    """Write one sample to an open binary file: dense ``arr_0`` bool, or sparse ``arr_0`` + ``shape``.

    ``level``: zlib level 1 (fast, ~1.6x larger dense files) .. 9; None = numpy's default (6).
    """
    if level is not None and not (isinstance(level, int) and 0 <= level <= 9):
        raise ValueError(f"compression level must be an int in 0..9, got {level!r}")
    events = np.asarray(events)
    if events.dtype != np.bool_:
        events = events != 0
    if fmt == "dense":
        _savez(fileobj, {"arr_0": events}, level)
    elif fmt == "sparse":
        T, _, H, W = events.shape
        # arr_0 first in the archive: readers that take the first member still get the events.
        _savez(fileobj, {"arr_0": dense_to_sparse(events), SHAPE_KEY: np.array([T, H, W], dtype=np.int32)}, level)
    else:
        raise ValueError(f"format must be 'dense' or 'sparse', got {fmt!r}")


def read_meta(root: str | os.PathLike) -> dict | None:
    """The export's ``i2e_meta.json`` for a split folder (looked up in the folder, then its parent)."""
    root = Path(root)
    for folder in (root, root.parent):
        meta = folder / META_NAME
        if meta.is_file():
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
                raise NpzFormatError(f"{meta}: unreadable metadata ({exc}); delete it or fix the JSON") from exc
            if not isinstance(data, dict):
                raise NpzFormatError(f"{meta}: metadata must be a JSON object, got {type(data).__name__}; "
                                     "delete it or fix the JSON")
            return data
    return None


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------
def _class_files(folder: Path) -> list[Path]:
    # Same walk as the image scan (i2e_dali.data.sources): nested folders belong to the class, sorted,
    # a folder's own files before its sub-folders', hidden names (our temp files) skipped.
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in sorted(filenames) if f.endswith(".npz") and not f.startswith(".")]
    return found


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"event dataset folder {root} does not exist (expected <split>/<class>/<name>.npz)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class folders; expected {root}/<class>/<name>.npz")
    samples: list[tuple[Path, int]] = []
    empty = []
    for label, name in enumerate(classes):
        files = _class_files(root / name)
        if not files:
            empty.append(name)
        samples.extend((p, label) for p in files)
    if empty:
        raise FileNotFoundError(
            f"{root}: class folder(s) without .npz files: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; "
            "remove them or finish the export (class indices must match across splits)"
        )
    return classes, samples


class NpzEventDataset(Dataset):
    """A split folder ``<root>/<class>/<name>.npz`` of dense or sparse I2E event files.

    Items are ``(frames bool tensor [T, 2, H, W], label int)``. ``timesteps`` keeps the first T frames
    (the first T groups of the conversion order, as the live conversion would produce); ``size`` (an
    int or (H, W)) is only needed for sparse files that carry no shape.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        timesteps: int | None = None,
        size: int | Sequence[int] | None = None,
    ):
        self.root = Path(root)
        self.classes, self.samples = _scan(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]
        first = self.samples[0][0]
        info = read_npz_info(first)
        self.format = info.format
        if size is not None:
            hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
            if len(hw) != 2 or min(hw) < 1:
                raise ValueError(f"size must be an int or (H, W), got {size!r}")
        else:
            hw = None
        if timesteps is not None and (isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1):
            raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
        # Where the frame shape comes from, most to least authoritative: the file itself (dense shape,
        # or the 'shape' array the exporter stores), the split's i2e_meta.json, the caller, a guess.
        stored = info.frame_shape
        if stored is None:
            meta = read_meta(self.root)
            if meta is not None and {"timesteps", "height", "width"} <= meta.keys():
                stored = _frame_shape([meta["timesteps"], meta["height"], meta["width"]], self.root / META_NAME,
                                      "timesteps/height/width")
        if stored is None:
            stored = (timesteps, *hw) if timesteps is not None and hw is not None else self._infer_sparse_shape(timesteps, hw)
        if hw is not None and hw != tuple(stored[1:]):
            raise ValueError(f"{first}: frames are {stored[1]}x{stored[2]} but size={hw[0]}x{hw[1]} was requested")
        if timesteps is not None and timesteps > stored[0]:
            raise ValueError(
                f"{self.root}: files hold T={stored[0]} timesteps but timesteps={timesteps} was requested; "
                f"use --timesteps {stored[0]} or less"
            )
        self.stored_shape = tuple(int(v) for v in stored)  # (T, H, W) as in the files
        self.timesteps = timesteps or self.stored_shape[0]  # first T frames are served
        self.frame_shape = (self.timesteps, self.stored_shape[1], self.stored_shape[2])

    def _infer_sparse_shape(self, timesteps, hw) -> tuple[int, int, int]:
        # The authors' sparse files hold only the matrix: look at a spread of files for the largest
        # t, x and y, and assume the standard sizes they could have come from.
        step = max(1, len(self.samples) // _INFER_FILES)
        tmax = xmax = ymax = 0
        for path, _ in self.samples[::step][:_INFER_FILES]:
            rows = read_npz_arrays(path, ("arr_0",))["arr_0"]
            if rows.ndim != 2 or rows.shape[1] != 4 or not np.issubdtype(rows.dtype, np.integer):
                raise NpzFormatError(f"{path}: arr_0 is {rows.dtype} {list(rows.shape)}, not sparse [N, 4] integer "
                                     "(t, p, x, y) events like the split's first file")
            if rows.size:
                tmax = max(tmax, int(rows[:, 0].max()))
                xmax = max(xmax, int(rows[:, 2].max()))
                ymax = max(ymax, int(rows[:, 3].max()))
        t = timesteps or (8 if tmax < 8 else tmax + 1)
        if hw is None:
            side = max(xmax, ymax) + 1
            guess = next((s for s in _KNOWN_SIZES if side <= s), side)
            hw = (guess, guess)
        warnings.warn(
            f"{self.root}: sparse files carry no frame shape; assuming T={t}, H x W = {hw[0]} x {hw[1]} "
            f"(largest t, x, y seen: {tmax}, {xmax}, {ymax}). Pass --timesteps and --size to be explicit.",
            stacklevel=3,
        )
        return (t, *hw)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        events = load_events(path, self.stored_shape if self.format == "sparse" else None)
        if events.shape != (self.stored_shape[0], 2, *self.stored_shape[1:]):
            raise NpzFormatError(
                f"{path}: events have shape {list(events.shape)} but this split's frames are "
                f"[T={self.stored_shape[0]}, 2, {self.stored_shape[1]}, {self.stored_shape[2]}]; all files of a split must match"
            )
        return torch.from_numpy(events[: self.timesteps]), label


def _split_folder(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(
        f"{root} has no {' or '.join(repr(n + '/') for n in names)} folder; an exported I2E dataset has "
        f"{root}/train/<class>/*.npz and {root}/val/<class>/*.npz"
    )


def open_npz_splits(root, *, timesteps: int | None = None, size: int | None = None):
    """(train_set, val_set) NpzEventDatasets over ``root``/train and ``root``/val (or test/), checked to
    share their class folders and frame shape. ``size``: the frame size of sparse files without a stored
    shape."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} does not exist")
    train_set = NpzEventDataset(_split_folder(root, ("train",)), timesteps=timesteps, size=size)
    val_set = NpzEventDataset(_split_folder(root, ("val", "test")), timesteps=timesteps, size=size)
    if train_set.classes != val_set.classes:
        only_train = sorted(set(train_set.classes) - set(val_set.classes))
        only_val = sorted(set(val_set.classes) - set(train_set.classes))
        raise NpzFormatError(
            f"{root}: train/ and val/ have different class folders (only in train: {only_train[:5]}, only in "
            f"val: {only_val[:5]}); class indices would not match"
        )
    if train_set.frame_shape != val_set.frame_shape:
        raise NpzFormatError(f"{root}: train frames {train_set.frame_shape} differ from val frames {val_set.frame_shape}")
    return train_set, val_set
