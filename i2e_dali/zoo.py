"""Every architecture the trainer can build: MS-ResNet (models.py, the default), spikingjelly's zoo, and a
user's own ``module:callable``.

The zoo models come from ``spikingjelly.activation_based.model`` and are adapted, not copied:
- neurons: the paper's LIF (``models.lif_node``: tau 2, threshold 1, hard reset to 0, no input decay,
  detached reset, ATan), passed to the zoo constructor as its ``spiking_neuron`` factory;
- stem: the first conv is replaced by one with ``in_channels`` inputs (2 = ON/OFF events), same geometry;
- multi-step: every layer in step mode ``m``; input ``[T, B, C, H, W]``; output logits averaged over time
  ``[B, num_classes]`` (as MS-ResNet does), so the one training step, evaluation and checkpoint serve all.

The zoo classes are subclassed (``_ZooNet`` mixin) rather than wrapped, so parameter names stay
spikingjelly's own (``conv1``, ``layer1.0.conv1``, ``fc``, ...). spikingjelly's ResNets have a fixed stage
width (64-128-256-512): ``--width`` applies to MS-ResNet only, and zoo checkpoints record width 64.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
from spikingjelly.activation_based import functional, layer
from spikingjelly.activation_based.model import sew_resnet, spikformer, spiking_resnet
from torch import nn

from .models import ARCHS as MS_ARCHS
from .models import build_model, canonical_arch, lif_node

__all__ = ["ZOO", "ArchInfo", "UserModel", "arch_names", "build_any", "describe_archs", "native_width",
           "resolve_arch"]


class _ZooNet:
    """Mixin for a spikingjelly zoo class: time-mean logits, input check, classifier reset, metadata."""

    arch: str = "zoo"
    width: int = 64
    in_channels: int = 2
    num_classes: int = 1000
    _head = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"{self.arch} expects events [T, B, {self.in_channels}, H, W] (time first), "
                             f"got shape {tuple(x.shape)}")
        return super().forward(x).mean(dim=0)

    def reset_classifier(self, num_classes: int) -> None:
        old = getattr(self, self._head)
        new = layer.Linear(old.in_features, num_classes, step_mode="m").to(old.weight.device, old.weight.dtype)
        setattr(self, self._head, new)
        self.num_classes = int(num_classes)


class SEWResNetI2E(_ZooNet, sew_resnet.SEWResNet):
    pass


class SpikingResNetI2E(_ZooNet, spiking_resnet.SpikingResNet):
    pass


class SpikformerI2E(_ZooNet, spikformer.Spikformer):
    _head = "head"


def _paper_lif(**_ignored) -> nn.Module:
    """The zoo's ``spiking_neuron`` factory: always the paper's LIF, multi-step (zoo defaults are ignored)."""
    return lif_node()


def _new_stem(model: nn.Module, name: str, in_channels: int) -> None:
    """Replace the conv ``name`` (dotted path) by one with ``in_channels`` inputs, same geometry, fresh init."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    new = layer.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                       bias=old.bias is not None, step_mode="m")
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    setattr(parent, attr, new)


def _finish(model, arch: str, num_classes: int, in_channels: int, width: int):
    functional.set_step_mode(model, "m")
    model.arch, model.width, model.in_channels, model.num_classes = arch, width, in_channels, num_classes
    return model


def _resnet(cls, block, layers, **extra):
    def build(num_classes: int, in_channels: int, **_):
        m = cls(block, list(layers), num_classes=num_classes, spiking_neuron=_paper_lif, **extra)
        _new_stem(m, "conv1", in_channels)
        return m
    return build


def _spikformer(depths: int, embed_dims: int, heads: int):
    def build(num_classes: int, in_channels: int, size: int | None = None, timesteps: int = 8, **_):
        size = size or 128
        if size % 16:
            raise ValueError(f"Spikformer needs an image size divisible by 16 (patch 16), got {size}")
        return SpikformerI2E(T=timesteps, in_channels=in_channels, img_size_h=size, img_size_w=size, patch_size=16,
                             num_classes=num_classes, embed_dims=embed_dims, num_heads=heads, depths=depths,
                             spiking_neuron=_paper_lif)
    return build


@dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str
    build: Callable[..., nn.Module]
    width: int  # fixed stage-1 width of the zoo model (0: not a width-parameterised model)
    note: str


# spikingjelly zoo models that take [T, B, 2, H, W] multi-step input once the stem has 2 channels
ZOO: dict[str, ArchInfo] = {
    "sew_resnet18": ArchInfo("sew_resnet18", "SEW-ResNet (ADD)", _resnet(SEWResNetI2E, sew_resnet.BasicBlock,
                             (2, 2, 2, 2), cnf="ADD"), 64, "spike-element-wise shortcut (spikes added)"),
    "sew_resnet34": ArchInfo("sew_resnet34", "SEW-ResNet (ADD)", _resnet(SEWResNetI2E, sew_resnet.BasicBlock,
                             (3, 4, 6, 3), cnf="ADD"), 64, "spike-element-wise shortcut (spikes added)"),
    "spiking_resnet18": ArchInfo("spiking_resnet18", "Spiking-ResNet", _resnet(
        SpikingResNetI2E, spiking_resnet.BasicBlock, (2, 2, 2, 2)), 64, "shortcut added before the block's last LIF"),
    "spiking_resnet34": ArchInfo("spiking_resnet34", "Spiking-ResNet", _resnet(
        SpikingResNetI2E, spiking_resnet.BasicBlock, (3, 4, 6, 3)), 64, "shortcut added before the block's last LIF"),
    "spikformer_ti": ArchInfo("spikformer_ti", "Spikformer", _spikformer(4, 256, 8), 256,
                              "spiking self-attention, patch 16, embed 256, 4 blocks; needs --size divisible by 16"),
}
_ALIASES = {"sew-resnet18": "sew_resnet18", "sew-resnet34": "sew_resnet34", "sewresnet18": "sew_resnet18",
            "sewresnet34": "sew_resnet34", "spiking-resnet18": "spiking_resnet18",
            "spiking-resnet34": "spiking_resnet34", "spikformer": "spikformer_ti"}


