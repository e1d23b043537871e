"""TrainConfig (issue 19): the one resolution of defaults -> data set -> preset -> recipe -> file -> flags
with origins, config files (YAML/JSON) and their errors, --print-config, and runs repeated exactly: from
Python (``train(TrainConfig.from_dict(...))`` on the embedded demo) and from a run's own config.yaml, weights
bit-identical to the command-line run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from i2e_dali.errors import ConfigError
from i2e_dali.training import TrainConfig, TrainResult, load_config, train
from i2e_dali.training.cli import parse_config
from i2e_dali.training.config import resolve
from i2e_dali.training.config_file import describe, read_config_file, write_config
from i2e_dali.training.recipes import RECIPES
from i2e_dali.training.run import main

from train_helpers import REPO, metrics, subprocess_env


# ------------------------------------------------------------------------------------------------
# precedence and origins
# ------------------------------------------------------------------------------------------------
def test_each_layer_wins_over_the_ones_before(tmp_path):
    # built-in default < data set (cifar10) < recipe (cifar10-baseline1) < file < command line
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.05\n  epochs: 7\ndata:\n  aug: baseline2\n")
    c = parse_config(["--recipe", "cifar10-baseline1", "--data", "/x", "--config", str(f), "--epochs", "3"])
    assert (c.optim.epochs, c.origin("optim.epochs")) == (3, "command line")  # flag over file over recipe
    assert (c.optim.lr, c.origin("lr")) == (0.05, str(f))  # file over recipe
    assert (c.data.aug, c.origin("aug")) == ("baseline2", str(f))
    assert (c.data.ratio, c.origin("ratio")) == (0.07, "recipe cifar10-baseline1")  # recipe over default (None)
    assert (c.optim.weight_decay, c.origin("weight_decay")) == (2e-4, "recipe cifar10-baseline1")
    assert (c.optim.momentum, c.origin("momentum")) == (0.9, "recipe cifar10-baseline1")
    assert (c.run.log_every, c.origin("log_every")) == (20, "default")
    assert (c.run.output_dir, c.origin("output_dir")) == ("runs/cifar10-baseline1", "derived")
    # the data set's paper defaults sit between the built-in defaults and everything the user says
    d = parse_config(["--dataset", "cifar100", "--data", "/x"])
    assert (d.optim.weight_decay, d.origin("weight_decay")) == (2e-4, "data set cifar100")
    assert (d.data.size, d.optim.epochs) == (128, 256)
    # a preset over the data set's defaults, under the recipe, the file and the flags
    p = parse_config(["--dataset", "cifar10-dvs", "--data", "/x", "--preset", "dvs-finetune", "--lr", "0.01"])
    assert (p.optim.lr, p.optim.weight_decay, p.origin("weight_decay")) == (0.01, 0.0, "preset dvs-finetune")
    # the file alone names the recipe, the flags override one of its values
    g = tmp_path / "r.yaml"
    g.write_text("recipe: imagenet-baseline1\ndata: {root: /in}\n")
    r = parse_config(["--config", str(g), "-T", "4"])
    assert (r.data.dataset, r.data.timesteps, r.data.aug, r.recipe) == ("imagenet", 4, "baseline1",
                                                                         "imagenet-baseline1")


def test_every_recipe_value_is_kept_unless_overridden():
    for name, recipe in RECIPES.items():
        extra = ["--pretrained", "/w.pt"] if recipe.needs_pretrained else []
        flat = parse_config(["--recipe", name, "--data", "/x", *extra]).flat()
        assert {k: flat[k] for k in recipe.settings} == recipe.settings, name


def test_wds_has_imagenets_paper_defaults():
    w = parse_config(["--dataset", "wds", "--data", "/shards"])
    i = parse_config(["--dataset", "imagenet", "--data", "/shards"])
    keys = ("epochs", "lr", "weight_decay", "batch_size", "timesteps", "size", "width")
    assert [w.flat()[k] for k in keys] == [i.flat()[k] for k in keys] == [128, 0.1, 1e-5, 128, 8, 224, 64]
    assert w.origin("size") == "data set wds"


def test_resume_is_auto_under_torchrun_unless_given_or_evaluating():
    assert resolve(environ={}).run.resume is None
    for env in ({"WORLD_SIZE": "2"}, {"TORCHELASTIC_RUN_ID": "abc"}):
        c = resolve(environ=env)
        assert (c.run.resume, c.origin("resume")) == ("auto", "torchrun")
    assert resolve(cli={"resume": "x.pt"}, environ={"WORLD_SIZE": "2"}).run.resume == "x.pt"
    assert resolve(cli={"evaluate": True}, environ={"WORLD_SIZE": "2"}).run.resume is None


def test_run_section_has_the_stop_settings():
    c = parse_config([])
    assert (c.run.stop_signals, c.run.requeue_on_signal) == (["SIGTERM", "SIGUSR1"], False)
    c = parse_config(["--stop-signals", "SIGUSR2,sigterm", "--requeue-on-signal"])
    assert (c.run.stop_signals, c.run.requeue_on_signal) == (["SIGUSR2", "SIGTERM"], True)
    assert parse_config(["--stop-signals", "none"]).run.stop_signals == []
    with pytest.raises(ConfigError, match="--stop-signals"):
        parse_config(["--stop-signals", "SIGNOPE"])


def test_print_config_shows_each_values_origin(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 0.2}\n")
    assert main(["--recipe", "cifar10-baseline2", "--data", "/x", "--config", str(f), "-b", "4",
                 "--print-config"]) is None
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert lines["batch_size"].endswith("# command line") and "4" in lines["batch_size"]
    assert lines["lr"].endswith(f"# {f}") and "0.2" in lines["lr"]
    assert lines["ratio"].endswith("# recipe cifar10-baseline2")
    assert lines["log_every"].endswith("# default")
    assert not (tmp_path / "runs").exists()  # printed, nothing trained
    # what it prints (comments aside) is a loadable config that resolves to the same settings
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert load_config(printed) == parse_config(["--recipe", "cifar10-baseline2", "--data", "/x", "--config",
                                                 str(f), "-b", "4"])


def test_to_dict_from_dict_round_trip_through_yaml_and_json(tmp_path):
    c = parse_config(["--recipe", "imagenet-ablation-fixed-threshold", "--data", "/x", "--order", "3", "--lr", "1e-3",
                      "--stop-signals", "SIGUSR1"])
    assert TrainConfig.from_dict(c.to_dict()) == c
    write_config(c, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == c
    (tmp_path / "c.json").write_text(json.dumps(c.to_dict()))
    assert load_config(tmp_path / "c.json") == c
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically (a temp file renamed)
    # YAML 1.1 reads 1e-5 as a string: numbers written that way are still numbers; --order may be a number
    (tmp_path / "hand.yaml").write_text("optim:\n  weight_decay: 1e-5\ndata:\n  order: 4\n")
    h = load_config(tmp_path / "hand.yaml")
    assert (h.optim.weight_decay, h.data.order) == (1e-5, "4")


@pytest.mark.parametrize("text,match", [
    ("optim:\n  lrr: 0.1\n", r"unknown key optim\.lrr \(did you mean 'lr'\?\)"),
    ("optim:\n  timesteps: 4\n", "unknown key optim.timesteps .it belongs in section data"),
    ("training:\n  lr: 0.1\n", "unknown key 'training'"),
    ("optim:\n  epochs: ten\n", r"--epochs \(config key optim\.epochs\) \(from .*\) has an invalid value 'ten'"),
    ("optim:\n  epochs: 0\n", r"--epochs \(config key optim\.epochs\).*must be >= 1"),
    ("optim:\n  lr: .nan\n", "must be a finite number"),
    ("data:\n  timesteps: 9\n", r"config key data\.timesteps.*in 1\.\.8"),
    ("data:\n  mixup: true\n", "unknown key data.mixup .it belongs in section optim"),
    ("run:\n  progress: 'no'\n", "must be true or false"),
    ("data: [1, 2]\n", "data must be a mapping"),
    ("- 1\n- 2\n", "the top level must be a mapping"),
    ("optim: {lr: [0.1\n", "not valid YAML"),
    ("recipe: cifar11\n", "--recipe .* has an invalid value 'cifar11'"),
    ("data:\n  dataset: cifar10\n", "--dataset cifar10 .* needs --data"),
])
def test_bad_config_files_name_the_key_and_the_file(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(f)
    assert str(f) in str(e.value)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(tmp_path / "b.yaml")
    (tmp_path / "j.json").write_text("{'single': quotes}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config_file(tmp_path / "j.json")
    (tmp_path / "deep.yaml").write_text("[" * 20000)
    with pytest.raises(ConfigError, match="deep.yaml"):
        read_config_file(tmp_path / "deep.yaml")
    (tmp_path / "obj.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe loading: no tags that build objects
        read_config_file(tmp_path / "obj.yaml")


def test_a_bad_flag_or_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("optim: {epochs: -1}\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "c.yaml")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --epochs") and str(tmp_path / "c.yaml") in err and len(err.splitlines()) == 1


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only the I2EError family is a user error; a plain ValueError from the code is a bug: not exit 2."""
    import i2e_dali.training.run as run

    def broken(*a, **k):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(run, "build_loaders", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["--no-progress", "-o", str(tmp_path / "out"), "--demo-dir", str(tmp_path / "demo")])


