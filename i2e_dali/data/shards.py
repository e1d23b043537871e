"""WebDataset tar shards as a source (kind "wds"): local or s3://, from a folder, a brace pattern, a list
file or a list of paths; read by DALI's ``fn.readers.webdataset`` through ``pipelines.shards``.

A shard set is described by a *manifest* (``shards.npz`` beside the shards, written by ``i2e-shard``; or
built here from each shard's DALI index file and its ``.cls`` members): per sample the shard, the image
member's offset, size and extension, the label and the sample's DALI index line (which names the member), as
compact arrays (~80 bytes a sample). Every rank reads the manifest; nobody lists or opens the tars before DALI.

Epoch order (training): the shards in a fresh seeded order each epoch and the samples of each shard in a
fresh seeded order, the same on every rank; rank r reads the r-th equal slice. Per epoch and rank the
loader writes DALI index files listing exactly those samples in that order, so DALI's reader needs no
shuffle of its own and the id of every sample it yields is known (exact ``with_index``, exact resume).
The trade-off against DALI's ``shuffle_after_epoch`` (shard order only) plus a ``random_shuffle`` buffer:
reads inside a shard are no longer sequential (seeks within one file: cheap on local disks and object
stores, which serve each member as a range request anyway; still far fewer file opens than a folder), and
a batch holds samples of one or two shards: shards must be written in a globally shuffled order (i2e-shard
does) so each is a random subset of the data set.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DatasetError, MissingDataError
from ..fsio import atomic_write
from .s3 import is_s3, list_s3_objects, read_s3_bytes
from .tar_index import Member, Sample, bytes_file, parse_index, parse_label, read_member, scan_tar

__all__ = ["ShardSource", "MANIFEST", "CLASS_MAP", "expand_braces", "index_path_of", "shard_pipeline"]

MANIFEST = "shards.npz"
CLASS_MAP = "classes.json"
FORMAT = "i2e-shard-manifest/2"
# each manifest array's numpy kinds (U: text, i/u: integers); checked before use: a damaged file may hold
# a valid .npy of another type in any member
_MANIFEST_TYPES = {"format": "U", "shards": "U", "shard_sizes": "iu", "classes": "U", "exts": "U", "shard_of": "iu",
                   "offset": "iu", "size": "iu", "ext": "iu", "labels": "iu", "lines": "u", "line_off": "iu"}
_CULPRIT_LIMIT = 4096  # images searched for an undecodable one when DALI names none
IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm", "jp2", "j2k")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..003}.tar`` -> a-000.tar ... a-003.tar (zero padding kept); ``{x,y}`` lists; nested in order."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(a), int(b) + 1)]
    else:
        items = body.split(",")
    return [p for item in items for p in expand_braces(head + item + tail)]


def index_path_of(tar: str) -> str:
    """The DALI index beside a tar: ``x.tar`` -> ``x.idx`` (wds2idx's default name)."""
    return tar[:-4] + ".idx" if tar.endswith(".tar") else tar + ".idx"


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_s3(folder) else os.path.join(folder, name)


def _read(path: str) -> bytes:
    if is_s3(path):
        return read_s3_bytes(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingDataError(f"{path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path} ({exc})") from exc


def _read_if_there(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist (one read: an s3 object is fetched once)."""
    try:
        return _read(path)
    except MissingDataError:
        return None


def _sizes(paths: list[str]) -> list[int | None]:
    """Byte size of each shard (None: missing), one listing per s3 prefix, one stat per local file."""
    out, listed = [], {}
    for p in paths:
        if is_s3(p):
            folder, _, name = p.rpartition("/")
            if folder not in listed:
                listed[folder] = {rel: size for rel, size, _ in list_s3_objects(folder)}
            out.append(listed[folder].get(name))
        else:
            try:
                out.append(os.path.getsize(p))
            except OSError:
                out.append(None)
    return out


class ShardSource:
    """A split stored as WebDataset tar shards (see the module docstring).

    ``spec``: a folder (holding ``shards.npz``, or ``*.tar`` with ``.idx`` files), a brace pattern
    (``/data/train-{000000..000099}.tar``), a text file listing one shard per line, or a list of shard
    paths; each may be an s3:// URL. ``classes``: class names when no class map (``classes.json`` beside
    the shards or one folder up) says them. ``scan_missing``: scan a tar that has no index file (reads
    the whole tar) instead of refusing it.
    """

    kind = "wds"
    default_ratio = 0.12
    default_crop_size = 224
    default_resize_size = 256

    def __init__(self, spec, *, classes: list[str] | None = None, scan_missing: bool = False):
        self.spec = spec
        folder, shards = self._resolve(spec)
        manifest = _join(folder, MANIFEST) if folder else None
        data = _read_if_there(manifest) if manifest else None
        if data is not None:
            self._load_manifest(manifest, folder, data)
        else:
            if not shards:
                raise MissingDataError(f"{spec} holds no .tar shards (and no {MANIFEST})")
            self._scan(shards, scan_missing)
        self.root = folder or str(spec)
        self.classes = self._class_names(folder or shards[0].rpartition("/")[0], classes)
        if len(self.label_array) and self.label_array.max() >= len(self.classes):
            raise DatasetError(f"{spec}: labels go up to {int(self.label_array.max())} but {len(self.classes)} classes "
                               f"are named (class map {CLASS_MAP})")

    @classmethod
    def from_table(cls, shards: list[str], sizes, table, classes: list[str], root: str) -> "ShardSource":
        """A source from known parts (what ``i2e-shard`` just wrote): ``table`` holds one ``(shard number,
        image Member, label)`` per sample, in shard order."""
        self = cls.__new__(cls)
        self.spec = self.root = root
        self._shards, self._shard_sizes = list(shards), np.asarray(sizes, np.int64)
        self._from_table(table)
        self.classes = self._classes = list(classes)
        return self

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _resolve(spec) -> tuple[str | None, list[str]]:
        if isinstance(spec, (list, tuple)):
            return None, [os.fspath(p) for p in spec]
        spec = os.fspath(spec)
        if "{" in spec:
            return None, expand_braces(spec)
        if spec.endswith(".tar"):
            return None, [spec]
        if not is_s3(spec) and os.path.isfile(spec):  # a list file
            base = os.path.dirname(os.path.abspath(spec))
            lines = [ln.strip() for ln in Path(spec).read_text().splitlines()]
            return None, [ln if is_s3(ln) or os.path.isabs(ln) else os.path.join(base, ln)
                          for ln in lines if ln and not ln.startswith("#")]
        if is_s3(spec):
            tars = [rel for rel, _, _ in list_s3_objects(spec) if rel.endswith(".tar") and "/" not in rel]
            return spec.rstrip("/"), [_join(spec, t) for t in tars]
        if not os.path.isdir(spec):
            raise MissingDataError(f"shard folder {spec} does not exist")
        return spec, sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))

    def _class_names(self, folder, given) -> list[str]:
        if given is not None:
            return list(given)
        if getattr(self, "_classes", None):
            return list(self._classes)
        for where in ([folder, folder.rstrip("/").rpartition("/")[0]] if folder else []):
            path = _join(where, CLASS_MAP)
            data = _read_if_there(path) if where else None
            if data is not None:
                try:
                    return list(json.loads(data)["classes"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise DatasetError(f"class map {path} is not {{\"classes\": [names]}} ({exc})") from exc
        n = int(self.label_array.max()) + 1 if len(self.label_array) else 0
        return [str(i) for i in range(n)]

    def _scan(self, shards: list[str], scan_missing: bool) -> None:
        """Build the manifest from each shard's index file (or the tar itself) and its .cls members."""
        sizes = _sizes(shards)
        table = []  # (shard, image member, label)
        for k, (shard, size) in enumerate(zip(shards, sizes)):
            if size is None:
                raise MissingDataError(f"tar shard {shard} does not exist")
            idx = index_path_of(shard)
            tar_bytes = None
            text = _read_if_there(idx)
            if text is not None:
                samples = parse_index(text, idx, tar_size=size, shard=shard)
            elif scan_missing:
                from .tar_index import group_samples

                tar_bytes = _read(shard) if is_s3(shard) else None
                src = bytes_file(tar_bytes) if tar_bytes is not None else open(shard, "rb")
                with src:
                    members, _ = scan_tar(src, shard, size=size)
                samples = group_samples(members)
            else:
                raise MissingDataError(f"tar shard {shard} has no index file {idx}; write one with `i2e-shard --index "
                                       f"{shard}` (or pass scan_missing=True to read the whole tar at every start)")
            if is_s3(shard) and tar_bytes is None and samples:
                tar_bytes = _read(shard)  # the labels live in the tar: one GET, not one per member
            handle = bytes_file(tar_bytes) if tar_bytes is not None else open(shard, "rb")
            with handle:
                for s in samples:
                    table.append((k, self._image_of(s, shard), self._label_of(s, shard, handle, size)))
        if not table:
            raise DatasetError(f"{self.spec}: the shards hold no samples")
        self._shards, self._shard_sizes = list(shards), np.asarray(sizes, np.int64)
        self._from_table(table)
        self._classes = None

    @staticmethod
    def _image_of(s: Sample, shard: str) -> Member:
        imgs = [m for ext, m in s.components.items() if ext.lower() in IMAGE_EXTS]
        if len(imgs) != 1:
            what = "no image member" if not imgs else f"{len(imgs)} image members"
            raise DatasetError(f"tar shard {shard}: sample {s.key!r} has {what} (members: "
                               f"{', '.join(m.name for m in s.components.values())}); expected one .jpg/.png/...")
        return imgs[0]

    @staticmethod
    def _label_of(s: Sample, shard: str, handle, size: int) -> int:
        m = s.components.get("cls")
        if m is None:
            raise DatasetError(f"tar shard {shard}: sample {s.key!r} has no .cls member (no label); every sample needs "
                               "one (the class number as text)")
        return parse_label(read_member(handle, m, shard, file_size=size), shard, m.name)

    def _from_table(self, table) -> None:
        bad = next(((k, m) for k, m, _ in table if any(c.isspace() for c in m.name)), None)
        if bad is not None:
            raise DatasetError(f"tar shard {self._shards[bad[0]]}: member name {bad[1].name!r} holds whitespace, which "
                               "DALI's index format cannot list; rename the member")
        exts = sorted({_ext(m.name) for _, m, _ in table})
        code = {e: i for i, e in enumerate(exts)}
        # each sample's line of a DALI index file, kept ready: an epoch's index files are these lines in the
        # epoch's order (formatting 1.28 M lines took 3.9 s a start; joining them 0.3 s)
        lines = [f"{_ext(m.name)} {m.offset} {m.size} {m.name}\n".encode("utf-8", "surrogateescape") for _, m, _ in table]
        self._exts = exts
        self._shard_of = np.asarray([k for k, _, _ in table], np.int32)
        self._offset = np.asarray([m.offset for _, m, _ in table], np.int64)
        self._size = np.asarray([m.size for _, m, _ in table], np.int64)
        self._ext = np.asarray([code[_ext(m.name)] for _, m, _ in table], np.uint8)
        self.label_array = np.asarray([lab for _, _, lab in table], np.int64)
        self._lines = b"".join(lines)
        self._line_off = np.zeros(len(lines) + 1, np.int64)
        np.cumsum([len(n) for n in lines], out=self._line_off[1:])

    # ----------------------------------------------------------------------------------------------
    def save_manifest(self, path: str | os.PathLike, *, relative_to: str | None = None) -> None:
        """Write the manifest (atomically). Shard paths are stored relative to ``relative_to`` when given."""
        shards = [os.path.relpath(s, relative_to) if relative_to else s for s in self._shards]
        arrays = dict(format=np.array(FORMAT), shards=np.array(shards, dtype=str), shard_sizes=self._shard_sizes,
                      classes=np.array(self.classes, dtype=str), exts=np.array(self._exts, dtype=str),
                      shard_of=self._shard_of, offset=self._offset, size=self._size, ext=self._ext,
                      labels=self.label_array, lines=np.frombuffer(self._lines, np.uint8), line_off=self._line_off)
        atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz.tmp")

    def _load_manifest(self, path: str, folder: str, data: bytes) -> None:
        try:
            with np.load(bytes_file(data), allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            ok = all(isinstance(d.get(k), np.ndarray) for k in _MANIFEST_TYPES) and all(
                d[k].ndim == (0 if k == "format" else 1) and (d[k].dtype.kind in kinds or d[k].size == 0)
                for k, kinds in _MANIFEST_TYPES.items())
            ok = ok and str(d["format"]) == FORMAT and d["lines"].dtype == np.uint8
            n = len(d["labels"])
            ok = ok and all(len(d[k]) == n for k in ("shard_of", "offset", "size", "ext")) and len(d["line_off"]) == n + 1
            ok = ok and len(d["shard_sizes"]) == len(d["shards"]) and (n == 0 or (
                d["shard_of"].min() >= 0 and d["shard_of"].max() < len(d["shards"]) and d["ext"].max() < len(d["exts"])
                and d["line_off"][-1] == len(d["lines"]) and np.all(np.diff(d["line_off"]) > 0)))
        except DatasetError:
            raise
        except Exception as exc:  # damaged zip / npy: zipfile, ValueError, KeyError, EOFError ...
            raise DatasetError(f"shard manifest {path} is not readable ({type(exc).__name__}: {exc}); re-create it "
                               "with `i2e-shard --index`") from exc
        if not ok:
            raise DatasetError(f"shard manifest {path} is damaged or of another version; re-create it with "
                               "`i2e-shard --index`")
        self._shards = [s if is_s3(s) or os.path.isabs(s) else _join(folder, s) for s in d["shards"].tolist()]
        self._shard_sizes = d["shard_sizes"].astype(np.int64)
        self._exts, self._shard_of, self._offset = d["exts"].tolist(), d["shard_of"], d["offset"]
        self._size, self._ext, self.label_array = d["size"], d["ext"], d["labels"].astype(np.int64)
        self._lines, self._line_off = d["lines"].tobytes(), d["line_off"]
        self._classes = d["classes"].tolist()
        now = _sizes(self._shards)
        for shard, want, got in zip(self._shards, self._shard_sizes.tolist(), now):
            if got is None:
                raise MissingDataError(f"tar shard {shard} (listed in {path}) does not exist")
            if got != want:
                raise DatasetError(f"tar shard {shard} has {got} bytes but {path} says {want}: the shard changed or is "
                                   "truncated; re-create the shard, or the manifest with `i2e-shard --index`")
        ends = self._offset + self._size
        if n and np.any(ends > self._shard_sizes[self._shard_of]):
            bad = int(np.flatnonzero(ends > self._shard_sizes[self._shard_of])[0])
            raise DatasetError(f"{path} does not match tar shard {self._shards[self._shard_of[bad]]}: member "
                               f"{self.member_name(bad)!r} lies past its end; re-create the manifest")

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.label_array)

    @property
    def shards(self) -> list[str]:
        return list(self._shards)

    def shard_path(self, i: int) -> str:
        """The tar shard sample ``i`` lies in."""
        return self._shards[int(self._shard_of[i])]

    def member_name(self, i: int) -> str:
        line = self._lines[self._line_off[i]:self._line_off[i + 1]].decode("utf-8", "surrogateescape")
        return line.rstrip("\n").split(" ", 3)[-1]

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``("shard:member", label)`` per sample (built on each call: for small sets and messages)."""
        return [(f"{self._shards[self._shard_of[i]]}:{self.member_name(i)}", int(self.label_array[i]))
                for i in range(len(self))]

    def epoch_order(self, epoch: int, seed: int, train: bool) -> np.ndarray:
        """All sample indices in the order ``epoch`` reads them (see the module docstring)."""
        if not train:
            return np.arange(len(self), dtype=np.int64)
        rng = np.random.default_rng([seed, epoch, 7])
        shard_pos = rng.permutation(len(self._shards))
        return np.lexsort((rng.random(len(self)), shard_pos[self._shard_of])).astype(np.int64)

    def write_epoch_index(self, folder: str, indices) -> tuple[list[str], list[str]]:
        """DALI index files (in ``folder``) listing samples ``indices`` in that order, one per run of samples
        from the same shard; returns (shard paths, index paths) for the reader."""
        idx = np.asarray(indices, np.int64)
        cuts = np.flatnonzero(np.diff(self._shard_of[idx])) + 1
        lines, off = self._lines, self._line_off.tolist()
        paths, index_paths = [], []
        for r, run in enumerate(np.split(idx, cuts)):
            p = os.path.join(folder, f"{r:06d}.idx")
            with open(p, "wb") as f:
                f.write(b"v1.2 %d\n" % len(run))
                f.write(b"".join([lines[off[i]:off[i + 1]] for i in run.tolist()]))
            paths.append(self._shards[int(self._shard_of[run[0]])])
            index_paths.append(p)
        return paths, index_paths

    def data_error(self, message: str) -> DatasetError | None:
        """The project's error for a DALI error while reading these shards: names the shard (and member) DALI
        names, else the shard set; None for CUDA / driver / memory failures (they pass through)."""
        from .decode_check import is_infrastructure_error
        from .sources import dali_error_detail

        if is_infrastructure_error(message):
            return None
        named = [s for s in self._shards if s in message]
        member = re.search(r"\.tar:(\d+):(\S+?)[\"'\s]", message + " ")
        where = f"tar shard {named[0]}" if named else f"a tar shard of {self.root}"
        if member:
            where += f" (member {member.group(2)})"
        elif not named:
            found = self._find_culprits(message)
            if found:
                where = "; ".join(f"tar shard {shard} (member {name})" for shard, name in found[:10])
        return DatasetError(f"DALI could not read or decode {where}: {dali_error_detail(message)}\n"
                            f"Check the shards with `i2e-shard --verify {self.root}`; re-create damaged ones.")

    def _find_culprits(self, message: str) -> list[tuple[str, str]]:
        """(shard, member) of the images DALI cannot decode, found by decode_check's isolated search over the
        members copied out to files; only for local sets up to _CULPRIT_LIMIT images (else: --verify)."""
        from .decode_check import find_culprits

        if len(self) > _CULPRIT_LIMIT or any(is_s3(s) for s in self._shards):
            return []
        tmp = tempfile.mkdtemp(prefix="i2e-wds-check-")
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, tmp, True)
            files, handles = {}, {}
            for i in range(len(self)):
                shard = self._shards[int(self._shard_of[i])]
                if shard not in handles:
                    handles[shard] = stack.enter_context(open(shard, "rb"))
                m = Member(self.member_name(i), int(self._offset[i]), int(self._size[i]))
                path = os.path.join(tmp, f"{i}.{self._exts[self._ext[i]]}")
                try:
                    Path(path).write_bytes(read_member(handles[shard], m, shard))
                except DatasetError:
                    return [(shard, m.name)]
                files[path] = (shard, m.name)
            try:
                return [files[p] for p, _ in find_culprits(list(files), "", num_threads=2) if p in files]
            except RuntimeError:
                return []

    def __repr__(self) -> str:
        return f"ShardSource({str(self.root)!r}, {len(self._shards)} shards, {len(self)} images, {len(self.classes)} classes)"


def _ext(name: str) -> str:
    return name[name.find(".", name.rfind("/") + 1) + 1:]


# --------------------------------------------------------------------------------------------------
def shard_pipeline(loader, epoch: int, seed: int, checkpoint: str | None):
    """EventLoader's pipeline builder for kind "wds": this epoch's and rank's samples as DALI index files,
    read by ``pipelines.shards`` with the folder graph's views."""
    from nvidia.dali.plugin.pytorch import LastBatchPolicy
    from pipelines.folder import READER_NAME, FolderPipelineConfig
    from pipelines.shards import build_shard_pipeline

    source = loader.source
    order = source.epoch_order(epoch, loader.seed, loader.train)
    if loader.train:
        start = loader.shard_id * (len(source) // loader.num_shards)
        idx = order[start:start + loader.num_samples]
    else:
        idx = order[slice(*loader._eval_range)]
    cfg = FolderPipelineConfig(
        train=loader.train, batch_size=loader.batch_size, crop_size=loader.crop_size,
        resize_size=loader.resize_size, eval_view=loader.eval_view, device_id=loader._device_id(),
        num_threads=loader.num_threads, seed=seed, shuffle=False,
        prefetch_queue_depth=loader.dali.prefetch_queue_depth, hw_decoder_load=loader.dali.hw_decoder_load,
        cpu_ops=loader.decode == "cpu", train_view="resize" if loader.aug == "baseline1" else "random-resized-crop",
        max_pixels=loader.max_pixels,  # the declared-size guard (pipelines/folder.py), checked by the loader
    )
    loader._apply_options(cfg)
    tmp = tempfile.mkdtemp(prefix="i2e-wds-")
    try:  # DALI reads the index files while the pipeline is built; they are not needed after
        paths, index_paths = source.write_epoch_index(tmp, idx)
        pipe = build_shard_pipeline(paths, index_paths, idx, cfg, checkpoint)
        try:
            pipe.build()
        except RuntimeError as exc:
            err = source.data_error(str(exc))
            if err is None:
                raise
            raise err from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    policy = LastBatchPolicy.DROP if loader.train else LastBatchPolicy.PARTIAL
    return pipe, {"reader_name": READER_NAME, "last_batch_policy": policy, "max_pixels": cfg.max_pixels}
