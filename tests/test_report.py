"""Energy and activity report: Appendix B arithmetic, counted operations against a hand count, the report CLI,
``--report`` on ``train_dali.py --evaluate``, and per-stage firing rates in the trainer's epoch metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import layer
from torch import nn

from i2e_dali.energy import (E_AC_PJ, E_MAC_PJ, SpikeRateMeter, ann_energy_pj, conv_ops, format_report,
                             i2e_encoding_ops, measure_energy, snn_energy_pj)
from i2e_dali.models import lif_node

from train_helpers import metrics, tiny_args, tiny_data


# ----------------------------------------------------------------------------------------------- Appendix B
def test_appendix_b_first_layer_arithmetic():
    """The paper's example: ImageNet ResNet first layer, 7x7 stride 2, 64 filters, 112x112 output; the ANN sees
    3 RGB channels, the I2E-SNN 2 event channels. E_ANN = MACs x 4.6 pJ, E_SNN = ops x rate x T x 0.9 pJ."""
    assert (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9)
    ann_macs = conv_ops(3, 64, 7, 112, 112)
    snn_ops = conv_ops(2, 64, 7, 112, 112)
    assert ann_macs == 7 * 7 * 3 * 64 * 112 * 112 == 118_013_952
    assert snn_ops == 7 * 7 * 2 * 64 * 112 * 112 == 78_675_968
    assert ann_energy_pj(ann_macs) == pytest.approx(542_864_179.2, rel=1e-12)  # 0.543 mJ
    # T = 8 timesteps, 5 % of the input firing (ratio 0.12 on ImageNet, docs/concepts/i2e.md)
    e_snn = snn_energy_pj(snn_ops, 0.05, 8)
    assert e_snn == pytest.approx(78_675_968 * 0.05 * 8 * 0.9, rel=1e-12) == pytest.approx(28_323_348.48)
    assert ann_energy_pj(ann_macs) / e_snn == pytest.approx(118_013_952 * 4.6 / 28_323_348.48, rel=1e-12)
    assert ann_energy_pj(ann_macs) / e_snn == pytest.approx(19.17, abs=0.01)
    # and the break-even: the SNN layer costs as much as the ANN one at rate = 3 x 4.6 / (2 x 8 x 0.9)
    assert snn_energy_pj(snn_ops, 3 * 4.6 / (2 * 8 * 0.9), 8) == pytest.approx(ann_energy_pj(ann_macs))


def test_counted_first_layer_matches_formula_away_from_borders():
    """spikingjelly's counted ACs for the Appendix B layer (2->64, 7x7 s2 p3, 224 px) equal ops x rate x T once
    no spike sits where the kernel is cut by the padding."""
    conv = layer.Conv2d(2, 64, 7, stride=2, padding=3, bias=False, step_mode="m")
    net = nn.Sequential(conv, lif_node())
    T, rate = 2, 0.05
    x = torch.zeros(T, 1, 2, 224, 224)
    inner = (torch.rand(T, 1, 2, 212, 212, generator=torch.Generator().manual_seed(0)) < rate).float()
    x[..., 6:218, 6:218] = inner
    # stride 2: an input pixel at an even offset from the padded origin is used by ceil/floor 7/2 positions per
    # axis; average fan-out is 64 x 49 / 4 per spike, exact only on average, so compare on the interior mean
    rep = measure_energy(net, [(x, torch.zeros(1, dtype=torch.long))])
    row = rep["layers"][0]
    assert row["input"] == "events" and row["dense_ops_per_t"] == conv_ops(2, 64, 7, 112, 112)
    measured_rate = x.ne(0).double().mean().item()
    assert row["firing_rate"] == pytest.approx(measured_rate, rel=1e-9)
    assert row["firing_rate_t"] == pytest.approx([x[t].double().mean().item() for t in range(T)], rel=1e-9)
    assert row["acs"] == pytest.approx(row["dense_ops_per_t"] * measured_rate * T, rel=0.02)
    assert row["formula_energy_pj"] == pytest.approx(snn_energy_pj(row["dense_ops_per_t"], measured_rate, T))


# ------------------------------------------------------------------------------------------ tiny hand count
class _Tiny(nn.Module):
    """conv 2->3 3x3 pad 1 (all weights 1) -> LIF -> flatten -> linear 108->4 (all weights 1); 6x6 input."""

    def __init__(self):
        super().__init__()
        self.conv = layer.Conv2d(2, 3, 3, padding=1, bias=False, step_mode="m")
        self.sn = lif_node()
        self.flat = layer.Flatten(step_mode="m")
        self.fc = layer.Linear(3 * 6 * 6, 4, bias=False, step_mode="m")
        nn.init.ones_(self.conv.weight)
        nn.init.ones_(self.fc.weight)

    def forward(self, x):
        return self.fc(self.flat(self.sn(self.conv(x)))).mean(0)


def _tiny_events() -> torch.Tensor:
    x = torch.zeros(2, 1, 2, 6, 6)
    for t, c, i, j in [(0, 0, 2, 2), (0, 1, 3, 3), (1, 0, 1, 1), (1, 0, 4, 4), (1, 1, 2, 3)]:
        x[t, 0, c, i, j] = 1.0
    return x


def test_counted_ops_on_a_tiny_model_match_a_hand_count():
    rep = measure_energy(_Tiny(), [(_tiny_events(), torch.zeros(1, dtype=torch.long))], encoding=True)
    conv, fc = rep["layers"]
    # conv: 5 input spikes, none on the border: each reaches 3x3 positions x 3 output channels = 27 ACs
    assert conv["layer"] == "conv" and conv["input"] == "events"
    assert conv["acs"] == 5 * 27 and conv["macs"] == 0
    assert conv["firing_rate_t"] == pytest.approx([2 / 72, 3 / 72])
    assert conv["dense_ops_per_t"] == 3 * 2 * 9 * 36
    # LIF (v = v/2 + x, threshold 1, hard reset): t0 fires where a 3x3 window holds a spike: the union of the
    # windows around (2,2) and (3,3) = 9 + 9 - 4 = 14 positions x 3 channels; t1 (no carry-over: fired
    # neurons reset, the others held 0): windows around (1,1), (4,4), (2,3) = 27 - 2 - 2 = 23 positions x 3
    spikes = [14 * 3, 23 * 3]
    assert fc["input"] == "spikes" and fc["firing_rate_t"] == pytest.approx([s / 108 for s in spikes])
    assert fc["acs"] == sum(spikes) * 4 and fc["macs"] == 0
    assert rep["neurons"][0]["firing_rate_t"] == pytest.approx([s / 108 for s in spikes])
    tot = rep["totals"]
    assert tot["acs_per_image"] == 135 + 444 and tot["snn_energy_pj"] == pytest.approx(579 * 0.9)
    # ANN: the same layers once, the first with 3 (RGB) input channels instead of 2
    assert tot["ann_macs_per_image"] == 3 * 3 * 9 * 36 + 108 * 4
    assert tot["ann_energy_pj"] == pytest.approx((2916 + 432) * 4.6)
    assert tot["ann_over_snn"] == pytest.approx((2916 + 432) * 4.6 / (579 * 0.9))
    # the encoding line: 6x6 RGB, T=2: (2 + 2 + 3*2) additions/comparisons per pixel, one multiply
    assert rep["encoding"] == {"height": 6, "width": 6, **i2e_encoding_ops(6, 6, 2)}
    assert rep["encoding"]["acs"] == 36 * 10
    text = format_report(rep)
    assert "ANN / SNN energy" in text and "I2E encoding" in text


def test_non_binary_input_is_counted_as_macs():
    x = _tiny_events() * 0.5 + 0.25  # DVS-like counts / analog values: every position multiplies
    net = _Tiny()
    nn.init.constant_(net.conv.weight, 0.7)  # (all-ones weights would look binary to the counters)
    rep = measure_energy(net, [(x, torch.zeros(1, dtype=torch.long))])
    conv = rep["layers"][0]
    assert conv["input"] == "analog" and conv["acs"] == 0
    assert conv["macs"] == 2 * (3 * 2 * 9 * 36)  # dense: Cout x Cin x k x k per output position, per timestep
    assert conv["energy_pj"] == pytest.approx(conv["macs"] * 4.6)
    assert "encoding" not in rep


def test_spike_rate_meter_stage_means():
    net = _Tiny()
    with SpikeRateMeter(net) as meter:
        net(_tiny_events())
    assert meter.rates() == {"sn": pytest.approx([42 / 108, 69 / 108])}
    assert meter.stage_rates() == {"sn": pytest.approx((42 + 69) / 216)}


# ------------------------------------------------------------------------------------------------- the CLIs
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch of a width-4 MS-ResNet18 on a tiny JPEG set, TensorBoard on."""
    from i2e_dali.training.run import main

    root = tmp_path_factory.mktemp("report")
    data = tiny_data(root / "data")
    out = root / "run"
    args = [a for a in tiny_args(data, out, epochs=1) if a != "--no-tensorboard"]
    main(args + ["--threads", "1"])
    return data, out


