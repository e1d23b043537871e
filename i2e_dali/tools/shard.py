"""``i2e-shard SRC OUT``: pack an image-folder data set into WebDataset tar shards that DALI reads.

    i2e-shard /data/imagenet /data/imagenet-wds --shard-size 256MB --workers 8
    torchrun --nproc_per_node 4 -m i2e_dali.tools.shard /data/imagenet /data/imagenet-wds   # each rank a share
    i2e-shard --verify /data/imagenet-wds          # read every shard back, compare with index and manifest
    i2e-shard --index /data/other-wds/train        # index files + manifest for shards made elsewhere

Layout written: ``OUT/classes.json`` (class map), and per split ``OUT/<split>/<split>-NNNNNN.tar`` with the
DALI index ``<split>-NNNNNN.idx`` beside each (wds2idx's v1.2 format, from the headers written here) and
``OUT/<split>/shards.npz`` (the manifest every rank reads; see ``i2e_dali.data.shards``). A sample is
``<key>.<ext>`` (the original image bytes, its extension lower-cased) plus ``<key>.cls`` (the label as
text, the WebDataset convention); ``key`` is the image's index in the folder's sorted listing (9 digits).

Order: the train split in one seeded global permutation (DALI's reader reads a shard front to back, so a
shard must already be a random sample of the set); val in the folder's order, so evaluation over shards
matches evaluation over the folder image for image. Each shard is written atomically (tar, then index);
a rerun skips shards whose index lists exactly the planned members, so a killed run resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError, I2EError
from ..fsio import atomic_write, atomic_write_text
from ..data.shards import CLASS_MAP, MANIFEST, ShardSource, expand_braces, index_path_of
from ..data.tar_index import Member, Sample, format_index, group_samples, parse_index, parse_label, scan_tar

__all__ = ["plan_shards", "write_split", "verify", "index_shards", "main"]

_HEADER = 512


def _tar_bytes(size: int) -> int:
    return _HEADER + -(-size // _HEADER) * _HEADER


def plan_shards(sizes: np.ndarray, shard_bytes: int, max_samples: int | None = None) -> list[tuple[int, int]]:
    """[begin, end) ranges over the ordered samples so each shard holds about ``shard_bytes`` (image + label
    members with their headers) and at most ``max_samples`` samples."""
    cost = np.asarray([_tar_bytes(int(s)) + _tar_bytes(8) for s in sizes], np.int64)
    ranges, start, acc = [], 0, 0
    for i, c in enumerate(cost.tolist()):
        if i > start and (acc + c > shard_bytes or (max_samples and i - start >= max_samples)):
            ranges.append((start, i))
            start, acc = i, 0
        acc += c
    if start < len(cost):
        ranges.append((start, len(cost)))
    return ranges


def _members(key: str, path: str) -> tuple[str, str]:
    ext = os.path.splitext(path)[1].lower().lstrip(".") or "jpg"
    return f"{key}.{ext}", f"{key}.cls"


def _write_shard(job) -> tuple[str, int, list]:
    """Write one shard (tar, then its index) atomically; returns (tar path, size, [(Member, label)])."""
    tar_path, items = job  # items: (key, source path, label)
    samples, out = [], []

    def write(f):
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, path, label in items:
                img_name, cls_name = _members(key, path)
                with open(path, "rb") as img:
                    data = img.read()
                sample = Sample(key)
                for name, payload in ((img_name, data), (cls_name, str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o444
                    header = info.tobuf(tarfile.USTAR_FORMAT, tar.encoding, tar.errors)
                    offset = f.tell() + len(header)  # where DALI's index says the data starts
                    tar.addfile(info, _Reader(payload))
                    sample.components[name.split(".", 1)[1]] = Member(name, offset, len(payload))
                samples.append(sample)
                out.append((sample.components[img_name.split(".", 1)[1]], label))

    size = atomic_write(tar_path, write)
    atomic_write_text(index_path_of(tar_path), format_index(samples))
    return tar_path, size, out


class _Reader:
    """A file-like view of bytes for ``TarFile.addfile``."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def _done(tar_path: str, items) -> list | None:
    """The shard's (Member, label) list when it is complete and holds exactly the planned members."""
    idx = index_path_of(tar_path)
    if not (os.path.exists(tar_path) and os.path.exists(idx)):
        return None
    try:
        samples = parse_index(Path(idx).read_bytes(), idx, tar_size=os.path.getsize(tar_path), shard=tar_path)
    except DatasetError:
        return None
    if [s.key for s in samples] != [k for k, _, _ in items]:
        return None
    out = []
    for s, (key, path, label) in zip(samples, items):
        img_name, _ = _members(key, path)
        ext = img_name.split(".", 1)[1]
        if ext not in s.components or "cls" not in s.components:
            return None
        out.append((s.components[ext], label))
    return out


