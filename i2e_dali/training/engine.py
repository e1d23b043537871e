"""The one training and evaluation engine: every data set, one loop, one checkpoint format.

``python train_dali.py`` (no ``--data``) trains on the embedded demo set; ``--data /imagenet`` trains
the paper's MS-ResNet on ImageNet through the DALI event loader; ``--dataset cifar10|cifar100`` uses the
CIFAR batches; ``--dataset i2e-npz`` reads exported I2E sets and ``--dataset cifar10-dvs`` the real
CIFAR10-DVS recordings (both through FrameLoader). Multi-GPU / multi-node with ``torchrun``.

Any loader obeying the contract works: iterating yields ``(events [T,B,2,H,W], labels [B])`` on the
device, ``len()`` is batches per epoch on this rank, plus ``num_classes``/``class_names`` and
``state_dict()``/``load_state_dict()`` for exact resume (optional: without them a mid-epoch resume
replays and skips the consumed batches).

Structure (torchvision's reference trainer is the model): ``build_parser`` / ``resolve_config`` ->
``Runtime`` (device, DDP) -> loaders, model, optimiser -> ``train_one_epoch`` + ``evaluate`` per epoch,
checkpoints written atomically by rank 0.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn
from tqdm import tqdm

from .fsio import atomic_write, atomic_write_text
from .placement import cores_per_rank, resolve_device
from .models import ARCHS, CheckpointError, build_model, canonical_arch, load_pretrained, load_state_into, unwrap

__all__ = [
    "TrainError",
    "DATASETS",
    "DATASET_DEFAULTS",
    "PRESETS",
    "build_parser",
    "resolve_config",
    "make_train_step",
    "evaluate",
    "train_one_epoch",
    "save_checkpoint",
    "load_checkpoint",
    "main",
]

log = logging.getLogger("i2e_dali.train")

DATASETS = ("imagenet", "cifar10", "cifar100", "i2e-npz", "cifar10-dvs", "demo")
CKPT_FORMAT = "i2e-dali-checkpoint/1"

# The paper's settings (shared/DESIGN.md), applied for whatever the user did not set on the command line.
_CIFAR = dict(epochs=256, lr=0.1, weight_decay=2e-4, batch_size=128, timesteps=8, size=128, width=64)
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": dict(epochs=128, lr=0.1, weight_decay=1e-5, batch_size=128, timesteps=8, size=224, width=64),
    "cifar10": dict(_CIFAR),
    "cifar100": dict(_CIFAR),
    # exported I2E sets: mostly I2E-CIFAR, so the CIFAR schedule; frame size comes from the files
    "i2e-npz": dict(_CIFAR, size=None),
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


class TrainError(RuntimeError):
    """A problem the user can fix (bad flag, missing data, wrong checkpoint); printed without a traceback."""


# ==================================================================================================
# configuration
# ==================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_dali.py",
        description="Train MS-ResNet SNNs on I2E event streams made on the fly by DALI (or on event data sets). "
        "With no --data: a small embedded demo that trains in minutes on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", type=str, default=None,
                   help="data set root (ImageNet: folder with train/ and val/; CIFAR: the python batches; "
                        "i2e-npz: exported set; cifar10-dvs: the recordings). Omit for the demo.")
    g.add_argument("--dataset", choices=DATASETS, default=None,
                   help="data set kind (default: demo without --data, else imagenet)")
    g.add_argument("--size", type=int, default=None,
                   help="image side in pixels: training crop and evaluation size (default 224 ImageNet, 128 CIFAR; "
                        "for i2e-npz the frame size of sparse files without a stored shape)")
    g.add_argument("-T", "--timesteps", type=int, default=None, help="I2E timesteps T (1..8; default 8)")
    g.add_argument("--ratio", type=float, default=None,
                   help="I2E threshold ratio (default: the data set's, 0.12 ImageNet / 0.07 CIFAR)")
    g.add_argument("--order", type=str, default=None, help="I2E timestep order, e.g. efghabcd (default)")
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

    g = p.add_argument_group("model")
    g.add_argument("--arch", type=str, default="msresnet18", help=f"one of {sorted(ARCHS)}")
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
    g.add_argument("--seed", type=int, default=2024)

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
    g.add_argument("--log-every", type=int, default=20, help="progress/TensorBoard update interval in steps")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    return p


def resolve_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill what the user left unset: data set defaults, then the preset; check ranges."""
    if args.dataset is None:
        args.dataset = "demo" if args.data is None else "imagenet"
    if args.dataset == "demo" and args.data is not None:
        raise TrainError("--dataset demo generates its own data; drop --data (or choose the data set kind)")
    if args.dataset != "demo" and args.data is None:
        raise TrainError(f"--dataset {args.dataset} needs --data pointing at the data set folder")
    merged = dict(DATASET_DEFAULTS[args.dataset])
    if args.preset:
        merged.update(PRESETS[args.preset])
    for key in _RESOLVED:
        if getattr(args, key) is None:
            setattr(args, key, merged.get(key))
    try:
        args.arch = canonical_arch(args.arch)
    except ValueError as e:
        raise TrainError(f"--arch: {e}") from None
    checks = [
        ("--epochs", args.epochs >= 1),
        ("--batch-size", args.batch_size >= 1),
        ("--lr", args.lr > 0),
        ("--lr-min", 0 <= args.lr_min <= args.lr),
        ("--weight-decay", args.weight_decay >= 0),
        ("--timesteps", 1 <= args.timesteps <= 8),
        ("--width", args.width >= 1),
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
    if args.output_dir is None:
        args.output_dir = str(Path("runs") / f"{args.dataset}-{args.arch}")
    return args


# ==================================================================================================
# runtime: device, distributed, seeds, logging
# ==================================================================================================
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(device: str) -> Runtime:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group (env://)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # one GPU per process: "cuda" then means this rank's
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise TrainError(f"--device {device}: {exc}") from None
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return Runtime(dev, rank, world, local_rank)


def configure_cpu_threads(args, rt: Runtime) -> None:
    """On the CPU, split the cores between DALI's threads and torch's instead of both taking all of them.

    Oversubscribed OpenMP threads spin: measured here (2 cores), a training step cost 10x the CPU time
    with 2 torch threads next to a busy DALI pipeline than with 1. Data and compute then run side by
    side on their own cores (DALI prefetches while torch computes).
    """
    if rt.device.type != "cpu":
        return
    cores = cores_per_rank()
    if args.workers is None:
        args.workers = max(1, cores // 4)
    threads = args.threads or max(1, cores - args.workers)
    torch.set_num_threads(threads)
    log.info("CPU run: %d DALI/loader thread(s), %d torch thread(s)", args.workers, threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class _TqdmHandler(logging.StreamHandler):
    """Log lines printed through tqdm.write, so they do not tear the progress bar."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never crash training
            self.handleError(record)


def setup_logging(rt: Runtime, output_dir: Path | None) -> list[logging.Handler]:
    """rank 0: INFO to the console and <output-dir>/train.log; other ranks: warnings only, no file."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = []
    console = _TqdmHandler()
    console.setFormatter(fmt if rt.is_main else logging.Formatter(f"[rank {rt.rank}] %(levelname)s %(message)s"))
    handlers.append(console)
    if rt.is_main and output_dir is not None:
        fh = logging.FileHandler(output_dir / "train.log")
        fh.setFormatter(fmt)
        handlers.append(fh)
    pkg = logging.getLogger("i2e_dali")
    for h in handlers:
        pkg.addHandler(h)
    pkg.setLevel(logging.INFO if rt.is_main else logging.WARNING)
    pkg.propagate = False
    return handlers


# ==================================================================================================
# data
# ==================================================================================================
def build_loaders(args: argparse.Namespace, rt: Runtime, *, need_train: bool = True):
    """(train_loader or None, val_loader) for ``args.dataset``; errors name the flag and the folder."""
    args.device = str(rt.device)  # the npz/dvs builders read it
    if args.dataset in ("i2e-npz", "cifar10-dvs"):
        _check_data_dir(args.data)
        if args.dataset == "i2e-npz":
            from .npz import build_loaders as build
        else:
            from .dvs import build_loaders as build
        train, val = build(args)
        return (train if need_train else None), val

    from .datasets import open_source
    from .loader import EventLoader

    if args.dataset == "demo":
        from .demo import ensure_demo_dataset

        root, kind = str(ensure_demo_dataset(args.demo_dir, progress=rt.is_main and args.progress)), "imagenet"
    else:
        _check_data_dir(args.data)
        root, kind = args.data, args.dataset
    common = dict(
        ratio=args.ratio,
        timesteps=args.timesteps,
        order=args.order,
        per_sample=not args.batch_motions,
        dtype=torch.float32,
        device=str(rt.device),
        seed=args.seed,
        num_threads=args.workers,
        **_size_kwargs(args, kind),
    )
    val = EventLoader(open_source(root, "val", kind), args.batch_size, train=False, **common)
    train = EventLoader(open_source(root, "train", kind), args.batch_size, train=True, **common) if need_train else None
    return train, val


def _size_kwargs(args, kind: str) -> dict:
    # ImageNet view: train crop = size, eval = resize to size*256/224 then centre crop size (the
    # paper's 256/224); CIFAR: size is the resize target of the 32x32 images.
    if args.size is None:
        return {}
    if kind == "imagenet":
        return dict(crop_size=args.size, resize_size=max(args.size, round(args.size * 256 / 224)))
    return dict(out_size=args.size)


def _check_data_dir(path) -> None:
    p = Path(path).expanduser()
    if not p.exists():
        raise TrainError(f"--data {p} does not exist")
    if p.is_dir() and not any(p.iterdir()):
        raise TrainError(f"--data {p} is an empty folder")


# ==================================================================================================
# the training step and evaluation (shared with the benchmark)
# ==================================================================================================
def _to_channels_last(events: torch.Tensor) -> torch.Tensor:
    """[T,B,C,H,W] with NHWC strides, so the flattened [T*B,C,H,W] view the convs see is channels_last."""
    return events.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.1,
    channels_last: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The one training step: ``step(events [T,B,2,H,W], labels [B]) -> loss`` (detached, on the device).

    Forward under autocast (``amp_dtype`` None = full precision), label-smoothed cross-entropy,
    backward (through ``scaler`` for fp16), optimiser step, then the SNN state reset — also when the
    step fails, so the next batch never sees stale membrane potentials. No host sync inside.
    """

    def step(events: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if channels_last:
            events = _to_channels_last(events)
        optimizer.zero_grad(set_to_none=True)
        try:
            with torch.autocast(events.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(events)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        finally:
            functional.reset_net(model)
        return loss.detach()

    return step


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "val",
) -> dict[str, float]:
    """Top-1/top-5 (%) and mean loss over every validation sample, each counted exactly once.

    Under DDP each rank evaluates its shard (the loader keeps and trims the last batch, no padding) and
    the sums of correct predictions, loss and count are all-reduced; every rank returns the same numbers.
    Runs on the unwrapped module: ranks may hold different numbers of batches, and a DDP forward would
    wait for the others.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss, count
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        for events, labels in tqdm(loader, total=total, desc=desc, disable=not progress, leave=False,
                                   dynamic_ncols=True):
            if channels_last:
                events = _to_channels_last(events)
            try:
                with torch.autocast(events.device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    logits = net(events)
            finally:
                functional.reset_net(net)
            logits = logits.float()
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices.eq(labels[:, None])
            sums += torch.stack([
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                F.cross_entropy(logits, labels, reduction="sum").double(),
                torch.tensor(labels.numel(), dtype=torch.float64, device=labels.device),
            ]).to(device)
    finally:
        net.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    c1, c5, loss, n = sums.tolist()
    if n == 0:
        raise TrainError("the validation set yielded no samples")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "count": int(round(n))}


# ==================================================================================================
# checkpoints: one format, written atomically, loaded without unpickling code
# ==================================================================================================
def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, os.replace.

    A reader (or a resumed run after SIGKILL) sees the old complete file or the new complete file,
    never a partial one. Leftover temp files of a killed writer are named ``.<name>.*.tmp``.
    """
    path = Path(path)
    atomic_write(path, lambda f: torch.save(state, f), durable=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of our checkpoints with ``weights_only=True`` and check it is one."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(
            f"{path} is not an i2e-dali training checkpoint (no format tag {CKPT_FORMAT!r}); "
            "to start from foreign weights use --pretrained instead of --resume"
        )
    return ckpt


def _clean_stale_temps(output_dir: Path) -> None:
    for p in output_dir.glob(".*.pt.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            log.info("removed %s, left by a run that was killed while writing a checkpoint", p.name)


def rng_state(device: torch.device) -> dict:
    """All RNG states as tensors and plain containers (loadable with weights_only=True)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _plain(value):
    """Config values reduced to what weights_only loading accepts."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _gather(obj, rt: Runtime) -> list:
    """Every rank's ``obj`` on every rank (a collective: all ranks must call it at the same point)."""
    if not rt.distributed:
        return [obj]
    out = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


# ==================================================================================================
# the training loop
# ==================================================================================================
@dataclass
class TrainState:
    epoch: int = 0  # epochs fully done
    step_in_epoch: int = 0  # steps of the current epoch done (0 at an epoch boundary)
    global_step: int = 0
    best_top1: float = -1.0


class Trainer:
    """Holds the pieces of one run; ``fit()`` runs epochs, ``save()`` writes the one checkpoint format."""

    def __init__(self, args, rt, model, optimizer, scheduler, scaler, amp_dtype, train_loader, val_loader,
                 steps_per_epoch, output_dir: Path, writer=None):
        self.args, self.rt = args, rt
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.amp_dtype = amp_dtype
        self.train_loader, self.val_loader = train_loader, val_loader
        self.steps_per_epoch = steps_per_epoch
        self.output_dir = output_dir
        self.writer = writer
        self.state = TrainState()
        self.step_fn = make_train_step(model, optimizer, scaler=scaler, amp_dtype=amp_dtype,
                                       label_smoothing=args.label_smoothing, channels_last=args.channels_last)
        self._replay = 0  # batches to skip at the next epoch start (resume with a stateless loader)
        self._loader_restored = False  # the loader's own state was restored (it continues mid-epoch)
        self._epoch_loss_sum = 0.0  # this rank's loss sum / steps of the current epoch, kept across a resume
        self._epoch_steps = 0

    # ---------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict | None:
        """The checkpoint dict on rank 0 (None elsewhere). Collective under DDP."""
        per_rank = {"rng": rng_state(self.rt.device), "epoch_loss_sum": float(self._epoch_loss_sum),
                    "epoch_steps": int(self._epoch_steps)}
        if hasattr(self.train_loader, "state_dict"):
            per_rank["loader"] = self.train_loader.state_dict()
        ranks = _gather(per_rank, self.rt)
        if not self.rt.is_main:
            return None
        net = unwrap(self.model)
        s = self.state
        return {
            "format": CKPT_FORMAT,
            "arch": net.arch,
            "width": net.width,
            "num_classes": net.num_classes,
            "class_names": list(getattr(self.train_loader, "class_names", []) or []),
            "dataset": self.args.dataset,
            "timesteps": self.args.timesteps,
            "model": net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": s.epoch,
            "step_in_epoch": s.step_in_epoch,
            "global_step": s.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "best_top1": s.best_top1,
            "world_size": self.rt.world_size,
            "ranks": ranks,
            "config": {k: _plain(v) for k, v in vars(self.args).items()},
            "saved_at": time.time(),
        }

    def save(self, *names: str) -> None:
        state = self.checkpoint_state()
        if state is None:
            return
        for name in names:
            save_checkpoint(state, self.output_dir / name)

    def restore(self, ckpt: dict, source: str) -> None:
        """Continue the run stored in ``ckpt`` (already checked by check_compatible)."""
        net = unwrap(self.model)
        load_state_into(net, ckpt["model"], source=source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], ckpt["best_top1"])
        ranks = ckpt.get("ranks") or []
        if ckpt.get("world_size") == self.rt.world_size and len(ranks) == self.rt.world_size:
            mine = ranks[self.rt.rank]
            set_rng_state(mine["rng"], self.rt.device)
            if self.state.step_in_epoch:
                self._epoch_loss_sum = float(mine.get("epoch_loss_sum", 0.0))
                self._epoch_steps = int(mine.get("epoch_steps", 0))
            if "loader" in mine and hasattr(self.train_loader, "load_state_dict"):
                self.train_loader.load_state_dict(mine["loader"])
                self._loader_restored = True
            elif self.state.step_in_epoch:
                self._replay = self.state.step_in_epoch
        else:
            # shards and RNG streams cannot be mapped onto another process count: the schedule continues,
            # the data order of the current epoch starts afresh (its remaining steps see a new shuffle)
            log.warning("%s was written by %s process(es), this run has %d: model, optimiser and schedule "
                        "continue exactly, data order and RNG streams restart", source, ckpt.get("world_size"),
                        self.rt.world_size)
        log.info("resumed from %s: epoch %d, step %d of %d (global step %d), best top-1 %.2f%%", source,
                 self.state.epoch + 1, self.state.step_in_epoch, self.steps_per_epoch, self.state.global_step,
                 max(self.state.best_top1, 0.0))

    # ---------------------------------------------------------------------------------------------
    def train_one_epoch(self) -> dict:
        return train_one_epoch(self)

    def fit(self) -> dict | None:
        args, s = self.args, self.state
        last_epoch = args.stop_after_epoch or args.epochs
        result = None
        while s.epoch < last_epoch:
            t0 = time.perf_counter()
            train_stats = self.train_one_epoch()
            val = evaluate(self.model, self.val_loader, amp_dtype=self.amp_dtype, channels_last=args.channels_last,
                           progress=self.rt.is_main and args.progress, desc=f"val {s.epoch + 1}")
            s.epoch += 1
            s.step_in_epoch = 0
            is_best = val["top1"] > s.best_top1
            s.best_top1 = max(s.best_top1, val["top1"])
            self.save(*(("last.pt", "best.pt") if is_best else ("last.pt",)))
            result = {
                "epoch": s.epoch,
                "global_step": s.global_step,
                **{f"train_{k}": v for k, v in train_stats.items()},
                **{f"val_{k}": v for k, v in val.items()},
                "best_top1": s.best_top1,
                "epoch_time_s": time.perf_counter() - t0,
                "time": time.time(),
            }
            if self.rt.is_main:
                self._report_epoch(result)
        return result

    def _report_epoch(self, r: dict) -> None:
        log.info(
            "epoch %d/%d: val top-1 %.2f%% top-5 %.2f%% loss %.4f (%d images) | train loss %.4f, %.0f img/s, "
            "data wait %.1f%% | best %.2f%%", r["epoch"], self.args.epochs, r["val_top1"], r["val_top5"],
            r["val_loss"], r["val_count"], r["train_loss"], r["train_img_per_s"], 100 * r["train_data_wait_fraction"],
            r["best_top1"],
        )
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")
        if self.writer is not None:
            for k in ("val_top1", "val_top5", "val_loss", "train_loss", "train_img_per_s", "train_data_wait_fraction",
                      "best_top1"):
                self.writer.add_scalar("epoch/" + k, r[k], r["epoch"])
            self.writer.flush()


def train_one_epoch(tr: Trainer) -> dict:
    """One pass over the training loader (from the resumed position), with timing and checkpoints."""
    args, rt, s = tr.args, tr.rt, tr.state
    model, loader = tr.model, tr.train_loader
    model.train()
    n = tr.steps_per_epoch
    start = s.step_in_epoch
    # batches this pass of the loader will yield: a loader restored mid-epoch yields the rest of that
    # epoch; otherwise a full epoch, whose first `start` batches are skipped when replaying
    restored_mid_epoch = start > 0 and not tr._replay and tr._loader_restored
    pass_len = len(loader) - start if restored_mid_epoch else len(loader)
    it = iter(loader)
    for skipped in range(tr._replay):  # stateless loader resumed mid-epoch: skip what was already trained on
        if next(it, None) is None:
            raise TrainError(f"cannot resume mid-epoch: the training loader ended after {skipped} of the "
                             f"{tr._replay} batches already trained on (was the data set changed?)")
    consumed = tr._replay
    tr._replay = 0
    tr._loader_restored = False
    global_batch = args.batch_size * rt.world_size
    bar = tqdm(total=n, initial=start, desc=f"epoch {s.epoch + 1}/{args.epochs}", unit="batch",
               disable=not (rt.is_main and args.progress), dynamic_ncols=True, leave=False)
    loss_sum = torch.full((), tr._epoch_loss_sum, dtype=torch.float64, device=rt.device)
    prior_steps = tr._epoch_steps  # steps of this epoch done before a resume
    steps = 0
    wait_s = compute_s = 0.0
    win_wait = win_compute = 0.0
    win_steps = 0
    t_start = time.perf_counter()
    t_prev = t_start
    try:
        for i in range(start, n):
            try:
                events, labels = next(it)
                consumed += 1
            except StopIteration:
                raise TrainError(
                    f"the training loader ended after {i} of {n} batches; its len() does not match what it yields"
                ) from None
            t_data = time.perf_counter()
            loss = tr.step_fn(events, labels)
            tr.scheduler.step()
            loss_sum += loss.double()
            steps += 1
            s.step_in_epoch = i + 1
            s.global_step += 1
            t_done = time.perf_counter()
            wait_s += t_data - t_prev
            compute_s += t_done - t_data
            win_wait += t_data - t_prev
            win_compute += t_done - t_data
            win_steps += 1
            t_prev = t_done
            if win_steps == args.log_every or i + 1 == n:
                lr = tr.optimizer.param_groups[0]["lr"]
                if rt.is_main:
                    loss_now = loss.item()  # the one host sync, every log_every steps
                    ips = win_steps * global_batch / max(win_wait + win_compute, 1e-9)
                    bar.set_postfix(loss=f"{loss_now:.3f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}",
                                    wait=f"{100 * win_wait / max(win_wait + win_compute, 1e-9):.0f}%")
                    if tr.writer is not None:
                        g = s.global_step
                        tr.writer.add_scalar("train/loss", loss_now, g)
                        tr.writer.add_scalar("train/lr", lr, g)
                        tr.writer.add_scalar("train/img_per_s", ips, g)
                        tr.writer.add_scalar("train/data_wait_ms_per_step", 1000 * win_wait / win_steps, g)
                        tr.writer.add_scalar("train/compute_ms_per_step", 1000 * win_compute / win_steps, g)
                bar.update(win_steps)
                win_wait = win_compute = 0.0
                win_steps = 0
            if args.ckpt_every and s.global_step % args.ckpt_every == 0 and i + 1 < n:
                tr._epoch_loss_sum, tr._epoch_steps = loss_sum.item(), prior_steps + steps
                tr.save("last.pt")
                t_prev = time.perf_counter()  # checkpoint time is neither data wait nor compute
    finally:
        bar.close()
    if consumed < pass_len:
        # the pass was cut short (ranks cut to a common step count, or a resume that could not restore the
        # loader's position): drop the rest so the next epoch starts at a fresh shuffle
        if hasattr(loader, "reset"):
            loader.reset()
    else:
        # run the pass to its end so the loader closes the epoch itself (DALI resets its iterator and
        # starts prefetching the next epoch); the epoch-end checkpoint then holds a next-epoch state
        for _ in it:
            raise TrainError(f"the training loader yields more batches than its len() ({len(loader)})")
    elapsed = time.perf_counter() - t_start
    if rt.distributed:
        dist.all_reduce(loss_sum)
    mean_loss = loss_sum.item() / max((prior_steps + steps) * rt.world_size, 1)
    tr._epoch_loss_sum, tr._epoch_steps = 0.0, 0
    return {
        "loss": mean_loss,
        "steps": steps,
        "img_per_s": steps * global_batch / max(elapsed, 1e-9),
        "data_wait_s": wait_s,
        "compute_s": compute_s,
        "data_wait_fraction": wait_s / max(wait_s + compute_s, 1e-9),
        "lr": tr.optimizer.param_groups[0]["lr"],
    }


# ==================================================================================================
# assembling a run
# ==================================================================================================
def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler)."""
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            log.info("--amp %s ignored on %s: mixed precision here is for CUDA GPUs", mode, device)
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                    device: torch.device) -> torch.optim.SGD:
    """SGD as the paper trains (no weight decay on BN and bias). On CUDA the fused implementation: one
    kernel for the update, and GradScaler (fp16) then checks for inf on the device instead of an
    ``.item()`` sync every step."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum,
                           fused=device.type == "cuda")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only, not on BN or biases (as timm's optimiser factory)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_compatible(ckpt: dict, args, num_classes: int, class_names: list[str], source: str) -> None:
    """Refuse a checkpoint of another model, width, data set or class list, saying what differs."""
    problems = []
    if ckpt.get("arch") != args.arch:
        problems.append(f"architecture {ckpt.get('arch')} (this run: --arch {args.arch})")
    if ckpt.get("width") != args.width:
        problems.append(f"width {ckpt.get('width')} (this run: --width {args.width})")
    if ckpt.get("dataset") != args.dataset:
        problems.append(f"data set {ckpt.get('dataset')} (this run: --dataset {args.dataset})")
    if ckpt.get("num_classes") != num_classes:
        problems.append(f"{ckpt.get('num_classes')} classes (this data set has {num_classes})")
    elif class_names and ckpt.get("class_names") and list(ckpt["class_names"]) != list(class_names):
        problems.append("a different list of class names")
    if problems:
        raise CheckpointError(
            f"{source} cannot resume this run: it was saved with " + "; ".join(problems)
            + ". Use a matching --output-dir/--resume, or start from its weights with --pretrained."
        )


def _open_writer(output_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        log.warning("TensorBoard is not importable; scalars go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(output_dir / "tb"))


def run(args: argparse.Namespace) -> dict | None:
    rt = init_runtime(args.device)
    output_dir = Path(args.output_dir).expanduser()
    handlers: list[logging.Handler] = []
    writer = None
    try:
        if rt.is_main and not args.evaluate:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrainError(f"--output-dir {output_dir} cannot be created: {e}") from e
        handlers = setup_logging(rt, output_dir if not args.evaluate else None)
        if rt.is_main and output_dir.is_dir():
            _clean_stale_temps(output_dir)
        configure_cpu_threads(args, rt)
        torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts them)

        train_loader, val_loader = build_loaders(args, rt, need_train=not args.evaluate)
        num_classes = val_loader.num_classes
        class_names = list(getattr(val_loader, "class_names", []) or [])
        if train_loader is not None and train_loader.num_classes != num_classes:
            raise TrainError(f"train has {train_loader.num_classes} classes but val has {num_classes}")

        model = build_model(args.arch, num_classes, width=args.width, zero_init_residual=args.zero_init_residual)
        seed_everything(args.seed + rt.rank)  # per-rank streams from here on

        resume_path = None
        if args.resume == "auto":
            cand = output_dir / "last.pt"
            resume_path = cand if cand.is_file() else None
            if resume_path is None:
                log.info("--resume auto: no %s yet, starting a new run", cand)
        elif args.resume:
            resume_path = Path(args.resume).expanduser()
        ckpt = None
        if resume_path is not None:
            ckpt = load_checkpoint(resume_path)
            check_compatible(ckpt, args, num_classes, class_names, str(resume_path))
            if args.pretrained:
                log.info("--pretrained %s ignored: resuming %s", args.pretrained, resume_path)
        elif args.pretrained:
            notes = load_pretrained(model, args.pretrained, num_classes=num_classes)
            if args.evaluate and notes:
                raise CheckpointError(f"--pretrained {args.pretrained} cannot be evaluated on this data set: "
                                      + "; ".join(notes))
            for note in notes:
                log.info("--pretrained: %s", note)
            log.info("loaded weights from %s", args.pretrained)

        model.to(rt.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        amp_dtype, use_scaler = resolve_amp(args.amp, rt.device)
        log.info("%s (width %d, %d classes, %.1fM parameters) on %s, T=%d, amp=%s, %d process(es)", args.arch,
                 args.width, num_classes, sum(p.numel() for p in model.parameters()) / 1e6, rt.device,
                 args.timesteps, amp_dtype or "off", rt.world_size)

        if args.evaluate:
            if ckpt is not None:
                load_state_into(model, ckpt["model"], source=str(resume_path))
            elif not args.pretrained:
                log.warning("--evaluate without --pretrained or --resume: evaluating random weights")
            res = evaluate(model, val_loader, amp_dtype=amp_dtype, channels_last=args.channels_last,
                           progress=rt.is_main and args.progress)
            log.info("evaluation: top-1 %.2f%% top-5 %.2f%% loss %.4f over %d images", res["top1"], res["top5"],
                     res["loss"], res["count"])
            if rt.is_main:
                print(json.dumps(res))
            return res

        steps_per_epoch = len(train_loader)
        if rt.distributed:  # every rank must take the same number of steps (DDP all-reduces each one)
            t = torch.tensor([steps_per_epoch], device=rt.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            steps_per_epoch = int(t.item())
        if steps_per_epoch < 1:
            raise TrainError("the training set gives no full batch: lower --batch-size")
        optimizer = build_optimizer(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                    device=rt.device)
        # cosine over every step of the whole run (smooth also for short runs), floor --lr-min
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch,
                                                               eta_min=args.lr_min)
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None

        ddp_model: nn.Module = model
        if rt.distributed:
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        if args.compile:
            ddp_model = torch.compile(ddp_model)
        writer = _open_writer(output_dir, args.tensorboard) if rt.is_main else None
        trainer = Trainer(args, rt, ddp_model, optimizer, scheduler, scaler, amp_dtype, train_loader, val_loader,
                          steps_per_epoch, output_dir, writer)
        if ckpt is not None:
            if ckpt.get("steps_per_epoch") != steps_per_epoch:
                raise CheckpointError(
                    f"{resume_path} was saved with {ckpt.get('steps_per_epoch')} steps per epoch, this run has "
                    f"{steps_per_epoch} (different --batch-size, data or process count); the schedule would not "
                    "continue. Resume with the same settings, or use --pretrained."
                )
            trainer.restore(ckpt, str(resume_path))
            saved_epochs = (ckpt.get("config") or {}).get("epochs")
            if saved_epochs != args.epochs:
                # a longer (or shorter) run than planned: continue on the cosine of an --epochs run, as if it
                # had been planned so from the start (the lr may rise again after a finished run)
                scheduler.T_max = args.epochs * steps_per_epoch
                t = min(scheduler.last_epoch, scheduler.T_max)
                for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                    group["lr"] = args.lr_min + (base - args.lr_min) * (1 + math.cos(math.pi * t / scheduler.T_max)) / 2
                scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
                log.warning("--epochs %d differs from the checkpoint's %s: the cosine schedule now spans %d epochs "
                            "(lr %.3g at this point)", args.epochs, saved_epochs, args.epochs,
                            optimizer.param_groups[0]["lr"])
            del ckpt
        if rt.is_main:
            atomic_write_text(output_dir / "config.json",
                              json.dumps({k: _plain(v) for k, v in vars(args).items()}, indent=1))
        log.info("training %d epochs x %d steps, batch %d x %d process(es), lr %g -> %g, wd %g; output %s",
                 args.epochs, steps_per_epoch, args.batch_size, rt.world_size, args.lr, args.lr_min,
                 args.weight_decay, output_dir)
        result = trainer.fit()
        if result is None:
            log.info("nothing to do: the checkpoint already finished %d epochs", trainer.state.epoch)
        else:
            log.info("done: %d/%d epochs, last top-1 %.2f%%, best %.2f%%; checkpoints %s/{last,best}.pt",
                     trainer.state.epoch, args.epochs, result["val_top1"], trainer.state.best_top1, output_dir)
        return result
    except torch.OutOfMemoryError as e:
        raise TrainError(
            f"out of GPU memory with --batch-size {args.batch_size} per GPU (T={args.timesteps}, size {args.size}): "
            f"lower --batch-size (e.g. {max(1, args.batch_size // 2)}), or --timesteps/--size; keep --amp on "
            f"({str(e).splitlines()[0] if str(e) else 'CUDA OOM'})"
        ) from None
    finally:
        if writer is not None:
            writer.close()
        for h in handlers:
            logging.getLogger("i2e_dali").removeHandler(h)
            h.close()
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_config(args)
        return run(args)
    except (TrainError, CheckpointError, FileNotFoundError, ValueError) as e:
        # user-fixable problems: one clear line, no traceback (ValueError/FileNotFoundError come from the
        # loaders' and data sets' own checks, which name the file and what to do)
        if os.environ.get("I2E_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; continue with --resume auto", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
