"""What a spiking network spends: firing rates, synaptic operations and estimated energy, per layer and per image.

The energy model is the I2E paper's Appendix B (the usual SNN convention, Horowitz 2014, 45 nm, 32-bit float):
``E_ANN = MACs x 4.6 pJ`` and ``E_SNN = ops x firing rate x T x 0.9 pJ``, where ``ops`` is a layer's dense
operation count per timestep and the firing rate is that of its input. What is measured rather than assumed:

- synaptic operations: spikingjelly's ``op_counter`` (``SynOpCounter``: accumulates driven by binary input,
  counted exactly from the spikes, borders included; ``MACCounter``: multiply-accumulates of layers whose
  input is not binary, e.g. DVS count frames). BatchNorm is left out, as in the paper: at inference it folds
  into the preceding convolution. The LIF updates themselves are not counted (the paper does not either);
- firing rates per timestep: spikingjelly's ``monitor`` (``OutputMonitor`` on every neuron, ``InputMonitor``
  on every synaptic layer).

Hand-written here, because spikingjelly has no such thing: folding the monitors' records into per-timestep
rates (it records raw tensors per call), the dense per-layer operation count (``MACCounter`` counts 0 for a
spike-driven layer, so the ANN equivalent needs its own count), the ANN's 3-channel first layer, and the
cost of the I2E encoding itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from spikingjelly.activation_based import functional, monitor, neuron
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SimpleEnergyCostConfig, SynOpCounter
from torch import nn

from .models import unwrap

__all__ = ["E_MAC_PJ", "E_AC_PJ", "ann_energy_pj", "snn_energy_pj", "conv_ops", "i2e_encoding_ops", "format_report",
           "plot_report", "write_report",
           "SpikeRateMeter", "stage_of", "measure_energy"]

_COST = SimpleEnergyCostConfig.fp32()  # spikingjelly's Horowitz 45 nm preset: the paper's numbers
E_MAC_PJ: float = _COST.e_mac_pj  # 4.6 pJ per 32-bit float multiply-accumulate
E_AC_PJ: float = _COST.e_ac_pj  # 0.9 pJ per 32-bit float accumulate


def ann_energy_pj(macs: float) -> float:
    """Appendix B: an ANN layer costs its MACs x 4.6 pJ."""
    return macs * E_MAC_PJ


def snn_energy_pj(ops: float, firing_rate: float, timesteps: int) -> float:
    """Appendix B: a spike-driven layer costs ops x firing rate x T x 0.9 pJ (ops: dense count per timestep)."""
    return ops * firing_rate * timesteps * E_AC_PJ


def conv_ops(cin: int, cout: int, kernel: int | tuple[int, int], out_h: int, out_w: int, groups: int = 1) -> int:
    """Dense operations (MACs) of one convolution on one image: Cout x Cin/groups x kh x kw x Hout x Wout."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return cout * (cin // groups) * kh * kw * out_h * out_w


def i2e_encoding_ops(height: int, width: int, timesteps: int) -> dict:
    """Operations of the I2E conversion of one RGB image (docs/concepts/i2e.md), all additions/comparisons:
    V = max(R,G,B) 2 per pixel; range = max(V) - min(V) 2 per pixel; per timestep one difference and two
    threshold comparisons (ON, OFF) per pixel; plus one multiply for the threshold. Resize/crop are not
    counted: an ANN's input pipeline does them too."""
    pixels = height * width
    acs = pixels * (2 + 2 + 3 * timesteps)
    return {"acs": acs, "macs": 1, "energy_pj": acs * E_AC_PJ + E_MAC_PJ}


def stage_of(name: str, model: nn.Module | None = None) -> str:
    """The stage a module belongs to: its top-level child (``layer1``, ``sn1``, ``patch_embed``), or for a
    ModuleList of blocks (a transformer's ``blocks``) the block itself (``blocks.0``)."""
    parts = name.split(".")
    if model is not None and len(parts) > 1 and isinstance(getattr(model, parts[0], None), nn.ModuleList):
        return ".".join(parts[:2])
    return parts[0]


