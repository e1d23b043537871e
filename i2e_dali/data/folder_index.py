"""The scan of an image folder done once: ``root/<class>/**`` as compact arrays, saved as an index file.

Why: a million-file folder costs every rank a walk and a ``stat`` per file (seconds on a local disk,
minutes on NFS/Lustre) and ~1 KB of Python objects per file. A ``FolderIndex`` holds the same facts as
a handful of numpy arrays (relative paths as one UTF-8 blob with offsets, labels, byte sizes, mtimes),
about 40 bytes per file; rank 0 writes it once, every rank and node reads it.

Index file (``np.savez``, read with ``allow_pickle=False``; nothing in it is executed):
    format        "i2e-folder-index/1"
    root          the folder (or s3:// URL) scanned
    classes       class names, index = label
    path_blob     uint8: the relative paths (below root), UTF-8 (surrogate escapes kept), concatenated
    path_offsets  int64 [N+1]: path i is path_blob[off[i]:off[i+1]]
    labels        int32 [N]; sizes int64 [N] (bytes); mtimes int64 [N] (ns)
    dirs          every folder walked, relative to root ("" = root); dir_mtimes int64 (ns)
    not_images, empty_files, empty_classes, stray_files   relative paths the scan refused (few)

Staleness (cheap, no per-file stat): adding, removing or renaming an entry changes its folder's mtime,
so the index records the mtime of every folder it walked (ImageNet: 1,001 folders) and is refused
(``StaleIndexError``) when one differs or is gone; the root itself is checked by its listing of class
folders and files (an index kept inside it, ``index="auto"``, changes its mtime). Not seen by this check: a file rewritten in place
under the same name (its folder's mtime does not change); ``check_fresh(full=True)`` stats every file
(sizes and mtimes) for that. S3 has no folder mtimes: an s3:// index is a listing snapshot; a missing
object is reported by the reader with its URL.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError, MissingDataError
from ..fsio import atomic_write
from ..placement import global_rank
from .s3 import is_s3, list_s3_objects, split_s3

__all__ = ["FolderIndex", "StaleIndexError", "IMAGE_EXTENSIONS", "index_folder", "load_index",
           "open_folder_index", "default_index_path", "is_s3", "split_s3"]

FORMAT = "i2e-folder-index/1"
# Formats DALI's image decoders read (by content, so a PNG named .JPEG still decodes).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
                    ".jp2", ".j2k")


class StaleIndexError(DatasetError):
    """A folder index no longer describes its folder (a folder changed since it was written)."""


def _enc(p: str) -> bytes:
    return p.encode("utf-8", "surrogateescape")


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


@dataclass
class FolderIndex:
    """The facts of one scan. ``root`` is a ``str`` (local folder or s3:// URL)."""

    root: str
    classes: list[str]
    path_blob: np.ndarray  # uint8
    path_offsets: np.ndarray  # int64 [N+1]
    labels: np.ndarray  # int32 [N]
    sizes: np.ndarray  # int64 [N]
    mtimes: np.ndarray  # int64 [N], ns
    dirs: list[str] = field(default_factory=list)
    dir_mtimes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    not_images: list[str] = field(default_factory=list)
    empty_files: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def rel_path(self, i: int) -> str:
        return _dec(self.path_blob[self.path_offsets[i]:self.path_offsets[i + 1]].tobytes())

    def rel_paths(self) -> list[str]:
        blob, off = self.path_blob.tobytes(), self.path_offsets.tolist()
        return [_dec(blob[off[i]:off[i + 1]]) for i in range(len(off) - 1)]

    def join(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}" if is_s3(self.root) else os.path.join(self.root, rel)

    # ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically (a reader sees the old or the new file, never half of one)."""
        arrays = dict(
            format=np.array(FORMAT), root=np.array(self.root), classes=np.array(self.classes, dtype=str),
            path_blob=self.path_blob, path_offsets=self.path_offsets, labels=self.labels, sizes=self.sizes,
            mtimes=self.mtimes, dirs=np.array(self.dirs, dtype=str), dir_mtimes=self.dir_mtimes,
            not_images=np.array(self.not_images, dtype=str), empty_files=np.array(self.empty_files, dtype=str),
            empty_classes=np.array(self.empty_classes, dtype=str),
            stray_files=np.array(self.stray_files, dtype=str),
        )
        atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz.tmp")

    def _check_root_listing(self, where: str) -> None:
        seen = sorted(e.name for e in os.scandir(self.root) if not e.name.startswith("."))
        if seen != sorted(self.classes + self.stray_files):
            raise StaleIndexError(f"{self.root} changed since {where} was written (class folders or files added, "
                                  "removed or renamed); the index is not used. Delete it (it is rebuilt on the next "
                                  "start) or point to a fresh one.")

    def check_fresh(self, *, full: bool = False, index_path=None) -> None:
        """Raise ``StaleIndexError`` when the folder changed since the scan (see the module docstring)."""
        if is_s3(self.root):
            return
        where = f"the index {index_path}" if index_path else "the folder index"
        for rel, mt in zip(self.dirs, self.dir_mtimes.tolist()):
            path = os.path.join(self.root, rel) if rel else self.root
            try:
                if not rel:  # the root by its listing: an index kept inside it (index="auto") changes its mtime
                    self._check_root_listing(where)
                    continue
                now = os.stat(path).st_mtime_ns
            except OSError:
                raise StaleIndexError(f"{path} is gone since {where} was written; delete the index (it is "
                                      "rebuilt on the next start)") from None
            if now != mt:
                raise StaleIndexError(
                    f"{path} changed since {where} was written (files added, removed or renamed); the index is "
                    "not used. Delete it (it is rebuilt on the next start) or point to a fresh one.")
        if full:
            for i in range(len(self)):
                path = self.join(self.rel_path(i))
                try:
                    st = os.stat(path)
                except OSError:
                    raise StaleIndexError(f"{path} is listed in {where} but cannot be read; delete the "
                                          "index") from None
                if st.st_size != self.sizes[i] or st.st_mtime_ns != self.mtimes[i]:
                    raise StaleIndexError(f"{path} was rewritten since {where} was written; delete the index")


def _from_lists(root: str, classes, rels: list[str], labels, sizes, mtimes, **rest) -> FolderIndex:
    enc = [_enc(r) for r in rels]
    off = np.zeros(len(enc) + 1, np.int64)
    np.cumsum([len(b) for b in enc], out=off[1:])
    return FolderIndex(
        root=root, classes=list(classes), path_blob=np.frombuffer(b"".join(enc), np.uint8).copy(),
        path_offsets=off, labels=np.asarray(labels, np.int32), sizes=np.asarray(sizes, np.int64),
        mtimes=np.asarray(mtimes, np.int64), **rest)


def index_folder(root: str | os.PathLike, *, progress: bool | None = None) -> FolderIndex:
    """Walk ``root/<class>/**`` (sorted, following links) without opening any image, or list an s3:// prefix.

    Classes are the sorted names of root's sub-folders (torchvision's ImageFolder rule); images in nested
    folders below a class belong to it. Hidden entries (``.DS_Store``, ``.i2e-index.npz``) are ignored.
    """
    if is_s3(root):
        return _from_lists(**_list_s3_folder(str(root)))
    from tqdm import tqdm

    root = str(Path(root).expanduser())
    if not os.path.exists(root):
        raise MissingDataError(f"data folder {root} does not exist; pass the folder that holds one sub-folder per class")
    if not os.path.isdir(root):
        raise DatasetError(f"{root} is a file, not a folder; pass the folder that holds one sub-folder per class")
    dirs, dir_mtimes = [""], [os.stat(root).st_mtime_ns]
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    stray = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
    rels, labels, sizes, mtimes = [], [], [], []
    not_images, empty_files, empty_classes = [], [], []
    bar = tqdm(classes, desc=f"scanning {os.path.basename(root)}", unit="class",
               disable=True if progress is False else None, leave=False)
    cut = len(root) + 1
    for label, name in enumerate(bar):
        found = 0
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            dirs.append(dirpath[cut:])
            dir_mtimes.append(os.stat(dirpath).st_mtime_ns)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                rel = os.path.join(dirpath, fname)[cut:]
                if not fname.lower().endswith(IMAGE_EXTENSIONS):
                    not_images.append(rel)
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, fname))
                except OSError:  # dangling link or unreadable entry: DALI could not read it either
                    empty_files.append(rel)
                    continue
                if st.st_size == 0:
                    empty_files.append(rel)
                    continue
                rels.append(rel)
                labels.append(label)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
                found += 1
        if found == 0:
            empty_classes.append(name)
    return _from_lists(root, classes, rels, labels, sizes, mtimes, dirs=dirs,
                       dir_mtimes=np.asarray(dir_mtimes, np.int64), not_images=not_images,
                       empty_files=empty_files, empty_classes=empty_classes, stray_files=stray)


