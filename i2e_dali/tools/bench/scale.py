"""``i2e-bench scale``: start-up time and memory of a folder data set against its file count.

Builds ``OUT/n<files>/train/<class>/<i>.JPEG`` as hard links to a few real JPEGs (no data blocks: a million
files cost directory entries only), then measures each step in a fresh process (so caches of Python
objects and DALI do not carry over; the page cache is warm after the first walk, as on a node that has
read the folder before):

- ``scan``: ``open_source`` walking and ``stat``-ing every file (what every rank did before the index);
- ``index write``: the same walk saved as the folder index (rank 0, once);
- ``from index``: ``open_source(..., index=...)`` on every other start (every rank, every node);
- ``loader``: + ``EventLoader`` construction (train, CPU; its first epoch's file list and DALI pipeline);
- ``--shards``: the same count as tar shards (a manifest; the tars sparse files): ``ShardSource`` and
  ``EventLoader`` start-up (its first epoch's index files and DALI's webdataset reader).
Extra RSS is the process's resident memory after the step minus after the imports. Not a CI test.

    i2e-bench scale --out /work/scale --files 10000 1281167      # then the folder is deleted (--keep keeps it)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ...errors import BenchError

__all__ = ["run_scale", "add_scale_parser", "build_tree"]

_SEEDS = 8  # distinct real JPEGs the links point to (at least)
_LINKS_PER_FILE = 50_000  # ext4 allows 65,000 links to one inode


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_tree(out: Path, files: int, classes: int, seed: int = 0) -> Path:
    """``out/train/<class>/<i>.JPEG`` (and a one-image-per-class ``val``) as hard links; returns ``out``."""
    from PIL import Image

    seeds = out / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    count = max(_SEEDS, -(-(files + classes) // _LINKS_PER_FILE))
    for k in range(count):
        p = seeds / f"{k}.JPEG"
        if not p.exists():
            img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(p, quality=85)
    for split, n in (("train", files), ("val", classes)):
        for c in range(classes):
            d = out / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            lo, hi = c * n // classes, (c + 1) * n // classes
            for i in range(lo, hi):
                target = d / f"n{c:08d}_{i:08d}.JPEG"
                if not target.exists():
                    os.link(seeds / f"{i % count}.JPEG", target)
    return out


def build_shard_set(out: Path, files: int, classes: int, per_shard: int = 1251) -> Path:
    """A manifest for ``files`` samples in tar shards of ``per_shard``, the tars as sparse files of the right
    size (no data blocks: start-up reads the manifest and sizes, not the tars); returns the shard folder."""
    from ...data.shards import ShardSource
    from ...data.tar_index import Member

    folder = out / "wds" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    table, shards, sizes = [], [], []
    for k, a in enumerate(range(0, files, per_shard)):
        n = min(per_shard, files - a)
        path = folder / f"train-{k:06d}.tar"
        size = 1024 + n * (110_592 + 1024)  # 108 KB images + label members, headers
        with open(path, "wb") as f:
            f.truncate(size)
        shards.append(str(path))
        sizes.append(size)
        table += [(k, Member(f"{a + j:09d}.jpeg", 512 + j * (110_592 + 1024), 110_000), (a + j) % classes)
                  for j in range(n)]
    src = ShardSource.from_table(shards, sizes, table, [f"n{c:08d}" for c in range(classes)], str(folder))
    src.save_manifest(folder / "shards.npz", relative_to=str(folder))
    return folder


def _child(root: str, step: str, index: str) -> dict:
    """One measured step in this (fresh) process; prints a JSON line."""
    t0 = time.perf_counter()
    import torch  # noqa: F401  (the imports every rank pays before it touches the data)
    import nvidia.dali  # noqa: F401

    from ...data.event_loader import EventLoader
    from ...data.sources import open_source

    base, imports_s = _rss_mb(), time.perf_counter() - t0
    t = time.perf_counter()
    if step in ("shards", "shards-loader"):
        from ...data.shards import ShardSource

        src = ShardSource(root)
    elif step == "scan":
        src = open_source(root, "train")
    elif step == "index-write":
        if os.path.exists(index):
            shutil.rmtree(index)
        src = open_source(root, "train", index=index)
    else:
        src = open_source(root, "train", index=index)
    source_s, source_rss = time.perf_counter() - t, _rss_mb()
    out = {"step": step, "files": len(src), "imports_s": round(imports_s, 2), "source_s": round(source_s, 3),
           "extra_rss_mb": round(source_rss - base, 1)}
    if step in ("loader", "shards-loader"):
        t = time.perf_counter()
        loader = EventLoader(src, 128, train=True, device="cpu")
        out["loader_s"] = round(time.perf_counter() - t, 3)
        out["loader_extra_rss_mb"] = round(_rss_mb() - base, 1)
        del loader
    print("RESULT " + json.dumps(out), flush=True)
    return out


def _measure(root: Path, step: str, index: Path) -> dict:
    cmd = [sys.executable, "-m", "i2e_dali.tools.bench.scale", "--child", str(root), step, str(index)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise BenchError(f"scale step {step} on {root} failed:\n{r.stderr[-2000:]}")


def run_scale(args) -> dict:
    from .common import environment, finish, format_table

    import torch

    if not args.out:
        raise BenchError("scale needs --out DIR (a folder with room for the links; deleted afterwards unless --keep)")
    out = Path(args.out)
    counts = sorted(args.files or [10_000, 1_281_167])
    rows, results = [], []
    try:
        for n in counts:
            root = out / f"n{n}"
            t = time.perf_counter()
            build_tree(root, n, min(args.classes, n))
            build_s = time.perf_counter() - t
            index = root / "index"
            got = {s: _measure(root, s, index) for s in ("scan", "index-write", "from-index", "loader")}
            if args.shards:  # the same count as tar shards: manifest start-up (sparse tars, no data)
                wds = build_shard_set(root, n, min(args.classes, n))
                got.update({s: _measure(wds, s, index) for s in ("shards", "shards-loader")})
            results.append({"files": n, "build_s": round(build_s, 1), **got})
            rows.append([f"{n:,}", got["scan"]["source_s"], got["scan"]["extra_rss_mb"], got["index-write"]["source_s"],
                         got["from-index"]["source_s"], got["from-index"]["extra_rss_mb"], got["loader"]["loader_s"],
                         got["loader"]["loader_extra_rss_mb"]]
                        + ([got["shards"]["source_s"], got["shards"]["extra_rss_mb"], got["shards-loader"]["loader_s"],
                            got["shards-loader"]["loader_extra_rss_mb"]] if args.shards else []))
            print(f"{n:,} files: " + json.dumps(got), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    table = format_table("Folder start-up against file count (fresh process per step; warm page cache)",
                         ["files", "scan s", "scan +MB", "index write s", "from index s", "from index +MB",
                          "+ EventLoader s", "total +MB"]
                         + (["shards s", "shards +MB", "+ EventLoader s", "total +MB"] if args.shards else []), rows)
    record = {"mode": "scale", "environment": environment(torch.device("cpu")),
              "settings": {"files": counts, "classes": args.classes}, "results": results}
    return finish(record, table, args)


def add_scale_parser(sub, common) -> None:
    sc = sub.add_parser("scale", help="folder start-up time and RSS against the file count (hard-linked corpus)")
    common(sc, device=False)
    sc.add_argument("--out", required=True, help="where to build the linked corpora (deleted afterwards)")
    sc.add_argument("--files", type=int, nargs="+", help="file counts (default 10000 1281167)")
    sc.add_argument("--classes", type=int, default=1000)
    sc.add_argument("--keep", action="store_true", help="keep the linked corpora")
    sc.add_argument("--shards", action="store_true",
                    help="also time a tar-shard set of each size from its manifest (sparse tars, no data)")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
