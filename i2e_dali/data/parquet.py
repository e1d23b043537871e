"""The authors' Parquet I2E data sets (Hugging Face hub, ``UESTC-BICS/I2E``): row format, shards, reading.

Row format (checked against the hub's own data viewer of I2E-CIFAR10, whose ``data`` cells start with
``\\x93NUMPY`` and declare ``{'descr': '|u1', 'fortran_order': False, 'shape': (32776,)}``):

- ``data``  binary: the bytes of a complete ``.npy`` file (format 1.0) holding a 1-D ``uint8`` array. The
  array's first 8 bytes are 4 little-endian ``uint16`` ``(T, C, H, W)`` (C = 2: ON, OFF); the rest is
  ``np.packbits`` (numpy's default big bit order) of the flattened bool ``[T, C, H, W]``, the last byte
  zero-padded. 32776 = 8 + 8*2*128*128/8 for I2E-CIFAR10.
- ``label`` int: the class index (a ``ClassLabel`` in the hub's ``huggingface`` schema metadata, which
  also carries the class names).
- ``file_path`` string (optional): ``"<label>/<stem>.npy"``, as the hub's rows have it.

The reader also accepts ``data`` without the ``.npy`` wrapper (the 8-byte header straight away).

Layout on disk: a config folder (``I2E-CIFAR10/``) with ``train-00000-of-00004.parquet`` ... and
``validation-...`` shards (the hub's naming; also under ``data/``), or ``train/`` and ``validation/``
(or ``val/``, ``test/``) sub-folders of ``.parquet`` files. ``ParquetEventDataset`` takes any list or
folder of shards of one split.

Reading design: ``ParquetEventDataset`` is a map-style dataset for ``FrameLoader`` (one loader contract,
one implementation of shuffling, sharding, exact resume and ``len()``). Opening it reads only the
shards' footers and their small ``label`` column; ``data`` is read one row group at a time and kept in a
small per-process cache, so memory stays at a few row groups whatever the shard size. A uniformly random
order would read a whole row group per sample, so for training the dataset hands FrameLoader its own
sampler, ``RowGroupShuffleSampler``: every epoch it permutes the row groups, shuffles the rows inside
windows of a few consecutive row groups (the cache holds one window), and gives each rank one contiguous
part, so each rank reads each of its row groups about once per epoch per worker. The bits are unpacked
with one vectorised ``np.unpackbits`` per row in the DataLoader workers; FrameLoader pins the collated
batch when the device is a GPU and copies it with ``non_blocking``.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import MissingDataError, ParquetFormatError
from ..placement import DEFAULT_SEED

__all__ = [
    "ParquetFormatError", "ParquetEventDataset", "RowGroupShuffleSampler", "encode_events", "encode_batch",
    "decode_data", "find_parquet_splits", "open_parquet_splits", "hf_schema_metadata", "SPLIT_NAMES",
]

HEADER_BYTES = 8  # 4 x uint16 (T, C, H, W), little-endian
_MAX_CLASSES = 1 << 20  # a label beyond this is damage, not a class (and would make a huge class list)
_NPY_MAGIC = b"\x93NUMPY"
# our split name -> the hub's file/folder names for it, in order of preference
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "test")}
_SHARD_RE = re.compile(r"^(train|validation|valid|val|test)(?:[-_.].*)?\.parquet$")


# --------------------------------------------------------------------------------------------------
# one row's bytes
# --------------------------------------------------------------------------------------------------
def _npy_header(nbytes: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (nbytes,)})
    return buf.getvalue()


def encode_batch(events: np.ndarray) -> list[bytes]:
    """Rows' ``data`` for bool events ``[B, T, 2, H, W]``: one vectorised packbits for the batch."""
    events = np.asarray(events)
    if events.ndim != 5 or events.shape[2] != 2:
        raise ValueError(f"events must be [B, T, 2, H, W], got {list(events.shape)}")
    b, t, c, h, w = events.shape
    if max(t, c, h, w) > 0xFFFF:
        raise ValueError(f"(T, C, H, W) = {(t, c, h, w)} do not fit the uint16 header")
    packed = np.packbits(events.reshape(b, -1) != 0, axis=1)  # [B, ceil(T*C*H*W / 8)]
    head = np.array([t, c, h, w], dtype="<u2").tobytes()
    npy = _npy_header(HEADER_BYTES + packed.shape[1])
    return [npy + head + row.tobytes() for row in packed]


