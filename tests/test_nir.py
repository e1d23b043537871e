"""NIR export: the exported graph, read back from the file with spikingjelly's ``import_from_nir``, gives the
same logits as our network on real I2E events (tolerance 1e-5 absolute; in practice bit-identical, because
the logits only depend on the binary spikes of the last LIF and the fc weights, so equal logits mean equal
spikes), for MS-ResNet18 and two zoo models (Spiking-ResNet18, SEW-ResNet18); what NIR cannot hold is refused or kept on the host, by name."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from spikingjelly.activation_based import functional

from i2e_dali import i2e_convert
from i2e_dali.energy import SpikeRateMeter
from i2e_dali.errors import ExportError
from i2e_dali.tools.export_nir import export_nir, reimport_nir
from i2e_dali.zoo import build_any

from train_helpers import tiny_data

TOL = 1e-5


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> torch.Tensor:
    """Real I2E events: 4 JPEGs of the tiny demo set, resized to 32x32, converted (ratio 0.07, T=4)."""
    root = tiny_data(tmp_path_factory.mktemp("nir") / "data")
    files = sorted(Path(root).rglob("*.jpg"))[:4]
    imgs = [torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((32, 32)))).permute(2, 0, 1) for f in files]
    ev = i2e_convert(torch.stack(imgs), ratio=0.07, timesteps=4)
    assert ev.shape == (4, 4, 2, 32, 32) and 0.01 < ev.mean() < 0.5
    return ev


def _active(model: torch.nn.Module) -> torch.nn.Module:
    """Untrained BN statistics that make every stage fire (an untrained zoo ResNet is nearly silent)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("arch,width", [("msresnet18", 4), ("spiking_resnet18", None), ("sew_resnet18", None)])
def test_nir_roundtrip_matches_our_network(arch, width, events, tmp_path):
    import nir

    torch.manual_seed(0)
    model = _active(build_any(arch, 10, width=width))
    with torch.no_grad(), SpikeRateMeter(model) as meter:
        ours = model(events)
        functional.reset_net(model)
    rates = meter.stage_rates()
    assert all(r > 0.001 for r in rates.values()), rates  # every stage spikes: the comparison means something

    path = tmp_path / "model.nir"
    graph, split = export_nir(model, events, path)
    assert path.is_file() and Path(str(path) + ".stem.pt").is_file()
    kinds = {type(n).__name__ for n in nir.read(str(path)).nodes.values()}
    assert kinds <= {"Input", "Output", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine"}, kinds
    lif = next(n for n in graph.nodes.values() if isinstance(n, nir.LIF))
    # the paper's LIF in NIR terms: tau = 2 dt, r = tau (decay_input False), v_leak = v_reset = 0, threshold 1
    assert np.allclose(lif.tau, 2e-4) and np.allclose(lif.r, 2.0) and np.allclose(lif.v_reset, 0.0)
    assert np.allclose(lif.v_threshold, 1.0) and np.allclose(lif.v_leak, 0.0)
    assert graph.metadata["timesteps"] == 4 and "maxpool" in graph.metadata["host_stem"]

    back = reimport_nir(path)
    with torch.no_grad():
        stem_out = split.stem(events)
        functional.reset_net(split.stem)
        theirs_t = back(stem_out)  # [T, B, classes] from the re-imported graph
        ours_t = split.body(stem_out)
        functional.reset_net(split.body)
    assert theirs_t.shape == (4, 4, 10)
    assert torch.allclose(theirs_t, ours_t, atol=TOL, rtol=0)
    assert torch.allclose(theirs_t.mean(0), ours, atol=TOL, rtol=0)
    assert torch.equal(theirs_t.mean(0).argmax(1), ours.argmax(1))


def test_spikformer_is_refused_with_the_reason(events):
    model = build_any("spikformer_ti", 10, size=32, timesteps=4)
    with pytest.raises(ExportError, match="self-attention"):
        export_nir(model, events)


def test_export_nir_cli(tmp_path, capsys):
    """The CLI on a checkpoint written by the trainer's own format."""
    from i2e_dali.tools.export_nir import main
    from i2e_dali.training.checkpoint import CKPT_FORMAT, save_checkpoint

    model = build_any("msresnet18", 10, width=4)
    ckpt = {"format": CKPT_FORMAT, "arch": "msresnet18", "width": 4, "num_classes": 10, "timesteps": 2,
            "model": model.state_dict(), "config": {"size": 32, "timesteps": 2}, "optimizer": {}, "scheduler": {},
            "epoch": 1, "step_in_epoch": 0, "global_step": 16, "best_top1": 50.0}
    save_checkpoint(ckpt, tmp_path / "best.pt")
    assert main(["--checkpoint", str(tmp_path / "best.pt"), "--out", str(tmp_path / "m.nir")]) == 0
    out = capsys.readouterr().out
    assert "LIF" in out and "max-pool" in out and (tmp_path / "m.nir").is_file()
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.nir")]) == 2