def _list_s3_folder(url: str) -> dict:
    """An image folder's scan from a listing: classes are the first key component below the prefix."""
    objects = list_s3_objects(url)
    if not objects:
        raise MissingDataError(f"{url} holds no objects (or does not exist); expected {url}/<class>/<image>")
    def hidden(rel):
        return any(part.startswith(".") for part in rel.split("/"))
    classes = sorted({rel.split("/", 1)[0] for rel, _, _ in objects if "/" in rel and not hidden(rel)})
    label_of = {c: i for i, c in enumerate(classes)}
    rels, labels, sizes, mtimes, not_images, empty, stray = [], [], [], [], [], [], []
    for rel, size, mtime in objects:
        if hidden(rel):
            continue
        if "/" not in rel:
            stray.append(rel)
        elif not rel.lower().endswith(IMAGE_EXTENSIONS):
            not_images.append(rel)
        elif size == 0:
            empty.append(rel)
        else:
            rels.append(rel)
            labels.append(label_of[rel.split("/", 1)[0]])
            sizes.append(size)
            mtimes.append(mtime)
    found = set(labels)
    return dict(root=url.rstrip("/"), classes=classes, rels=rels, labels=labels, sizes=sizes, mtimes=mtimes,
                not_images=not_images, empty_files=empty, stray_files=stray,
                empty_classes=[c for c in classes if label_of[c] not in found])