def _per_step(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """[T, ...] or [T*B, ...] (a SeqToANNContainer's view) -> [T, rest] (time-major in both layouts)."""
    return x.reshape(timesteps, -1)


class SpikeRateMeter:
    """Mean firing rate per neuron layer and timestep over several batches, from spikingjelly's OutputMonitor.

    Cheap enough for every evaluation pass: one reduction per neuron layer per batch, kept on the device
    (no host sync until :meth:`rates`). Use as a context manager around the forward passes; multi-step
    neurons only (a single-step neuron's calls are folded as if they were consecutive timesteps).
    """

    def __init__(self, model: nn.Module):
        self.model = unwrap(model)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._mon = monitor.OutputMonitor(self.model, neuron.BaseNode, self._reduce)
        self._mon.disable()

    @staticmethod
    def _reduce(s: torch.Tensor):
        s = s.detach()
        return s.reshape(s.shape[0], -1).float().sum(dim=1), s[0].numel()

    def __enter__(self) -> "SpikeRateMeter":
        self._mon.enable()
        return self

    def __exit__(self, *exc) -> None:
        self.fold()
        self._mon.close()

    def fold(self) -> None:
        """Add the monitor's records so far into running sums (call after each batch to bound memory)."""
        for name in self._mon.monitored_layers:
            for sums, numel in self._mon[name]:
                if name in self._sums and self._sums[name].shape == sums.shape:
                    self._sums[name] += sums
                    self._counts[name] += numel
                elif name not in self._sums:
                    self._sums[name], self._counts[name] = sums.clone(), numel
        self._mon.clear_recorded_data()

    def rates(self) -> dict[str, list[float]]:
        """{neuron layer: [rate at t=0, t=1, ...]} (share of neurons that fired)."""
        self.fold()
        return {k: (v / max(self._counts[k], 1)).tolist() for k, v in self._sums.items()}

    def stage_rates(self) -> dict[str, float]:
        """{stage: mean firing rate over its neurons and all timesteps} (neuron-weighted)."""
        self.fold()
        spikes: dict[str, float] = {}
        count: dict[str, float] = {}
        for k, v in self._sums.items():
            st = stage_of(k, self.model)
            spikes[st] = spikes.get(st, 0.0) + float(v.sum())
            count[st] = count.get(st, 0.0) + self._counts[k] * v.numel()
        return {k: spikes[k] / max(count[k], 1.0) for k in spikes}


@dataclass
class _Layer:
    name: str
    kind: str  # conv | linear
    in_channels: int
    fan_in: int  # (Cin/groups) x kh x kw for a conv, in_features for a linear
    calls: int = 0
    images: int = 0
    dense_ops: float = 0.0  # summed over images, per timestep
    nonzero: torch.Tensor | None = None  # [T] input non-zeros, summed over batches
    numel: int = 0  # input elements per timestep, summed over batches
    binary: bool = True
    order: int = 10**9
    extra: dict = field(default_factory=dict)


def _synaptic_layers(net: nn.Module) -> dict[str, _Layer]:
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = _Layer(name, "conv", m.in_channels, (m.in_channels // m.groups) * math.prod(m.kernel_size))
        elif isinstance(m, nn.Linear):
            out[name] = _Layer(name, "linear", m.in_features, m.in_features)
    return out


@torch.no_grad()
def measure_energy(model: nn.Module, batches: Iterable, *, max_batches: int | None = None, ann_in_channels: int = 3,
                   encoding: bool = False, progress=None) -> dict:
    """Run ``model`` over ``batches`` of ``(events [T,B,C,H,W], labels)`` and return the report as a dict.

    Per synaptic layer (conv / linear): input kind (``events`` = the network's binary input, ``spikes``,
    ``analog``), input firing rate per timestep, dense ops per timestep, counted ACs and MACs per image,
    estimated energy (counted ACs x 0.9 pJ + MACs x 4.6 pJ) and the paper's formula value beside it, and
    the ANN equivalent (dense ops x 4.6 pJ; first layer with ``ann_in_channels`` inputs, 3 = RGB). Per
    neuron layer: firing rate per timestep. Totals per image, the ANN/SNN ratio, and (``encoding``: the
    events come from I2E, of RGB images of the events' size) the conversion's own cost.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    layers = _synaptic_layers(net)
    ctx = {"T": 1, "B": 1}

    def on_input(x):
        x = x.detach()
        rows = _per_step(x, ctx["T"])
        return rows.ne(0).sum(dim=1), rows.shape[1], bool(x.eq(0).logical_or_(x.eq(1)).all())

    kinds = (nn.modules.conv._ConvNd, nn.Linear)
    in_mon = monitor.InputMonitor(net, kinds, on_input)
    out_mon = monitor.OutputMonitor(net, kinds, lambda y: y.numel())
    syn, mac = SynOpCounter(), MACCounter(extra_ignore_modules=[nn.modules.batchnorm._BatchNorm])
    meter = SpikeRateMeter(net)
    top1 = images = 0
    timesteps = None
    try:
        with meter:
            for i, (events, labels) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                events = events.float()
                T, B = int(events.shape[0]), int(events.shape[1])
                if timesteps is None:
                    timesteps, in_shape = T, tuple(events.shape[2:])
                ctx.update(T=T, B=B)
                try:
                    with DispatchCounterMode([syn, mac]):
                        logits = net(events)
                finally:
                    functional.reset_net(net)
                top1 += int(logits.argmax(1).eq(labels.to(logits.device)).sum())
                images += B
                for order, name in enumerate(in_mon.monitored_layers):
                    L = layers[name]
                    for (nz, numel, binary), y_numel in zip(in_mon[name], out_mon[name]):
                        L.nonzero = nz.double() if L.nonzero is None else L.nonzero + nz.double()
                        L.numel += numel
                        L.binary &= binary
                        L.dense_ops += y_numel / T * L.fan_in  # per timestep, summed over the B images
                        L.calls += 1
                    if in_mon[name]:
                        L.images += B
                        L.order = min(L.order, order)
                in_mon.clear_recorded_data()
                out_mon.clear_recorded_data()
                meter.fold()
                if progress is not None:
                    progress(B)
            neuron_rates = meter.rates()
    finally:
        in_mon.close()
        out_mon.close()
        net.train(was_training)
    if not images:
        raise ValueError("no batches to measure")

    def scoped(counter) -> dict[str, float]:
        cls = type(net).__name__
        out = {}
        for scope, ops in counter.get_counts().items():
            if scope.startswith(cls + "."):
                out[scope[len(cls) + 1:]] = float(sum(ops.values()))
        return out

    acs_by, macs_by = scoped(syn), scoped(mac)
    used = sorted((L for L in layers.values() if L.calls), key=lambda L: L.order)
    # the first synaptic layer (in definition order: the stem) sees the network's input (the events)
    first_input_scale = ann_in_channels / used[0].in_channels if used else 1.0
    rows, tot = [], {"acs": 0.0, "macs": 0.0, "energy_pj": 0.0, "formula_pj": 0.0, "ann_macs": 0.0}
    for idx, L in enumerate(used):
        rate_t = (L.nonzero / max(L.numel, 1)).tolist() if L.nonzero is not None else []
        rate = sum(rate_t) / max(len(rate_t), 1)
        dense = L.dense_ops / L.images
        acs, macs = acs_by.get(L.name, 0.0) / L.images, macs_by.get(L.name, 0.0) / L.images
        kind = ("events" if idx == 0 else "spikes") if L.binary else "analog"
        energy = acs * E_AC_PJ + macs * E_MAC_PJ
        formula = snn_energy_pj(dense, rate, timesteps) if L.binary else ann_energy_pj(dense * timesteps)
        ann_macs = dense * (first_input_scale if idx == 0 else 1.0)
        rows.append({"layer": L.name, "type": L.kind, "input": kind, "firing_rate": rate, "firing_rate_t": rate_t,
                     "dense_ops_per_t": dense, "acs": acs, "macs": macs, "energy_pj": energy,
                     "formula_energy_pj": formula, "ann_macs": ann_macs, "ann_energy_pj": ann_energy_pj(ann_macs)})
        for k, v in (("acs", acs), ("macs", macs), ("energy_pj", energy), ("formula_pj", formula),
                     ("ann_macs", ann_macs)):
            tot[k] += v
    # spike-driven operations outside conv/linear layers (e.g. a transformer's spike matrix products)
    other_acs = float(syn.get_total()) / images - tot["acs"]
    other_macs = float(mac.get_total()) / images - tot["macs"]
    if other_acs > 0.5 or other_macs > 0.5:
        e = other_acs * E_AC_PJ + other_macs * E_MAC_PJ
        rows.append({"layer": "(other ops)", "type": "matmul", "input": "spikes", "firing_rate": None,
                     "firing_rate_t": [], "dense_ops_per_t": None, "acs": other_acs, "macs": other_macs,
                     "energy_pj": e, "formula_energy_pj": e, "ann_macs": 0.0, "ann_energy_pj": 0.0})
        tot["acs"] += other_acs
        tot["macs"] += other_macs
        tot["energy_pj"] += e
        tot["formula_pj"] += e
    ann_pj = ann_energy_pj(tot["ann_macs"])
    report = {
        "model": {"arch": getattr(net, "arch", type(net).__name__), "width": getattr(net, "width", None),
                  "parameters": sum(p.numel() for p in net.parameters())},
        "input": {"timesteps": timesteps, "shape": list(in_shape), "images": images, "top1": 100.0 * top1 / images},
        "energy_model": {"e_mac_pj": E_MAC_PJ, "e_ac_pj": E_AC_PJ, "source": "Horowitz 2014, 45 nm, 32-bit float "
                         "(spikingjelly SimpleEnergyCostConfig.fp32); BN folded, neuron updates not counted",
                         "ann_in_channels": ann_in_channels},
        "layers": rows,
        "neurons": [{"layer": k, "stage": stage_of(k, net), "firing_rate_t": v, "firing_rate": sum(v) / len(v)}
                    for k, v in neuron_rates.items()],
        "totals": {"acs_per_image": tot["acs"], "macs_per_image": tot["macs"], "snn_energy_pj": tot["energy_pj"],
                   "snn_formula_energy_pj": tot["formula_pj"], "ann_macs_per_image": tot["ann_macs"],
                   "ann_energy_pj": ann_pj, "ann_over_snn": ann_pj / tot["energy_pj"] if tot["energy_pj"] else None,
                   "mean_firing_rate": _mean_rate(neuron_rates, meter)},
    }
    if encoding:
        h, w = in_shape[-2:]
        enc = i2e_encoding_ops(h, w, timesteps)
        report["encoding"] = {"height": h, "width": w, **enc}
        report["totals"]["snn_plus_encoding_pj"] = tot["energy_pj"] + enc["energy_pj"]
        report["totals"]["ann_over_snn_plus_encoding"] = ann_pj / (tot["energy_pj"] + enc["energy_pj"])
    return report


def _mean_rate(rates: dict[str, list[float]], meter: SpikeRateMeter) -> float | None:
    total = sum(float(meter._sums[k].sum()) for k in rates)
    count = sum(meter._counts[k] * meter._sums[k].numel() for k in rates)
    return total / count if count else None


# ------------------------------------------------------------------------------------------------- rendering
def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.2f}{prefix}{unit}"
    return f"{x:.1f}{unit}" if x != int(x) else f"{int(x)}{unit}"


def _pj(x: float | None) -> str:
    """pJ shown in the most readable unit (pJ, nJ, uJ, mJ)."""
    if x is None:
        return "-"
    for factor, unit in ((1e9, "mJ"), (1e6, "uJ"), (1e3, "nJ")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {unit}"
    return f"{x:.3g} pJ"


def format_report(report: dict) -> str:
    """The report as a terminal table: one row per synaptic layer, then totals per image."""
    m, inp, tot = report["model"], report["input"], report["totals"]
    T = inp["timesteps"]
    lines = [f"{m['arch']} (width {m['width']}, {m['parameters'] / 1e6:.2f}M parameters), input {inp['shape']} x T={T}, "
             f"{inp['images']} images, top-1 {inp['top1']:.2f}%",
             f"energy model: {report['energy_model']['e_mac_pj']} pJ/MAC, {report['energy_model']['e_ac_pj']} pJ/AC "
             f"({report['energy_model']['source']})", ""]
    rate_hdr = " ".join(f"t{t:<4d}" for t in range(T))
    hdr = f"{'layer':<40} {'input':<6} {'rate':>6}  {rate_hdr}  {'ops/t':>8} {'ACs':>8} {'MACs':>8} {'E_SNN':>10} {'E_ANN':>10}"
    lines += [hdr, "-" * len(hdr)]
    for r in report["layers"]:
        rate = "-" if r["firing_rate"] is None else f"{100 * r['firing_rate']:5.1f}%"
        per_t = " ".join(f"{100 * v:5.1f}" for v in r["firing_rate_t"]) if r["firing_rate_t"] else " " * (6 * T - 1)
        lines.append(f"{r['layer'][-40:]:<40} {r['input']:<6} {rate:>6}  {per_t}  {_si(r['dense_ops_per_t']):>8} "
                     f"{_si(r['acs']):>8} {_si(r['macs']):>8} {_pj(r['energy_pj']):>10} {_pj(r['ann_energy_pj']):>10}")
    lines.append("-" * len(hdr))
    lines.append(f"{'SNN total per image':<40} {'':<6} {'':>6}  {' ' * (6 * T - 1)}  {'':>8} {_si(tot['acs_per_image']):>8} "
                 f"{_si(tot['macs_per_image']):>8} {_pj(tot['snn_energy_pj']):>10} {_pj(tot['ann_energy_pj']):>10}")
    lines.append("")
    lines.append(f"mean firing rate over all neurons and timesteps: "
                 f"{100 * tot['mean_firing_rate']:.2f}%" if tot["mean_firing_rate"] is not None else "no neurons")
    lines.append(f"SNN per image: {_si(tot['acs_per_image'])} ACs + {_si(tot['macs_per_image'])} MACs = "
                 f"{_pj(tot['snn_energy_pj'])} (paper's formula ops x rate x T x 0.9 pJ: {_pj(tot['snn_formula_energy_pj'])})")
    lines.append(f"ANN equivalent (same layers, one pass, {report['energy_model']['ann_in_channels']}-channel input): "
                 f"{_si(tot['ann_macs_per_image'])} MACs = {_pj(tot['ann_energy_pj'])}")
    if tot["ann_over_snn"] is not None:
        lines.append(f"ANN / SNN energy: {tot['ann_over_snn']:.1f}x")
    if "encoding" in report:
        e = report["encoding"]
        lines.append(f"I2E encoding ({e['height']}x{e['width']} RGB -> T={T}): {_si(e['acs'])} ACs + {e['macs']} MAC = "
                     f"{_pj(e['energy_pj'])} per image; SNN + encoding {_pj(tot['snn_plus_encoding_pj'])}, "
                     f"ANN / (SNN + encoding) {tot['ann_over_snn_plus_encoding']:.1f}x")
    return "\n".join(lines)


def plot_report(report: dict, path) -> None:
    """PNG bar chart per layer: input firing rate (top) and energy per image, SNN vs ANN (bottom, log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["layers"] if r["firing_rate"] is not None]
    names = [r["layer"] for r in rows]
    x = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 0.35 * len(rows) + 3), 7.5), sharex=True)
    ax1.bar(x, [100 * r["firing_rate"] for r in rows], color="tab:red")
    ax1.set_ylabel("input firing rate (%)")
    ax1.set_title(f"{report['model']['arch']}: per-layer activity and energy per image "
                  f"(T={report['input']['timesteps']}, {report['input']['images']} images)")
    w = 0.4
    ax2.bar([i - w / 2 for i in x], [max(r["energy_pj"], 1e-3) for r in rows], w, label="SNN (counted ops)",
            color="tab:blue")
    ax2.bar([i + w / 2 for i in x], [max(r["ann_energy_pj"], 1e-3) for r in rows], w, label="ANN (MACs x 4.6 pJ)",
            color="tab:gray")
    ax2.set_yscale("log")
    ax2.set_ylabel("energy per image (pJ)")
    ax2.legend()
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names, rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir) -> dict[str, str]:
    """report.json, report.txt (the table) and report.png into ``out_dir``; returns their paths."""
    import json
    from pathlib import Path

    from .fsio import atomic_write, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "table": out / "report.txt", "png": out / "report.png"}
    atomic_write_text(paths["json"], json.dumps(report, indent=1))
    atomic_write_text(paths["table"], format_report(report) + "\n")
    atomic_write(paths["png"], lambda f: plot_report(report, f))
    return {k: str(v) for k, v in paths.items()}