def write_split(source, out: Path, split: str, *, shard_bytes: int, max_samples: int | None, seed: int,
                workers: int, rank: int = 0, world: int = 1, progress=print) -> dict:
    """This rank's shards of one split (skipping complete ones); returns a summary dict."""
    from pipelines import shard_bounds

    n = len(source)
    order = np.random.default_rng(seed).permutation(n) if split == "train" else np.arange(n)
    sizes = np.asarray([source.size(int(i)) for i in order], np.int64)
    ranges = plan_shards(sizes, shard_bytes, max_samples)
    width = max(6, len(str(len(ranges) - 1)))
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    lo, hi = shard_bounds(len(ranges), rank, world)
    jobs, skipped = [], 0
    for k in range(lo, hi):
        a, b = ranges[k]
        items = [(f"{int(i):09d}", source.path(int(i)), int(source.label_array[int(i)])) for i in order[a:b]]
        tar_path = str(folder / f"{split}-{k:0{width}d}.tar")
        if _done(tar_path, items) is not None:
            skipped += 1
        else:
            jobs.append((tar_path, items))
    started = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for done, (path, _, _) in enumerate(pool.map(_write_shard, jobs), 1):
                progress(f"{split}: wrote {path} ({done}/{len(jobs)})")
    else:
        for done, job in enumerate(jobs, 1):
            _write_shard(job)
            progress(f"{split}: wrote {job[0]} ({done}/{len(jobs)})")
    return {"split": split, "images": n, "shards": len(ranges), "written": len(jobs), "skipped": skipped,
            "seconds": round(time.perf_counter() - started, 2), "ranges": ranges, "order": order, "width": width}


def write_manifest(source, out: Path, split: str, plan: dict) -> ShardSource:
    """The split's manifest from the plan and the index files (every shard must be complete)."""
    folder = out / split
    shards, sizes, table = [], [], []
    for k, (a, b) in enumerate(plan["ranges"]):
        tar_path = str(folder / f"{split}-{k:0{plan['width']}d}.tar")
        items = [(f"{int(i):09d}", source.path(int(i)), int(source.label_array[int(i)])) for i in plan["order"][a:b]]
        got = _done(tar_path, items)
        if got is None:
            raise DatasetError(f"{tar_path} is missing or incomplete; rerun i2e-shard to finish it")
        shards.append(tar_path)
        sizes.append(os.path.getsize(tar_path))
        table += [(k, member, label) for member, label in got]
    src = ShardSource.from_table(shards, sizes, table, source.classes, str(folder))
    src.save_manifest(folder / MANIFEST, relative_to=str(folder))
    return src


def verify(out: str | os.PathLike, progress=print) -> int:
    """Read every shard of every split under ``out`` (or of the one shard folder ``out``) and compare each
    tar's members with its index and the manifest; returns the number of samples checked."""
    out = Path(out)
    folders = [out / s for s in ("train", "val") if (out / s / MANIFEST).exists()] or [out]
    total = 0
    for folder in folders:
        src = ShardSource(str(folder))
        by_shard: dict[int, list[int]] = {}
        for i, k in enumerate(src._shard_of.tolist()):
            by_shard.setdefault(k, []).append(i)
        for k, shard in enumerate(src.shards):
            size = os.path.getsize(shard)
            with open(shard, "rb") as f:
                members, contents = scan_tar(f, shard, read_ext=("cls",), size=size)
            samples = group_samples(members)
            idx = index_path_of(shard)
            if os.path.exists(idx):
                listed = parse_index(Path(idx).read_bytes(), idx, tar_size=size, shard=shard)
                if [(s.key, sorted((e, m.offset, m.size) for e, m in s.components.items())) for s in listed] != \
                        [(s.key, sorted((e, m.offset, m.size) for e, m in s.components.items())) for s in samples]:
                    raise DatasetError(f"index file {idx} does not match tar shard {shard}; re-create it with "
                                       f"`i2e-shard --index {shard}`")
            mine = by_shard.get(k, [])
            if len(mine) != len(samples):
                raise DatasetError(f"tar shard {shard} holds {len(samples)} samples, the manifest lists {len(mine)}")
            for i, s in zip(mine, samples):
                img = ShardSource._image_of(s, shard)
                cls = s.components.get("cls")
                if cls is None:
                    raise DatasetError(f"tar shard {shard}: sample {s.key!r} has no .cls member (no label)")
                label = parse_label(contents[cls.name], shard, cls.name, len(src.classes))
                if (img.offset, img.size, img.name, label) != (int(src._offset[i]), int(src._size[i]),
                                                                src.member_name(i), int(src.label_array[i])):
                    raise DatasetError(f"tar shard {shard}: member {img.name!r} differs from the manifest")
            total += len(samples)
        progress(f"{folder}: {len(src.shards)} shards, {len(src)} samples verified")
    return total


