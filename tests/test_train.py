"""Trainer units: configuration defaults and errors, the training step, evaluation (also under DDP),
the checkpoint format (atomic, weights-only) and RNG state round trips."""
from __future__ import annotations

from types import SimpleNamespace

import copy
import os
import random
import stat

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from i2e_dali.errors import CheckpointError, ConfigError, TrainError
from i2e_dali.models import build_model
from i2e_dali.training.checkpoint import CKPT_FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from i2e_dali.training.cli import build_parser, parse_config
from i2e_dali.training.engine import evaluate, make_train_step, param_groups
from i2e_dali.training.run import main

from train_helpers import ddp_evaluate_worker


def cfg(*argv):
    """The resolved settings of a command line, by flag destination (``--data`` is ``root``)."""
    return SimpleNamespace(**parse_config(list(argv)).flat())


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def test_paper_defaults_per_dataset():
    a = cfg("--data", "/x")  # --data alone means ImageNet
    assert (a.dataset, a.epochs, a.lr, a.weight_decay, a.batch_size, a.timesteps, a.size, a.width) == (
        "imagenet", 128, 0.1, 1e-5, 128, 8, 224, 64)
    assert (a.lr_min, a.momentum, a.label_smoothing, a.seed, a.arch) == (5e-5, 0.9, 0.1, 2024, "msresnet18")
    c = cfg("--dataset", "cifar100", "--data", "/x")
    assert (c.epochs, c.lr, c.weight_decay, c.batch_size, c.size) == (256, 0.1, 2e-4, 128, 128)
    d = cfg("--dataset", "cifar10-dvs", "--data", "/x")
    assert (d.epochs, d.lr, d.weight_decay, d.batch_size, d.cache_dir, d.val_fraction) == (128, 0.1, 1e-5, 32, None, 0.1)
    demo = cfg()
    assert demo.dataset == "demo" and demo.width < 64 and demo.size < 64


def test_preset_and_user_flags():
    f = cfg("--dataset", "cifar10-dvs", "--data", "/x", "--preset", "dvs-finetune")
    assert (f.lr, f.weight_decay, f.batch_size, f.epochs) == (0.001, 0.0, 32, 128)
    g = cfg("--dataset", "cifar10-dvs", "--data", "/x", "--preset", "dvs-finetune", "--lr", "0.01", "-b", "16")
    assert (g.lr, g.weight_decay, g.batch_size) == (0.01, 0.0, 16)  # the user's flags win over the preset
    assert cfg("--data", "/x", "--arch", "resnet34").arch == "msresnet34"


@pytest.mark.parametrize("argv,match", [
    (["--dataset", "cifar10"], "needs --data"),
    (["--dataset", "demo", "--data", "/x"], "generates its own data"),
    (["--data", "/x", "-T", "9"], "--timesteps"),
    (["--data", "/x", "--lr-min", "1"], "--lr-min"),
    (["--data", "/x", "--arch", "vgg"], "--arch"),
    (["--data", "/x", "--stop-after-epoch", "500"], "--stop-after-epoch"),
])
def test_bad_configuration(argv, match):
    with pytest.raises(ConfigError, match=match):
        cfg(*argv)


def test_missing_or_empty_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path / "nope"), "-o", str(tmp_path / "run")])
    assert e.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "empty"), "-o", str(tmp_path / "run")])
    assert "empty folder" in capsys.readouterr().err


def test_weight_decay_skips_bn_and_bias():
    model = build_model("msresnet18", 10, width=2)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 for p in decay["params"][:-1]) and decay["params"][-1] is model.fc.weight
    assert any(p is model.fc.bias for p in no_decay["params"]) and any(p is model.bn1.weight for p in no_decay["params"])


# ------------------------------------------------------------------------------------------------
# the training step
# ------------------------------------------------------------------------------------------------
def test_train_step_equals_a_manual_sgd_step():
    torch.manual_seed(0)
    model = build_model("msresnet18", 5, width=4)
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(param_groups(model, 1e-3), lr=0.05, momentum=0.9)
    ref_opt = torch.optim.SGD(param_groups(ref, 1e-3), lr=0.05, momentum=0.9)
    step = make_train_step(model, opt, label_smoothing=0.1)
    x = (torch.rand(2, 6, 2, 16, 16) < 0.3).float()
    y = torch.randint(0, 5, (6,))
    for _ in range(2):
        loss = step(x, y)
        # the same step written out by hand
        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(ref(x), y, label_smoothing=0.1)
        ref_loss.backward()
        ref_opt.step()
        functional.reset_net(ref)
        assert not loss.requires_grad
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=0, atol=0)
    for (k, v), (_, r) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(v, r), k
    # membranes are reset after each step: no state leaks into the next batch
    neurons = [m for m in model.modules() if hasattr(m, "v_threshold")]
    assert neurons and all(not torch.is_tensor(m.v) and m.v == 0.0 for m in neurons)


