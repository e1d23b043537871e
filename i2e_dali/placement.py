"""Where work runs: the device a loader/benchmark uses, the data shard a rank reads, the cores a
process may use, and the default seed every random stream starts from.

One home for these rules, shared by the live EventLoader, the FrameLoader, the benchmark and the
calibrator, so "auto" and the torch.distributed defaults mean the same everywhere.
"""
from __future__ import annotations

import os

import torch

from pipelines import DEFAULT_SEED  # the one home of the default seed

from .errors import ConfigError

__all__ = ["DEFAULT_SEED", "resolve_device", "local_cuda_index", "default_shard", "global_rank", "usable_cores",
           "cores_per_rank"]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container or taskset may allow fewer
    than ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cores_per_rank() -> int:
    """This rank's share of the node's cores: torchrun's ranks on one node share them
    (it sets LOCAL_WORLD_SIZE)."""
    return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def local_cuda_index() -> int:
    """This process's own GPU: LOCAL_RANK (torchrun, SLURM launchers that set it) modulo the visible
    devices; else, under an initialised process group, its rank modulo the visible devices; else the
    current device. Read whenever a loader is built, so a loader built before ``torch.cuda.set_device``
    still lands on the rank's GPU rather than every rank's GPU 0."""
    count = torch.cuda.device_count()
    local = os.environ.get("LOCAL_RANK")
    if local is not None and local.strip().isdigit():
        return int(local) % max(count, 1)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() % max(count, 1)
    return torch.cuda.current_device()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto"/None -> this process's CUDA device if torch sees one (see :func:`local_cuda_index`), else the
    CPU; "cuda" -> the same local device; "cuda:N" and "cpu" as given. A bad value is a ConfigError."""

    if device is None or (isinstance(device, str) and device == "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device} was requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        if device.index is None:
            device = torch.device("cuda", local_cuda_index())
    elif device.type != "cpu":
        raise ConfigError(f"device must be 'auto', 'cpu' or a CUDA device, got {device}")
    return device


def global_rank() -> int:
    """This process's rank: the process group's once it is initialised, else torchrun's $RANK (a file that
    rank 0 writes may be asked for before the group forms), else 0."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def default_shard(shard_id: int | None, num_shards: int | None) -> tuple[int, int]:
    """(shard_id, num_shards): explicit values, else (rank, world size) under torch.distributed, else (0, 1)."""
    if shard_id is None and num_shards is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if shard_id is None or num_shards is None:
        raise ConfigError("give both shard_id and num_shards, or neither (then torch.distributed decides)")
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"num_shards must be a positive int, got {num_shards!r}")
    if isinstance(shard_id, bool) or not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
        raise ConfigError(f"shard_id must be an int in 0..{num_shards - 1}, got {shard_id!r}")
    return shard_id, num_shards
