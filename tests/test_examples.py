"""The three example loops run as users run them: the plain loop and the DDP loop (a real two-process gloo
torchrun on the CPU) as scripts, the Lightning module + datamodule under Lightning's defaults. The Lightning
test is the reported case: with the sanity check and limit_train_batches, every validation epoch counts
each validation image exactly once and a cut-short training epoch does not shift the next one."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import i2e_dali
from i2e_dali.data.demo import DemoConfig, ensure_demo_dataset
from train_helpers import subprocess_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["--batch-size", "4", "--size", "16", "--timesteps", "2"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cfg = DemoConfig(train_per_class=6, val_per_class=3, image_size=32, num_classes=3)  # 18 train, 9 val
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo"), cfg, progress=False)


def _run(cmd, timeout=300):
    env = {**subprocess_env(), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_plain_loop(demo):
    out = _run([sys.executable, "plain_loop.py", "--data", str(demo), "--epochs", "2", "--max-steps", "2",
                "--device", "cpu", *SMALL])
    seen = [int(m) for m in re.findall(r"val \d+/(\d+)", out)]
    assert seen == [9, 9], out  # both validation passes count every image once


def test_ddp_loop_under_torchrun(demo):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = _run([str(torchrun), "--standalone", "--nproc_per_node=2", "ddp_loop.py", "--data", str(demo),
                "--epochs", "2", *SMALL], timeout=600)
    lines = re.findall(r"rank (\d)/2 epoch (\d): shard (\d+) val images; all ranks (\d+) of (\d+)", out)
    assert len(lines) == 4, out
    for rank, epoch, shard, total, images in lines:
        assert int(total) == int(images) == 9  # the shards together: every image once, nothing padded
        assert int(shard) == (4 if rank == "0" else 5)  # contiguous shards, sizes differ by at most one


def test_lightning_sanity_check_and_limit_train_batches(demo, monkeypatch):
    L = pytest.importorskip("lightning")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from lightning_example import I2EDataModule, SNNClassifier

    kw = dict(size=16, conversion=i2e_dali.Conversion(timesteps=2), with_index=True, device="cpu", seed=11)

    class Recording(SNNClassifier):
        def __init__(self, n):
            super().__init__(n)
            self.val_runs, self.train_epochs = [], {}

        def on_validation_epoch_start(self):
            self.val_runs.append({"sanity": self.trainer.sanity_checking, "ids": []})

        def validation_step(self, batch, batch_idx):
            self.val_runs[-1]["ids"] += batch.indices.tolist()
            return super().validation_step(batch, batch_idx)

        def training_step(self, batch, batch_idx):
            self.train_epochs.setdefault(self.current_epoch, []).append(batch.indices.tolist())
            return super().training_step(batch, batch_idx)

    dm = I2EDataModule(str(demo), 2, **kw)
    dm.setup("fit")
    model = Recording(dm.train_loader.num_classes)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)  # Lightning's default: a 2-batch sanity validation first

    n_val = len(dm.val_loader.source)
    assert [r["sanity"] for r in model.val_runs] == [True, False, False, False]
    assert len(model.val_runs[0]["ids"]) == 4  # the sanity check took 2 batches of 2 ...
    for run in model.val_runs[1:]:  # ... and every real validation epoch still counts each image once
        assert sorted(run["ids"]) == list(range(n_val))
    # a training epoch cut to 2 of its 9 batches does not shift the next: epoch e is the reference's epoch e
    ref = i2e_dali.make_loader(str(demo), "train", 2, **kw)
    expected = [[b.indices.tolist() for b in ref][:2] for _ in range(3)]
    assert [model.train_epochs[e] for e in range(3)] == expected
    assert len(ref) == 9
