"""Units of the paper's training options (issue 12): recipes resolve to exactly their settings and lose to
the user's flags, schedules (warm-up, cosine, step) from torch's schedulers, CutMix/MixUp and the 2/3 rule,
random temporal deletion, soft-target loss with true-label accuracy, and the option checks."""
from __future__ import annotations

from types import SimpleNamespace

import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, SequentialLR

from i2e_dali.errors import CheckpointError, ConfigError
from i2e_dali.models import build_model
from i2e_dali.training.cli import build_parser, parse_config
from i2e_dali.training.engine import make_train_step
from i2e_dali.training.mixing import BatchMixer, mixing_active, temporal_subset
from i2e_dali.training.recipes import RECIPES, recipe_table
from i2e_dali.training.schedule import build_scheduler, check_schedule, stretch_cosine


def cfg(*argv):
    """The resolved settings of a command line, by flag destination (``--data`` is ``root``)."""
    return SimpleNamespace(**parse_config(list(argv)).flat())


def _recipe_argv(name, *extra):
    argv = ["--recipe", name, "--data", "/x", *extra]
    if RECIPES[name].needs_pretrained:
        argv += ["--pretrained", "/w.pt"]
    return argv


# ------------------------------------------------------------------------------------------------
# recipes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_resolves_to_exactly_its_settings(name):
    a = cfg(*_recipe_argv(name))
    for key, value in RECIPES[name].settings.items():
        assert getattr(a, key) == value, (name, key)
    assert a.output_dir == f"runs/{name}"


def test_the_papers_rows_and_numbers():
    top1 = {n: r.expected_top1 for n, r in RECIPES.items()}
    assert {k: top1[k] for k in ("cifar10-baseline1", "cifar10-baseline2", "cifar10-transfer1", "cifar100-baseline1",
                                 "cifar100-baseline2", "cifar100-transfer1", "imagenet-baseline1",
                                 "imagenet-baseline2", "imagenet-transfer1", "imagenet-msresnet34",
                                 "cifar10dvs-scratch", "cifar10dvs-transfer1", "cifar10dvs-transfer2")} == {
        "cifar10-baseline1": 85.07, "cifar10-baseline2": 89.23, "cifar10-transfer1": 90.86,
        "cifar100-baseline1": 51.32, "cifar100-baseline2": 60.68, "cifar100-transfer1": 64.53,
        "imagenet-baseline1": 48.30, "imagenet-baseline2": 57.97, "imagenet-transfer1": 59.28,
        "imagenet-msresnet34": 60.50, "cifar10dvs-scratch": 65.6, "cifar10dvs-transfer1": 83.1,
        "cifar10dvs-transfer2": 92.5}
    s = RECIPES["imagenet-baseline1"].settings  # the authors' ImageNet command
    assert (s["epochs"], s["batch_size"], s["lr"], s["lr_min"], s["weight_decay"], s["ratio"], s["order"],
            s["aug"], s["mixup"], s["label_smoothing"]) == (128, 128, 0.1, 5e-5, 1e-5, 0.12, "efghabcd",
                                                           "baseline1", False, 0.1)
    s = RECIPES["cifar100-baseline2"].settings
    assert (s["epochs"], s["weight_decay"], s["ratio"], s["size"], s["aug"]) == (256, 2e-4, 0.07, 128, "baseline2")
    assert RECIPES["imagenet-ablation-fixed-threshold"].settings["fixed_threshold"] == 0.12
    assert RECIPES["imagenet-ablation-no-random-motion"].settings["random_motion"] is False
    assert RECIPES["cifar10dvs-transfer2"].pretrain == "cifar10-baseline2"
    assert "--recipe cifar10-baseline2" in RECIPES["cifar10dvs-transfer2"].pretrain_command()


def test_user_flags_win_over_the_recipe():
    a = cfg(*_recipe_argv("imagenet-baseline1", "--epochs", "3", "--aug", "baseline2", "-T", "4", "--order", "0",
                          "-o", "/tmp/x"))
    assert (a.epochs, a.aug, a.timesteps, a.order, a.output_dir) == (3, "baseline2", 4, "0", "/tmp/x")
    assert (a.lr, a.weight_decay, a.ratio) == (0.1, 1e-5, 0.12)  # the rest still from the recipe
    # a flag given with its default value still counts as given
    b = cfg(*_recipe_argv("cifar10-baseline1", "--aug", "baseline2"))
    assert b.aug == "baseline2"


