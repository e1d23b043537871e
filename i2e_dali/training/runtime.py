"""Where and how a training run executes: device, DDP process group, CPU thread split, seeds, logging,
mixed precision, and the one cross-rank gather."""
from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..errors import TrainError
from ..placement import cores_per_rank, resolve_device

__all__ = ["Runtime", "init_runtime", "configure_cpu_threads", "seed_everything", "setup_logging", "resolve_amp",
           "gather"]

log = logging.getLogger("i2e_dali.train")


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


def configure_cpu_threads(workers: int | None, threads: int | None, rt: Runtime) -> int | None:
    """On the CPU, split the cores between DALI's threads and torch's instead of both taking all of them;
    returns the loader threads to use (``workers`` as given on a GPU).

    Oversubscribed OpenMP threads spin: measured here (2 cores), a training step cost 10x the CPU time
    with 2 torch threads next to a busy DALI pipeline than with 1. Data and compute then run side by
    side on their own cores (DALI prefetches while torch computes).
    """
    if rt.device.type != "cpu":
        return workers
    cores = cores_per_rank()
    if workers is None:
        workers = max(1, cores // 4)
    threads = threads or max(1, cores - workers)
    torch.set_num_threads(threads)
    log.info("CPU run: %d DALI/loader thread(s), %d torch thread(s)", workers, threads)
    return workers


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


def resolve_amp(mode: str, device: torch.device, *, quiet: bool = False) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler). ``quiet``: no log line (for callers that only ask)."""
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda" and not quiet:
            log.info("--amp %s ignored on %s: mixed precision here is for CUDA GPUs", mode, device)
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def gather(obj, rt: Runtime) -> list:
    """Every rank's ``obj`` on every rank (a collective: all ranks must call it at the same point)."""
    if not rt.distributed:
        return [obj]
    out = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out