def encode_events(events: np.ndarray) -> bytes:
    """One row's ``data`` for bool events ``[T, 2, H, W]``."""
    return encode_batch(np.asarray(events)[None])[0]


def _payload(data, where: str) -> memoryview:
    """The uint8 array's bytes: inside the .npy wrapper, or ``data`` itself when it has none."""
    view = memoryview(data)
    if bytes(view[:6]) != _NPY_MAGIC:
        return view
    f = io.BytesIO(view)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError,
        # tokenize.TokenError, ... on damaged bytes (found by the fuzz test)
        raise ParquetFormatError(f"{where}: 'data' has a broken .npy header ({type(exc).__name__}: {exc})") from None
    if np.dtype(dtype) != np.uint8 or len(shape) != 1:
        raise ParquetFormatError(f"{where}: 'data' holds a {dtype} array of shape {shape}; expected 1-D uint8")
    body = view[f.tell():]
    if len(body) != shape[0]:
        raise ParquetFormatError(
            f"{where}: 'data' declares {shape[0]} bytes but holds {len(body)} (truncated or damaged row)")
    return body


def decode_data(data, where: str = "row") -> np.ndarray:
    """Bool events ``[T, 2, H, W]`` from one row's ``data`` (the authors' format); ``where`` names the row
    in errors (shard file and row)."""
    if data is None:
        raise ParquetFormatError(f"{where}: 'data' is null")
    body = _payload(data, where)
    if len(body) < HEADER_BYTES:
        raise ParquetFormatError(f"{where}: 'data' has {len(body)} bytes, fewer than its 8-byte (T, C, H, W) header")
    t, c, h, w = (int(v) for v in np.frombuffer(body[:HEADER_BYTES], dtype="<u2"))
    if c != 2 or not (1 <= t <= 64) or h < 1 or w < 1:
        raise ParquetFormatError(
            f"{where}: header says (T, C, H, W) = {(t, c, h, w)}; I2E events have C = 2 and 1 <= T, H, W")
    cells = t * c * h * w
    need = (cells + 7) // 8
    if len(body) - HEADER_BYTES != need:
        raise ParquetFormatError(
            f"{where}: header says (T, C, H, W) = {(t, c, h, w)}, i.e. {need} bytes of packed bits, but the "
            f"row holds {len(body) - HEADER_BYTES}; the row is damaged")
    bits = np.unpackbits(np.frombuffer(body[HEADER_BYTES:], dtype=np.uint8), count=cells)
    return bits.view(np.bool_).reshape(t, c, h, w)


def hf_schema_metadata(classes: Sequence[str]) -> dict[bytes, bytes]:
    """The ``huggingface`` schema metadata the hub writes (so ``datasets`` sees a ClassLabel with names)."""
    features = {
        "file_path": {"dtype": "string", "_type": "Value"},
        "label": {"names": list(classes), "_type": "ClassLabel"},
        "data": {"dtype": "binary", "_type": "Value"},
    }
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


# --------------------------------------------------------------------------------------------------
# finding shards
# --------------------------------------------------------------------------------------------------
def _parquet_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".") and p.is_file())


