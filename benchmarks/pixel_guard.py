"""Cost of the pipeline's declared-size guard (pipelines/folder.py ``max_pixels``): the folder graph alone (DALI,
CPU, no event conversion: the worst case for the guard's share), guard off (0) vs on, alternating runs:

    python benchmarks/pixel_guard.py /path/to/jpegs --batch-size 16 --batches 40 --repeats 5

Prints, per view, the median milliseconds per batch with the guard off and on and their ratio. The end-to-end
cost (with the conversion) is ``i2e-bench loader`` run with ``I2E_DALI_MAX_PIXELS=0`` and without it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.folder import FolderPipelineConfig, build_folder_pipeline  # noqa: E402


def time_view(files: list[str], train: bool, max_pixels: int, args) -> float:
    cfg = FolderPipelineConfig(train=train, batch_size=args.batch_size, num_threads=args.threads, crop_size=224,
                               resize_size=256, max_pixels=max_pixels)
    pipe = build_folder_pipeline(files, list(range(len(files))), cfg)
    pipe.build()
    for _ in range(3):  # warm-up: thread pools, first allocations
        pipe.run()
    start = time.perf_counter()
    for _ in range(args.batches):
        pipe.run()
    return (time.perf_counter() - start) / args.batches * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a folder of JPEGs (searched recursively)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=89_478_485, help="max_pixels when on (default PIL's)")
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEG under {args.data}")
    print(f"{len(files)} JPEGs, batch {args.batch_size}, {args.batches} batches x {args.repeats} repeats, "
          f"{args.threads} DALI threads, CPU")
    for train in (True, False):
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(args.repeats):  # alternate, and swap the order every repeat: drift hits both alike
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                runs[mode].append(time_view(files, train, args.limit if mode == "on" else 0, args))
        off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
        spread = {m: f"{min(v):.1f}-{max(v):.1f}" for m, v in runs.items()}
        print(f"{'train' if train else 'eval':5s} view: guard off {off:.2f} ms/batch ({spread['off']}), "
              f"on {on:.2f} ms/batch ({spread['on']}), ratio on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
