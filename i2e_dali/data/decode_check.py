"""Decode checking: which files of a list DALI's CPU decoder cannot decode, and why.

- :func:`decode_check` decodes in isolated worker processes (decode_pool.py), so a file that crashes or
  hangs the decoder is named instead of killing the caller. Used by ``i2e-check`` (tools/check.py) and by
  the EventLoader to name the culprit when a batch fails.
- :func:`find_bad_files` checks one class-folder split and caches the answer per folder, keyed by the
  file list, sizes and modification times (``--skip-bad``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from ..fsio import atomic_write_text
from ..placement import usable_cores
from .decode_pool import DEFAULT_TIME_LIMIT, DecodePool
from .exclude import normalize_path
from .sources import scan_image_folder

__all__ = ["decode_check", "find_bad_files", "default_check_cache", "DEFAULT_TIME_LIMIT"]

_CACHE_VERSION = 1


def decode_check(files: list[str], *, num_threads: int | None = None, batch_size: int = 32,
                 progress: bool | None = None, time_limit: float = DEFAULT_TIME_LIMIT,
                 decode_fn=None) -> list[tuple[str, str]]:
    """Decode every file with DALI's CPU decoder in isolated worker processes; return ``(path, reason)``
    for each file that cannot be read or decoded, crashes the decoder or hangs it past ``time_limit``
    seconds. ``num_threads`` worker processes (default: every usable core), ``batch_size`` files per
    chunk; the order of the result follows ``files``."""
    workers = usable_cores() if num_threads is None else max(1, int(num_threads))
    pool = DecodePool(workers, batch_size=batch_size, time_limit=time_limit, decode_fn=decode_fn)
    return pool.run(list(files), progress=progress)


# ------------------------------------------------------------------------------------------------
# cached folder checks (--skip-bad)
# ------------------------------------------------------------------------------------------------
def default_check_cache() -> Path:
    """``$I2E_DALI_CACHE/checks``, else ``$XDG_CACHE_HOME/i2e-dali/checks`` or ``~/.cache/i2e-dali/checks``:
    outside the data set, which may be read-only shared storage."""
    if os.environ.get("I2E_DALI_CACHE"):
        return Path(os.environ["I2E_DALI_CACHE"]) / "checks"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "i2e-dali" / "checks"


def _fingerprint(paths: Iterable[str]) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for p in sorted(paths):
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def find_bad_files(folder: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                   num_workers: int | None = None, progress: bool | None = None,
                   log=None) -> tuple[list[tuple[str, str]], bool]:
    """``([(path, reason), ...], from_cache)`` for one class-folder split: non-image and zero-byte files
    and every image that does not decode. The answer is cached in ``cache_dir`` (default
    :func:`default_check_cache`) under the folder's real path and reused while no file was added,
    removed, resized or touched."""
    folder = Path(folder).expanduser()
    scan = scan_image_folder(folder, progress=progress)
    candidates = [p for p, _ in scan.samples]
    listed = sorted(candidates + [str(p) for p in scan.bad_files])
    key = _fingerprint(listed)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_check_cache()
    entry = cache / (hashlib.sha256(normalize_path(folder).encode()).hexdigest()[:24] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if cached.get("key") == key and cached.get("folder") == normalize_path(folder):
            return [(str(p), str(w)) for p, w in cached["bad"]], True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no cache yet, or an unreadable one: check again
    if log is not None:
        log(f"checking {len(candidates)} images in {folder} for files DALI cannot decode (cached afterwards)")
    bad = [(str(p), "not an image file (extension)") for p in scan.not_images]
    bad += [(str(p), "empty (zero-byte) or unreadable file") for p in scan.empty_files]
    bad += decode_check(candidates, num_threads=num_workers, progress=progress)
    try:
        atomic_write_text(entry, json.dumps({"folder": normalize_path(folder), "key": key, "bad": bad}))
    except OSError as exc:  # a read-only home is no reason to stop: the check is just not reused
        if log is not None:
            log(f"could not cache the check in {entry} ({exc})")
    return bad, False
