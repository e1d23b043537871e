"""Static frames for the paper's "events vs frames" comparison (Table 6): the image itself (RGB) or its
intensity map V = max(R, G, B), repeated at every one of T timesteps, in the model's layout.

Same input conventions as the conversion (uint8 means ``u * float32(1/255)``, float means [0, 1]), same
layout ``[T, B, C, H, W]`` (C = 3 for "rgb", 1 for "v"), so the same MS-ResNet (with a 3- or 1-channel
stem) trains on either, one flag apart from events.
"""
from __future__ import annotations

import torch

from .spec import U8_SCALE, check_timesteps, f32_scalar

__all__ = ["STATIC_INPUTS", "static_frames", "input_channels"]

STATIC_INPUTS = ("rgb", "v")
_CHANNELS = {"events": 2, "rgb": 3, "v": 1}


def input_channels(kind: str) -> int:
    """Channels the model's stem takes for an input kind: events 2 (ON/OFF), rgb 3, v 1."""
    if kind not in _CHANNELS:
        raise ValueError(f"input must be one of {tuple(_CHANNELS)}, got {kind!r}")
    return _CHANNELS[kind]


def static_frames(images: torch.Tensor, *, kind: str, timesteps: int, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """``[B, 3, H, W]`` images -> ``[T, B, C, H, W]`` static frames (a broadcast view over T, no copy)."""
    if kind not in STATIC_INPUTS:
        raise ValueError(f"kind must be one of {STATIC_INPUTS}, got {kind!r}")
    timesteps = check_timesteps(timesteps)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor [B, 3, H, W], got {getattr(images, 'shape', type(images))}")
    x = images.amax(dim=1, keepdim=True) if kind == "v" else images  # max commutes with the scaling
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).mul_(f32_scalar(U8_SCALE, x.device))
    x = x.to(dtype)
    return x.unsqueeze(0).expand(timesteps, *x.shape)
