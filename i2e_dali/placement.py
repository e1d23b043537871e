"""Where work runs: the device a loader/benchmark uses, the data shard a rank reads, the cores a
process may use, and the default seed every random stream starts from.

One home for these rules, shared by the live EventLoader, the FrameLoader, the benchmark and the
calibrator, so "auto" and the torch.distributed defaults mean the same everywhere.
"""
from __future__ import annotations

import os

import torch

from pipelines import DEFAULT_SEED  # the one home of the default seed

__all__ = ["DEFAULT_SEED", "resolve_device", "default_shard", "usable_cores", "cores_per_rank"]


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


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto"/None -> the current CUDA device if torch sees one, else the CPU; "cuda" -> the current one."""
    if device is None or (isinstance(device, str) and device == "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or a CUDA device, got {device}")
    return device


def default_shard(shard_id: int | None, num_shards: int | None) -> tuple[int, int]:
    """(shard_id, num_shards): explicit values, else (rank, world size) under torch.distributed, else (0, 1)."""
    if shard_id is None and num_shards is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if shard_id is None or num_shards is None:
        raise ValueError("give both shard_id and num_shards, or neither (then torch.distributed decides)")
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    if isinstance(shard_id, bool) or not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be an int in 0..{num_shards - 1}, got {shard_id!r}")
    return shard_id, num_shards
