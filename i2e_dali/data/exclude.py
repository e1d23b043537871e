"""Exclusion lists: files to leave out of a data set, as ``i2e-check --list`` writes them (``--exclude-list``),
remembering where the list came from so every message can say so."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError, MissingDataError

__all__ = ["ExcludeList", "read_exclude_list", "normalize_path"]


# ------------------------------------------------------------------------------------------------
def normalize_path(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


@dataclass
class ExcludeList:
    """Files to leave out of a data set and where the list came from (``origin``, for messages)."""

    paths: list[str] = field(default_factory=list)
    origin: str = "exclude="

    def __post_init__(self):
        self._keys = {normalize_path(p) for p in self.paths}

    def __contains__(self, path) -> bool:
        return normalize_path(path) in self._keys

    def split(self, paths: list, root: str | os.PathLike) -> tuple[list[int], list[int]]:
        """(kept, dropped) indices of ``paths`` (all below ``root``). Matches without a system call per
        file (a million-image folder): a path is dropped when its absolute form, or its form below the
        real path of ``root``, is on the list."""
        if not self._keys:
            return list(range(len(paths))), []
        keys = self._keys | {os.path.abspath(os.path.expanduser(p)) for p in self.paths}
        root_abs = os.path.abspath(os.fspath(root))
        root_real = os.path.realpath(root_abs)
        kept, dropped = [], []
        for i, p in enumerate(paths):
            a = os.path.abspath(os.fspath(p))
            real = root_real + a[len(root_abs):] if a.startswith(root_abs) else a
            (dropped if a in keys or real in keys else kept).append(i)
        return kept, dropped

    def __len__(self) -> int:
        return len(self.paths)

    def __add__(self, other: "ExcludeList") -> "ExcludeList":
        return ExcludeList(self.paths + [p for p in other.paths if p not in self], f"{self.origin} and {other.origin}")

    @classmethod
    def of(cls, exclude) -> "ExcludeList":
        """``exclude`` as an ExcludeList: one already, or an iterable of paths."""
        if exclude is None:
            return cls()
        if isinstance(exclude, ExcludeList):
            return exclude
        if isinstance(exclude, (str, os.PathLike)):
            raise TypeError("exclude= takes a list of paths or an ExcludeList; read a list file with "
                            "i2e_dali.data.decode_check.read_exclude_list(path)")
        return cls([os.fspath(p) for p in exclude], "exclude=")


def read_exclude_list(path: str | os.PathLike) -> ExcludeList:
    """Read a list of files to exclude: one path per line (what ``i2e-check --list`` writes); blank lines
    and lines starting with ``#`` are ignored. Relative paths are taken relative to the list's folder."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MissingDataError(f"exclude list {path} does not exist (write one with `i2e-check ROOT --list {path}`)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"exclude list {path} is not a readable text file ({exc}); expected one path per line") from exc
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        paths.append(line if os.path.isabs(line) else str(path.parent / line))
    return ExcludeList(paths, str(path))
