"""MS-ResNet: structure and parameter names of the authors' checkpoints, neurons, membrane shortcut,
loading foreign and mismatched weights."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from i2e_dali.errors import CheckpointError
from i2e_dali.models import BasicBlock, build_model, expected_state_keys
from i2e_dali.training.checkpoint import load_pretrained

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def authors_keys(blocks) -> list[str]:
    """The state-dict keys of the authors' ResNet (Train Script/*/Network/MSNet_I2E.py), written out from
    its structure: stem conv1/bn1, layerN.i.{conv1,bn1,conv2,bn2}, layerN.0.downsample.{1,2} where the
    stage changes shape (index 0 is the neuron, which has no parameters), fc. Their i2e.weight is the
    conversion kernel, which this project keeps out of the model."""
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in _BN]
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            keys += [f"{p}.conv1.weight"] + [f"{p}.bn1.{b}" for b in _BN]
            keys += [f"{p}.conv2.weight"] + [f"{p}.bn2.{b}" for b in _BN]
            if i == 0 and stage > 1:
                keys += [f"{p}.downsample.1.weight"] + [f"{p}.downsample.2.{b}" for b in _BN]
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("arch,blocks", [("msresnet18", (2, 2, 2, 2)), ("msresnet34", (3, 4, 6, 3))])
def test_state_dict_keys_are_the_authors(arch, blocks):
    keys = list(build_model(arch, num_classes=1000).state_dict().keys())
    assert keys == authors_keys(blocks)
    assert keys == expected_state_keys(arch)
    assert len(keys) == (122 if arch == "msresnet18" else 218)
    # spot checks written literally
    assert "layer2.0.downsample.1.weight" in keys and "layer4.0.downsample.2.running_var" in keys
    assert not any(k.startswith("layer1.0.downsample") for k in keys)


def test_shapes_of_the_paper_model():
    sd = build_model("msresnet18", num_classes=1000).state_dict()
    assert sd["conv1.weight"].shape == (64, 2, 7, 7)  # 2-channel (ON/OFF) 7x7 stem
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert sd["layer2.0.conv1.weight"].shape == (128, 64, 3, 3)
    assert sd["layer2.0.downsample.1.weight"].shape == (128, 64, 1, 1)
    assert sd["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert sd["fc.weight"].shape == (1000, 512)
    n = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert 11.6e6 < n < 11.8e6  # ResNet-18 with a 2-channel stem: ~11.7M parameters


def test_neurons_are_the_papers_lif():
    model = build_model("msresnet18", num_classes=10, width=4)
    lifs = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
    # 2 per block x 8 blocks + 1 per downsample x 3 + the head neuron
    assert len(lifs) == 16 + 3 + 1
    for m in lifs:
        assert isinstance(m, neuron.LIFNode)
        assert m.tau == 2.0 and m.v_threshold == 1.0 and m.v_reset == 0.0
        assert m.decay_input is False and m.detach_reset is True
        assert isinstance(m.surrogate_function, surrogate.ATan)
        assert m.step_mode == "m"


def test_forward_shape_and_time_average():
    torch.manual_seed(0)
    model = build_model("msresnet18", num_classes=7, width=4).eval()
    x = (torch.rand(3, 5, 2, 24, 20) < 0.2).float()
    with torch.no_grad():
        out = model(x)
        functional.reset_net(model)
        again = model(x)
        functional.reset_net(model)
    assert out.shape == (5, 7) and out.dtype == torch.float32
    assert torch.equal(out, again)  # reset_net clears the membranes: same input, same output
    # logits are the time average of the per-step classifier outputs on the head neuron's spikes
    feats = {}
    model.sn1.register_forward_hook(lambda m, i, o: feats.setdefault("spikes", o))
    with torch.no_grad():
        out2 = model(x)
        functional.reset_net(model)
    spikes = feats["spikes"].flatten(2)  # [T, B, C]
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    manual = torch.stack([spikes[t] @ model.fc.weight.T + model.fc.bias for t in range(3)]).mean(0)
    torch.testing.assert_close(out2, manual)


def test_membrane_shortcut_adds_the_pre_spike_signal():
    torch.manual_seed(0)
    block = BasicBlock(4, 4)
    torch.nn.init.zeros_(block.bn2.weight)  # residual branch outputs exactly 0
    torch.nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 3, 4, 5, 5) * 3  # membrane-like real values, not spikes
    out = block(x)
    # the shortcut carries x itself (a spike shortcut would give 0/1 values)
    torch.testing.assert_close(out, x)


def test_wrong_input_layout_is_refused():
    model = build_model("msresnet18", num_classes=3, width=2)
    with pytest.raises(ValueError, match=r"\[T, B, 2, H, W\]"):
        model(torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match="time first"):
        model(torch.zeros(2, 2, 3, 16, 16))


def test_membrane_stays_float32_under_bf16():
    lif = build_model("msresnet18", num_classes=3, width=2).layer1[0].sn1
    x = torch.randn(4, 2, 3, dtype=torch.bfloat16) * 2
    out = lif(x)
    assert lif.v.dtype == torch.float32
    lif.reset()
    ref = lif(x.float())
    assert torch.equal(out, ref)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet50", 10)


# ------------------------------------------------------------------------------------------------
# loading weights
# ------------------------------------------------------------------------------------------------
def _authors_checkpoint(model, path, extra=True):
    """A file laid out like the authors' releases: DataParallel 'module.' keys, their i2e kernel,
    wrapped as {'epoch', 'state_dict', 'best_acc1'}."""
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    if extra:
        sd["module.i2e.weight"] = torch.zeros(8, 1, 3, 3)
    torch.save({"epoch": 127, "state_dict": sd, "best_acc1": np.float64(60.5)}, path)  # numpy scalars happen


def _randomise(model):
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.randn_like(v))


def test_load_authors_checkpoint(tmp_path):
    torch.manual_seed(1)
    src = build_model("msresnet18", num_classes=10, width=8)
    _randomise(src)
    _authors_checkpoint(src, tmp_path / "authors.pth.tar")
    dst = build_model("resnet18", num_classes=10, width=8)
    notes = load_pretrained(dst, tmp_path / "authors.pth.tar")
    assert notes == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_load_with_other_class_count_reinitialises_fc(tmp_path):
    torch.manual_seed(2)
    src = build_model("msresnet18", num_classes=1000, width=8)
    _randomise(src)
    _authors_checkpoint(src, tmp_path / "imagenet.pth")
    dst = build_model("msresnet18", num_classes=10, width=8)
    notes = load_pretrained(dst, tmp_path / "imagenet.pth", num_classes=10)
    assert any("1000" in n and "10" in n for n in notes)
    assert dst.fc.weight.shape == (10, 64)
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(dst.state_dict()[k], v), k
    # the new head is freshly initialised, not a slice of the old one
    assert not torch.equal(dst.fc.weight, src.fc.weight[:10])


def test_load_resizes_fc_when_model_was_built_for_the_checkpoint(tmp_path):
    src = build_model("msresnet18", num_classes=1000, width=4)
    torch.save(src.state_dict(), tmp_path / "plain.pt")  # a bare state dict works too
    dst = build_model("msresnet18", num_classes=1000, width=4)
    load_pretrained(dst, tmp_path / "plain.pt", num_classes=5)
    assert dst.fc.out_features == 5 and dst.num_classes == 5
    assert dst(torch.zeros(1, 2, 2, 16, 16)).shape == (2, 5)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    _authors_checkpoint(build_model("msresnet34", num_classes=10, width=4), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_pretrained(build_model("msresnet18", num_classes=10, width=4), tmp_path / "r34.pth")


def test_checkpoint_of_another_width_is_refused(tmp_path):
    _authors_checkpoint(build_model("msresnet18", num_classes=10, width=8), tmp_path / "w8.pth")
    with pytest.raises(CheckpointError, match="--width"):
        load_pretrained(build_model("msresnet18", num_classes=10, width=4), tmp_path / "w8.pth")


def test_missing_and_unsafe_files(tmp_path):
    model = build_model("msresnet18", num_classes=10, width=2)
    with pytest.raises(CheckpointError, match="not found"):  # a user error: one line from the CLI, exit 2
        load_pretrained(model, tmp_path / "nope.pth")

    class Payload:  # pickled code: must never be unpickled
        def __reduce__(self):
            return (print, ("executed",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_pretrained(model, tmp_path / "evil.pth")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "noweights.pth")
    with pytest.raises(CheckpointError, match="no model weights"):
        load_pretrained(model, tmp_path / "noweights.pth")


def test_unwrap_sees_through_compile_and_ddp_in_either_order():
    import torch.distributed as dist

    from i2e_dali.models import build_model, unwrap

    net = build_model("msresnet18", 10, width=8)

    class Compiled(torch.nn.Module):  # the attribute torch.compile's OptimizedModule exposes
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert unwrap(net) is net and unwrap(Compiled(net)) is net
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        assert unwrap(ddp) is net
        assert unwrap(Compiled(ddp)) is net  # torch.compile(DDP(m)): the order the trainer uses
        assert unwrap(torch.nn.parallel.DistributedDataParallel(Compiled(net))) is net
    finally:
        dist.destroy_process_group()
