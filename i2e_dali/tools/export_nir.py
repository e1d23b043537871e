"""``i2e-export-nir``: a trained network as a NIR graph (Neuromorphic Intermediate Representation), the format
read by Lava / Loihi 2, SpiNNaker2, Speck, Xylo, Norse, snnTorch, ...

The graph is written by spikingjelly's ``nir_exchange.export_to_nir`` (through ``nirtorch``). Our part only
brings the network into the shape that exporter understands, without changing what it computes:

- BatchNorm is folded into the convolution before it (NIR has no BatchNorm; a conv with bias is exact in
  real arithmetic, and equal to float32 rounding in practice);
- our ``LIFNode`` subclass (float32 membrane under autocast) becomes spikingjelly's plain ``LIFNode`` with the
  same settings (the exporter maps classes exactly);
- the global average pool becomes an ``AvgPool2d`` over the whole final feature map (NIR ``AvgPool2d``);
- residual additions are NIR fan-in edges (a node sums its inputs): MS-ResNet's membrane shortcut, SEW's
  spike addition and Spiking-ResNet's pre-LIF addition are all expressible that way.

What NIR cannot express, and what happens to it:

- **max-pool** (every ResNet stem here: 3x3 stride 2). NIR 1.0 has no max-pool node (only ``SumPool2d`` and
  ``AvgPool2d``), so the stem up to and including the max-pool (MS-ResNet: conv1 + BN + max-pool; SEW- and
  Spiking-ResNet: conv1 + BN + LIF + max-pool) stays on the host: it is stored in ``<out>.stem.pt`` and the
  NIR graph starts at the max-pool's output (the membrane input of ``layer1`` for MS-ResNet, spikes for the
  others). One 7x7 convolution on the events, then the whole network on the chip;
- **the time readout**: logits are the fc output averaged over the T timesteps (done on the host);
- **spiking self-attention** (Spikformer: products of two spike tensors, reshapes) and user models: refused
  with the reason.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
from spikingjelly.activation_based import layer, neuron
from torch import nn

from ..errors import ExportError
from ..models import LIFNode, MSResNet, unwrap

__all__ = ["NirExport", "prepare_for_nir", "export_nir", "reimport_nir", "main"]

DT = 1e-4  # NIR's time step convention (spikingjelly's and most frameworks' default); tau is scaled by it


class _Through(nn.Module):
    """A removed layer (a folded BatchNorm): traced through by torch.fx, so no NIR node appears."""

    def forward(self, x):
        return x


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- BN(conv) (inference statistics), in place: w' = w * g / s, b' = beta + (b - mean) * g / s."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = bn.bias + (bias - bn.running_mean) * scale
        conv.bias = nn.Parameter(new_bias)


def _fold_all(module: nn.Module) -> int:
    """Fold every BatchNorm into the conv that precedes it among its siblings (definition order = call order
    in every architecture exported here; the round-trip test checks it)."""
    folded = 0
    for parent in module.modules():
        prev = None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and isinstance(prev, nn.Conv2d):
                _fold_bn(prev, child)
                setattr(parent, name, _Through())
                folded += 1
            prev = child
    leftover = [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise ExportError(f"BatchNorm layers not directly after a conv cannot be folded for NIR: {leftover[:3]}")
    return folded


def _plain_lif(module: nn.Module) -> None:
    """Our LIFNode subclass -> spikingjelly's LIFNode with identical settings (the exporter maps exact classes)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is LIFNode:
                setattr(parent, name, neuron.LIFNode(
                    tau=child.tau, v_threshold=child.v_threshold, v_reset=child.v_reset,
                    decay_input=child.decay_input, detach_reset=child.detach_reset,
                    surrogate_function=child.surrogate_function, step_mode="m"))


class _Body(nn.Module):
    """Everything after the stem, written with module calls and additions only (what nirtorch traces)."""

    def __init__(self, net: nn.Module, pool_hw: tuple[int, int], head_lif: nn.Module | None):
        super().__init__()
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = layer.AvgPool2d(kernel_size=pool_hw, stride=pool_hw, step_mode="m")
        self.head_lif = head_lif if head_lif is not None else _Through()
        self.flatten = layer.Flatten(step_mode="m")
        self.fc = net.fc

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.head_lif(self.avgpool(x))))


class _Stem(nn.Module):
    def __init__(self, net: nn.Module, with_lif: bool):
        super().__init__()
        self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
        self.sn1 = net.sn1 if with_lif else None

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        if self.sn1 is not None:
            x = self.sn1(x)
        return self.maxpool(x)