def find_parquet_splits(root: str | os.PathLike) -> dict[str, list[Path]]:
    """``{"train": [...], "val": [...]}`` shards under a config folder (either split may be missing).

    Looks for the hub's ``train-*.parquet`` / ``validation-*.parquet`` in ``root`` and ``root/data``, then
    for ``root/train/`` and ``root/validation/`` (or ``val/``, ``test/``) folders of ``.parquet`` files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(f"Parquet data folder {root} does not exist")
    found: dict[str, list[Path]] = {}
    for folder in (root, root / "data"):
        if not folder.is_dir():
            continue
        by_name: dict[str, list[Path]] = {}
        for p in _parquet_files(folder):
            m = _SHARD_RE.match(p.name)
            if m:
                by_name.setdefault(m.group(1), []).append(p)
        for split, names in SPLIT_NAMES.items():
            for name in names:
                if split not in found and by_name.get(name):
                    found[split] = by_name[name]
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if split not in found and (root / name).is_dir() and _parquet_files(root / name):
                found[split] = _parquet_files(root / name)
    if not found:
        configs = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("**/*.parquet")))
        hint = (f" It holds the config folders {', '.join(configs[:8])}: pass one of them, e.g. --data {root / configs[0]}."
                if configs else " Download a config folder of the hub's UESTC-BICS/I2E (see the README).")
        raise MissingDataError(
            f"{root} has no Parquet shards named train-*.parquet / validation-*.parquet (nor train/ and "
            f"validation/ folders of .parquet files).{hint}")
    return found


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def _open(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise MissingDataError(f"Parquet shard {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/... for a damaged file
        raise ParquetFormatError(
            f"{path}: not a readable Parquet shard ({type(exc).__name__}: {exc}); it is corrupt or truncated - "
            "download or export it again") from None


def _classes_from_metadata(pf) -> list[str] | None:
    meta = pf.schema_arrow.metadata or {}
    try:
        info = json.loads(meta[b"huggingface"])["info"]["features"]["label"]
        names = info.get("names")
        return [str(n) for n in names] if names else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class ParquetEventDataset(Dataset):
    """Rows of Parquet shards in the authors' format as ``(frames bool tensor [T, 2, H, W], label)``.

    Args:
        files: a folder of ``.parquet`` shards of one split, one shard, or a list of shards (read in order).
        timesteps: serve the first T frames (default: all stored).
        classes: class names (default: the hub's metadata, else "0".."max label").
        cache_groups: row groups of ``data`` kept per process (the training sampler's window).
    """

    def __init__(self, files, *, timesteps: int | None = None, classes: Sequence[str] | None = None,
                 cache_groups: int = 4):
        if isinstance(files, (str, os.PathLike)):
            p = Path(files).expanduser()
            files = _parquet_files(p) if p.is_dir() else [p]
            if not files:
                raise MissingDataError(f"{p} holds no .parquet files")
        self.files = [Path(f) for f in files]
        if not self.files:
            raise MissingDataError("no Parquet shards given")
        self.cache_groups = max(1, int(cache_groups))
        labels, group_rows, group_file, meta_classes = [], [], [], None
        for fi, path in enumerate(self.files):
            pf = _open(path)
            names = pf.schema_arrow.names
            missing = [c for c in ("data", "label") if c not in names]
            if missing:
                raise ParquetFormatError(
                    f"{path}: no {' and no '.join(repr(c) for c in missing)} column (columns: {names}); an I2E "
                    "shard has 'data' (packed events) and 'label'")
            meta_classes = meta_classes or _classes_from_metadata(pf)
            try:
                lab = pf.read(columns=["label"]).column("label")
                arr = lab.to_numpy()
            except Exception as exc:  # noqa: BLE001
                raise ParquetFormatError(f"{path}: the 'label' column cannot be read ({type(exc).__name__}: {exc})") from None
            if lab.null_count or not np.issubdtype(arr.dtype, np.integer):
                bad = int(np.flatnonzero(np.isnan(arr))[0]) if lab.null_count and arr.dtype.kind == "f" else None
                raise ParquetFormatError(
                    f"{path}: 'label' must be integer class indices without nulls (got {lab.type}"
                    + (f", null at row {bad}" if bad is not None else "") + ")")
            if arr.size and arr.min() < 0:
                raise ParquetFormatError(f"{path}: row {int(np.argmin(arr))} has the negative label {int(arr.min())}")
            if arr.size and arr.max() >= _MAX_CLASSES:
                raise ParquetFormatError(
                    f"{path}: row {int(np.argmax(arr))} has the label {int(arr.max())}, beyond any class count; the "
                    "shard is damaged")
            rows = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            if sum(rows) != len(arr):
                raise ParquetFormatError(f"{path}: row groups hold {sum(rows)} rows but 'label' has {len(arr)}")
            labels.append(arr.astype(np.int64))
            group_rows += rows
            group_file += [fi] * len(rows)
        self.targets_array = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.targets = self.targets_array.tolist()
        if len(self.targets_array) == 0:
            raise ParquetFormatError(f"{self.files[0].parent}: the shards hold no rows")
        keep = [i for i, n in enumerate(group_rows) if n > 0]
        self._group_file = np.asarray([group_file[i] for i in keep], dtype=np.int64)
        self._group_index = np.asarray(
            [i - group_file.index(group_file[i]) for i in keep], dtype=np.int64)  # index within its file
        counts = np.asarray([group_rows[i] for i in keep], dtype=np.int64)
        self._group_start = np.concatenate([[0], np.cumsum(counts)])
        n_cls = int(self.targets_array.max()) + 1
        if classes is None:
            classes = meta_classes if meta_classes and len(meta_classes) >= n_cls else [str(i) for i in range(n_cls)]
        if len(classes) < n_cls:
            raise ParquetFormatError(f"{self.files[0]}: labels go up to {n_cls - 1} but only {len(classes)} classes are named")
        self.classes = list(classes)
        self._handles: dict[int, object] = {}
        self._cache: OrderedDict = OrderedDict()
        first = self._row(0)
        self.stored_shape = (first.shape[0], first.shape[2], first.shape[3])
        if timesteps is not None and not (isinstance(timesteps, int) and 1 <= timesteps <= self.stored_shape[0]):
            raise ValueError(f"{self.files[0].parent}: the rows hold T={self.stored_shape[0]} timesteps but "
                             f"timesteps={timesteps!r} was asked for; use -T {self.stored_shape[0]} or less")
        self.timesteps = timesteps or self.stored_shape[0]
        self.frame_shape = (self.timesteps, *self.stored_shape[1:])

    # ---------------------------------------------------------------------------------------------
    @property
    def row_groups(self) -> list[tuple[int, int]]:
        """``[start, stop)`` dataset indices of every row group, in file order."""
        s = self._group_start
        return [(int(s[i]), int(s[i + 1])) for i in range(len(s) - 1)]

    def __len__(self) -> int:
        return len(self.targets_array)

    def __getstate__(self):  # worker processes open their own file handles
        state = dict(self.__dict__)
        state["_handles"], state["_cache"] = {}, OrderedDict()
        return state

    def _group_data(self, g: int):
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        fi = int(self._group_file[g])
        path = self.files[fi]
        if fi not in self._handles:
            self._handles[fi] = _open(path)
        try:
            col = self._handles[fi].read_row_group(int(self._group_index[g]), columns=["data"]).column("data")
            col = col.combine_chunks()
        except Exception as exc:  # noqa: BLE001 - damaged pages, bad compression, ...
            raise ParquetFormatError(
                f"{path}: row group {int(self._group_index[g])} (rows from {self._row_in_file(int(self._group_start[g]))}) "
                f"cannot be read ({type(exc).__name__}: {exc}); the shard is damaged - download or export it again"
            ) from None
        expected = int(self._group_start[g + 1] - self._group_start[g])
        if len(col) != expected:
            raise ParquetFormatError(
                f"{path}: row group {int(self._group_index[g])} holds {len(col)} 'data' values but its metadata says "
                f"{expected} rows; the shard is damaged - download or export it again")
        self._cache[g] = col
        while len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return col

    def _row_in_file(self, index: int) -> int:
        fi = int(self._group_file[np.searchsorted(self._group_start, index, side="right") - 1])
        first_group = int(np.argmax(self._group_file == fi))
        return index - int(self._group_start[first_group])

    def _row(self, index: int) -> np.ndarray:
        g = int(np.searchsorted(self._group_start, index, side="right") - 1)
        col = self._group_data(g)
        where = f"{self.files[int(self._group_file[g])]}: row {self._row_in_file(index)}"
        try:
            value = col[index - int(self._group_start[g])]
            data = value.as_buffer() if value.is_valid else None
        except Exception as exc:  # noqa: BLE001 - damaged offsets in the binary column
            raise ParquetFormatError(f"{where}: 'data' cannot be read ({type(exc).__name__}: {exc})") from None
        return decode_data(data, where)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        events = self._row(index)
        if events.shape[0] != self.stored_shape[0] or events.shape[2:] != self.stored_shape[1:]:
            raise ParquetFormatError(
                f"{self.files[0].parent}: row {index} holds [T, 2, H, W] = {list(events.shape)} but the set's rows "
                f"are [{self.stored_shape[0]}, 2, {self.stored_shape[1]}, {self.stored_shape[2]}]")
        return torch.from_numpy(events[: self.timesteps]), int(self.targets_array[index])

    def train_sampler(self, *, num_replicas: int, rank: int, seed: int = DEFAULT_SEED, batch_size: int = 1,
                      num_workers: int = 0) -> "RowGroupShuffleSampler":
        """FrameLoader's training order for this dataset (see the module doc)."""
        return RowGroupShuffleSampler(self.row_groups, num_replicas=num_replicas, rank=rank, seed=seed,
                                      window=self.cache_groups, batch_size=batch_size, streams=num_workers)


class RowGroupShuffleSampler(Sampler[int]):
    """Per-epoch order that reads row groups, not rows, at random: permute the groups (seed, epoch), shuffle
    rows within windows of ``window`` consecutive groups, trim to a multiple of ``num_replicas`` and give
    rank r the r-th contiguous part (all ranks the same length, like DistributedSampler with drop_last).

    With ``streams`` = the DataLoader's worker count (> 1), the rank's part is cut into that many contiguous
    runs of whole batches and the batches are interleaved run by run. DataLoader hands batch j to worker
    j % workers, so each worker reads (and caches) only its own run's row groups, instead of every worker
    reading every row group once."""

    def __init__(self, groups: Sequence[tuple[int, int]], *, num_replicas: int, rank: int,
                 seed: int = DEFAULT_SEED, window: int = 4, batch_size: int = 1, streams: int = 0):
        self.groups = [(int(a), int(b)) for a, b in groups]
        self.n = sum(b - a for a, b in self.groups)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.seed, self.window = int(seed), max(1, int(window))
        self.batch_size, self.streams = max(1, int(batch_size)), max(1, int(streams))
        self.epoch = 0
        self.per_rank = self.n // self.num_replicas

    @property
    def fingerprint(self) -> str:
        """What the order depends on besides seed, shards and batch size (FrameLoader's resume check)."""
        return f"row-groups/window{self.window}/streams{self.streams}"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        perm = rng.permutation(len(self.groups))
        for w in range(0, len(perm), self.window):
            idx = np.concatenate([np.arange(*self.groups[g]) for g in perm[w:w + self.window]])
            parts.append(idx[rng.permutation(len(idx))])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _interleave(self, mine: np.ndarray) -> np.ndarray:
        b, nb = self.batch_size, len(mine) // self.batch_size
        if self.streams < 2 or nb < 2:
            return mine
        bounds = [s * nb // self.streams for s in range(self.streams + 1)]
        runs = [list(range(bounds[s], bounds[s + 1])) for s in range(self.streams)]
        batches = [runs[s][k] for k in range(max(map(len, runs))) for s in range(self.streams) if k < len(runs[s])]
        head = np.concatenate([mine[j * b:(j + 1) * b] for j in batches])
        return np.concatenate([head, mine[nb * b:]])

    def __iter__(self) -> Iterator[int]:
        start = self.rank * self.per_rank
        return iter(self._interleave(self.order(self.epoch)[start:start + self.per_rank]).tolist())

    def __len__(self) -> int:
        return self.per_rank


def open_parquet_splits(root, *, timesteps: int | None = None, cache_groups: int = 4):
    """(train_set, val_set) ``ParquetEventDataset`` of a config folder, sharing class names and frame shape."""
    found = find_parquet_splits(root)
    for split in ("train", "val"):
        if split not in found:
            names = " or ".join(f"{n}-*.parquet" for n in SPLIT_NAMES[split])
            raise MissingDataError(f"{root}: no {split} shards ({names}); found only {sorted(found)}")
    train = ParquetEventDataset(found["train"], timesteps=timesteps, cache_groups=cache_groups)
    val = ParquetEventDataset(found["val"], timesteps=timesteps, cache_groups=cache_groups)
    n = max(len(train.classes), len(val.classes))
    named = train.classes if len(train.classes) == n else val.classes
    train.classes = val.classes = list(named)
    if train.frame_shape != val.frame_shape:
        raise ParquetFormatError(f"{root}: train rows {train.frame_shape} differ from validation rows {val.frame_shape}")
    return train, val


def packed_row_bytes(timesteps: int, height: int, width: int) -> int:
    """Bytes of one row's array (header + packed bits), without the .npy wrapper."""
    return HEADER_BYTES + math.ceil(timesteps * 2 * height * width / 8)