def test_train_step_channels_last_same_result():
    torch.manual_seed(0)
    a = build_model("msresnet18", 3, width=4)
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    x = (torch.rand(2, 4, 2, 16, 16) < 0.3).float()
    y = torch.tensor([0, 1, 2, 0])
    la = make_train_step(a, torch.optim.SGD(a.parameters(), lr=0.1))(x, y)
    lb = make_train_step(b, torch.optim.SGD(b.parameters(), lr=0.1), channels_last=True)(x, y)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)


def test_train_step_resets_neurons_when_it_fails():
    model = build_model("msresnet18", 3, width=2)
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises((IndexError, RuntimeError)):
        step(torch.ones(2, 2, 2, 16, 16), torch.tensor([0, 7]))  # label 7 of 3 classes
    assert all(not torch.is_tensor(m.v) for m in model.modules() if hasattr(m, "v_threshold"))


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def _eval_batches(n_classes=6, sizes=(4, 4, 3, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [((torch.rand(2, b, 2, 16, 16, generator=g) < 0.3).float(), torch.randint(0, n_classes, (b,), generator=g))
            for b in sizes]


def _reference_metrics(model, batches):
    """Top-1/top-5 by sorting the logits of each sample in numpy, independently of evaluate()."""
    model.eval()
    c1 = c5 = 0
    losses = []
    n = 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            functional.reset_net(model)
            logits = out.numpy().astype(np.float64)
            for row, label in zip(logits, y.numpy()):
                order = np.argsort(-row, kind="stable")
                c1 += int(order[0] == label)
                c5 += int(label in order[:5])
                m = row.max()
                losses.append(-(row[label] - m - np.log(np.exp(row - m).sum())))
                n += 1
    model.train()
    return 100 * c1 / n, 100 * c5 / n, float(np.mean(losses)), n


def test_evaluate_counts_every_sample_once():
    torch.manual_seed(3)
    model = build_model("msresnet18", 6, width=4)
    with torch.no_grad():  # spread the logits so that top-k is not decided by ties
        model.fc.weight.mul_(20)
        model.fc.bias.copy_(torch.randn(6))
    batches = _eval_batches()
    res = evaluate(model, batches)
    t1, t5, loss, n = _reference_metrics(model, batches)
    assert res["count"] == n == 12
    assert res["top1"] == pytest.approx(t1) and res["top5"] == pytest.approx(t5)
    assert res["loss"] == pytest.approx(loss, rel=1e-5)
    assert model.training  # mode restored


def test_evaluate_all_reduces_under_ddp(tmp_path):
    """Two gloo processes with uneven shares (2 batches vs 3) give the single-process numbers on both ranks."""
    torch.manual_seed(4)
    model = build_model("msresnet18", 6, width=4)
    with torch.no_grad():
        model.fc.weight.mul_(20)
        model.fc.bias.copy_(torch.randn(6))
    batches = _eval_batches(sizes=(4, 3, 5, 1, 2))
    whole = evaluate(model, batches)
    result = tmp_path / "res"
    mp.start_processes(ddp_evaluate_worker, args=(2, str(tmp_path / "init"), batches, model.state_dict(), str(result)),
                       nprocs=2, join=True, start_method="spawn")
    import json

    for rank in (0, 1):
        got = json.loads((tmp_path / f"res.{rank}").read_text())
        assert got["count"] == whole["count"] == 15
        assert got["top1"] == pytest.approx(whole["top1"]) and got["top5"] == pytest.approx(whole["top5"])
        assert got["loss"] == pytest.approx(whole["loss"], rel=1e-6)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def test_save_checkpoint_is_atomic(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"format": CKPT_FORMAT, "x": torch.arange(3)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044  # readable like any other file, not mkstemp's 0600

    class Boom:  # fails half-way through serialisation
        def __reduce__(self):
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint({"format": CKPT_FORMAT, "x": torch.zeros(1000), "y": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left


def test_load_checkpoint_refuses_foreign_files(tmp_path):
    torch.save(build_model("msresnet18", 3, width=2).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="--pretrained"):
        load_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(TrainError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = rng_state(torch.device("cpu"))
    torch.save({"rng": state}, tmp_path / "rng.pt")
    expect = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], torch.device("cpu"))
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expect[:3] and torch.equal(got[3], expect[3])