_KEYS = ("format", "root", "classes", "path_blob", "path_offsets", "labels", "sizes", "mtimes", "dirs",
         "dir_mtimes", "not_images", "empty_files", "empty_classes", "stray_files")


def load_index(path: str | os.PathLike) -> FolderIndex:
    """Read an index file; ``DatasetError`` naming it when it is not a complete, consistent index."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise DatasetError(f"{path} is not an i2e folder index (lacks {', '.join(missing)}); delete it")
            d = {k: z[k] for k in _KEYS}
    except FileNotFoundError:
        raise MissingDataError(f"folder index {path} does not exist") from None
    except DatasetError:
        raise
    except Exception as exc:  # a damaged zip/npy raises zipfile/ValueError/OSError/EOFError...
        raise DatasetError(f"{path} is not a readable i2e folder index ({type(exc).__name__}: {exc}); "
                           "delete it (it is rebuilt on the next start)") from exc
    if not _well_typed(d):
        raise DatasetError(f"{path}: the index's arrays have the wrong types or shapes (damaged file); delete it")
    if str(d["format"]) != FORMAT:
        raise DatasetError(f"{path} is a folder index of format {str(d['format'])!r}, this version reads "
                           f"{FORMAT!r}; delete it")
    off, labels, blob = d["path_offsets"], d["labels"], d["path_blob"]
    n = len(labels)
    ok = (len(off) == n + 1 and d["sizes"].shape == (n,) and d["mtimes"].shape == (n,)
          and len(d["dirs"]) == len(d["dir_mtimes"])
          and (n == 0 or (off[0] == 0 and off[-1] == len(blob) and bool(np.all(np.diff(off) > 0))))
          and (n == 0 or (labels.min() >= 0 and labels.max() < len(d["classes"]))))
    if not ok:
        raise DatasetError(f"{path}: the index's arrays do not fit together (damaged file); delete it")
    return FolderIndex(
        root=str(d["root"]), classes=d["classes"].tolist(), path_blob=blob, path_offsets=off,
        labels=labels.astype(np.int32, copy=False), sizes=d["sizes"], mtimes=d["mtimes"],
        dirs=d["dirs"].tolist(), dir_mtimes=d["dir_mtimes"].astype(np.int64), not_images=d["not_images"].tolist(),
        empty_files=d["empty_files"].tolist(), empty_classes=d["empty_classes"].tolist(),
        stray_files=d["stray_files"].tolist())


_TEXT = ("format", "root")
_TEXT_LISTS = ("classes", "dirs", "not_images", "empty_files", "empty_classes", "stray_files")
_INTS = ("path_offsets", "labels", "sizes", "mtimes", "dir_mtimes")


def _well_typed(d: dict) -> bool:
    """Every array of the kind and rank the writer gives it (text scalars and lists, 1-D integer arrays,
    a uint8 blob): a damaged file can hold a valid .npy of another type in any member."""
    if not all(isinstance(v, np.ndarray) for v in d.values()):  # a member that is not a .npy reads as bytes
        return False
    return (all(d[k].ndim == 0 and d[k].dtype.kind == "U" for k in _TEXT)
            and all(d[k].ndim == 1 and (d[k].dtype.kind == "U" or d[k].size == 0) for k in _TEXT_LISTS)
            and all(d[k].ndim == 1 and d[k].dtype.kind in "iu" for k in _INTS)
            and d["path_blob"].ndim == 1 and d["path_blob"].dtype == np.uint8)


def default_index_path(root) -> Path:
    """Where ``index="auto"`` keeps a local folder's index: a hidden file in the folder (ignored by the scan)."""
    return Path(root).expanduser() / ".i2e-index.npz"