def test_transfer_recipe_needs_weights_and_names_the_pretraining(capsys):
    with pytest.raises(ConfigError, match="--recipe cifar10-baseline2") as e:
        cfg("--recipe", "cifar10dvs-transfer2", "--data", "/x")
    assert "--pretrained runs/cifar10-baseline2/best.pt" in str(e.value)
    with pytest.raises(ConfigError, match="not known"):
        cfg("--recipe", "imagenet-transfer1", "--data", "/x")


def test_list_recipes_prints_every_row(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--list-recipes"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == recipe_table().strip()
    for name, r in RECIPES.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert r.settings["dataset"] in line and r.settings["arch"] in line
        assert ("n/a" if r.expected_top1 is None else f"{r.expected_top1:.2f}") in line
    assert "reproduced" in out


# ------------------------------------------------------------------------------------------------
# option checks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,match", [
    (["-T", "4", "--t-train", "5"], "--t-train"),
    (["--warmup-epochs", "200"], "--warmup-epochs"),
    (["--warmup-lr", "1"], "--warmup-lr"),
    (["--fixed-threshold", "2"], "--fixed-threshold"),
    (["--order", "7"], "--order"),
    (["--dataset", "i2e-npz", "--aug", "baseline1"], "holds events already"),
    (["--dataset", "cifar10-dvs", "--input", "rgb"], "holds events already"),
    (["--sched", "step", "--decay-rate", "0"], "--decay-rate"),
])
def test_bad_option_values(argv, match):
    with pytest.raises(ConfigError, match=match):
        cfg("--data", "/x", *argv)


def test_option_defaults_are_todays_behaviour():
    a = cfg("--data", "/x", "--order", "3")
    assert (a.aug, a.mixup, a.t_train, a.sched, a.warmup_epochs, a.fixed_threshold, a.random_motion, a.input) == (
        "baseline2", False, 0, "cosine", 0, None, True, "events")
    assert a.order == "3"


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------
def _lrs(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out + [opt.param_groups[0]["lr"]]


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_without_warmup_is_plain_cosine_annealing():
    opt = _opt()
    s = build_scheduler(opt, sched="cosine", epochs=4, steps_per_epoch=5, lr=0.1, lr_min=1e-3)
    assert isinstance(s, CosineAnnealingLR) and s.T_max == 20
    lrs = _lrs(s, opt, 20)
    assert lrs[0] == 0.1 and lrs[-1] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3 + (0.1 - 1e-3) * (1 + math.cos(math.pi / 2)) / 2)


def test_warmup_then_cosine():
    opt = _opt()
    s = build_scheduler(opt, sched="cosine", epochs=5, steps_per_epoch=4, lr=0.1, lr_min=0.0, warmup_epochs=1,
                        warmup_lr=0.02)
    assert isinstance(s, SequentialLR)
    lrs = _lrs(s, opt, 20)
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # linear over 4 steps, then the peak
    assert lrs[5] < 0.1 and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine over the 16 remaining steps
    assert lrs[4 + 8] == pytest.approx(0.05)


def test_step_schedule_with_warmup():
    opt = _opt()
    s = build_scheduler(opt, sched="step", epochs=10, steps_per_epoch=2, lr=0.1, lr_min=0.0, warmup_epochs=1,
                        decay_epochs=3, decay_rate=0.5)
    lrs = _lrs(s, opt, 20)
    assert lrs[0] < 1e-6 and lrs[2] == pytest.approx(0.1)
    # after the warm-up: 3 epochs (6 steps) per decay
    assert lrs[2:8] == pytest.approx([0.1] * 6) and lrs[8:14] == pytest.approx([0.05] * 6)
    assert lrs[14] == pytest.approx(0.025)


