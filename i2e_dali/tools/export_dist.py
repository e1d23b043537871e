"""Several export processes (``torchrun --nproc_per_node N -m i2e_dali.tools.export ...``, one or more nodes).

Each rank converts its contiguous share of a split's output files (npz files, or Parquet shards) on its
own GPU and skips the files it finds complete, so every rank resumes on its own and a rerun with another
rank count still only redoes what is missing. Rank 0 removes a killed run's temp files and writes the
split's metadata before the others start writing (a barrier), and prints one summary at the end with
every rank's share. The process group only carries that barrier and the summaries, so it is always
gloo (CPU), whatever the devices.
"""
from __future__ import annotations

import os
from dataclasses import asdict

import torch

__all__ = ["init_ranks", "barrier", "gather", "merge", "finish"]


def init_ranks() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group) from torchrun's environment."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    dist.init_process_group(backend="gloo")
    if torch.cuda.is_available():  # each rank on its own GPU of the node
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return dist.get_rank(), dist.get_world_size(), True


def barrier() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather(obj):
    """Every rank's ``obj`` (a list, rank order) on every rank; ``[obj]`` without a process group."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def finish(started: bool) -> None:
    if started and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def merge(per_rank: list[list], summary_cls) -> list:
    """One summary per split from every rank's summaries: totals summed, ``shares`` lists each rank's part."""
    merged = []
    for parts in zip(*per_rank):
        total = summary_cls(split=parts[0].split)
        per_t_cells = []
        for rank, s in enumerate(parts):
            for key in ("written", "skipped", "removed_partials", "events", "cells", "bytes_written", "source_bytes",
                        "shards_written", "shards_skipped"):
                setattr(total, key, getattr(total, key) + getattr(s, key))
            total.seconds = max(total.seconds, s.seconds)
            total.frame_shape = total.frame_shape or s.frame_shape
            if s.per_timestep_rate:
                per_t_cells.append((s.cells, s.per_timestep_rate))
            total.shares.append({"rank": rank, "files": s.written, "skipped": s.skipped, "bytes": s.bytes_written,
                                 "seconds": round(s.seconds, 3), "shards": s.shards_written,
                                 "shards_skipped": s.shards_skipped})
        if per_t_cells:
            cells = sum(c for c, _ in per_t_cells)
            total.per_timestep_rate = [sum(c * r[t] for c, r in per_t_cells) / cells
                                       for t in range(len(per_t_cells[0][1]))]
        merged.append(total)
    return merged


def as_dict(summary) -> dict:
    return asdict(summary)
