"""ImageFolderSource: one split in the ImageNet layout (``root/<class>/<image>``), local or ``s3://``,
held as compact arrays (a ``FolderIndex``) so a million-file split costs tens of MB per rank, not GBs.

The hand-off to DALI is ``write_file_list(path, indices)``: a ``readers.file`` ``file_list`` of the
chosen samples in the chosen order (paths relative to ``root``, which the reader gets as ``file_root``;
the second column is the sample's index in this source), so no second full Python list of paths is
ever built. ``samples`` / ``files`` / ``labels`` still exist for callers that want Python lists; they
are built on first use and cached.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DatasetError
from ..fsio import atomic_write
from .exclude import ExcludeList
from .folder_index import IMAGE_EXTENSIONS, FolderIndex, is_s3, open_folder_index

__all__ = ["ImageFolderSource", "listing"]

_MAX_LISTED = 20  # files named in one error message; the rest are counted
_LIST_CHUNK = 1 << 16  # file-list lines joined per write


def listing(paths: Iterable, limit: int = _MAX_LISTED) -> str:
    paths = [str(p) for p in paths]
    shown = "\n  ".join(paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n  {shown}{more}"


class ImageFolderSource:
    """One split in the ImageNet layout: ``root/<class>/<image>``; label = index of the sorted class name.

    ``root`` is a local folder (kept as a ``Path``) or an ``s3://bucket/prefix`` URL (a ``str``; listed
    with boto3, read by DALI). ``index``: None scans now; a path reads the scan from that index file (rank 0
    writes it when missing, the others wait; a stale one is refused); "auto" keeps it in
    ``root/.i2e-index.npz``. See ``i2e_dali.data.folder_index``.

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
                 progress: bool | None = None, exclude=None, index=None):
        idx = open_folder_index(root if is_s3(root) else Path(root).expanduser(), index, progress=progress)
        self._set_index(idx)
        rootp = self.root
        not_images = [idx.join(r) for r in idx.not_images]
        empty_files = [idx.join(r) for r in idx.empty_files]
        # exclude: paths to leave out (an ExcludeList from read_exclude_list, e.g. i2e-check --list's file,
        # or any iterable of paths); what was dropped is kept in .excluded and told by .exclusion_note
        excl = ExcludeList.of(exclude)
        self.exclude_origin = excl.origin if len(excl) else None
        self.excluded: list[str] = []
        if len(excl):
            files = self.files
            kept, dropped = excl.split(files, rootp)
            self.excluded = [files[i] for i in dropped]
            self._select(np.asarray(kept, np.int64))
            ki, di = excl.split(not_images, rootp)
            ke, de = excl.split(empty_files, rootp)
            self.excluded += [not_images[i] for i in di] + [empty_files[i] for i in de]
            not_images, empty_files = [not_images[i] for i in ki], [empty_files[i] for i in ke]
        if not idx.classes:
            hint = (f" It holds {len(idx.stray_files)} files directly; move them into one sub-folder per class."
                    if idx.stray_files else "")
            raise DatasetError(
                f"{rootp} has no class sub-folders. Expected the ImageNet layout {rootp}/<class>/<image>." + hint)
        if (not_images or empty_files) and not skip_invalid:
            parts = []
            if not_images:
                parts.append(f"{len(not_images)} file(s) that are not images (by extension; DALI reads "
                             f"{', '.join(IMAGE_EXTENSIONS)}):" + listing(not_images))
            if empty_files:
                parts.append(f"{len(empty_files)} empty (zero-byte) or unreadable file(s):" + listing(empty_files))
            raise DatasetError(
                f"{rootp} contains files the loader cannot use:\n" + "\n".join(parts)
                + "\nRemove or replace them (or pass skip_invalid=True to leave them out), then run "
                f"`i2e-check {rootp}` to find images that do not decode.")
        if idx.empty_classes and not allow_empty_classes:
            raise DatasetError(
                f"{len(idx.empty_classes)} class folder(s) in {rootp} hold no images:"
                + listing(idx.join(c) for c in idx.empty_classes)
                + "\nAdd images or delete the folder(s) (class indices follow the sorted folder names, so train "
                "and val must have the same classes), or pass allow_empty_classes=True.")
        self.classes: list[str] = list(idx.classes)
        self.skipped: list[Path] = [Path(p) for p in not_images + empty_files]
        if not len(self):
            raise DatasetError(f"{rootp} holds no images; expected {rootp}/<class>/<image>.JPEG")

    # ----------------------------------------------------------------------------------------------
    # compact storage: the index's path blob + offsets, the rows of it this source lists, labels
    # ----------------------------------------------------------------------------------------------
    def _set_index(self, idx: FolderIndex) -> None:
        self.root = idx.root if is_s3(idx.root) else Path(idx.root)
        self._root_str = idx.root
        self._blob = idx.path_blob.tobytes()  # bytes: slicing one path is cheap and needs no numpy view
        self._off = idx.path_offsets
        self._rows: np.ndarray | None = None  # None: every row of the index, in order
        self._label_array = idx.labels.astype(np.int64)
        self._sizes = idx.sizes
        self._cache: dict = {}

    def _select(self, positions: np.ndarray) -> None:
        """Keep only ``positions`` (indices into the current listing), in that order."""
        self._rows = positions if self._rows is None else self._rows[positions]
        self._label_array = self._label_array[positions]
        self._cache = {}

    @property
    def label_array(self) -> np.ndarray:
        """int64 ``[N]``: the class label of every sample."""
        return self._label_array

    @label_array.setter
    def label_array(self, value) -> None:
        value = np.asarray(value, dtype=np.int64)
        if value.shape != (len(self),):
            raise ValueError(f"label_array must have shape ({len(self)},), got {value.shape}")
        self._label_array = value
        self._cache = {}

    def _row(self, i: int) -> int:
        return int(i) if self._rows is None else int(self._rows[i])

    def rel_path(self, i: int) -> str:
        """Sample ``i``'s path relative to ``root``."""
        r = self._row(i)
        return self._blob[self._off[r]:self._off[r + 1]].decode("utf-8", "surrogateescape")

    def path(self, i: int) -> str:
        """Sample ``i``'s full path (or s3:// URL)."""
        rel = self.rel_path(i)
        return f"{self._root_str.rstrip('/')}/{rel}" if is_s3(self._root_str) else os.path.join(self._root_str, rel)

    def size(self, i: int) -> int:
        """Sample ``i``'s size in bytes as the scan saw it."""
        return int(self._sizes[self._row(i)])

    def __len__(self) -> int:
        return len(self._label_array)

    # Python lists, for callers that want them: built on first use, then cached.
    @property
    def files(self) -> list[str]:
        if "files" not in self._cache:
            self._cache["files"] = [self.path(i) for i in range(len(self))]
        return self._cache["files"]

    @property
    def samples(self) -> list[tuple[str, int]]:
        if "samples" not in self._cache:
            self._cache["samples"] = list(zip(self.files, self._label_array.tolist()))
        return self._cache["samples"]

    @samples.setter
    def samples(self, value) -> None:
        """Replace the listing with ``[(path, label)]`` (paths below ``root``, or absolute)."""
        value = list(value)
        prefix = self._root_str.rstrip("/") + "/"
        rels = [p[len(prefix):] if str(p).startswith(prefix) else str(p) for p, _ in value]
        enc = [r.encode("utf-8", "surrogateescape") for r in rels]
        self._blob = b"".join(enc)
        self._off = np.zeros(len(enc) + 1, np.int64)
        np.cumsum([len(b) for b in enc], out=self._off[1:])
        self._rows = None
        self._sizes = np.zeros(len(enc), np.int64)
        self._label_array = np.asarray([lab for _, lab in value], np.int64)
        self._cache = {}

    @property
    def labels(self) -> list[int]:
        return self._label_array.tolist()

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def subset(self, indices) -> "ImageFolderSource":
        """The same source listing only ``indices`` (in that order); classes are kept."""
        sub = copy.copy(self)
        sub._select(np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, np.int64))
        return sub

    # ----------------------------------------------------------------------------------------------
    def write_file_list(self, path: str | os.PathLike, indices=None) -> int:
        """Write DALI ``readers.file``'s ``file_list`` for samples ``indices`` (default: all), in that order:
        one ``<path relative to root> <sample index>`` line each. Give the reader ``file_root=str(root)``.
        Written atomically; returns the number of lines."""
        n = len(self)
        idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"write_file_list: indices must be in 0..{n - 1}")
        rows = idx if self._rows is None else self._rows[idx]
        self._check_listable()
        blob, off = self._blob, self._off

        def write(f):
            for a in range(0, len(idx), _LIST_CHUNK):
                r, j = rows[a:a + _LIST_CHUNK].tolist(), idx[a:a + _LIST_CHUNK].tolist()
                f.write(b"".join(b"%s %d\n" % (blob[off[x]:off[x + 1]], y) for x, y in zip(r, j)))

        atomic_write(path, write)
        return len(idx)

    def _check_listable(self) -> None:
        # A file list is line- and whitespace-separated: a newline anywhere in a path, or whitespace at its
        # end, cannot be written (DALI would read another file). Checked once per source, on the whole blob.
        if "listable" in self._cache:
            return
        bad = []
        if b"\n" in self._blob or b"\r" in self._blob:
            bad = [p for p in self.files if "\n" in p or "\r" in p]
        ends = np.frombuffer(self._blob, np.uint8)[self._off[1:] - 1] if len(self._off) > 1 else np.zeros(0)
        if np.isin(ends, list(b" \t\x0b\x0c")).any():
            bad += [p for p in self.files if p != p.rstrip()]
        if bad:
            raise DatasetError(f"{self.root}: file names with a line break or trailing whitespace cannot be handed "
                               "to DALI's reader; rename them:" + listing(bad))
        self._cache["listable"] = True

    @property
    def exclusion_note(self) -> str | None:
        """"N images excluded (listed in ORIGIN)" when an exclude list was given, else None."""
        if self.exclude_origin is None:
            return None
        return f"{len(self.excluded)} image(s) of {self.root} excluded (listed in {self.exclude_origin})"

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"
