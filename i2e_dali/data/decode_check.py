"""Decode checking: which files of a list DALI's CPU decoder cannot decode, and why.

- :func:`decode_check` decodes in isolated worker processes (decode_pool.py), so a file that crashes or
  hangs the decoder is named instead of killing the caller; it decodes the ways the loader's views do
  (whole image and the training view's random-crop ROI decode) and refuses declared sizes over a pixel
  limit (:func:`default_max_pixels`) before DALI sees them. Used by ``i2e-check`` (tools/check.py).
- :func:`find_culprits`: the EventLoader's answer to any DALI error that is not the machine's
  (:func:`is_infrastructure_error`): the file(s) to blame, from DALI's message when it names one, else by
  the isolated search over the loader's files (headers first, then the decode check).
- :func:`oversized_error`: the EventLoader's error when its own graph refused a declared size over the limit
  (pipelines/folder.py's guard: the same limit, checked before DALI decodes anything).
- :func:`find_bad_files` checks one class-folder split and caches the answer per folder, keyed by the
  file list, sizes and modification times (``--skip-bad``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

import re

from ..errors import ConfigError, UndecodableImageError
from ..fsio import atomic_write_text
from ..placement import usable_cores
from .dali_errors import PATH_PATTERNS, is_dali_data_error
from .decode_pool import DEFAULT_CROP, DEFAULT_MAX_PIXELS, DEFAULT_TIME_LIMIT, DecodePool, limit_reason, over_limit
from .exclude import normalize_path
from .sources import scan_image_folder

__all__ = ["decode_check", "find_bad_files", "skip_bad_check", "default_check_cache", "default_max_pixels", "find_culprits", "loader_error",
           "oversized_error", "is_infrastructure_error", "DEFAULT_TIME_LIMIT", "DEFAULT_MAX_PIXELS"]

_log = logging.getLogger("i2e_dali.data")
_CACHE_VERSION = 2  # 2: the random-crop decode and the pixel limit joined the check
_USE_DEFAULT = object()


def default_max_pixels() -> int | None:
    """The declared-size limit: ``$I2E_DALI_MAX_PIXELS`` (0 = no limit), else PIL's decompression-bomb
    threshold, :data:`DEFAULT_MAX_PIXELS` (89,478,485 pixels)."""
    raw = os.environ.get("I2E_DALI_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"I2E_DALI_MAX_PIXELS={raw!r}: expected a pixel count >= 0 (0 = no limit)")
    return value or None


def decode_check(files: list[str], *, num_threads: int | None = None, batch_size: int = 32,
                 progress: bool | None = None, time_limit: float = DEFAULT_TIME_LIMIT,
                 decode_fn=None, max_pixels=_USE_DEFAULT, crop=DEFAULT_CROP) -> list[tuple[str, str]]:
    """Decode every file with DALI's CPU decoder in isolated worker processes; return ``(path, reason)``
    for each file that cannot be read or decoded (whole, or through the training view's random-crop ROI
    decoder with the ``crop`` = (area, aspect ratio) ranges; None: whole only), declares more than
    ``max_pixels`` pixels (default :func:`default_max_pixels`; None or 0: no limit), crashes the decoder
    or hangs it past ``time_limit`` seconds. ``num_threads`` worker processes (default: every usable
    core), ``batch_size`` files per chunk; the order of the result follows ``files``."""
    workers = usable_cores() if num_threads is None else max(1, int(num_threads))
    limit = default_max_pixels() if max_pixels is _USE_DEFAULT else max_pixels
    pool = DecodePool(workers, batch_size=batch_size, time_limit=time_limit, decode_fn=decode_fn,
                      max_pixels=limit, crop=crop)
    return pool.run(list(files), progress=progress)


# ------------------------------------------------------------------------------------------------
# the loader's culprit search
# ------------------------------------------------------------------------------------------------
# CUDA / driver / memory failures: never a bad image, even when the decoder reports them.
_INFRA_PHRASES = ("cuda", "driver", "out of memory", "illegal memory", "illegal address", "launch failure",
                  "nvjpeg_status_execution_failed", "nvjpeg_status_internal_error",
                  "nvjpeg_status_allocator_failure", "nvjpeg_status_arch_mismatch", "ecc error",
                  "std::bad_alloc", "cannot allocate memory")


def is_infrastructure_error(message: str) -> bool:
    """True when a DALI error is the machine's (CUDA, driver, memory), not a file's: such errors pass
    through as themselves, a culprit search would only hide them. Read after DALI's "encountered:" with
    the sample paths removed, so an operator traceback or a folder named "cuda" cannot misclassify it."""
    low = str(message).lower()
    detail = low.split("encountered:", 1)[1] if "encountered:" in low else low
    for pat in PATH_PATTERNS:
        detail = pat.sub(" ", detail)
    detail = re.sub(r"\S*/\S*", " ", detail)  # any other path (a data folder called "cuda", DALI's sources)
    return any(k in detail for k in _INFRA_PHRASES)


def named_in_message(message: str) -> list[str]:
    """The file DALI's message names, if it names one."""
    for pat in PATH_PATTERNS:
        m = pat.search(str(message))
        if m:
            return [m.group(1).rstrip(".,;'\"")]
    return []


