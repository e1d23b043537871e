"""Whole training runs on tiny generated JPEG sets through the real DALI EventLoader: exact resume,
SIGKILL mid-epoch, two-process DDP, evaluate/pretrained flows and checkpoint mismatch errors."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from i2e_dali.training.run import main

from train_helpers import REPO, free_port, metrics, subprocess_env, tiny_args, tiny_data


@pytest.fixture(scope="module")
def data4(tmp_path_factory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data4"), classes=4)


@pytest.fixture(scope="module")
def reference(data4, tmp_path_factory) -> Path:
    """The uninterrupted run: 2 epochs of 16 steps, last.pt every 3 steps."""
    out = tmp_path_factory.mktemp("ref")
    main(tiny_args(data4, out, "--ckpt-every", "3"))
    return out


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_run(a: dict, b: dict):
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(va["momentum_buffer"], vb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]


def test_reference_run_writes_everything(reference):
    files = {p.name for p in reference.iterdir()}
    assert {"last.pt", "best.pt", "metrics.jsonl", "train.log", "config.yaml"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    m = metrics(reference)
    assert [r["epoch"] for r in m] == [1, 2]
    for r in m:
        assert r["val_count"] == 12  # every validation image, once
        assert 0 <= r["train_data_wait_fraction"] <= 1 and r["train_img_per_s"] > 0
        assert r["train_steps"] == 16
    ck = _load(reference / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (2, 0, 32)
    assert ck["arch"] == "msresnet18" and ck["width"] == 4 and ck["num_classes"] == 4 and ck["dataset"] == "imagenet"
    # at an epoch end the loader stands at the next epoch's start, whose pipeline is rebuilt from (seed, epoch)
    loader = ck["ranks"][0]["loader"]
    assert (loader["epoch"], loader["consumed"], loader["dali"]) == (2, 0, None)
    best = _load(reference / "best.pt")
    assert best["best_top1"] == max(r["val_top1"] for r in m)
    assert "epoch 2/2: val top-1" in (reference / "train.log").read_text()


def test_resume_from_an_epoch_boundary_is_exact(data4, reference, tmp_path):
    main(tiny_args(data4, tmp_path, "--ckpt-every", "3", "--stop-after-epoch", "1"))
    assert _load(tmp_path / "last.pt")["epoch"] == 1
    main(tiny_args(data4, tmp_path, "--ckpt-every", "3", "--resume", "auto"))
    _assert_same_run(_load(reference / "last.pt"), _load(tmp_path / "last.pt"))
    assert [r["val_top1"] for r in metrics(tmp_path)] == [r["val_top1"] for r in metrics(reference)]
    assert "resumed from" in (tmp_path / "train.log").read_text()


def test_sigkill_mid_epoch_then_resume(data4, reference, tmp_path):
    """Kill -9 while training; every last.pt ever seen is complete; --resume auto continues from the
    last checkpoint (at most --ckpt-every steps lost) and ends with the uninterrupted run's weights."""
    cmd = [sys.executable, str(REPO / "train_dali.py"), *tiny_args(data4, tmp_path, "--ckpt-every", "3")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            if (tmp_path / "last.pt").exists():
                ck = _load(tmp_path / "last.pt")  # must always load: never a partial file
                seen.append((ck["epoch"], ck["step_in_epoch"], ck["global_step"]))
                if ck["global_step"] >= 6 and ck["step_in_epoch"] > 0:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and time.time() >= deadline:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    # checkpoints land every 3 steps (and at epoch ends): at most one interval of work is lost
    assert all(step % 3 == 0 or in_epoch == 0 for _, in_epoch, step in seen)
    at_kill = _load(tmp_path / "last.pt")
    assert at_kill["step_in_epoch"] > 0 and at_kill["global_step"] % 3 == 0
    assert at_kill["ranks"][0]["loader"]["dali"]  # mid-epoch: DALI's own checkpoint of reader and random ops
    main(tiny_args(data4, tmp_path, "--ckpt-every", "3", "--resume", "auto"))
    log = (tmp_path / "train.log").read_text()
    assert f"step {at_kill['step_in_epoch']} of 16 (global step {at_kill['global_step']})" in log
    assert not list(tmp_path.glob(".*.tmp"))  # a temp file of the killed writer would have been removed
    # DALI checkpointing + RNG states: even a mid-epoch resume reproduces the uninterrupted run
    _assert_same_run(_load(reference / "last.pt"), _load(tmp_path / "last.pt"))


def test_two_process_ddp_on_cpu(data4, tmp_path):
    """torchrun, 2 gloo processes: disjoint shards, metrics all-reduced over all 12 val images, only rank 0
    writes; the all-reduced top-1 equals a single-process evaluation of the saved weights."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "train_dali.py"), *tiny_args(data4, out, epochs=1, batch=4)]
    r = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "train.log"]
    m = metrics(out)
    assert len(m) == 1  # one writer
    assert m[0]["val_count"] == 12 and m[0]["train_steps"] == 4  # 32 images / (2 ranks x 4)
    ck = _load(out / "last.pt")
    assert ck["world_size"] == 2 and [s["loader"]["shard_id"] for s in ck["ranks"]] == [0, 1]
    assert "[rank 1]" not in (out / "train.log").read_text()
    res = main(tiny_args(data4, tmp_path / "eval", "--evaluate", "--resume", str(out / "last.pt"), epochs=1, batch=4))
    assert res["count"] == 12
    assert res["top1"] == pytest.approx(m[0]["val_top1"]) and res["top5"] == pytest.approx(m[0]["val_top5"])


def test_evaluate_pretrained_and_mismatches(data4, reference, tmp_path, capsys):
    # --evaluate on the best checkpoint reproduces its recorded top-1 and writes nothing
    res = main(tiny_args(data4, tmp_path / "ev", "--evaluate", "--resume", str(reference / "best.pt")))
    assert res["top1"] == pytest.approx(_load(reference / "best.pt")["best_top1"])
    assert not (tmp_path / "ev").exists()

    data3 = tiny_data(tmp_path / "d3", classes=3)
    # our 4-class checkpoint as --pretrained for a 3-class set: backbone kept, classifier re-initialised
    out = tmp_path / "ft"
    main(tiny_args(data3, out, "--pretrained", str(reference / "last.pt"), "--preset", "dvs-finetune", epochs=1))
    assert "classifier re-initialised: checkpoint has 4 classes, model needs 3" in (out / "train.log").read_text()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["optim"]["lr"], cfg["optim"]["weight_decay"], cfg["preset"]) == (0.001, 0.0, "dvs-finetune")

    # resuming it on the wrong data or model says what differs
    with pytest.raises(SystemExit):
        main(tiny_args(data3, tmp_path / "x", "--resume", str(reference / "last.pt")))
    err = capsys.readouterr().err
    assert "4 classes (this data set has 3)" in err and "--pretrained" in err
    with pytest.raises(SystemExit):
        main(tiny_args(data4, tmp_path / "y", "--resume", str(reference / "last.pt"), "--width", "8"))
    assert "width 4 (this run: --width 8)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(tiny_args(data4, tmp_path / "z", "--resume", str(reference / "last.pt"), "-b", "4"))
    assert "steps per epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(tiny_args(data4, tmp_path / "w", "--pretrained", str(tmp_path / "missing.pt")))
    assert "missing.pt" in capsys.readouterr().err


def test_out_of_memory_names_the_flag_to_lower(data4, tmp_path, monkeypatch, capsys):
    import i2e_dali.training.engine as train

    def oom_step(*a, **k):
        def step(events, labels):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return step

    monkeypatch.setattr(train, "make_train_step", oom_step)
    with pytest.raises(SystemExit):
        main(tiny_args(data4, tmp_path, "-b", "4"))
    err = capsys.readouterr().err
    assert "out of GPU memory with --batch-size 4" in err and "lower --batch-size (e.g. 2)" in err


def test_extending_a_finished_run_follows_the_longer_cosine(data4, reference, tmp_path):
    import math
    import shutil

    shutil.copy(reference / "last.pt", tmp_path / "last.pt")
    main(tiny_args(data4, tmp_path, "--resume", "auto", epochs=3))
    m = metrics(tmp_path)
    assert [r["epoch"] for r in m] == [3]
    expect = 5e-5 + (0.1 - 5e-5) * (1 + math.cos(math.pi * 3 / 3)) / 2
    assert m[0]["train_lr"] == pytest.approx(expect)
    ck = _load(tmp_path / "last.pt")
    assert ck["global_step"] == 48 and ck["scheduler"]["T_max"] == 48
    assert "cosine schedule now spans 3 epochs" in (tmp_path / "train.log").read_text()
