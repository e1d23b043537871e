"""Every recipe end to end on tiny CPU data (one epoch, width-4 model, T=2, 16 px): the wiring of each row
of the paper, transfer rows from their pre-training run's weights; plus exact resume with the new options
(mixup, --t-train, warm-up + step schedule), --t-train batches seen by the step, evaluating a T=2 model
at T=1 and fine-tuning across T, and the static-input stem."""
from __future__ import annotations

import json

import pytest
import torch

import i2e_dali.training.engine as engine
from i2e_dali.training.config_file import load_config
from i2e_dali.training.recipes import RECIPES
from i2e_dali.training.run import main

from loader_data import write_cifar
from test_train_datasets import _dvs_set
from train_helpers import metrics, tiny_data

_TINY = ["--epochs", "1", "-b", "2", "--width", "4", "-T", "2", "--no-progress", "--no-tensorboard", "--workers", "1"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe-data")
    cifar10, _ = write_cifar(root / "c10", "cifar10", per_batch=2)
    cifar100, _ = write_cifar(root / "c100", "cifar100", per_batch=10)
    return {"imagenet": tiny_data(root / "imagenet", classes=3), "cifar10": cifar10, "cifar100": cifar100,
            "cifar10-dvs": _dvs_set(root / "dvs", per_class=5)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {"_root": tmp_path_factory.mktemp("recipe-runs")}


def _run(name, datasets, runs, *extra):
    """One tiny run of recipe ``name`` (its pre-training recipe first, once, when it has one)."""
    if name in runs:
        return runs[name]
    r = RECIPES[name]
    out = runs["_root"] / name
    argv = ["--recipe", name, "--data", str(datasets[r.settings["dataset"]]), *_TINY, "-o", str(out)]
    if r.settings["dataset"] != "cifar10-dvs":
        argv += ["--size", "16"]
    if r.pretrain:
        argv += ["--pretrained", str(_run(r.pretrain, datasets, runs) / "best.pt")]
    elif r.needs_pretrained:
        argv += ["--pretrained", str(_run("imagenet-baseline2", datasets, runs) / "best.pt")]
    main(argv)
    runs[name] = out
    return out


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_runs_one_epoch(name, datasets, runs):
    out = _run(name, datasets, runs)
    m = metrics(out)
    assert [r["epoch"] for r in m] == [1] and m[0]["val_count"] > 0
    config = load_config(out / "config.yaml").flat()  # the file a run writes, resolved again
    tiny = {"epochs": 1, "batch_size": 2, "width": 4, "timesteps": 2, "size": 16}
    for key, value in RECIPES[name].settings.items():
        if key in tiny:
            continue  # overridden on the command line (the user's flags win)
        assert config[key] == value, key
    assert config["recipe"] == name
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    in_channels = {"events": 2, "rgb": 3, "v": 1}[RECIPES[name].settings["input"]]
    assert ck["model"]["conv1.weight"].shape[1] == in_channels


# ------------------------------------------------------------------------------------------------
def _tiny_imagenet(datasets, out, *extra, epochs=2):
    return ["--dataset", "imagenet", "--data", str(datasets["imagenet"]), "--size", "16", "-T", "4", "--width", "4",
            "-b", "2", "--epochs", str(epochs), "--no-progress", "--no-tensorboard", "--workers", "1",
            "-o", str(out), *extra]


@pytest.mark.slow
def test_new_options_resume_exactly(datasets, tmp_path):
    """mixup + --t-train + warm-up + step schedule: killed after epoch 1 of 3 (and mid-epoch), then resumed,
    equals the uninterrupted run (model, optimiser, scheduler, train metrics)."""
    opts = ("--mixup", "--t-train", "2", "--warmup-epochs", "1", "--sched", "step", "--decay-epochs", "1",
            "--decay-rate", "0.5", "--ckpt-every", "5")
    main(_tiny_imagenet(datasets, tmp_path / "full", *opts, epochs=3))
    main(_tiny_imagenet(datasets, tmp_path / "split", *opts, "--stop-after-epoch", "1", epochs=3))
    main(_tiny_imagenet(datasets, tmp_path / "split", *opts, "--resume", "auto", epochs=3))
    a = torch.load(tmp_path / "full" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3 * a["steps_per_epoch"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["scheduler"] == b["scheduler"]
    ma, mb = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]
    assert [r["train_mixing"] for r in ma] == [True, True, True]
    assert all(0 <= r["train_top1"] <= 100 for r in ma)
    assert [r["train_lr"] for r in ma] == pytest.approx([0.1, 0.05, 0.025])
    # interrupted mid-epoch (after the step-5 checkpoint), then resumed: the same run again
    real_step = engine.make_train_step

    def dying_step(*a, **k):
        step = real_step(*a, **k)
        calls = [0]

        def wrapped(*args):
            calls[0] += 1
            if calls[0] == 7:
                raise KeyboardInterrupt
            return step(*args)

        wrapped.hits = None
        return wrapped

    engine.make_train_step = dying_step
    try:
        with pytest.raises(SystemExit):
            main(_tiny_imagenet(datasets, tmp_path / "killed", *opts, epochs=3))
    finally:
        engine.make_train_step = real_step
    mid = torch.load(tmp_path / "killed" / "last.pt", map_location="cpu", weights_only=True)
    assert mid["global_step"] == 5 and mid["step_in_epoch"] == 5
    main(_tiny_imagenet(datasets, tmp_path / "killed", *opts, "--resume", "auto", epochs=3))
    c = torch.load(tmp_path / "killed" / "last.pt", map_location="cpu", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, c["model"][k]), k
    assert a["scheduler"] == c["scheduler"]
    # resuming with another schedule is refused, naming the flags
    with pytest.raises(SystemExit):
        main(_tiny_imagenet(datasets, tmp_path / "split", "--resume", "auto", epochs=4))


def test_t_train_batches_have_k_timesteps_that_vary(datasets, tmp_path, monkeypatch):
    seen_steps, kept = [], []
    real_step, real_subset = engine.make_train_step, __import__("i2e_dali.training.mixing", fromlist=["x"])

    def spy_step(*a, **k):
        step = real_step(*a, **k)

        def wrapped(events, labels, *rest):
            seen_steps.append(events.shape[0])
            return step(events, labels, *rest)

        wrapped.hits = None
        return wrapped

    orig_subset = real_subset.temporal_subset

    def spy_subset(events, k):
        out = orig_subset(events, k)
        kept.append(tuple(next(i for i in range(events.shape[0]) if torch.equal(out[j], events[i]))
                          for j in range(out.shape[0])))
        return out

    monkeypatch.setattr(engine, "make_train_step", spy_step)
    monkeypatch.setattr(real_subset, "temporal_subset", spy_subset)
    main(_tiny_imagenet(datasets, tmp_path, "--t-train", "2", epochs=1))
    assert seen_steps and set(seen_steps) == {2}
    assert len(set(kept)) > 1 and all(list(k) == sorted(k) for k in kept)
    assert metrics(tmp_path)[0]["val_count"] == 3 * 3  # evaluation ran (on all T; the loader yields T=4)


def test_evaluate_at_smaller_t_and_finetune_across_t(datasets, tmp_path, capsys):
    main(_tiny_imagenet(datasets, tmp_path / "t4", epochs=1))
    capsys.readouterr()
    res = main(_tiny_imagenet(datasets, tmp_path / "e", "--evaluate", "--pretrained",
                              str(tmp_path / "t4" / "best.pt"), "-T", "1", epochs=1))
    assert res["count"] == 9
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["count"] == 9
    main(_tiny_imagenet(datasets, tmp_path / "ft", "--pretrained", str(tmp_path / "t4" / "best.pt"), "-T", "2",
                        epochs=1))
    ck = torch.load(tmp_path / "ft" / "last.pt", map_location="cpu", weights_only=True)
    assert ck["timesteps"] == 2 and ck["epoch"] == 1


def test_mixup_on_frames_for_event_data_sets(datasets, tmp_path):
    """Data sets that are events already (here CIFAR10-DVS recordings) mix their frames in the trainer."""
    main(["--dataset", "cifar10-dvs", "--data", str(datasets["cifar10-dvs"]), *_TINY, "--mixup", "--t-train", "1",
          "-o", str(tmp_path)])
    m = metrics(tmp_path)
    assert m[0]["train_mixing"] is True and m[0]["val_count"] > 0