def arch_names() -> list[str]:
    return sorted(MS_ARCHS) + sorted(ZOO)


def resolve_arch(arch: str) -> str:
    """The canonical name: ``msresnet18``/``34`` (and aliases), a zoo name, or ``module:callable`` kept as is."""
    text = str(arch).strip()
    if ":" in text:
        mod, _, fn = text.partition(":")
        if not mod or not fn:
            raise ValueError(f"--arch {arch!r}: a user model is given as module:callable, e.g. mypkg.nets:build")
        return text
    key = text.lower()
    key = _ALIASES.get(key, key)
    if key in ZOO:
        return key
    try:
        return canonical_arch(key)
    except ValueError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {arch_names()} or give module:callable "
                         "(see --list-archs)") from None


def native_width(arch: str) -> int | None:
    """The width a checkpoint of ``arch`` records: None for MS-ResNet (set by --width), else fixed."""
    arch = resolve_arch(arch)
    if arch in MS_ARCHS:
        return None
    return ZOO[arch].width if arch in ZOO else 0


class UserModel(nn.Module):
    """A user's ``module:callable`` model; logits ``[T, B, K]`` are averaged over time, ``[B, K]`` pass."""

    def __init__(self, net: nn.Module, arch: str, num_classes: int, in_channels: int):
        super().__init__()
        self.net = net
        self.arch, self.width = arch, int(getattr(net, "width", 0) or 0)
        self.num_classes, self.in_channels = num_classes, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if y.dim() == 3:
            y = y.mean(dim=0)
        if y.dim() != 2:
            raise ValueError(f"{self.arch} returned shape {tuple(y.shape)}; expected [T, B, classes] or [B, classes]")
        return y


def _load_user(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"--arch {spec}: cannot import module {mod_name!r} ({e})") from None
    fn = mod
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"--arch {spec}: module {mod_name!r} has no {fn_name!r}")
    net = fn(num_classes=num_classes, in_channels=in_channels)
    if not isinstance(net, nn.Module):
        raise ValueError(f"--arch {spec}: {fn_name}(num_classes=, in_channels=) returned {type(net).__name__}, "
                         "not a torch.nn.Module")
    return UserModel(net, spec, num_classes, in_channels)


def build_any(arch: str, num_classes: int = 1000, *, in_channels: int = 2, width: int | None = None,
              zero_init_residual: bool = False, size: int | None = None, timesteps: int = 8) -> nn.Module:
    """Build any architecture by name (see :func:`arch_names`) or ``module:callable``.

    MS-ResNet takes ``width`` and ``zero_init_residual``; Spikformer needs the image ``size`` and ``timesteps``
    at build time. Every model has ``arch``, ``width``, ``num_classes`` and ``in_channels`` attributes (what
    a checkpoint records) and maps ``[T, B, in_channels, H, W]`` to ``[B, num_classes]``.
    """
    key = resolve_arch(arch)
    if key in MS_ARCHS:
        kw = {"width": width} if width is not None else {}
        return build_model(key, num_classes, in_channels=in_channels, zero_init_residual=zero_init_residual, **kw)
    if key in ZOO:
        info = ZOO[key]
        if width not in (None, info.width):
            raise ValueError(f"{key} comes at spikingjelly's width {info.width}; --width applies to MS-ResNet only")
        model = info.build(num_classes, in_channels, size=size, timesteps=timesteps)
        if zero_init_residual:
            for m in model.modules():
                if isinstance(m, (sew_resnet.BasicBlock, spiking_resnet.BasicBlock)):
                    nn.init.zeros_(m.bn2.weight)
        return _finish(model, key, num_classes, in_channels, info.width)
    return _load_user(key, num_classes, in_channels)


def describe_archs() -> str:
    """The text of ``--list-archs``."""
    lines = ["architecture        family             notes"]
    for name in sorted(MS_ARCHS):
        lines.append(f"{name:<19} {'MS-ResNet':<18} default family; membrane shortcut; the authors' key names; "
                     "--width sets stage-1 channels")
    for name, info in sorted(ZOO.items()):
        lines.append(f"{name:<19} {info.family:<18} spikingjelly zoo; {info.note}")
    lines.append(f"{'module:callable':<19} {'your own':<18} callable(num_classes=, in_channels=) -> multi-step "
                 "nn.Module taking [T,B,C,H,W]")
    return "\n".join(lines)
