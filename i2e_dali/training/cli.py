"""The trainer's command line (``train_dali.py``, ``i2e-train``): flags -> :class:`TrainConfig`; the
entry point itself is ``training.run.main``, which then calls ``train``.

Every flag's default is SUPPRESSed, so the parsed namespace holds exactly the flags the user typed: the
command-line layer of the precedence (training/config.py), with no second parse. ``--config FILE`` adds
the file's layer below them; ``--print-config`` shows the result with each value's origin and exits.
"""
from __future__ import annotations

import argparse

from ..zoo import arch_names, describe_archs
from .config import DATASET_DEFAULTS, DATASETS, PRESETS, TrainConfig, default_of, resolve
from .config_file import read_config_file
from .options import PrintAndExit, add_experiment_options

__all__ = ["build_parser", "parse_config", "parse_args", "config_from_namespace"]

_PER_DATASET = set().union(*DATASET_DEFAULTS.values())
_NOT_SETTINGS = ("config", "print_config")


class _Help(argparse.HelpFormatter):
    """Help lines end with the built-in default (the flags' own defaults are SUPPRESSed: see the module)."""

    def _get_help_string(self, action):
        text = action.help or ""
        dest = action.dest
        if "default" in text or not action.option_strings or dest in _NOT_SETTINGS or isinstance(
                action, (PrintAndExit, argparse._HelpAction)):
            return text
        try:
            value = default_of(dest)
        except KeyError:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        shown = "the data set's" if dest in _PER_DATASET else ("none" if value is None else value)
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def _signal_list(text: str) -> list[str]:
    return [s.strip().upper() for s in text.split(",") if s.strip() and s.strip().lower() != "none"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_dali.py",
        description="Train MS-ResNet SNNs on I2E event streams made on the fly by DALI (or on event data sets). "
        "With no --data: a small embedded demo that trains in minutes on a CPU. Settings come from, later "
        "winning: built-in defaults, the data set's paper defaults, --preset, --recipe, --config FILE, flags.",
        formatter_class=_Help,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE",
                   help="settings from a YAML (or .json) file, e.g. a run's <output-dir>/config.yaml to repeat it; "
                        "flags given here win over the file")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings with where each came from, and exit")
    g = p.add_argument_group("data")
    g.add_argument("--data", dest="root", type=str,
                   help="data set root (ImageNet: folder with train/ and val/; wds: folder of WebDataset shards; "
                        "CIFAR: the python batches; i2e-npz: exported set; i2e-parquet: a config folder of Parquet "
                        "shards; cifar10-dvs: the recordings). Omit for the demo.")
    g.add_argument("--dataset", choices=DATASETS, help="data set kind (default: demo without --data, else imagenet)")
    g.add_argument("--size", type=int,
                   help="image side in pixels: training crop and evaluation size (default 224 ImageNet, 128 CIFAR; "
                        "for i2e-npz the frame size of sparse files without a stored shape)")
    g.add_argument("-T", "--timesteps", type=int, help="I2E timesteps T (1..8; default 8)")
    g.add_argument("--ratio", type=float,
                   help="I2E threshold ratio (default: the data set's, 0.12 ImageNet / 0.07 CIFAR)")
    g.add_argument("--order", type=str,
                   help="I2E timestep order: letters (efghabcd, the default) or the authors' numbered presets "
                        "0..5 (their --shuffle: 0 abcdefgh, 1 abefghcd, 2 cdabefgh, 3 cdefghab, 4 efghabcd, "
                        "5 efghcdab)")
    g.add_argument("--batch-motions", action="store_true",
                   help="draw one random motion per group for the whole batch (the authors' reference) "
                        "instead of per sample")
    g.add_argument("-j", "--workers", type=int,
                   help="DALI CPU threads / data loader workers per process (default: the loader's choice on "
                        "GPU; on CPU a quarter of this process's cores, the rest compute)")
    g.add_argument("--threads", type=int,
                   help="torch CPU threads when training on the CPU (default: the cores the loader does not use)")
    g.add_argument("--cache-dir", type=str, help="cifar10-dvs: where parsed frames are cached")
    g.add_argument("--val-fraction", type=float, help="cifar10-dvs: held-out share per class")
    g.add_argument("--dvs-split", choices=("seeded", "authors"),
                   help="cifar10-dvs: how recordings are split into train/val")
    g.add_argument("--dvs-polarity", choices=("on-off", "spikingjelly"), help="cifar10-dvs: channel order of the frames")
    g.add_argument("--dvs-binarize", action="store_true", help="cifar10-dvs: clip frame counts to 0/1")
    g.add_argument("--no-dvs-flip", dest="dvs_flip", action="store_false",
                   help="cifar10-dvs: no random horizontal flips in training")
    g.add_argument("--demo-dir", type=str,
                   help="where the demo set is generated and cached (default ~/.cache/i2e-dali/demo)")
    g.add_argument("--exclude-list", type=str, metavar="FILE",
                   help="image folders: leave out the files listed in FILE, one path per line (what "
                        "`i2e-check ROOT --list FILE` writes); the log and the validation result say how many")
    g.add_argument("--skip-bad", action="store_true",
                   help="image folders: run the decode check on train/ and val/ first (cached per folder, keyed "
                        "by file list, sizes and mtimes) and leave out every file it finds. Without this or "
                        "--exclude-list the first bad file stops the run")
    g.add_argument("--folder-index", type=str, metavar="auto|DIR",
                   help="image folders: scan train/ and val/ once and keep the scan as an index file that every "
                        "rank and node reads (auto: <split>/.i2e-index.npz inside the data set; DIR: "
                        "DIR/<split>.i2e-index.npz, e.g. on a shared file system when the data is read-only or "
                        "on s3://). Rank 0 writes a missing index; a folder changed since is refused, never "
                        "silently used. Unset: every rank scans (fine up to ~100k files)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", type=str,
                   help=f"one of {arch_names()} (spikingjelly zoo models with the paper's LIF and a 2-channel stem), "
                        "or module:callable for your own model (see --list-archs)")
    g.add_argument("--list-archs", action=PrintAndExit, text=describe_archs, help="list the architectures and exit")
    g.add_argument("--width", type=int, help="stage-1 channels (64 = the paper's model; the demo uses 16)")
    g.add_argument("--zero-init-residual", action="store_true", help="zero the last BN of each block")
    g.add_argument("--pretrained", type=str,
                   help="initial weights (ours or the authors' .pth); fc is re-initialised if the class count differs")

    g = p.add_argument_group("optimisation (defaults: the paper's, per data set)")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="dvs-finetune: lr 0.001, weight decay 0 (fine-tune on CIFAR10-DVS from --pretrained)")
    g.add_argument("--epochs", type=int, help="epochs the schedule spans")
    g.add_argument("-b", "--batch-size", type=int, help="per process (per GPU)")
    g.add_argument("--lr", type=float, help="peak learning rate (SGD)")
    g.add_argument("--lr-min", type=float, help="cosine schedule floor")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float,
                   help="weight decay (not applied to BN and bias parameters)")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision: auto = bf16 on GPUs that support it, fp16 otherwise on CUDA, off on CPU")
    g.add_argument("--channels-last", action="store_true", help="NHWC convolutions (faster on tensor-core GPUs)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (experimental with SNN state)")
    g.add_argument("--seed", type=int, help="initial weights, data order and augmentation (each rank adds its rank)")

    g = p.add_argument_group("run")
    g.add_argument("--device", type=str, help="auto | cpu | cuda | cuda:N")
    g.add_argument("--output-dir", "-o", type=str,
                   help="checkpoints, logs and config.yaml (default runs/<recipe> or runs/<dataset>-<arch>)")
    g.add_argument("--resume", type=str,
                   help="'auto' = <output-dir>/last.pt if present, or a checkpoint path (default: none; 'auto' "
                        "when started by torchrun, which restarts every worker after a failure)")
    g.add_argument("--ckpt-every", type=int, help="also write last.pt every N training steps (0: only at epoch ends)")
    g.add_argument("--stop-after-epoch", type=int,
                   help="stop once this many epochs are done (the schedule still spans --epochs): "
                        "splits a long run into jobs resumed with --resume auto")
    g.add_argument("--evaluate", action="store_true", help="only evaluate (with --pretrained or --resume)")
    g.add_argument("--report", nargs="?", const="auto", metavar="DIR",
                   help="with --evaluate: also measure firing rates, synaptic operations and estimated energy "
                        "(table, report.json, report.png) into DIR (default <output-dir>/report)")
    g.add_argument("--report-batches", type=int,
                   help="with --report: count operations over the first N validation batches (default all)")
    g.add_argument("--log-every", type=int, help="progress/TensorBoard update interval in steps")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    g.add_argument("--stop-signals", type=_signal_list, metavar="SIG[,SIG]",
                   help="signals that make the run stop at the next step with a checkpoint ('none': no "
                        "handler; default SIGTERM,SIGUSR1)")
    g.add_argument("--requeue-on-signal", action="store_true",
                   help="after such a stop, ask the scheduler (SLURM) to requeue the job")
    add_experiment_options(p)
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig a command line asks for (``--config FILE`` read, every layer resolved)."""
    return parse_args(argv)[0]


def config_from_namespace(namespace: argparse.Namespace) -> TrainConfig:
    """A parsed command line (``build_parser().parse_args``) -> TrainConfig."""
    given = {k: v for k, v in vars(namespace).items() if k not in _NOT_SETTINGS}
    path = getattr(namespace, "config", None)
    file = read_config_file(path) if path is not None else None
    return resolve(file=file, file_source=str(path), cli=given)


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """(the TrainConfig, whether --print-config was given) of a command line."""
    ns = build_parser().parse_args(argv)
    return config_from_namespace(ns), bool(getattr(ns, "print_config", False))
