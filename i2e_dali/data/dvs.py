"""CIFAR10-DVS as distributed: jAER AEDAT 2.0 recordings from a DVS128 -> cached [T, 2, 128, 128] frames.

The release (figshare, Li et al. 2017) is one folder per class (``airplane`` ... ``truck``) of ``.aedat``
files. Each file is ``#`` header lines (CRLF), then big-endian 8-byte records: a 32-bit address and a
32-bit timestamp in microseconds. DVS128 address bits: ``p = a & 1``, ``x = (a & 0xFE) >> 1``,
``y = (a & 0x7F00) >> 8``; bit 15 marks jAER's external sync events and bit 31 its special events.

Orientation and polarity follow the common readers (spikingjelly's ``CIFAR10DVS``, tonic): the frame
column is ``127 - y``, the row is ``127 - x`` and the polarity is ``p' = 1 - p``. jAER's own DVS128
extractor defines raw polarity 0 as ON and flips it the same way, so ``p' = 1`` is an ON event
(brightness rose) and ``p' = 0`` an OFF event.

Channels: this project puts ON in channel 0 and OFF in channel 1, as the I2E conversion does
(docs/concepts/i2e.md), so a model pre-trained on I2E events sees the same polarity in the same channel:
channel = 1 - p'. spikingjelly, and with it the authors' CIFAR10-DVS script, index the channel by p'
(channel 0 = OFF); ``polarity="spikingjelly"`` gives that order, e.g. to evaluate the authors'
fine-tuned checkpoints.

Frames: the events of a recording are split by count into T frames (``N // T`` events each, the last
frame takes the remainder; spikingjelly's ``split_by="number"``) and summed per pixel and polarity.
The SNN is fed these COUNTS as float32, as the authors' fine-tuning did (spikingjelly frames, no
clamping) and as the common CIFAR10-DVS SNN recipes do; ``binarize=True`` clamps them to {0, 1} to
look like I2E's binary events instead. The 128x128 sensor matches CIFAR images resized to 128 by the
I2E pipeline, which is what makes the I2E-CIFAR10 pre-training transferable.

Why not spikingjelly's reader: ``import spikingjelly.datasets`` pulls in torchvision (which breaks next
to a CPU-only torch build), its parse error does not name the file, it keeps jAER's special events as
pixel events and it does not check that a file is AEDAT at all. The format is simple enough that one
vectorised numpy pass (``np.frombuffer(..., ">u4")``) is both the fastest and the clearest reader; the
tests check it against spikingjelly's reader and against a plain ``struct`` loop.

Frames are cached as one compressed ``.npz`` per recording (written atomically), keyed by T and the
recording's size and mtime, so a replaced recording is re-parsed and later epochs never parse.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..fsio import atomic_write
from ..placement import DEFAULT_SEED, usable_cores
from ..errors import DVSFormatError, DVSCacheError, NpzFormatError

__all__ = [
    "CIFAR10DVS_CLASSES",
    "SENSOR_SIZE",
    "DVSFormatError",
    "DVSCacheError",
    "DVSEvents",
    "read_aedat",
    "events_to_frames",
    "find_recordings",
    "split_recordings",
    "FrameCache",
    "CIFAR10DVS",
    "open_dvs_splits",
]

log = logging.getLogger(__name__)

# Alphabetical, which is also CIFAR-10's label order: a head trained on I2E-CIFAR10 keeps its meaning.
CIFAR10DVS_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SENSOR_SIZE = (128, 128)  # DVS128: (H, W)
AEDAT_SUFFIX = ".aedat"
CACHE_VERSION = 1  # bump when the cached content changes meaning

_RECORD = 8  # bytes per event: >u4 address, >u4 timestamp
_SPECIAL_BITS = 0x8000_8000  # bit 31: jAER special event; bit 15: DVS128 external sync event
_DVS128_BITS = 0x0000_7FFF  # polarity (bit 0), x (bits 1-7), y (bits 8-14)
_POLARITIES = ("on-off", "spikingjelly")
_SPLITS = ("seeded", "authors")


@dataclass(frozen=True)
class DVSEvents:
    """Events of one recording in file order, after the readers' flips.

    x: column 0..127, y: row 0..127, p: 1 = ON, 0 = OFF (jAER's extracted polarity), t: microseconds.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray

    def __len__(self) -> int:
        return int(self.t.size)


# -------------------------------------------------------------------------------------------------
# Parsing and framing
# -------------------------------------------------------------------------------------------------
def _header_end(data: bytes, path: Path) -> int:
    """Byte offset of the first event record; validates the '#' header."""
    if not data:
        raise DVSFormatError(f"{path}: the file is empty (0 bytes); re-extract this recording")
    if data[:1] != b"#":
        raise DVSFormatError(
            f"{path}: not a jAER AEDAT file: it does not start with a '#' header line "
            "(expected '#!AER-DAT2.0'); is this really a CIFAR10-DVS recording?"
        )
    first = data[: data.find(b"\n")] if b"\n" in data[:4096] else data[:4096]
    if first.startswith(b"#!AER-DAT"):
        version = first[len(b"#!AER-DAT"):].strip().decode("ascii", "replace")
        if not version.startswith("2"):
            raise DVSFormatError(
                f"{path}: AEDAT version {version!r}; only jAER AEDAT 2.0 (32-bit address + 32-bit timestamp, "
                "as in the CIFAR10-DVS release) is supported"
            )
    pos = 0
    # Header lines start with '#'. A DVS128 record starts with byte 0x00 (or 0x80 for a special event),
    # never '#', so the first line that does not start with '#' is the first record.
    while data[pos:pos + 1] == b"#":
        newline = data.find(b"\n", pos)
        if newline < 0:
            return len(data)
        pos = newline + 1
    return pos


def read_aedat(path: str | os.PathLike) -> DVSEvents:
    """Parse one jAER AEDAT 2.0 DVS128 recording; raise DVSFormatError (naming the file) if it is bad.

    jAER's special and external-sync events (address bit 31 or 15) carry no pixel and are dropped, as
    jAER's own DVS128 extractor does.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: recording not found") from None
    except OSError as exc:
        raise DVSFormatError(f"{path}: cannot read the recording: {exc}") from exc
    start = _header_end(data, path)
    body = len(data) - start
    if body == 0:
        raise DVSFormatError(f"{path}: the file has a header but no event records; re-extract this recording")
    if body % _RECORD:
        raise DVSFormatError(
            f"{path}: truncated or corrupt: the event section is {body} bytes, not a multiple of 8 "
            f"(4-byte address + 4-byte timestamp); {body % _RECORD} stray bytes at the end. Re-extract it"
        )
    words = np.frombuffer(data, dtype=">u4", offset=start).reshape(-1, 2)
    addr = words[:, 0].astype(np.uint32)
    t = words[:, 1].astype(np.uint32)
    pixel = (addr & _SPECIAL_BITS) == 0
    if not pixel.all():
        addr, t = addr[pixel], t[pixel]
    bad = addr & ~np.uint32(_DVS128_BITS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DVSFormatError(
            f"{path}: event address 0x{int(addr[i]):08x} has bits outside the DVS128 layout "
            "(x: 7 bits, y: 7 bits, polarity: 1 bit): coordinates out of the 128x128 sensor's range. "
            "This is not a DVS128 recording (a DAVIS or AEDAT 3 file?) or it is corrupt"
        )
    if addr.size == 0:
        raise DVSFormatError(f"{path}: the recording holds no pixel events (only jAER special events)")
    x_raw = (addr & 0xFE) >> 1
    y_raw = (addr & 0x7F00) >> 8
    p_raw = addr & 1
    # The readers' orientation: transpose and mirror both axes; p' = 1 - p (raw 0 is ON in jAER).
    x = (127 - y_raw).astype(np.uint8)
    y = (127 - x_raw).astype(np.uint8)
    p = (1 - p_raw).astype(np.uint8)
    return DVSEvents(t=t, x=x, y=y, p=p)


def events_to_frames(
    events: DVSEvents,
    timesteps: int,
    *,
    polarity: str = "on-off",
    size: tuple[int, int] = SENSOR_SIZE,
) -> np.ndarray:
    """Per-pixel event counts ``[T, 2, H, W]`` (int64), the events split by number into T frames.

    Frame i holds events ``[i * (N // T), (i + 1) * (N // T))``, the last frame everything from
    ``(T - 1) * (N // T)`` on (spikingjelly's ``split_by="number"``; with N < T all events land in the
    last frame, as there). ``polarity="on-off"``: channel 0 = ON, 1 = OFF (this project's order);
    ``"spikingjelly"``: channel = p' (0 = OFF).
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
    if polarity not in _POLARITIES:
        raise ValueError(f"polarity must be one of {_POLARITIES}, got {polarity!r}")
    h, w = size
    n = len(events)
    per_frame = n // timesteps
    if per_frame == 0:
        frame = np.full(n, timesteps - 1, dtype=np.int64)
    else:
        frame = np.minimum(np.arange(n, dtype=np.int64) // per_frame, timesteps - 1)
    p = events.p.astype(np.int64)
    channel = 1 - p if polarity == "on-off" else p
    flat = ((frame * 2 + channel) * h + events.y.astype(np.int64)) * w + events.x.astype(np.int64)
    return np.bincount(flat, minlength=timesteps * 2 * h * w).reshape(timesteps, 2, h, w)


# -------------------------------------------------------------------------------------------------
# Discovery and split
# -------------------------------------------------------------------------------------------------
def find_recordings(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(recording path, label)]) for ``root/<class>/*.aedat``, both sorted by name.

    A spikingjelly download folder (recordings under ``root/extract/<class>/``) is accepted too.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR10-DVS folder {root} does not exist; point --data at the folder holding airplane/, "
            "automobile/, ... with the .aedat recordings (the figshare release, unzipped)"
        )

    def scan(base: Path) -> dict[str, list[Path]]:
        found = {}
        for sub in sorted(base.iterdir()):
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            files = sorted(
                (f for f in sub.iterdir() if f.suffix.lower() == AEDAT_SUFFIX and f.is_file()),
                key=lambda f: f.name,
            )
            if files:
                found[sub.name] = files
        return found

    found = scan(root)
    if not found and (root / "extract").is_dir():
        found = scan(root / "extract")
    if not found:
        raise FileNotFoundError(
            f"no recordings found: {root} has no class folders with {AEDAT_SUFFIX} files; expected "
            f"{root}/airplane/*.aedat, {root}/automobile/*.aedat, ... (unzip the figshare class archives there)"
        )
    classes = sorted(found)
    missing = sorted(set(CIFAR10DVS_CLASSES) - set(classes))
    if set(classes) & set(CIFAR10DVS_CLASSES) and missing:
        log.warning("CIFAR10-DVS at %s lacks the class folder(s) %s; labels follow the folders found", root, missing)
    samples = [(f, label) for label, name in enumerate(classes) for f in found[name]]
    return classes, samples


def split_recordings(
    samples: Sequence[tuple[Path, int]],
    *,
    val_fraction: float = 0.1,
    seed: int = DEFAULT_SEED,
    mode: str = "seeded",
) -> tuple[list[int], list[int]]:
    """(train indices, val indices) into ``samples``: per class, disjoint, together complete.

    ``"seeded"``: in every class of n recordings, ``max(1, round(n * val_fraction))`` go to validation
    (none when n == 1): those whose SHA-1 of ``"<seed>/<class folder>/<file name>"`` is smallest. The
    choice depends only on the seed and the names, not on the listing order, and adding a recording
    moves at most one other between the sides.
    ``"authors"``: spikingjelly's ``split_to_train_test_set(1 - val_fraction, ..., random_split=False)``
    as used by the I2E authors: per class, in file-name order, the first ``ceil(n * (1 - val_fraction))``
    train and the rest validate. Use it to evaluate the authors' fine-tuned checkpoints.
    """
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if mode not in _SPLITS:
        raise ValueError(f"split mode must be one of {_SPLITS}, got {mode!r}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: Path(samples[i][0]).name)
        n = len(idx)
        if mode == "authors":
            cut = math.ceil(n * (1 - val_fraction))
            train += idx[:cut]
            val += idx[cut:]
            continue
        n_val = 0 if n == 1 else min(n - 1, max(1, round(n * val_fraction)))

        def key(i: int) -> str:
            path = Path(samples[i][0])
            return hashlib.sha1(f"{seed}/{path.parent.name}/{path.name}".encode()).hexdigest()

        ranked = sorted(idx, key=key)
        chosen = set(ranked[:n_val])
        train += [i for i in idx if i not in chosen]
        val += [i for i in idx if i in chosen]
    return train, val


# -------------------------------------------------------------------------------------------------
# Frame cache
# -------------------------------------------------------------------------------------------------
class FrameCache:
    """One compressed ``.npz`` of frame counts per recording under ``cache_dir/cifar10dvs-v1-T<T>/<class>/``.

    The file name carries the recording's size and mtime (ns), so an edited or replaced recording misses
    the cache and is parsed again (its stale frames are deleted). Frames are stored in the project's
    channel order (0 = ON) in the smallest unsigned dtype that holds the counts.
    """

    def __init__(self, cache_dir: str | os.PathLike, timesteps: int):
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
        self.timesteps = timesteps
        self.dir = Path(cache_dir).expanduser() / f"cifar10dvs-v{CACHE_VERSION}-T{timesteps}"

    def path_for(self, recording: Path) -> Path:
        try:
            st = recording.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"{recording}: recording vanished while the dataset was being prepared") from None
        return self.dir / recording.parent.name / f"{recording.stem}-{st.st_size}-{st.st_mtime_ns}.npz"

    def build(self, recording: Path, target: Path) -> None:
        """Parse ``recording`` and write its frames to ``target`` atomically."""
        counts = events_to_frames(read_aedat(recording), self.timesteps)
        top = int(counts.max())
        dtype = np.uint8 if top <= 0xFF else np.uint16 if top <= 0xFFFF else np.uint32
        def write(f):
            # An .npz as np.savez_compressed writes it, but at zlib level 1: the mostly-zero counts compress
            # about as well, ten times faster (level 6 took 80 % of the first pass).
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                with zf.open("frames.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, counts.astype(dtype), allow_pickle=False)

        atomic_write(target, write)
        stale = re.compile(rf"^{re.escape(recording.stem)}-\d+-\d+\.npz$")
        for old in target.parent.iterdir():
            if old != target and stale.match(old.name):
                old.unlink(missing_ok=True)

    def ensure(self, recordings: Sequence[Path], *, workers: int | None = None, progress: bool = True) -> tuple[list[Path], int]:
        """Cache paths for ``recordings``, parsing those not cached yet; returns (paths, number parsed)."""
        paths = [self.path_for(r) for r in recordings]
        todo = [(r, p) for r, p in zip(recordings, paths) if not p.is_file()]
        if todo:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DVSCacheError(
                    f"cannot create the CIFAR10-DVS frame cache {self.dir}: {exc}; pass a writable --cache-dir"
                ) from exc
            workers = max(1, min(workers or usable_cores(), len(todo)))
            desc = f"CIFAR10-DVS -> T={self.timesteps} frames"
            # Threads suffice: reading, numpy's bit operations and zlib release the GIL, and a thread pool
            # keeps CUDA/DALI state of the parent process out of the picture (no fork).
            failures: list[DVSFormatError] = []
            with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
                total=len(todo), desc=desc, unit="rec", disable=not progress
            ) as bar:
                for future in [pool.submit(self.build, *job) for job in todo]:
                    try:
                        future.result()
                    except DVSFormatError as exc:  # collect them all: one pass finds every bad file
                        failures.append(exc)
                    bar.update()
            if len(failures) == 1:
                raise failures[0]
            if failures:
                shown = "\n  ".join(str(e) for e in failures[:20])
                more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
                raise DVSFormatError(f"{len(failures)} unreadable CIFAR10-DVS recordings:\n  {shown}{more}")
        return paths, len(todo)

    def load(self, path: Path) -> np.ndarray:
        """The cached counts ``[T, 2, 128, 128]`` of one recording."""
        from .npz import read_npz_arrays  # the bounded npz reader: a damaged entry cannot claim gigabytes

        try:
            frames = read_npz_arrays(path, ("frames",), required="frames", what="a frame cache entry")["frames"]
        except NpzFormatError as exc:
            raise DVSFormatError(
                f"unreadable cached frames ({exc}); delete this file (or the cache folder) to rebuild it"
            ) from exc
        expected = (self.timesteps, 2, *SENSOR_SIZE)
        if not np.issubdtype(frames.dtype, np.integer):
            raise DVSFormatError(f"{path}: cached frames are {frames.dtype}, not event counts; delete this file "
                                 "(or the cache folder) to rebuild it")
        if frames.shape != expected:
            raise DVSFormatError(
                f"{path}: cached frames have shape {list(frames.shape)}, expected {list(expected)}; "
                "delete this file (or the cache folder) to rebuild it"
            )
        return frames


# -------------------------------------------------------------------------------------------------
# Dataset and loaders
# -------------------------------------------------------------------------------------------------
class CIFAR10DVS(Dataset):
    """Map-style CIFAR10-DVS: items ``(frames float32 [T, 2, 128, 128] event counts, label int)``.

    Args:
        root: folder with one sub-folder of ``.aedat`` recordings per class.
        train: the training (1 - val_fraction) or the validation (val_fraction) side of the split.
        timesteps: frames per recording (split by event count).
        cache_dir: where the frames are cached; default ``<root>/.i2e_cache``.
        val_fraction, seed, split: see :func:`split_recordings` (``split="seeded"`` or ``"authors"``).
        polarity: ``"on-off"`` (channel 0 = ON, the I2E order) or ``"spikingjelly"`` (channel 0 = OFF).
        binarize: clamp counts to {0, 1} (I2E-like binary events) instead of feeding counts.
        workers: threads that parse recordings not cached yet; progress: tqdm bar for that first pass.

    Every recording (both sides of the split) is parsed and cached on first use, so the second
    constructor (the other side) finds everything cached. ``parsed`` counts recordings parsed here.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool,
        timesteps: int = 8,
        cache_dir: str | os.PathLike | None = None,
        val_fraction: float = 0.1,
        seed: int = DEFAULT_SEED,
        *,
        split: str = "seeded",
        polarity: str = "on-off",
        binarize: bool = False,
        workers: int | None = None,
        progress: bool = True,
    ):
        if polarity not in _POLARITIES:
            raise ValueError(f"polarity must be one of {_POLARITIES}, got {polarity!r}")
        self.root = Path(root).expanduser()
        self.train = bool(train)
        self.timesteps = timesteps
        self.polarity = polarity
        self.binarize = bool(binarize)
        self.classes, recordings = find_recordings(self.root)
        train_idx, val_idx = split_recordings(recordings, val_fraction=val_fraction, seed=seed, mode=split)
        self.cache = FrameCache(self.root / ".i2e_cache" if cache_dir is None else cache_dir, timesteps)
        paths, self.parsed = self.cache.ensure([r for r, _ in recordings], workers=workers, progress=progress)
        chosen = train_idx if self.train else val_idx
        if not chosen:
            side = "training" if self.train else "validation"
            raise ValueError(
                f"CIFAR10-DVS at {self.root}: the {split!r} split with val_fraction={val_fraction} leaves no "
                f"{side} recordings ({len(recordings)} recordings in {len(self.classes)} classes); add recordings "
                "or change --val-fraction / --dvs-split"
            )
        self.recordings = [recordings[i][0] for i in chosen]
        self.targets = [recordings[i][1] for i in chosen]
        self._frames = [paths[i] for i in chosen]
        self.frame_shape = (timesteps, *SENSOR_SIZE)  # (T, H, W) for FrameLoader

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        counts = self.cache.load(self._frames[index])
        if self.polarity == "spikingjelly":
            counts = counts[:, ::-1]
        frames = (counts > 0) if self.binarize else counts
        return np.ascontiguousarray(frames, dtype=np.float32), self.targets[index]

    def __repr__(self) -> str:
        side = "train" if self.train else "val"
        return f"CIFAR10DVS({self.root}, {side}, n={len(self)}, T={self.timesteps}, polarity={self.polarity})"


def open_dvs_splits(root, *, timesteps: int = 8, cache_dir=None, val_fraction: float = 0.1,
                    seed: int = DEFAULT_SEED, split: str = "seeded", polarity: str = "on-off",
                    binarize: bool = False, workers: int | None = None, progress: bool = True):
    """(train_set, val_set) CIFAR10DVS data sets over the recordings in ``root``.

    Under DDP rank 0 parses and caches first while the others wait, so the work is not done world-size
    times over; rank 0 reaches the barrier even when it fails, and the others then fail the same way
    instead of hanging.
    """
    common = dict(timesteps=timesteps, cache_dir=cache_dir, val_fraction=val_fraction, seed=seed, split=split,
                  polarity=polarity, binarize=binarize, workers=workers)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    if distributed and rank != 0:
        torch.distributed.barrier()
    try:
        train_set = CIFAR10DVS(root, True, progress=progress and rank == 0, **common)
    finally:
        if distributed and rank == 0:
            torch.distributed.barrier()
    val_set = CIFAR10DVS(root, False, progress=False, **common)
    log.info("CIFAR10-DVS: %d train / %d val recordings, T=%d, cache %s", len(train_set), len(val_set),
             timesteps, train_set.cache.dir)
    return train_set, val_set
