"""--skip-bad at scale: time the decode check of a large class-folder set, spread over the ranks.

Make a corpus of hard links to a few real JPEGs (no extra disk), then run the check the way the trainer's
--skip-bad does (data/decode_check.skip_bad_check), alone or under torchrun:

    python benchmarks/skip_bad_scale.py make /tmp/corpus --files 100000 --from /path/to/jpegs
    torchrun --nproc_per_node 2 benchmarks/skip_bad_scale.py check /tmp/corpus --cache /tmp/corpus-cache
    rm -rf /tmp/corpus /tmp/corpus-cache

``check`` prints, on rank 0, the files checked, the seconds of the first (uncached) and second (cached)
check, and files per second.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def make(root: Path, files: int, source: Path, classes: int) -> None:
    jpegs = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:64]
    if not jpegs:
        raise SystemExit(f"no JPEG in {source}")
    per_class = -(-files // classes)
    n = 0
    for c in range(classes):
        folder = root / "train" / f"c{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if n == files:
                break
            os.link(jpegs[n % len(jpegs)], folder / f"{n:07d}.jpg")
            n += 1
    print(f"{n} hard links to {len(jpegs)} JPEGs in {root}/train ({classes} classes)")


def check(root: Path, cache: Path) -> None:
    import torch.distributed as dist

    from i2e_dali.data.decode_check import skip_bad_check

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    log = print if rank == 0 else None
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        bad = skip_bad_check(root, splits=("train",), cache_dir=cache, progress=False, log=log)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        n = sum(len(fs) for _, _, fs in os.walk(root / "train"))
        world = dist.get_world_size() if dist.is_initialized() else 1
        print(f"skip_bad_check: {n} files, {world} rank(s): {times[0]:.1f} s uncached ({n / times[0]:.0f} files/s), "
              f"{times[1]:.1f} s cached; {len(bad)} unusable")
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("root", type=Path)
    m.add_argument("--files", type=int, default=100_000)
    m.add_argument("--classes", type=int, default=100)
    m.add_argument("--from", dest="source", type=Path, required=True)
    c = sub.add_parser("check")
    c.add_argument("root", type=Path)
    c.add_argument("--cache", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "make":
        make(a.root, a.files, a.source, a.classes)
    else:
        check(a.root, a.cache)


if __name__ == "__main__":
    sys.exit(main())
