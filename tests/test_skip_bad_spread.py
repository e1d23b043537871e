"""--skip-bad at scale: the decode check spread over the ranks (each decodes its share, the shares merged by
an all-gather) in a process group of its own, so a check longer than the training group's timeout fails
no collective. Real gloo process groups (two processes), real decode pool; a scripted decoder hangs on one
file so one rank's share takes longer than the training group's timeout."""
from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp

from train_helpers import free_port

TRAINING_TIMEOUT_S = 2  # the default group's timeout in this test; the hang below lasts longer


def _worker(rank: int, world: int, port: int, root: str, cache: str, out: str) -> None:
    from damage import scripted_decode
    from i2e_dali.data.decode_check import skip_bad_check

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=TRAINING_TIMEOUT_S))
    try:
        t0 = time.perf_counter()
        found = skip_bad_check(root, splits=("train",), cache_dir=cache, progress=False, time_limit=4.0,
                               decode_fn=scripted_decode, log=None)
        first = time.perf_counter() - t0
        again = skip_bad_check(root, splits=("train",), cache_dir=cache, progress=False, time_limit=4.0,
                               decode_fn=scripted_decode)
        dist.barrier()  # the training group still works afterwards
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"found": found, "again": again, "seconds": first}, f)
    finally:
        dist.destroy_process_group()


def test_skip_bad_check_spread_over_ranks_outlasts_the_training_timeout(tmp_path):
    root = tmp_path / "set" / "train"
    files = []
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            path = root / cls / f"{cls}_{i}.jpg"
            path.write_bytes(b"fine\n")
            files.append(str(path))
    files.sort()
    # the scripted decoder: BAD -> a decode error, HANG -> sleeps past the time limit (rank 0's share: even
    # indices of the sorted candidate list)
    bad, hang = files[3], files[0]
    open(bad, "wb").write(b"BAD\n")
    open(hang, "wb").write(b"HANG\n")
    (root / "a" / "notes.txt").write_text("not an image")
    out = str(tmp_path / "res")
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path / "set"), str(tmp_path / "cache"), out), nprocs=2,
                       start_method="spawn", join=True)
    res = [json.load(open(f"{out}.{r}")) for r in range(2)]
    expected = [str(root / "a" / "notes.txt"), hang, bad]
    for r in res:
        assert sorted(r["found"]) == sorted(expected) and r["again"] == r["found"]
    assert res[0]["found"] == res[1]["found"]  # one answer, same order, on both ranks
    # rank 1 decoded its share quickly and then waited for rank 0's hang (4 s): longer than the training
    # group's timeout, which a barrier there would not have survived
    assert res[1]["seconds"] > TRAINING_TIMEOUT_S + 1
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the merged answer, cached once per folder
