"""Stop signals (training/preempt.py) on real gloo process groups: a signal to ONE rank makes every rank
stop at the same step boundary; a second signal is absorbed; handlers are restored; evaluation agrees only
over the batches every rank holds; the SLURM requeue command."""
from __future__ import annotations

import json
import os
import signal
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from i2e_dali.training.preempt import STOP_EXIT_CODE, StopGuard, TrainingStopped, requeue_command
from i2e_dali.training.runtime import Runtime
from train_helpers import free_port


def _worker(rank: int, world: int, port: int, out: str, signal_at: int, eval_lengths: list[int]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    rt = Runtime(torch.device("cpu"), rank, world)
    res = {"stopped_at": None}
    try:
        before = signal.getsignal(signal.SIGUSR1)
        with StopGuard(["SIGTERM", "SIGUSR1"], rt) as guard:
            # an evaluation without a signal, rank 0 holding one batch more: its extra batch asks no collective
            should_stop = guard.eval_guard(list(range(eval_lengths[rank])))
            res["quiet_eval"] = [should_stop(i) for i in range(eval_lengths[rank])] + [guard.settle()]
            for step in range(1, 200):
                grad = torch.full((4,), float(rank))
                dist.all_reduce(grad)  # the step's own collective, as DDP's gradient sync
                if rank == 1 and step == signal_at:
                    os.kill(os.getpid(), signal.SIGUSR1)
                if guard.poll():
                    res["stopped_at"] = step
                    os.kill(os.getpid(), signal.SIGUSR1)  # a second signal "during the save": absorbed
                    break
            res["repeats"] = guard.repeats
            res["received"] = guard.received.name if guard.received else None
            res["stopped_by"] = guard.stopped_by
            res["settle_after"] = guard.settle()  # still agreed: the flag stays set on rank 1
            # evaluation: rank 0 holds one batch more; only the common batches are agreed on
            should_stop = guard.eval_guard(list(range(eval_lengths[rank])))
            res["eval"] = next((i for i in range(eval_lengths[rank]) if should_stop(i)), None)
        res["handler_restored"] = signal.getsignal(signal.SIGUSR1) == before
        with StopGuard([], rt) as quiet:  # no stop signals: no handler, no collective
            res["quiet_poll"] = quiet.poll()
    finally:
        with open(f"{out}.{rank}", "w") as f:
            json.dump(res, f)
        dist.destroy_process_group()


def test_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    out = str(tmp_path / "res")
    mp.start_processes(_worker, args=(2, free_port(), out, 5, [4, 3]), nprocs=2, start_method="spawn", join=True)
    r0, r1 = (json.load(open(f"{out}.{r}")) for r in range(2))
    # rank 1 got the signal at step 5; the reduce started at that boundary is read at the next one: both stop at 6
    assert r0["stopped_at"] == r1["stopped_at"] == 6
    assert r1["received"] == "SIGUSR1" and r0["received"] == "SIGUSR1"  # rank 0's own second signal only
    assert r0["stopped_by"] == "another rank's stop signal" and r1["stopped_by"] == "SIGUSR1"
    assert r1["repeats"] == 1 and r0["repeats"] == 0
    assert r0["settle_after"] is True and r1["settle_after"] is True
    # eval (the stop is still set): the agreement started before batch 0 is read before batch 1, on both
    assert r0["eval"] == r1["eval"] == 1
    assert r0["quiet_eval"] == [False] * 5 and r1["quiet_eval"] == [False] * 4
    assert r0["handler_restored"] and r1["handler_restored"]
    assert r0["quiet_poll"] is False and r1["quiet_poll"] is False


def test_single_process_guard_and_exit_code():
    rt = Runtime(torch.device("cpu"))
    with StopGuard(["SIGUSR1"], rt) as guard:
        assert not guard.poll()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert guard.requested and guard.poll() and guard.settle()
    stop = TrainingStopped("SIGUSR1", "at epoch 1, step 3 of 8", "/runs/x/last.pt")
    assert isinstance(stop, SystemExit) and stop.code == STOP_EXIT_CODE == 75
    assert "--resume auto" in str(stop) and "/runs/x/last.pt" in str(stop)
    with pytest.raises(ValueError, match="unknown signal"):
        StopGuard(["SIGNOPE"], rt)


def test_requeue_command_for_jobs_and_array_tasks():
    assert requeue_command({}) is None
    assert requeue_command({"SLURM_JOB_ID": "4242"}) == ["scontrol", "requeue", "4242"]
    assert requeue_command({"SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4200", "SLURM_ARRAY_TASK_ID": "7"}) == [
        "scontrol", "requeue", "4200_7"]