def index_shards(spec: str, *, classes: list[str] | None = None, progress=print) -> ShardSource:
    """Index files for shards made elsewhere (e.g. by ``webdataset.TarWriter``) and, for a folder, a manifest."""
    shards = expand_braces(spec) if "{" in spec else (
        sorted(str(p) for p in Path(spec).glob("*.tar")) if os.path.isdir(spec) else [spec])
    for shard in shards:
        idx = index_path_of(shard)
        with open(shard, "rb") as f:
            members, _ = scan_tar(f, shard, size=os.path.getsize(shard))
        atomic_write_text(idx, format_index(group_samples(members)))
        progress(f"indexed {shard} -> {idx}")
    src = ShardSource(shards, classes=classes)
    if os.path.isdir(spec):
        src.save_manifest(Path(spec) / MANIFEST, relative_to=spec)
    return src


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise ConfigError(f"--shard-size must be a size like 256MB, 1GB or 1000000, got {text!r}") from None


def main(argv=None) -> int:
    from ..data.sources import open_source
    from ..placement import DEFAULT_SEED, usable_cores
    from .export_dist import barrier, finish, init_ranks

    ap = argparse.ArgumentParser(prog="i2e-shard", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="image folder set (SRC/train, SRC/val), or the shards for --verify/--index")
    ap.add_argument("out", nargs="?", help="output folder")
    ap.add_argument("--shard-size", default="256MB", help="bytes per shard (default 256MB)")
    ap.add_argument("--max-samples", type=int, default=None, help="at most this many samples per shard")
    ap.add_argument("--splits", nargs="+", choices=["train", "val"],
                    help="default: those of train/ and val/ that SRC holds")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the train split's global shuffle")
    ap.add_argument("--workers", type=int, default=None, help="writer processes (default: this rank's cores)")
    ap.add_argument("--folder-index", default=None, help="folder of i2e folder-index files to read/write")
    ap.add_argument("--verify", action="store_true", help="read back and check the shards in SRC (or OUT)")
    ap.add_argument("--index", action="store_true", help="write index files and a manifest for the shards SRC")
    args = ap.parse_args(argv)
    try:
        if args.verify and not args.out:
            print(f"verified {verify(args.src)} samples")
            return 0
        if args.index:
            src = index_shards(args.src)
            print(f"{len(src.shards)} shards, {len(src)} samples indexed")
            return 0
        if not args.out:
            raise ConfigError("give SRC and OUT (or --verify SHARDS / --index SHARDS)")
        shard_bytes = _size(args.shard_size)
        rank, world, started = init_ranks()
        workers = args.workers or max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        out = Path(args.out)
        classes = None
        splits = args.splits or [s for s in ("train", "val") if "://" in args.src or (Path(args.src) / s).is_dir()]
        if not splits:
            raise DatasetError(f"{args.src} holds neither train/ nor val/ (the class-folder layout SRC/train/<class>/...)")
        for split in splits:
            source = open_source(args.src, split, "folder", index=args.folder_index)
            if classes is not None and source.classes != classes:
                raise DatasetError(f"{args.src}: train and val have different class folders")
            classes = source.classes
            plan = write_split(source, out, split, shard_bytes=shard_bytes, max_samples=args.max_samples,
                               seed=args.seed, workers=workers, rank=rank, world=world,
                               progress=print if rank == 0 else (lambda *_: None))
            barrier()
            if rank == 0:
                write_manifest(source, out, split, plan)
                print(f"{split}: {plan['images']} images in {plan['shards']} shards ({plan['written']} written by "
                      f"rank 0, {plan['skipped']} already complete) in {plan['seconds']} s")
            barrier()
        if rank == 0:
            atomic_write_text(out / CLASS_MAP, json.dumps({"classes": classes}, indent=1) + "\n")
            if args.verify:
                print(f"verified {verify(out)} samples")
        barrier()
        finish(started)
        return 0
    except I2EError as exc:
        print(f"i2e-shard: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only OUT, an image that vanished: name the file, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"i2e-shard: error: {exc.strerror or exc}{where}; fix it and rerun (complete shards are kept)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
