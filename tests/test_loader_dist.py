"""Sharding under torch.distributed: two CPU processes (gloo), default shard = (rank, world size)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from loader_data import make_folder, write_cifar


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, cifar: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from i2e_dali.data.sources import CifarSource, ImageFolderSource
        from loader_data import event_loader as EventLoader

        result = {}
        for name, src in (("folder", ImageFolderSource(folder)), ("cifar", CifarSource(cifar, train=True))):
            kw = dict(device="cpu", num_threads=1, with_index=True, crop_size=16, resize_size=20, out_size=32,
                      timesteps=2)
            ev = EventLoader(src, 3, train=False, **kw)
            tr = EventLoader(src, 3, train=True, **kw)
            assert (ev.shard_id, ev.num_shards) == (rank, world)
            result[name] = {
                "eval": [[i for b in ev for i in b[2].tolist()] for _ in range(2)],
                "train": [[i for b in tr for i in b[2].tolist()] for _ in range(2)],
                "len": (len(ev), len(tr), ev.num_samples),
            }
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_shard_disjoint_and_cover(tmp_path):
    folder = make_folder(tmp_path / "imgs", {"a": 6, "b": 5, "c": 6}, seed=4)  # 17 images: uneven shards
    cifar, _ = write_cifar(tmp_path / "cifar", per_batch=5)  # 25 training images
    mp.spawn(_worker, args=(2, _free_port(), str(folder), str(cifar), str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, total in (("folder", 17), ("cifar", 25)):
        r0, r1 = res[0][name], res[1][name]
        for epoch in range(2):
            # eval: disjoint, and together every sample exactly once
            assert sorted(r0["eval"][epoch] + r1["eval"][epoch]) == list(range(total))
            # train: disjoint, same number of batches on both ranks (DDP steps in lockstep)
            assert not set(r0["train"][epoch]) & set(r1["train"][epoch])
            assert len(r0["train"][epoch]) == len(r1["train"][epoch]) == ((total // 2) // 3) * 3
        assert r0["train"][0] != r0["train"][1]  # reshuffled
        assert r0["len"][1] == r1["len"][1]
        assert r0["len"][2] + r1["len"][2] == total
