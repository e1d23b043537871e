"""Atomic file writes: the one way this package writes a file a reader or a resumed run may see.

A temp file in the target's folder is written, then renamed over the target (``os.replace``): a
reader sees the old complete file or the new complete file, never a partial one, even after SIGKILL
or a full disk. The temp file is named ``.<name>.<random><suffix>`` so a later run can recognise and
delete leftovers of a killed writer.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text"]


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    # Read where the OS shows it: os.umask() can only read by setting, which races with other threads
    # (the exporter writes from a thread pool).
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object],
    *,
    suffix: str = ".tmp",
    durable: bool = False,
    opener: Callable | None = None,
) -> int:
    """Write ``path`` through ``write(binary_file)``; returns the bytes written.

    The file gets the permissions a plain ``open()`` would give (0666 minus the umask), not
    ``mkstemp``'s owner-only 0600, so exported data sets stay readable by others on a shared machine.
    ``durable`` also fsyncs the file and its folder (checkpoints). ``opener(path, "wb")`` replaces
    ``open`` (a test hook that simulates a full disk). On any error the temp file is removed and an
    existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        if opener is None:
            handle = os.fdopen(fd, "wb")
        else:
            os.close(fd)
            handle = opener(tmp, "wb")
        with handle as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:  # make the rename itself survive a power cut
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    return size


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> int:
    """``atomic_write`` for a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), **kwargs)
