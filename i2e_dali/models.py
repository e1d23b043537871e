"""MS-ResNet18/34: membrane-shortcut spiking ResNets on spikingjelly LIF neurons, multi-step.

Membrane shortcut (MS-ResNet): a block carries the *pre-spike* signal (the membrane input) and adds
its residual to it, so the shortcut never passes through a spike. Each basic block is
``LIF -> conv3x3 -> BN -> LIF -> conv3x3 -> BN`` plus the shortcut; where shapes change the shortcut is
``LIF -> conv1x1 -> BN`` (``downsample.0/1/2``). Stem: 2-channel (ON/OFF) 7x7 stride-2 conv + BN +
3x3 stride-2 max-pool; head: global average pool -> LIF -> linear, logits averaged over time.

Parameter names follow the authors' released I2E checkpoints (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer2.0.downsample.1``, ``fc``), so their weights load directly through
:func:`load_pretrained`. Neurons carry no parameters, so they do not appear in the state dict.

Input ``[T, B, 2, H, W]`` (the loader's layout, time first); output ``[B, num_classes]``.
spikingjelly 2.0 chooses the LIF kernel itself (native CUDA / Triton / torch); set
``SJ_LIF_CUDA_IMPLEMENTATION`` to force one.
"""
from __future__ import annotations

from typing import Sequence

import torch
from spikingjelly.activation_based import layer, neuron, surrogate
from torch import nn

__all__ = [
    "ARCHS",
    "BasicBlock",
    "MSResNet",
    "build_model",
    "canonical_arch",
    "expected_state_keys",
    "unwrap",
]

# blocks per stage for each architecture (basic blocks, expansion 1)
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "msresnet18": (2, 2, 2, 2),
    "msresnet34": (3, 4, 6, 3),
}
_ALIASES = {
    "resnet18": "msresnet18",
    "ms_resnet18": "msresnet18",
    "ms-resnet18": "msresnet18",
    "resnet34": "msresnet34",
    "ms_resnet34": "msresnet34",
    "ms-resnet34": "msresnet34",
}


def canonical_arch(arch: str) -> str:
    key = str(arch).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)} (aliases: {sorted(_ALIASES)})")
    return key


class LIFNode(neuron.LIFNode):
    """spikingjelly's LIFNode, keeping the membrane state in float32 under autocast.

    Under bf16/fp16 autocast the BN outputs reaching a neuron are half precision; spikingjelly would
    then keep the membrane potential in that dtype, which loses small inputs and (in 2.0) disqualifies
    the fast CUDA/Triton kernels (they need float32 state). Upcasting the input keeps both.
    """

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        if x_seq.dtype in (torch.float16, torch.bfloat16):
            x_seq = x_seq.float()
        return super().multi_step_forward(x_seq, *args, **kwargs)

    def single_step_forward(self, x: torch.Tensor, *args, **kwargs):
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return super().single_step_forward(x, *args, **kwargs)


def lif_node() -> LIFNode:
    """The paper's neuron: LIF, tau 2, threshold 1, hard reset to 0, no input decay, detached reset, ATan."""
    return LIFNode(
        tau=2.0,
        v_threshold=1.0,
        v_reset=0.0,
        decay_input=False,
        detach_reset=True,
        surrogate_function=surrogate.ATan(),
        step_mode="m",
    )


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> layer.Conv2d:
    return layer.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False, step_mode="m")


def _bn(c: int) -> layer.BatchNorm2d:
    return layer.BatchNorm2d(c, step_mode="m")


class BasicBlock(nn.Module):
    """Membrane-shortcut basic block: out = BN(conv(LIF(BN(conv(LIF(x)))))) + shortcut(x)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.sn1 = lif_node()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = _bn(planes)
        self.sn2 = lif_node()
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(self.sn1(x)))
        out = self.bn2(self.conv2(self.sn2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class MSResNet(nn.Module):
    """MS-ResNet for event input ``[T, B, in_channels, H, W]``.

    ``width`` is the stage-1 channel count (64 in the paper; stages use width x 1, 2, 4, 8). A smaller
    width keeps the same structure and parameter names for quick CPU runs (the demo), but its weights
    are of course not interchangeable with width-64 checkpoints.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int = 1000,
        *,
        in_channels: int = 2,
        width: int = 64,
        zero_init_residual: bool = False,
        arch: str = "custom",
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.arch = arch
        self.width = int(width)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.inplanes = width
        self.conv1 = layer.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False, step_mode="m")
        self.bn1 = _bn(width)
        self.maxpool = layer.MaxPool2d(kernel_size=3, stride=2, padding=1, step_mode="m")
        self.layer1 = self._make_layer(width, blocks[0])
        self.layer2 = self._make_layer(width * 2, blocks[1], stride=2)
        self.layer3 = self._make_layer(width * 4, blocks[2], stride=2)
        self.layer4 = self._make_layer(width * 8, blocks[3], stride=2)
        self.avgpool = layer.AdaptiveAvgPool2d((1, 1), step_mode="m")
        self.sn1 = lif_node()
        self.fc = layer.Linear(width * 8 * BasicBlock.expansion, num_classes, step_mode="m")

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                lif_node(),
                _conv(self.inplanes, planes * BasicBlock.expansion, 1, stride),
                _bn(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised one for ``num_classes`` (fine-tuning)."""
        old = self.fc
        self.fc = layer.Linear(old.in_features, num_classes, step_mode="m").to(old.weight.device, old.weight.dtype)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"MSResNet expects events [T, B, {self.in_channels}, H, W] (time first), got shape {tuple(x.shape)}"
            )
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.sn1(self.avgpool(x))  # [T, B, C, 1, 1] spikes
        x = self.fc(torch.flatten(x, 2))  # [T, B, classes]
        return x.mean(dim=0)


def build_model(arch: str = "msresnet18", num_classes: int = 1000, **kw) -> MSResNet:
    """Build ``msresnet18`` / ``msresnet34`` (aliases ``resnet18``, ``ms_resnet34``, ...).

    Keyword arguments go to :class:`MSResNet` (``in_channels``, ``width``, ``zero_init_residual``).
    """
    key = canonical_arch(arch)
    return MSResNet(ARCHS[key], num_classes, arch=key, **kw)


def expected_state_keys(arch: str = "msresnet18") -> list[str]:
    """The state-dict keys of ``arch`` in order (what the authors' checkpoints hold, minus ``i2e.weight``)."""
    return list(build_model(arch, num_classes=10, width=1).state_dict().keys())


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers, in whichever order they were applied
    (``torch.compile(DDP(m))`` and ``DDP(torch.compile(m))`` both occur)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