def find_culprits(files: list[str], message: str = "", *, num_threads: int | None = None,
                  max_pixels=_USE_DEFAULT, crop=DEFAULT_CROP) -> list[tuple[str, str]]:
    """``(path, reason)`` for the file(s) of ``files`` to blame for a DALI error with ``message``: the one
    DALI names, else what an isolated search finds, whatever the message says. The search reads every
    header first (declared sizes over ``max_pixels``: cheap, no decoding), and when no header is to blame
    runs :func:`decode_check` over ``files``: decoding happens in worker processes, never in the caller
    (which may be a training process whose DALI state an error has just spoiled). ``[]`` when nothing
    in ``files`` is at fault."""
    named = named_in_message(message)
    if named:
        # the loader's readers may take paths relative to a file_root: name the file as the user knows it
        full = [f for f in files if f == named[0] or f.endswith(os.sep + named[0].lstrip(os.sep))]
        return [(full[0] if len(full) == 1 else named[0], "named by DALI")]
    limit = default_max_pixels() if max_pixels is _USE_DEFAULT else max_pixels
    _log.warning("a DALI error named no file; searching %d file(s) for the culprit in isolated processes",
                 len(files))
    if limit:
        oversized = []
        for path in files:
            try:
                with open(path, "rb") as f:
                    head = f.read(1 << 20)  # a header fits (EXIF and ICC segments included, as a rule)
            except OSError:
                continue  # unreadable: the decode check below names it with its reason
            why = over_limit(head, limit)
            if why is not None:
                oversized.append((path, why))
        if oversized:
            return oversized
    workers = min(usable_cores(), 8) if num_threads is None else max(1, int(num_threads))
    return decode_check(files, num_threads=workers, progress=False, max_pixels=limit, crop=crop)


def loader_error(message: str, files: list[str] | None, *, root="", num_threads: int | None = None):
    """What the EventLoader raises for a DALI error with ``message``: an :class:`UndecodableImageError`
    naming the file(s) to blame, found by :func:`find_culprits` over ``files`` (the loader's share; None
    for sources without files, e.g. CIFAR arrays) whatever DALI's message says; ``None`` when the error
    must pass through as itself: a CUDA / driver / memory failure, or no file is to blame and the
    message is not about one either."""
    from .dali_errors import is_dali_data_error
    from .sources import dali_error_detail

    if is_infrastructure_error(message):
        return None
    culprits = []
    if files:
        try:
            culprits = find_culprits(files, message, num_threads=num_threads)
        except RuntimeError:  # the search itself could not run: keep the original error
            culprits = []
    detail = dali_error_detail(message)
    if culprits:
        paths = [p for p, _ in culprits]
        why = "; ".join(f"{p}: {w}" for p, w in culprits[:10] if w != "named by DALI")
        where = f"image file{'s' if len(paths) > 1 else ''} {', '.join(paths[:10])}"
        detail = f"{detail}{' (' + why + ')' if why else ''}"
    elif is_dali_data_error(message):
        where = f"an image in {root} (DALI did not name the file)"
    else:
        return None
    return UndecodableImageError(
        f"DALI could not read or decode {where}: {detail}\n"
        f"Run `i2e-check {root}` to list every file the pipeline cannot decode, then remove or "
        f"re-encode those files (e.g. re-save them as RGB JPEG), or train with --skip-bad."
    )


