"""More architectures through the same engine: spikingjelly zoo models with the paper's LIF and a 2-channel
stem, a user's ``module:callable``, ``--list-archs``; checkpoint, resume, report and DDP for them."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from i2e_dali.models import MSResNet
from i2e_dali.zoo import ZOO, build_any, resolve_arch

from train_helpers import REPO, free_port, metrics, subprocess_env, tiny_args, tiny_data


def tiny_user_net(num_classes: int, in_channels: int) -> nn.Module:
    """A user's model for ``--arch test_zoo:tiny_user_net``: multi-step, returns [T, B, classes]."""
    from i2e_dali.models import lif_node

    return nn.Sequential(layer.Conv2d(in_channels, 4, 3, stride=2, padding=1, step_mode="m"), lif_node(),
                         layer.AdaptiveAvgPool2d(1, step_mode="m"), layer.Flatten(step_mode="m"),
                         layer.Linear(4, num_classes, step_mode="m"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("zoo") / "data")


def _zoo_args(data, out, arch, *extra, epochs=1):
    args = tiny_args(data, out, "--arch", arch, "--threads", "1", *extra, epochs=epochs)
    i = args.index("--width")
    return args[:i] + args[i + 2:]  # zoo models have their own width


_SLOW = pytest.mark.slow  # the 34-layer variants differ from the 18-layer ones only in blocks per stage


@pytest.mark.parametrize("arch", ["sew_resnet18", "spiking_resnet18", "spikformer_ti",
                                  pytest.param("sew_resnet34", marks=_SLOW), pytest.param("spiking_resnet34", marks=_SLOW)])
def test_zoo_models_use_the_paper_lif_and_a_two_channel_stem(arch):
    model = build_any(arch, 10, size=32, timesteps=2)
    assert (model.arch, model.num_classes, model.in_channels, model.width) == (arch, 10, 2, ZOO[arch].width)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 2
    neurons = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
    assert neurons
    for n in neurons:
        assert (n.tau, n.v_threshold, n.v_reset, n.decay_input, n.detach_reset, n.step_mode) == \
            (2.0, 1.0, 0.0, False, True, "m")
        assert isinstance(n.surrogate_function, surrogate.ATan)
    x = (torch.rand(2, 3, 2, 32, 32) < 0.2).float()
    y = model(x)
    assert y.shape == (3, 10)
    y.sum().backward()
    functional.reset_net(model)
    with pytest.raises(ValueError, match=r"\[T, B, 2, H, W\]"):
        model(x[0])
    if arch == "sew_resnet18":  # under autocast the membrane stays float32 (the paper's LIF subclass)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        assert all(n.v.dtype == torch.float32 for n in neurons if isinstance(n.v, torch.Tensor))
        functional.reset_net(model)


def test_arch_names_aliases_and_errors():
    assert resolve_arch("SEW-ResNet18") == "sew_resnet18" and resolve_arch("resnet34") == "msresnet34"
    assert resolve_arch("spikformer") == "spikformer_ti" and resolve_arch("pkg.mod:fn") == "pkg.mod:fn"
    with pytest.raises(ValueError, match="sew_resnet18"):
        resolve_arch("vgg11")
    assert isinstance(build_any("msresnet18", 10, width=4), MSResNet)  # the default family is unchanged
    with pytest.raises(ValueError, match="MS-ResNet only"):
        build_any("sew_resnet18", 10, width=16)
    with pytest.raises(ValueError, match="cannot import"):
        build_any("no_such_module_xyz:build", 10)
    user = build_any("test_zoo:tiny_user_net", 7)
    assert user(torch.zeros(2, 3, 2, 16, 16)).shape == (3, 7)


def test_list_archs_and_width_flag(data, tmp_path, capsys):
    from i2e_dali.training.run import main

    with pytest.raises(SystemExit) as e:
        main(["--list-archs"])
    assert e.value.code == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("msresnet18", "sew_resnet34", "spiking_resnet18", "module:callable"))
    with pytest.raises(SystemExit):
        main(tiny_args(data, tmp_path, "--arch", "sew_resnet18"))  # tiny_args passes --width 4
    assert "--width applies to MS-ResNet only" in capsys.readouterr().err


def test_zoo_model_trains_resumes_and_reports(data, tmp_path):
    from i2e_dali.training.checkpoint import load_checkpoint
    from i2e_dali.training.run import main

    out = tmp_path / "sew"
    main(_zoo_args(data, out, "sew_resnet18"))
    ck = load_checkpoint(out / "last.pt")
    assert (ck["arch"], ck["width"], ck["epoch"]) == ("sew_resnet18", 64, 1)
    assert tuple(ck["model"]["conv1.weight"].shape) == (64, 2, 7, 7)  # spikingjelly's key names
    assert set(metrics(out)[0]["val_firing_rates"]) == {"sn1", "layer1", "layer2", "layer3", "layer4"}
    main(_zoo_args(data, out, "sew_resnet18", "--resume", "auto", epochs=2))
    assert [m["epoch"] for m in metrics(out)] == [1, 2]
    assert load_checkpoint(out / "last.pt")["global_step"] == 32
    res = main(_zoo_args(data, out, "sew_resnet18", "--evaluate", "--resume", str(out / "last.pt"),
                         "--report", str(tmp_path / "rep"), "--report-batches", "1", epochs=2))
    assert res["count"] == 12 and (tmp_path / "rep" / "report.json").is_file()
    # a checkpoint of one architecture does not resume another
    with pytest.raises(SystemExit):
        main(_zoo_args(data, out, "spiking_resnet18", "--resume", "auto", epochs=3))


def test_user_callable_trains_and_checkpoints(data, tmp_path):
    from i2e_dali.training.checkpoint import load_checkpoint
    from i2e_dali.training.run import main

    out = tmp_path / "user"
    r = main(_zoo_args(data, out, "test_zoo:tiny_user_net"))
    ck = load_checkpoint(out / "best.pt")
    assert ck["arch"] == "test_zoo:tiny_user_net" and ck["width"] == 0
    res = main(_zoo_args(data, out, "test_zoo:tiny_user_net", "--evaluate", "--resume", str(out / "best.pt")))
    assert res["top1"] == pytest.approx(r["best_top1"])


def test_zoo_model_under_two_process_ddp(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "train_dali.py"), *_zoo_args(data, out, "spiking_resnet18", "-b", "4")]
    r = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = metrics(out)
    assert len(m) == 1 and m[0]["val_count"] == 12 and m[0]["train_steps"] == 4
