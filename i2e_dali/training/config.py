"""Trainer configuration: the flags, the paper's per-data-set defaults, presets, and their resolution.

``build_parser`` defines every flag; ``resolve_config`` fills what the user left unset from the data
set's defaults (shared/DESIGN.md) and the preset, then checks ranges. Flags given by the user always win.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import TrainError
from ..zoo import arch_names, describe_archs, native_width, resolve_arch
from ..convert.spec import parse_order
from ..placement import DEFAULT_SEED
from .options import PrintAndExit, RecordingParser, add_experiment_options, apply_recipe, check_experiment_options

__all__ = ["DATASETS", "DATASET_DEFAULTS", "PRESETS", "build_parser", "resolve_config"]

DATASETS = ("imagenet", "cifar10", "cifar100", "i2e-npz", "i2e-parquet", "cifar10-dvs", "demo")

# The paper's settings (shared/DESIGN.md), applied for whatever the user did not set on the command line.
_CIFAR = dict(epochs=256, lr=0.1, weight_decay=2e-4, batch_size=128, timesteps=8, size=128, width=64)
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": dict(epochs=128, lr=0.1, weight_decay=1e-5, batch_size=128, timesteps=8, size=224, width=64),
    "cifar10": dict(_CIFAR),
    "cifar100": dict(_CIFAR),
    # exported I2E sets: mostly I2E-CIFAR, so the CIFAR schedule; frame size comes from the files
    "i2e-npz": dict(_CIFAR, size=None),
    # the authors' Parquet sets (UESTC-BICS/I2E) or our --format parquet exports; frame size from the rows
    "i2e-parquet": dict(_CIFAR, size=None),
    "cifar10-dvs": dict(epochs=128, lr=0.1, weight_decay=1e-5, batch_size=32, timesteps=8, size=None, width=64),
    # the embedded demo: small images, few timesteps, a narrow MS-ResNet18, so it trains in minutes on 2
    # CPU cores (measured in the README); same model class, loader and engine as the real runs
    "demo": dict(epochs=8, lr=0.1, weight_decay=1e-4, batch_size=32, timesteps=4, size=32, width=16),
}
# Named bundles of settings; the user's own flags still win.
PRESETS: dict[str, dict[str, Any]] = {
    # the paper's fine-tuning of an I2E-CIFAR10 model on CIFAR10-DVS (with --pretrained)
    "dvs-finetune": dict(lr=0.001, weight_decay=0.0),
}
_RESOLVED = ("epochs", "lr", "weight_decay", "batch_size", "timesteps", "size", "width")


def build_parser() -> argparse.ArgumentParser:
    p = RecordingParser(  # remembers the flags given, which win over a --recipe
        prog="train_dali.py",
        description="Train MS-ResNet SNNs on I2E event streams made on the fly by DALI (or on event data sets). "
        "With no --data: a small embedded demo that trains in minutes on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", type=str, default=None,
                   help="data set root (ImageNet: folder with train/ and val/; CIFAR: the python batches; "
                        "i2e-npz: exported set; i2e-parquet: a config folder of Parquet shards; cifar10-dvs: "
                        "the recordings). Omit for the demo.")
    g.add_argument("--dataset", choices=DATASETS, default=None,
                   help="data set kind (default: demo without --data, else imagenet)")
    g.add_argument("--size", type=int, default=None,
                   help="image side in pixels: training crop and evaluation size (default 224 ImageNet, 128 CIFAR; "
                        "for i2e-npz the frame size of sparse files without a stored shape)")
    g.add_argument("-T", "--timesteps", type=int, default=None, help="I2E timesteps T (1..8; default 8)")
    g.add_argument("--ratio", type=float, default=None,
                   help="I2E threshold ratio (default: the data set's, 0.12 ImageNet / 0.07 CIFAR)")
    g.add_argument("--order", type=str, default=None,
                   help="I2E timestep order: letters (efghabcd, the default) or the authors' numbered presets "
                        "0..5 (their --shuffle: 0 abcdefgh, 1 abefghcd, 2 cdabefgh, 3 cdefghab, 4 efghabcd, "
                        "5 efghcdab)")
    g.add_argument("--batch-motions", action="store_true",
                   help="draw one random motion per group for the whole batch (the authors' reference) "
                        "instead of per sample")
    g.add_argument("-j", "--workers", type=int, default=None,
                   help="DALI CPU threads / data loader workers per process (default: the loader's choice on "
                        "GPU; on CPU a quarter of this process's cores, the rest compute)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads when training on the CPU (default: the cores the loader does not use)")
    g.add_argument("--cache-dir", type=str, default=None, help="cifar10-dvs: where parsed frames are cached")
    g.add_argument("--val-fraction", type=float, default=0.1, help="cifar10-dvs: held-out share per class")
    g.add_argument("--dvs-split", choices=("seeded", "authors"), default="seeded",
                   help="cifar10-dvs: how recordings are split into train/val")
    g.add_argument("--dvs-polarity", choices=("on-off", "spikingjelly"), default="on-off",
                   help="cifar10-dvs: channel order of the frames")
    g.add_argument("--dvs-binarize", action="store_true", help="cifar10-dvs: clip frame counts to 0/1")
    g.add_argument("--no-dvs-flip", dest="dvs_flip", action="store_false",
                   help="cifar10-dvs: no random horizontal flips in training")
    g.add_argument("--demo-dir", type=str, default=None,
                   help="where the demo set is generated and cached (default ~/.cache/i2e-dali/demo)")
    g.add_argument("--exclude-list", type=str, default=None, metavar="FILE",
                   help="image folders: leave out the files listed in FILE, one path per line (what "
                        "`i2e-check ROOT --list FILE` writes); the log and the validation result say how many")
    g.add_argument("--skip-bad", action="store_true",
                   help="image folders: run the decode check on train/ and val/ first (cached per folder, keyed "
                        "by file list, sizes and mtimes) and leave out every file it finds. Without this or "
                        "--exclude-list the first bad file stops the run")

    g = p.add_argument_group("model")
    g.add_argument("--arch", type=str, default="msresnet18",
                   help=f"one of {arch_names()} (spikingjelly zoo models with the paper's LIF and a 2-channel stem), "
                        "or module:callable for your own model (see --list-archs)")
    g.add_argument("--list-archs", action=PrintAndExit, text=describe_archs, help="list the architectures and exit")
    g.add_argument("--width", type=int, default=None,
                   help="stage-1 channels (64 = the paper's model; the demo uses 16)")
    g.add_argument("--zero-init-residual", action="store_true", help="zero the last BN of each block")
    g.add_argument("--pretrained", type=str, default=None,
                   help="initial weights (ours or the authors' .pth); fc is re-initialised if the class count differs")

    g = p.add_argument_group("optimisation (defaults: the paper's, per data set)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="dvs-finetune: lr 0.001, weight decay 0 (fine-tune on CIFAR10-DVS from --pretrained)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("-b", "--batch-size", type=int, default=None, help="per process (per GPU)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (SGD)")
    g.add_argument("--lr-min", type=float, default=5e-5, help="cosine schedule floor")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None,
                   help="weight decay (not applied to BN and bias parameters)")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision: auto = bf16 on GPUs that support it, fp16 otherwise on CUDA, off on CPU")
    g.add_argument("--channels-last", action="store_true", help="NHWC convolutions (faster on tensor-core GPUs)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (experimental with SNN state)")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED)

    g = p.add_argument_group("run")
    g.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--output-dir", "-o", type=str, default=None,
                   help="checkpoints and logs (default runs/<dataset>-<arch>)")
    g.add_argument("--resume", type=str, default=None,
                   help="'auto' = <output-dir>/last.pt if present, or a checkpoint path")
    g.add_argument("--ckpt-every", type=int, default=1000,
                   help="also write last.pt every N training steps (0: only at epoch ends)")
    g.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop once this many epochs are done (the schedule still spans --epochs): "
                        "splits a long run into jobs resumed with --resume auto")
    g.add_argument("--evaluate", action="store_true", help="only evaluate (with --pretrained or --resume)")
    g.add_argument("--report", nargs="?", const="auto", default=None, metavar="DIR",
                   help="with --evaluate: also measure firing rates, synaptic operations and estimated energy "
                        "(table, report.json, report.png) into DIR (default <output-dir>/report)")
    g.add_argument("--report-batches", type=int, default=None,
                   help="with --report: count operations over the first N validation batches (default all)")
    g.add_argument("--log-every", type=int, default=20, help="progress/TensorBoard update interval in steps")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    add_experiment_options(p)
    return p


def resolve_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill what the user left unset: the --recipe's settings, data set defaults, then the preset; check ranges."""
    apply_recipe(args)
    if args.dataset is None:
        args.dataset = "demo" if args.data is None else "imagenet"
    if args.dataset == "demo" and args.data is not None:
        raise TrainError("--dataset demo generates its own data; drop --data (or choose the data set kind)")
    if args.dataset != "demo" and args.data is None:
        raise TrainError(f"--dataset {args.dataset} needs --data pointing at the data set folder")
    user_width = args.width
    merged = dict(DATASET_DEFAULTS[args.dataset])
    if args.preset:
        merged.update(PRESETS[args.preset])
    for key in _RESOLVED:
        if getattr(args, key) is None:
            setattr(args, key, merged.get(key))
    try:
        args.arch = resolve_arch(args.arch)
    except ValueError as e:
        raise TrainError(f"--arch: {e}") from None
    fixed = native_width(args.arch)
    if fixed is not None:  # zoo / user models have their own width; --width is MS-ResNet's
        if user_width is not None and user_width != fixed:
            raise TrainError(f"--width applies to MS-ResNet only; {args.arch} has a fixed width ({fixed})")
        args.width = fixed
    if args.report is not None and not args.evaluate:
        raise TrainError("--report goes with --evaluate (or use i2e-report on a checkpoint)")
    checks = [
        ("--epochs", args.epochs >= 1),
        ("--batch-size", args.batch_size >= 1),
        ("--lr", args.lr > 0),
        ("--lr-min", 0 <= args.lr_min <= args.lr),
        ("--weight-decay", args.weight_decay >= 0),
        ("--timesteps", 1 <= args.timesteps <= 8),
        ("--width", args.width >= 1 or (fixed is not None and args.width >= 0)),
        ("--report-batches", args.report_batches is None or args.report_batches >= 1),
        ("--label-smoothing", 0 <= args.label_smoothing < 1),
        ("--ckpt-every", args.ckpt_every >= 0),
        ("--log-every", args.log_every >= 1),
        ("--size", args.size is None or args.size >= 8),
        ("--val-fraction", 0 < args.val_fraction < 1),
        ("--threads", args.threads is None or args.threads >= 1),
        ("--workers", args.workers is None or args.workers >= 0),
    ]
    for flag, ok in checks:
        if not ok:
            raise TrainError(f"{flag} has an invalid value: {getattr(args, flag.lstrip('-').replace('-', '_'))}")
    if args.stop_after_epoch is not None and not 1 <= args.stop_after_epoch <= args.epochs:
        raise TrainError(f"--stop-after-epoch must be in 1..--epochs ({args.epochs}), got {args.stop_after_epoch}")
    check_experiment_options(args)
    if args.order is not None:
        try:
            parse_order(args.order, args.timesteps)
        except ValueError as e:
            raise TrainError(f"--order: {e}") from None
    if args.output_dir is None and getattr(args, "recipe", None):
        args.output_dir = str(Path("runs") / args.recipe)
    if args.output_dir is None:
        safe_arch = "".join(c if c.isalnum() or c in "-_" else "_" for c in args.arch)
        args.output_dir = str(Path("runs") / f"{args.dataset}-{safe_arch}")
    return args