def test_no_namespace_below_the_command_line():
    """argparse lives in the CLI modules only; the Trainer and the checks take the config or keywords."""
    import inspect

    from i2e_dali.training import Trainer
    from i2e_dali.training.checkpoint import check_compatible
    from i2e_dali.training.schedule import check_schedule

    users = sorted(str(p.relative_to(REPO)) for p in (REPO / "i2e_dali").rglob("*.py") if "argparse" in p.read_text())
    assert [u for u in users if not u.startswith("i2e_dali/tools/")] == ["i2e_dali/training/cli.py",
                                                                           "i2e_dali/training/options.py"]
    assert "args" not in inspect.signature(Trainer).parameters
    assert list(inspect.signature(Trainer).parameters)[0] == "config"
    for fn in (check_compatible, check_schedule):
        assert "args" not in inspect.signature(fn).parameters


def test_train_refuses_what_is_not_a_config():
    with pytest.raises(ConfigError, match="TrainConfig"):
        train({"optim": {"epochs": 1}})


# ------------------------------------------------------------------------------------------------
# runs repeated exactly
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")  # the embedded demo set is generated here once (~3 s)


_TINY = ["--size", "16", "-T", "2", "--width", "4", "--epochs", "1", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def cli_run(demo_dir, tmp_path_factory):
    """The command-line demo run every repetition is compared with: 1 epoch (50 steps of 32), 16 px, T=2,
    width-4 MS-ResNet18 (seconds on a CPU)."""
    out = tmp_path_factory.mktemp("cli")
    main(["--demo-dir", str(demo_dir), *_TINY, "-o", str(out)])
    return out


def _same_weights(a, b):
    ka = torch.load(a / "last.pt", map_location="cpu", weights_only=True)
    kb = torch.load(b / "last.pt", map_location="cpu", weights_only=True)
    assert ka["global_step"] == kb["global_step"] > 0
    assert ka["model"].keys() == kb["model"].keys()
    for k, v in ka["model"].items():
        assert torch.equal(v, kb["model"][k]), k
    return ka, kb


def test_training_the_demo_from_python_equals_the_command_line(demo_dir, cli_run, tmp_path):
    out = tmp_path / "py"
    cfg = TrainConfig.from_dict({
        "data": {"demo_dir": str(demo_dir), "size": 16, "timesteps": 2},
        "model": {"width": 4},
        "optim": {"epochs": 1},
        "run": {"output_dir": str(out), "progress": False, "tensorboard": False},
    })
    assert cfg.data.dataset == "demo" and cfg.optim.batch_size == 32  # the demo's defaults
    result = train(cfg)
    assert isinstance(result, TrainResult)
    ka, kb = _same_weights(cli_run, out)
    assert ka["config"] == kb["config"] | {"run": ka["config"]["run"]}  # only the output folder differs
    m = metrics(out)
    assert result.epochs_done == 1 and result.history == m == [result.last]
    assert result.last_top1 == m[-1]["val_top1"] == metrics(cli_run)[-1]["val_top1"]
    assert result.best_top1 == m[-1]["best_top1"]
    assert result.last_checkpoint == out / "last.pt" and result.best_checkpoint == out / "best.pt"
    assert result.config_file == out / "config.yaml" and load_config(result.config_file) == cfg
    assert result.metrics_file == out / "metrics.jsonl"


def test_config_yaml_repeats_the_run(demo_dir, cli_run, tmp_path):
    """run -> its config.yaml -> --config rerun (to another folder) -> identical weights; in a fresh process,
    as a user repeats a run."""
    saved = yaml.safe_load((cli_run / "config.yaml").read_text())
    assert saved["data"]["demo_dir"] == str(demo_dir) and saved["run"]["output_dir"] == str(cli_run)
    out = tmp_path / "again"
    r = subprocess.run([sys.executable, str(REPO / "train_dali.py"), "--config", str(cli_run / "config.yaml"),
                        "-o", str(out)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_weights(cli_run, out)
    assert yaml.safe_load((out / "config.yaml").read_text()) == saved | {"run": saved["run"] | {"output_dir": str(out)}}


# ------------------------------------------------------------------------------------------------
# the config-file reader joins the reader fuzz (tests/fuzz_runner.py: each input in a runner process)
# ------------------------------------------------------------------------------------------------
_WEIRD = [None, -1, 0, 2**63, 10**400, 1e308, float("nan"), float("inf"), "8", "", [8], ["SIGKILL"], {"a": 1},
          True, "cifar10-dvs", "msresnet18", "../x", "1e-5", "SIG_DFL"]


def _yaml_values(data: bytes, rng) -> bytes:
    """Keys of a real config given values of the wrong kind or size, or sections replaced."""
    from damage import bit_flips

    try:
        obj = yaml.safe_load(data)
    except yaml.YAMLError:
        return bit_flips(data, rng)
    if not isinstance(obj, dict) or not obj:
        return bit_flips(data, rng)
    for _ in range(rng.randint(1, 3)):
        sec = rng.choice(sorted(obj, key=str))
        if isinstance(obj[sec], dict) and obj[sec] and rng.random() < 0.85:
            obj[sec][rng.choice(sorted(obj[sec], key=str))] = rng.choice(_WEIRD)
        else:
            obj[sec] = rng.choice(_WEIRD)
    if rng.random() < 0.1:
        obj = rng.choice([[obj], "text", 3])
    return yaml.safe_dump(obj).encode()


def config_fuzz_inputs(root, n: int, seed: int) -> list[dict]:
    """``n`` seeded mutations of real config files written by a run's own writer (YAML and JSON)."""
    import random

    from damage import GENERIC, mutate

    root.mkdir(parents=True, exist_ok=True)
    seeds = []
    for i, argv in enumerate([[], ["--recipe", "cifar10dvs-transfer2", "--data", "/d", "--pretrained", "/w.pt"],
                              ["--data", "/x", "--order", "3", "--sched", "step", "--warmup-epochs", "2"]]):
        cfg = parse_config(argv + ["-o", "runs/x"])
        write_config(cfg, root / f"seed{i}.yaml")
        (root / f"seed{i}.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        seeds += [root / f"seed{i}.yaml", root / f"seed{i}.json"]
    jobs = []
    for i in range(n):
        rng = random.Random(f"{seed}/config/{i}")
        src = rng.choice(seeds)
        dst = root / "inputs" / f"{i:05d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(mutate(src.read_bytes(), rng, GENERIC + (_yaml_values,) * 6))
        jobs.append({"reader": "config", "path": str(dst)})
    return jobs


def _fuzz_config(tmp_path, n: int, seed: int, timeout_s: float):
    import collections

    from test_fuzz_readers import run_jobs

    jobs = config_fuzz_inputs(tmp_path / "cfg", n, seed)
    results = run_jobs(jobs, tmp_path, timeout_s)
    table = collections.Counter(outcome for outcome, _ in results)
    print(f"\nconfig fuzz seed {seed}: {dict(table)}")
    failures = [f"{job['path']}: {outcome}: {detail}" for job, (outcome, detail) in zip(jobs, results)
                if outcome not in ("ok", "project")]
    assert not failures, "\n".join(failures[:20])
    assert table["project"] > 0 and table["ok"] > 0  # the damage reaches past the first check, and is caught


def test_fuzz_config_files_short(tmp_path):
    _fuzz_config(tmp_path, n=300, seed=2026, timeout_s=240)


@pytest.mark.fuzz
def test_fuzz_config_files_long(tmp_path):
    import os

    _fuzz_config(tmp_path, n=int(os.environ.get("I2E_FUZZ_N", "5000")), seed=int(os.environ.get("I2E_FUZZ_SEED", "7")),
                 timeout_s=3600)