def oversized_error(items, max_pixels: int, *, root="", shards: bool = False) -> UndecodableImageError:
    """What the EventLoader raises when its pipeline's declared-size guard (pipelines/folder.py) met samples
    over ``max_pixels``: ``items`` are ``(name, height, width)``, the name a file path, or with ``shards`` a
    "tar shard S (member M)". The advice is :func:`loader_error`'s (shards: re-create them)."""
    items = list(items)
    names = [n for n, _, _ in items]
    reasons = [limit_reason(w, h, max_pixels) for _, h, w in items[:10]]
    why = reasons[0] if len(items) == 1 else "; ".join(f"{n}: {r}" for n, r in zip(names, reasons))
    where = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    if shards:
        advice = (f"Re-create the shards of {root} without these images (or re-encoded smaller), or raise the "
                  "limit (I2E_DALI_MAX_PIXELS=N, 0 = none) if the sizes are genuine.")
    else:
        where = f"image file{'s' if len(names) > 1 else ''} {where}"
        advice = (f"Run `i2e-check {root}` to list every file the pipeline cannot decode, then remove or "
                  "re-encode those files (e.g. re-save them as RGB JPEG), or train with --skip-bad.")
    return UndecodableImageError(f"refused {where} before decoding: {why}\n{advice}")


# ------------------------------------------------------------------------------------------------
# cached folder checks (--skip-bad)
# ------------------------------------------------------------------------------------------------
def default_check_cache() -> Path:
    """``$I2E_DALI_CACHE/checks``, else ``$XDG_CACHE_HOME/i2e-dali/checks`` or ``~/.cache/i2e-dali/checks``:
    outside the data set, which may be read-only shared storage."""
    if os.environ.get("I2E_DALI_CACHE"):
        return Path(os.environ["I2E_DALI_CACHE"]) / "checks"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "i2e-dali" / "checks"


def _fingerprint(paths: Iterable[str], max_pixels: int | None = None) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}\0{max_pixels}".encode())
    for p in sorted(paths):
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


class _FolderCheck:
    """One split's scan, its cache entry and key (the file list, sizes, mtimes and the pixel limit)."""

    def __init__(self, folder, cache_dir, limit, progress):
        self.folder = Path(folder).expanduser()
        self.limit = limit
        self.scan = scan_image_folder(self.folder, progress=progress)
        self.candidates = [p for p, _ in self.scan.samples]
        listed = sorted(self.candidates + [str(p) for p in self.scan.bad_files])
        self.key = _fingerprint(listed, limit)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_check_cache()
        self.entry = cache / (hashlib.sha256(normalize_path(self.folder).encode()).hexdigest()[:24] + ".json")

    def cached(self) -> list[tuple[str, str]] | None:
        try:
            cached = json.loads(self.entry.read_text())
            if cached.get("key") == self.key and cached.get("folder") == normalize_path(self.folder):
                return [(str(p), str(w)) for p, w in cached["bad"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cache yet, or an unreadable one: check again
        return None

    def listed_bad(self) -> list[tuple[str, str]]:
        """What the scan refuses without decoding."""
        bad = [(str(p), "not an image file (extension)") for p in self.scan.not_images]
        return bad + [(str(p), "empty (zero-byte) or unreadable file") for p in self.scan.empty_files]

    def store(self, bad, log) -> None:
        try:
            atomic_write_text(self.entry, json.dumps({"folder": normalize_path(self.folder), "key": self.key,
                                                      "bad": [list(b) for b in bad]}))
        except OSError as exc:  # a read-only home is no reason to stop: the check is just not reused
            if log is not None:
                log(f"could not cache the check in {self.entry} ({exc})")


def find_bad_files(folder: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                   num_workers: int | None = None, progress: bool | None = None,
                   log=None, max_pixels=_USE_DEFAULT, time_limit: float = DEFAULT_TIME_LIMIT,
                   decode_fn=None) -> tuple[list[tuple[str, str]], bool]:
    """``([(path, reason), ...], from_cache)`` for one class-folder split: non-image and zero-byte files
    and every image that does not decode (whole and by the random-crop decoder) or declares more than
    ``max_pixels`` pixels. The answer is cached in ``cache_dir`` (default :func:`default_check_cache`)
    under the folder's real path and reused while no file was added, removed, resized or touched and
    the pixel limit is the same."""
    limit = default_max_pixels() if max_pixels is _USE_DEFAULT else (max_pixels or None)
    fc = _FolderCheck(folder, cache_dir, limit, progress)
    hit = fc.cached()
    if hit is not None:
        return hit, True
    if log is not None:
        log(f"checking {len(fc.candidates)} images in {fc.folder} for files DALI cannot decode (cached afterwards)")
    bad = fc.listed_bad() + decode_check(fc.candidates, num_threads=num_workers, progress=progress, max_pixels=limit,
                                         time_limit=time_limit, decode_fn=decode_fn)
    fc.store(bad, log)
    return bad, False


# ------------------------------------------------------------------------------------------------
# --skip-bad under torchrun: the check spread over the ranks
# ------------------------------------------------------------------------------------------------
CHECK_GROUP_TIMEOUT_S = 7 * 24 * 3600  # the check's own process group: a long check is no failure


def skip_bad_check(root: str | os.PathLike, *, splits=("train", "val"), cache_dir=None, progress: bool | None = None,
                   log=None, max_pixels=_USE_DEFAULT, time_limit: float = DEFAULT_TIME_LIMIT,
                   decode_fn=None) -> list[str]:
    """The paths ``--skip-bad`` leaves out of ``root/<split>`` (every split that exists), one answer on
    every rank.

    Without torch.distributed: :func:`find_bad_files` per split. Under it, every rank scans the split,
    reads the cache, and unless every rank found a valid cached answer, decodes its own share
    (``candidates[rank::world]``, with its share of the node's cores); the shares are merged with an
    all-gather and every rank caches the merged answer (caches may be per node). The ranks meet in a gloo
    group of their own whose timeout is :data:`CHECK_GROUP_TIMEOUT_S`, not the training group's (minutes):
    however long the check on a large data set takes, no collective times out. A rank whose check fails
    sends its error; every rank then raises it. ``log`` (rank 0's logger) gets one line per split;
    ``time_limit`` and ``decode_fn`` as :func:`decode_check`'s."""
    import torch.distributed as dist

    from ..placement import cores_per_rank

    limit = default_max_pixels() if max_pixels is _USE_DEFAULT else (max_pixels or None)
    folders = [Path(root).expanduser() / s for s in splits if (Path(root).expanduser() / s).is_dir()]
    ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    found: list[str] = []
    if not ddp:
        for folder in folders:
            bad, cached = find_bad_files(folder, cache_dir=cache_dir, progress=progress, log=log, max_pixels=limit,
                                         time_limit=time_limit, decode_fn=decode_fn)
            _report(log, folder, bad, cached)
            found += [p for p, _ in bad]
        return found
    from datetime import timedelta

    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=CHECK_GROUP_TIMEOUT_S))
    try:
        for folder in folders:
            bad, cached = _spread_one(folder, rank, world, group, cache_dir, limit, progress, log,
                                      dict(num_threads=cores_per_rank(), time_limit=time_limit, decode_fn=decode_fn))
            _report(log, folder, bad, cached)
            found += [p for p, _ in bad]
    finally:
        dist.destroy_process_group(group)
    return found