def open_folder_index(root, index, *, progress: bool | None = None, wait_s: float | None = None) -> FolderIndex:
    """The index of ``root``: scanned now (``index=None``) or read from / written to the file ``index``
    (``"auto"``: ``default_index_path(root)``). A missing file is written by rank 0 (the others wait for
    it, up to ``wait_s``, default ``I2E_INDEX_WAIT_S`` or 3600 s); an existing one must belong to ``root``
    and be fresh (``StaleIndexError`` otherwise: a stale index is never used)."""
    if index is None:
        return index_folder(root, progress=progress)
    if index == "auto":
        if is_s3(root):
            raise DatasetError(f"{root}: index='auto' keeps the index inside the folder, which an s3:// data set "
                               "cannot; pass index=PATH (a local or shared file) or index=None")
        index = default_index_path(root)
    path = Path(index).expanduser()
    want_root = str(root) if is_s3(root) else str(Path(root).expanduser())
    if not path.exists():
        if global_rank() == 0:
            idx = index_folder(root, progress=progress)
            idx.save(path)
            return idx
        wait_s = float(os.environ.get("I2E_INDEX_WAIT_S", "3600")) if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise DatasetError(f"waited {wait_s:.0f} s for rank 0 to write the folder index {path}; is it on "
                                   "a file system every node sees? (I2E_INDEX_WAIT_S sets the wait)")
            time.sleep(0.2)
    idx = load_index(path)
    same = idx.root == want_root if is_s3(root) else os.path.normpath(idx.root) == os.path.normpath(want_root)
    if not same:
        raise DatasetError(f"{path} indexes {idx.root}, not {want_root}; pass the index of this folder")
    idx.check_fresh(index_path=path)
    return idx
