"""Runs that survive, end to end on two real gloo processes (the demo generator's tiny JPEG set, 16-pixel
crops): a stop signal to ONE rank, a SIGTERM to the torchrun agent, a SIGKILLed worker under
``torchrun --max-restarts 1``. Each run finishes with weights bit-identical to an uninterrupted one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from i2e_dali.training.preempt import STOP_EXIT_CODE
from train_helpers import REPO, free_port, subprocess_env, tiny_args, tiny_data

CKPT_EVERY = 4
# 32 training images, 2 ranks x batch 1: 16 steps per epoch, 2 epochs
FLAGS = ("--ckpt-every", str(CKPT_EVERY), "--log-every", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data"), classes=4)


def _torchrun(out: Path, data: Path, *extra: str, restarts: int = 0) -> list[str]:
    # --standalone: c10d rendezvous on a free local port, as examples/slurm/train_one_node.sbatch (the static
    # rendezvous of a bare --master_port does not bring a restarted gloo group together again)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--max-restarts", str(restarts), str(REPO / "train_dali.py"),
            *tiny_args(data, out, *FLAGS, *extra, epochs=2, batch=1)]


def _plain_ranks(out: Path, data: Path, env: dict, *extra: str) -> list[subprocess.Popen]:
    """Two processes joined by env:// without torchrun's agent: each one's exit code is its own."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        e = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "train_dali.py"),
                                       *tiny_args(data, out, *FLAGS, *extra, epochs=2, batch=1)],
                                      cwd=REPO, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _wait_for_checkpoint(out: Path, procs, *, min_step: int, timeout: float = 180) -> dict:
    """The first mid-epoch last.pt at or past ``min_step`` (polled; every version must load)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert all(p.poll() is None for p in procs), "the run ended before the test could interrupt it"
        if (out / "last.pt").exists():
            ck = _load(out / "last.pt")
            if ck["global_step"] >= min_step and 0 < ck["step_in_epoch"]:
                return ck
        time.sleep(0.005)
    raise AssertionError("no checkpoint in time")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert (a["epoch"], a["step_in_epoch"], a["global_step"]) == (b["epoch"], b["step_in_epoch"], b["global_step"])
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for (_, va), (_, vb) in zip(sorted(a["optimizer"]["state"].items()), sorted(b["optimizer"]["state"].items())):
        assert torch.equal(va["momentum_buffer"], vb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref")
    r = subprocess.run(_torchrun(out, data), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = _load(out / "last.pt")
    assert (ck["epoch"], ck["global_step"], ck["world_size"]) == (2, 32, 2)
    return ck


def test_sigusr1_to_one_rank_stops_both_at_one_step_and_resume_is_bit_identical(data, reference, tmp_path):
    out = tmp_path / "run"
    procs = _plain_ranks(out, data, subprocess_env())
    try:
        _wait_for_checkpoint(out, procs, min_step=CKPT_EVERY)
        procs[1].send_signal(signal.SIGUSR1)  # rank 1 only
        errs = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [STOP_EXIT_CODE] * 2, errs[1][-3000:]
    assert "[rank 1] SIGUSR1: stopping at the next step boundary" in errs[1]
    assert "SIGUSR1" not in errs[0]  # rank 0 never got it: it stopped on the agreement alone
    ck = _load(out / "last.pt")
    stopped = (ck["epoch"], ck["step_in_epoch"], ck["global_step"])
    assert 0 < ck["step_in_epoch"] and ck["global_step"] < 32, stopped
    # one consistent checkpoint: both ranks' loader positions and epoch sums are at the same step
    assert [r["epoch_steps"] for r in ck["ranks"]] == [ck["step_in_epoch"]] * 2 or ck["step_in_epoch"] == 16
    log = (out / "train.log").read_text()
    assert "stopped on another rank's stop signal" in log and f"exit code {STOP_EXIT_CODE}" in log
    # --resume auto (the default with WORLD_SIZE set) finishes the run: bit-identical to the uninterrupted one
    procs = _plain_ranks(out, data, subprocess_env())
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:]
    assert f"(global step {stopped[2]})" in (out / "train.log").read_text()
    _assert_same_weights(reference, _load(out / "last.pt"))


def test_sigterm_to_the_torchrun_agent_and_slurm_requeue(data, reference, tmp_path):
    """The agent forwards SIGTERM to both workers; they stop at one step and save; rank 0 runs
    ``scontrol requeue $SLURM_JOB_ID`` (a stand-in on PATH records it); torchrun's resumed run finishes."""
    out = tmp_path / "run"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {tmp_path}/scontrol.calls\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**subprocess_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "777"}
    agent = subprocess.Popen(_torchrun(out, data, "--requeue-on-signal"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(out, [agent], min_step=CKPT_EVERY)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=180)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode != 0  # torchrun reports the signal it got
    assert err.count("SIGTERM: stopping at the next step boundary") == 2, err[-3000:]
    ck = _load(out / "last.pt")
    assert 0 < ck["step_in_epoch"] and ck["global_step"] < 32
    assert (tmp_path / "scontrol.calls").read_text().splitlines() == ["requeue 777"]
    r = subprocess.run(_torchrun(out, data), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(reference, _load(out / "last.pt"))


def _workers(agent_pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (children of the agent)."""
    found = {}
    for task in Path(f"/proc/{agent_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
            except OSError:
                continue
            if "RANK" in env:
                found[int(env["RANK"])] = int(pid)
    return found


def test_sigkill_of_one_worker_under_max_restarts_resumes_every_rank(data, reference, tmp_path):
    """torchrun --max-restarts 1: a worker killed with SIGKILL takes the group down; the agent restarts both
    workers, which pick up last.pt themselves (--resume auto is the default under torchrun): at most
    --ckpt-every steps are lost, and the run ends with the uninterrupted run's weights."""
    out = tmp_path / "run"
    # as examples/slurm sets it: each restart round gets a fresh store (pytorch/pytorch#135712: with the agent's
    # shared store a restarted gloo/NCCL group can read the killed round's addresses; seen here too)
    env = {**subprocess_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    agent = subprocess.Popen(_torchrun(out, data, restarts=1), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ck = _wait_for_checkpoint(out, [agent], min_step=CKPT_EVERY)
        workers = _workers(agent.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        _, err = agent.communicate(timeout=600)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    (tmp_path / "agent.err").write_text(err)
    assert agent.returncode == 0, err[-3000:]
    log = (out / "train.log").read_text()
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1, log[-3000:]
    step = int(resumed[0].split("(global step ")[1].split(")")[0])
    # resumed from the last checkpoint written before the kill (or a later one, if it landed meanwhile):
    # steps lost at most --ckpt-every
    assert step >= ck["global_step"] and step % CKPT_EVERY == 0
    _assert_same_weights(reference, _load(out / "last.pt"))


def test_stop_during_evaluation_saves_the_trained_epoch_and_resume_is_bit_identical(data, tmp_path, monkeypatch):
    """One process: a SIGUSR1 arriving while epoch 1 is evaluated ends the evaluation at the next batch; the
    checkpoint holds the trained epoch and its training numbers; the resumed run evaluates epoch 1 without
    training it again and ends like the uninterrupted run (weights and every metrics row's training numbers)."""
    from i2e_dali.training import engine
    from i2e_dali.training.run import main
    from train_helpers import metrics

    args = lambda out: tiny_args(data, out, *FLAGS, epochs=2, batch=2)  # noqa: E731
    main(args(tmp_path / "ref"))
    real_evaluate = engine.evaluate
    calls = []

    def evaluate_with_a_signal(*a, **kw):  # the real evaluation; the real signal arrives as it starts
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_evaluate(*a, **kw)

    monkeypatch.setattr(engine, "evaluate", evaluate_with_a_signal)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(args(out))
    assert info.value.code == STOP_EXIT_CODE
    ck = _load(out / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (0, 16, 16)
    assert ck["train_stats"]["steps"] == 16 and not metrics(out)  # trained, not evaluated, no row yet
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
    main([*args(out), "--resume", "auto"])  # not the default in one process: asked for
    log = (out / "train.log").read_text()
    assert "stopped on SIGUSR1 during the evaluation of epoch 1" in log
    assert "step 16 of 16 (global step 16)" in log  # resumed at the end of epoch 1's training
    _assert_same_weights(_load(tmp_path / "ref" / "last.pt"), _load(out / "last.pt"))
    ref, got = metrics(tmp_path / "ref"), metrics(out)
    assert [r["epoch"] for r in got] == [1, 2]
    for a, b in zip(ref, got):
        assert (a["train_loss"], a["train_top1"], a["val_top1"], a["val_loss"]) == (
            b["train_loss"], b["train_top1"], b["val_top1"], b["val_loss"])
