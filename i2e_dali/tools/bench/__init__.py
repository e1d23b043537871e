"""Throughput benchmark: ``i2e-bench (or python -m i2e_dali.tools.bench) {convert,loader,train,corpus,proof}`` (console: i2e-bench).

Each mode prints one table and writes a JSON record (device, library versions, date, settings, every
measured number) to ``--json`` (default ``benchmarks/results/<device>-<date>-<mode>.json``).

- ``convert``: images/s and GB/s of each conversion implementation on the same input - the fused
  Triton kernel (CUDA only), the torch path (``i2e_convert(impl="torch")``) and the conv-based
  baseline (``i2e_dali.convert.conv_baseline.conv_i2e``, the authors' approach) - over image sizes, batch sizes,
  output dtypes and motion modes, with the fraction of the memory roofline (bytes read + written per
  batch over the measured device-to-device copy bandwidth). All implementations are checked to give
  identical events before they are timed.
- ``loader``: images/s delivered as events on the device by DALI + I2E (``EventLoader``, GPU and CPU
  pipelines) and by the reference recipe (torchvision ImageFolder + PIL decode + RandomResizedCrop/flip
  in DataLoader worker processes over all cores, pinned memory, conversion with ``i2e_convert`` on the
  device), same files, same output shapes, one run.
- ``train``: images/s of MS-ResNet18 (T=8) training steps (``make_train_step``) fed by synthetic
  batches already on the device (the ceiling), by ``EventLoader`` and by the reference recipe, with the
  fraction of wall time the training loop spent waiting for data.
- ``corpus``: write an ImageNet-like JPEG corpus from real photographs (``corpus.py`` here); ``--shards``
  also packs it into WebDataset shards (``i2e-shard``) beside it.
- ``scale``: folder start-up time and memory against the file count (``scale.py`` here).

Timing: warm-up runs first, then repeated measurements; medians are reported (convert also keeps the
minimum and every sample; its contenders take turns, so a noisy shared machine slows them alike). On CUDA, kernels are
timed with CUDA events and loops end with a device synchronisation; on the CPU with perf_counter.
Defaults are small on the CPU so every mode runs in seconds there (``--quick`` for smoke tests).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ...errors import BenchError
from .common import DTYPES, environment, finish, format_table
from .convert import run_convert
from .loader import run_loader
from .train import run_train
from .proof import add_proof_parser, proof_exit_code, run_proof
from .scale import add_scale_parser, run_scale
from ...placement import DEFAULT_SEED

__all__ = ["main", "build_parser", "run_convert", "run_loader", "run_train", "run_corpus", "run_proof",
           "copy_bandwidth"]

def run_corpus(args) -> dict:
    from .corpus import CorpusConfig, generate_corpus

    if not args.out:
        raise BenchError("corpus needs --out DIR (the corpus root; train/ and val/ are made inside)")
    kw = {} if args.samples is None else {"samples": args.samples}
    cfg = CorpusConfig(out=args.out, images=args.images, val_images=args.val_images, classes=args.classes,
                       seed=args.seed, long_side=args.long_side, file_kb=args.file_kb, workers=args.workers,
                       progress=not args.quick, **kw)
    manifest = generate_corpus(cfg)
    if args.shards is not None:  # the same images as WebDataset tar shards (i2e-shard), for loader --shards
        from ..shard import main as shard_main

        shards = Path(args.shards or f"{cfg.out}-wds")
        if shard_main([str(cfg.out), str(shards), "--shard-size", args.shard_size, "--seed", str(args.seed)]
                      + (["--workers", str(args.workers)] if args.workers else [])) != 0:
            raise BenchError(f"could not pack {cfg.out} into shards at {shards}")
        manifest = dict(manifest, shards=str(shards))
    kb, w, h = manifest["file_kb"], manifest["width"], manifest["height"]
    rows = [
        ["train images", manifest["train_images"]], ["val images", manifest["val_images"]],
        ["classes", manifest["classes"]], ["total MB", manifest["total_mb"]],
        ["file KB mean", kb["mean"]], ["file KB p10 / p90", f"{kb['p10']:.0f} / {kb['p90']:.0f}"],
        ["mean width x height", f"{w['mean']:.0f} x {h['mean']:.0f}"],
        ["width range", f"{w['min']}-{w['max']}"], ["height range", f"{h['min']}-{h['max']}"],
    ] + ([["tar shards", manifest["shards"]]] if "shards" in manifest else [])
    record = {"mode": "corpus", "environment": environment(torch.device("cpu")), "settings": cfg.settings(),
              "out": str(cfg.out), "corpus": manifest}
    if not args.json:  # the manifest in the corpus folder is the record; --json writes a copy elsewhere
        print(format_table(f"Corpus {cfg.out}", ["", "value"], rows))
        print(f"\nmanifest {cfg.out / 'corpus.json'}")
        return record
    return finish(record, format_table(f"Corpus {cfg.out}", ["", "value"], rows), args)

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="i2e-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp, *, device=True):
        sp.add_argument("--json", help="where to write the JSON record (default benchmarks/results/<device>-<date>-<mode>.json)")
        sp.add_argument("--quick", action="store_true", help="tiny settings for smoke tests (seconds on a CPU)")
        sp.add_argument("--seed", type=int, default=DEFAULT_SEED)
        if device:
            sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:i]")
            sp.add_argument("--warmup", type=int, help="untimed runs first (default: GPU 10, CPU 1-2)")
            sp.add_argument("--timesteps", type=int, default=8)

    c = sub.add_parser("convert", help="conversion throughput: fused kernel vs torch path vs conv baseline")
    common(c)
    c.add_argument("--sizes", type=int, nargs="+", help="square image sizes (default 128 224)")
    c.add_argument("--batch-sizes", type=int, nargs="+", help="default GPU: 64 256, CPU: 16")
    c.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="output dtypes (default GPU: bool float16 float32, CPU: float32)")
    c.add_argument("--modes", nargs="+", choices=["eval", "train"], help="canonical or random motions (default both)")
    c.add_argument("--impls", nargs="+", choices=["fused", "torch", "conv"], help="default all (fused on CUDA only)")
    c.add_argument("--repeats", type=int, help="timed runs per configuration (default GPU 30, CPU 5)")
    c.add_argument("--reuse-output", action="store_true",
                   help="fused/torch write into one preallocated buffer (i2e_convert(out=...)); the conv "
                        "baseline allocates as the authors' code does. On CPUs fresh output memory is "
                        "page-faulted on every call and can cost more than the conversion")
    c.add_argument("--fused-configs", nargs="+", metavar="TILE:WARPS:MAXNREG",
                   help="also time the fused kernel at these launch shapes (GPU tuning), e.g. 512:4:none 2048:8:128")
    c.add_argument("--copy-mib", type=int, help="buffer for the copy-bandwidth roofline (default GPU 1024, CPU 64)")

    def data_args(sp):
        sp.add_argument("--data", help="corpus root with train/<class>/*.JPEG (default: a small temporary corpus)")
        sp.add_argument("--corpus-images", type=int, help="size of the temporary corpus (default 64; quick 16)")
        sp.add_argument("--samples", help="official-samples folder for the temporary corpus")
        sp.add_argument("--pipelines", nargs="+",
                        choices=["dali-gpu", "dali-cpu", "dali-gpu-wds", "dali-cpu-wds", "reference"],
                        help="default GPU: dali-gpu dali-gpu-wds dali-cpu dali-cpu-wds reference; CPU: dali-cpu "
                             "dali-cpu-wds reference (-wds: the same images as tar shards)")
        sp.add_argument("--shards", help="the same images as i2e-shard output (default: packed into <data>-wds)")
        sp.add_argument("--batch-size", type=int)
        sp.add_argument("--crop", type=int, help="training crop size (default 224; CPU train 64)")
        sp.add_argument("--dtype", default="float32", choices=list(DTYPES), help="events dtype (default float32)")
        sp.add_argument("--threads", type=int, help="DALI CPU threads (default: EventLoader's choice)")
        sp.add_argument("--workers", type=int, help="reference DataLoader workers (default: all cores)")

    lo = sub.add_parser("loader", help="events/s delivered on the device: DALI+I2E vs the reference recipe")
    common(lo)
    data_args(lo)
    lo.add_argument("--batches", type=int, help="timed batches per pipeline (default GPU 200, CPU 12)")

    tr = sub.add_parser("train", help="MS-ResNet training img/s: synthetic ceiling vs EventLoader vs reference")
    common(tr)
    data_args(tr)
    tr.add_argument("--steps", type=int, help="timed steps per feed (default GPU 50, CPU 3)")
    tr.add_argument("--arch", default="msresnet18")
    tr.add_argument("--width", type=int, help="stage-1 channels (paper 64; CPU default 16)")
    tr.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="auto: bf16 on CUDA, off on CPU")
    tr.add_argument("--profile", action="store_true",
                    help="also profile one step (torch.profiler): the 15 most expensive kernels (GPU) / operators (CPU)")

    co = sub.add_parser("corpus", help="write an ImageNet-like JPEG corpus from real photographs")
    common(co, device=False)
    co.add_argument("--out", required=True, help="corpus root (train/ and val/ are created inside)")
    co.add_argument("--images", type=int, default=1000, help="training images (default 1000)")
    co.add_argument("--val-images", type=int, help="validation images (default a tenth, at least one per class)")
    co.add_argument("--classes", type=int, default=100, help="class folders, up to 1000 (default 100)")
    co.add_argument("--samples", help="folder of source photographs (default ../shared/data/official-samples)")
    co.add_argument("--long-side", type=int, default=500, help="mean long side in pixels (default 500)")
    co.add_argument("--file-kb", type=float, default=110.0, help="mean JPEG size in KB (default 110)")
    co.add_argument("--workers", type=int, help="processes (default all cores)")
    co.add_argument("--shards", nargs="?", const="", default=None, metavar="DIR",
                    help="also pack the corpus into WebDataset tar shards (default DIR: <out>-wds)")
    co.add_argument("--shard-size", default="256MB", help="bytes per shard with --shards (default 256MB)")

    add_proof_parser(sub)
    add_scale_parser(sub, common)
    return p

_RUNNERS = {"convert": run_convert, "loader": run_loader, "train": run_train, "corpus": run_corpus,
            "proof": run_proof, "scale": run_scale}

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record = _RUNNERS[args.mode](args)
    except (BenchError, ValueError, FileNotFoundError) as exc:
        print(f"i2e-bench {args.mode}: error: {exc}", file=sys.stderr)
        return 2
    return proof_exit_code(record) if args.mode == "proof" else 0

if __name__ == "__main__":
    sys.exit(main())
