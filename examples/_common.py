"""What the three example loops share: the data they default to and a tiny spiking network."""
from __future__ import annotations

import torch
from spikingjelly.activation_based import functional, layer, neuron


def demo_root(data: str | None) -> str:
    """``data``, or the package's small demo set (ImageNet layout, generated once into a cache folder)."""
    if data:
        return data
    from i2e_dali.data.demo import ensure_demo_dataset

    return str(ensure_demo_dataset())


def tiny_snn(num_classes: int, width: int = 8) -> torch.nn.Module:
    """Conv -> BN -> LIF -> pool -> linear in spikingjelly's multi-step mode: takes events [T, B, 2, H, W],
    returns logits per timestep [T, B, classes]. A real run uses i2e_dali.models' MS-ResNet instead."""
    net = torch.nn.Sequential(
        layer.Conv2d(2, width, 3, padding=1, bias=False), layer.BatchNorm2d(width),
        neuron.LIFNode(tau=2.0, detach_reset=True), layer.AdaptiveAvgPool2d(1), layer.Flatten(),
        layer.Linear(width, num_classes))
    functional.set_step_mode(net, "m")
    return net