def test_trainer_logs_firing_rates_per_stage(tiny_run):
    _, out = tiny_run
    rates = metrics(out)[-1]["val_firing_rates"]
    assert set(rates) == {"layer1", "layer2", "layer3", "layer4", "sn1"}
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    events = b"".join(p.read_bytes() for p in (out / "tb").glob("events.*"))
    assert b"firing_rate/layer1" in events and b"firing_rate/layer4" in events


def test_i2e_report_cli(tiny_run, tmp_path, capsys):
    from i2e_dali.tools.report import main

    data, out = tiny_run
    rc = main(["--checkpoint", str(out / "last.pt"), "--data", str(data), "--batches", "2", "--out", str(tmp_path),
               "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "SNN total per image" in text and "ANN / SNN energy" in text and "I2E encoding" in text
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["input"]["images"] == 4 and rep["input"]["timesteps"] == 2 and rep["input"]["shape"] == [2, 16, 16]
    assert rep["layers"][0]["layer"] == "conv1" and rep["layers"][0]["input"] == "events"
    assert rep["layers"][-1]["layer"] == "fc"
    assert rep["totals"]["snn_energy_pj"] == pytest.approx(sum(r["energy_pj"] for r in rep["layers"]))
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report.txt").read_text().startswith("msresnet18")


def test_evaluate_with_report(tiny_run, tmp_path, capsys):
    from i2e_dali.training.run import main

    data, out = tiny_run
    res = main(tiny_args(data, out, "--evaluate", "--resume", str(out / "best.pt"), "--report", str(tmp_path),
                         "--report-batches", "1"))
    assert Path(res["report"]["json"]).is_file() and Path(res["report"]["png"]).is_file()
    assert json.loads(Path(res["report"]["json"]).read_text())["input"]["images"] == 2
    assert "SNN total per image" in capsys.readouterr().out


def test_report_needs_evaluate(tiny_run, capsys):
    from i2e_dali.training.run import main

    data, out = tiny_run
    with pytest.raises(SystemExit):
        main(tiny_args(data, out, "--report"))
    assert "--report goes with --evaluate" in capsys.readouterr().err


def test_report_rebuilds_a_static_input_model(tiny_run, tmp_path):
    """A --input rgb checkpoint (3-channel stem) is rebuilt by the run's own model builder, not refused."""
    from i2e_dali.tools.report import main as report_main
    from i2e_dali.training.run import main

    data, _ = tiny_run
    out = tmp_path / "rgb"
    main(tiny_args(data, out, "--input", "rgb", "--threads", "1", epochs=1))
    rc = report_main(["--checkpoint", str(out / "last.pt"), "--data", str(data), "--batches", "1",
                      "--out", str(tmp_path / "rep"), "--device", "cpu"])
    assert rc == 0
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["layers"][0]["layer"] == "conv1"