class NirExport:
    """A network split for NIR: ``stem`` (host, torch) -> ``body`` (the NIR graph) -> mean over time."""

    def __init__(self, stem: nn.Module, body: nn.Module, arch: str, host_part: str):
        self.stem, self.body, self.arch, self.host_part = stem, body, arch, host_part

    @torch.no_grad()
    def __call__(self, events: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        try:
            return self.body(self.stem(events)).mean(dim=0)
        finally:
            functional.reset_net(self.stem)
            functional.reset_net(self.body)


def prepare_for_nir(model: nn.Module, example_events: torch.Tensor) -> NirExport:
    """A copy of ``model`` (eval mode, CPU) split into a host stem and an exportable body (see the module doc)."""
    from spikingjelly.activation_based import functional

    from ..zoo import SEWResNetI2E, SpikingResNetI2E

    net = copy.deepcopy(unwrap(model)).cpu().eval()
    arch = getattr(net, "arch", type(net).__name__)
    if isinstance(net, MSResNet):
        stem, head_lif, host = _Stem(net, with_lif=False), net.sn1, "conv1 + bn1 + maxpool"
    elif isinstance(net, (SEWResNetI2E, SpikingResNetI2E)):
        stem, head_lif, host = _Stem(net, with_lif=True), None, "conv1 + bn1 + sn1 + maxpool"
    else:
        raise ExportError(
            f"{arch}: NIR export covers MS-ResNet, SEW-ResNet and Spiking-ResNet. NIR 1.0 has no node for "
            "this model's constructs (Spikformer: products of two spike tensors in self-attention, reshapes "
            "and transposes; user models: unknown structure). Export your model with spikingjelly's "
            "nir_exchange.export_to_nir directly if it uses only Linear/Conv/AvgPool/Flatten/IF/LIF layers.")
    with torch.no_grad():
        feats = stem(example_events.float().cpu())
        x = net.layer4(net.layer3(net.layer2(net.layer1(feats))))
        functional.reset_net(net)
    body = _Body(net, tuple(x.shape[-2:]), head_lif)
    _fold_all(body)
    _plain_lif(stem)
    _plain_lif(body)
    functional.set_step_mode(body, "m")
    return NirExport(stem, body, arch, host)


def export_nir(model: nn.Module, example_events: torch.Tensor, path=None, *, dt: float = DT):
    """Export ``model`` to NIR (written to ``path`` if given). Returns ``(graph, NirExport)``; the stem, which
    NIR cannot hold (max-pool), is saved next to ``path`` as ``<path>.stem.pt`` (a state dict + its meaning)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    split = prepare_for_nir(model, example_events)
    with torch.no_grad():
        body_in = split.stem(example_events.float().cpu())
    functional.reset_net(split.stem)
    try:
        graph = export_to_nir(split.body, body_in, dt=dt)
    except (ValueError, NotImplementedError, KeyError) as e:
        raise ExportError(f"{split.arch}: NIR export failed: {type(e).__name__}: {e}") from e
    finally:
        functional.reset_net(split.body)
    graph.metadata.update({
        "producer": "i2e-dali i2e-export-nir", "arch": split.arch, "dt": dt,
        "timesteps": int(example_events.shape[0]), "input_shape": list(body_in.shape[2:]),
        "host_stem": split.host_part + " (NIR has no max-pool; run it on the host, weights in <file>.stem.pt)",
        "readout": "logits = mean over timesteps of the graph output",
    })
    if path is not None:
        import nir

        from ..fsio import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        nir.write(str(path), graph)
        stem_state = {"arch": split.arch, "host_part": split.host_part,
                      "state_dict": {k: v.clone() for k, v in split.stem.state_dict().items()}}
        atomic_write(Path(str(path) + ".stem.pt"), lambda f: torch.save(stem_state, f))
    return graph, split


def reimport_nir(graph_or_path, *, dt: float = DT) -> nn.Module:
    """The NIR graph back as a multi-step torch module (spikingjelly's ``import_from_nir``): ``[T,B,...] -> [T,B,K]``."""
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    gm = import_from_nir(str(graph_or_path) if isinstance(graph_or_path, Path) else graph_or_path, dt=dt,
                         step_mode="m")

    class _Run(nn.Module):
        def __init__(self):
            super().__init__()
            self.gm = gm

        def forward(self, x):
            out, _ = self.gm(x, None)
            return out

    return _Run()


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="i2e-export-nir", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="What cannot be exported: see the README section 'Export to neuromorphic "
                                       "hardware (NIR)'.")
    p.add_argument("--checkpoint", required=True, type=Path, help="a training checkpoint (last.pt / best.pt)")
    p.add_argument("--out", required=True, type=Path, help="the NIR file to write (HDF5), e.g. model.nir")
    p.add_argument("--size", type=int, default=None, help="input size H=W (default: the checkpoint's)")
    p.add_argument("-T", "--timesteps", type=int, default=None, help="default: the checkpoint's")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    from ..errors import I2EError
    from ..training.checkpoint import load_checkpoint, load_state_into, saved_setting
    from ..zoo import build_any

    try:
        ckpt = load_checkpoint(args.checkpoint)
        cfg = ckpt.get("config") or {}
        size = args.size or saved_setting(cfg, "size")
        T = args.timesteps or ckpt.get("timesteps") or saved_setting(cfg, "timesteps") or 8
        if not size:
            raise ExportError(f"{args.checkpoint} does not record an input size; pass --size")
        model = build_any(ckpt["arch"], ckpt["num_classes"], width=ckpt.get("width"), size=size, timesteps=T)
        load_state_into(model, ckpt["model"], source=str(args.checkpoint))
        example = torch.zeros(T, 1, getattr(model, "in_channels", 2), size, size)
        graph, split = export_nir(model, example, args.out)
    except (I2EError, ValueError, OSError) as e:
        if os.environ.get("I2E_DEBUG"):
            raise
        print(f"i2e-export-nir: error: {e}", file=sys.stderr)
        return 2
    kinds: dict[str, int] = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    print(f"wrote {args.out}: {len(graph.nodes)} nodes ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
          f"{len(graph.edges)} edges; input {graph.metadata['input_shape']} per timestep, T={T}")
    print(f"host part (not expressible in NIR: max-pool): {split.host_part} -> {args.out}.stem.pt; "
          "readout: mean of the output over timesteps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