def test_schedule_state_round_trip_and_stretch():
    opt = _opt()
    s = build_scheduler(opt, sched="cosine", epochs=3, steps_per_epoch=4, lr=0.1, lr_min=0.0, warmup_epochs=1)
    _lrs(s, opt, 7)
    state = s.state_dict()
    opt2 = _opt()
    s2 = build_scheduler(opt2, sched="cosine", epochs=3, steps_per_epoch=4, lr=0.1, lr_min=0.0, warmup_epochs=1)
    s2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    assert _lrs(s, opt, 5) == pytest.approx(_lrs(s2, opt2, 5))
    # --epochs 5 on resume: the cosine after the warm-up now spans 4 epochs
    opt3 = _opt()
    s3 = build_scheduler(opt3, sched="cosine", epochs=3, steps_per_epoch=4, lr=0.1, lr_min=0.0, warmup_epochs=1)
    _lrs(s3, opt3, 8)
    assert stretch_cosine(s3, opt3, epochs=5, steps_per_epoch=4, lr_min=0.0)
    assert s3._schedulers[-1].T_max == 16
    assert opt3.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 4 / 16)))


def test_resume_refuses_another_schedule():
    mine = dict(sched="step", warmup_epochs=0)
    with pytest.raises(CheckpointError, match="--sched cosine"):
        check_schedule({"sched": "cosine", "warmup_epochs": 0}, **mine, source="last.pt")  # flat: before TrainConfig
    with pytest.raises(CheckpointError, match="--sched cosine"):
        check_schedule({"optim": {"sched": "cosine", "warmup_epochs": 0}}, **mine, source="last.pt")
    check_schedule({"sched": "step", "warmup_epochs": 0}, **mine, source="last.pt")
    check_schedule({"optim": {"sched": "step", "warmup_epochs": 0}}, **mine, source="last.pt")
    check_schedule({}, sched="cosine", warmup_epochs=0, source="old.pt")  # from before these flags: cosine, no warm-up


# ------------------------------------------------------------------------------------------------
# mixing and temporal deletion
# ------------------------------------------------------------------------------------------------
def test_mixing_for_the_first_two_thirds():
    assert [mixing_active(e, 256) for e in (0, 170, 171, 255)] == [True, True, False, False]
    assert [mixing_active(e, 3) for e in range(3)] == [True, True, True]


def test_mixer_cutmix_or_mixup_per_batch_with_soft_targets():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(8) % 4
    mixer = BatchMixer(4)
    kinds = set()
    x = images.float() * torch.tensor(1 / 255, dtype=torch.float32)
    for _ in range(12):
        mixed, soft = mixer(images, labels)
        assert mixed.dtype == torch.float32 and 0 <= float(mixed.min()) and float(mixed.max()) <= 1
        assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
        rolled = x.roll(1, 0)
        from_either = ((mixed == x) | (mixed == rolled)).all()
        kinds.add("cutmix" if bool(from_either) else "mixup")
    assert kinds == {"cutmix", "mixup"}
    mixer.active = False
    out, soft = mixer(images, labels)
    assert out is images and soft is None
    frames = torch.rand(2, 8, 2, 6, 6)
    mixer.active = True
    mf, soft = mixer.mix_frames(frames, labels)
    assert mf.shape == frames.shape and soft.shape == (8, 4)


def test_temporal_subset_keeps_k_sorted_timesteps_that_vary():
    events = torch.arange(8).float().view(8, 1, 1, 1, 1).expand(8, 2, 2, 3, 3)
    picks = set()
    for _ in range(20):
        sub = temporal_subset(events, 3)
        assert sub.shape == (3, 2, 2, 3, 3)
        kept = sub[:, 0, 0, 0, 0].long().tolist()
        assert kept == sorted(kept) and len(set(kept)) == 3
        picks.add(tuple(kept))
    assert len(picks) > 5
    assert temporal_subset(events, 0) is events and temporal_subset(events, 8) is events


def test_step_uses_soft_targets_and_counts_true_label_hits():
    torch.manual_seed(0)
    model = build_model("msresnet18", 4, width=2)
    events = (torch.rand(2, 3, 2, 16, 16) < 0.2).float()
    labels = torch.tensor([0, 1, 2])
    soft = F.one_hot(torch.tensor([3, 3, 3]), 4).float()
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), label_smoothing=0.1)
    model.eval()  # BN statistics fixed, so the manual forward below sees the same logits
    with torch.no_grad():
        logits = model(events)
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    loss = step(events, labels, soft)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, soft, label_smoothing=0.1)), rel=1e-5)
    assert int(step.hits) == int(logits.argmax(1).eq(labels).sum())
    step(events, labels)
    assert int(step.hits) == 2 * int(logits.argmax(1).eq(labels).sum())