def _gather(obj, world, group) -> list:
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def _spread_one(folder, rank, world, group, cache_dir, limit, progress, log, check_kw):
    status: tuple = ("ok", None)
    fc = None
    try:
        fc = _FolderCheck(folder, cache_dir, limit, progress)
        hit = fc.cached()
    except Exception as exc:  # noqa: BLE001 - sent to every rank, raised there (no rank waits alone)
        status, hit = ("error", f"{type(exc).__name__}: {exc}"), None
    answers = _gather((status, hit is not None), world, group)
    _raise_first(answers)
    if all(h for _, h in answers):
        return hit, True
    if log is not None:
        log(f"checking {len(fc.candidates)} images in {fc.folder} for files DALI cannot decode, spread over "
            f"{world} ranks (cached afterwards)")
    mine = fc.candidates[rank::world]
    try:
        part = decode_check(mine, progress=progress, max_pixels=limit, **check_kw)
    except Exception as exc:  # noqa: BLE001 - as above
        status, part = ("error", f"rank {rank}: {type(exc).__name__}: {exc}"), []
    parts = _gather((status, part), world, group)
    _raise_first(parts)
    reasons = dict(p for _, share in parts for p in share)
    bad = fc.listed_bad() + [(p, reasons[p]) for p in fc.candidates if p in reasons]
    fc.store(bad, log)
    return bad, False


def _raise_first(answers) -> None:
    for (kind, detail), _ in answers:
        if kind == "error":
            raise RuntimeError(f"the --skip-bad check failed: {detail}")


def _report(log, folder, bad, cached) -> None:
    if log is not None:
        log(f"--skip-bad: {len(bad)} unusable file(s) in {folder}{' (cached check)' if cached else ''}")
