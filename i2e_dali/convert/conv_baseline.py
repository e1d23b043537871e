"""The conv-based way of computing the I2E spec (the authors' approach), kept as the SPEED BASELINE.

This is not a second product path: nothing in the loader, exporter or trainer calls it. It exists so the
benchmark (and the tests) can set our conversion side by side with how users compute I2E today: scale
the whole RGB image to float, take the channel max, pad, run a 3x3 convolution with one -1/+1 kernel per
timestep, and threshold. It follows docs/concepts/i2e.md (constant images fire nothing), so its events
equal ``i2e_convert``'s bit for bit on the CPU.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .spec import MOTION_GROUPS, MAX_TIMESTEPS, parse_order, position_offset

__all__ = ["conv_i2e", "motion_kernels"]


def motion_kernels(order: Sequence[int], choices: Sequence[int], device=None) -> torch.Tensor:
    """``[T, 1, 3, 3]`` float32 kernels, -1 at the motion's start and +1 at its end."""
    weight = torch.zeros(len(order), 1, 3, 3, dtype=torch.float32, device=device)
    for t, group in enumerate(order):
        s, e = MOTION_GROUPS[group][int(choices[group])]
        (sr, sc), (er, ec) = position_offset(s), position_offset(e)
        weight[t, 0, sr + 1, sc + 1] = -1.0
        weight[t, 0, er + 1, ec + 1] = 1.0
    return weight


def conv_i2e(
    images: torch.Tensor,
    *,
    ratio: float = 0.12,
    timesteps: int = 8,
    order: Sequence[int] | str | None = None,
    motions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Events ``[T, B, 2, H, W]`` via float conversion + replicate pad + conv2d (the reference recipe)."""
    order = parse_order(order, timesteps)
    batch = images.shape[0]
    if images.dtype == torch.uint8:
        x = images.to(torch.float32) * torch.full((), 1.0 / 255.0, dtype=torch.float32, device=images.device)
    else:
        x = images.to(torch.float32)
    v = x.amax(dim=1, keepdim=True)  # [B, 1, H, W]
    value_range = v.amax(dim=(1, 2, 3)) - v.amin(dim=(1, 2, 3))
    thr = (value_range * torch.full((), ratio, dtype=torch.float32, device=v.device)).view(batch, 1, 1, 1)
    padded = F.pad(v, (1, 1, 1, 1), mode="replicate")
    if motions is None:
        motions = torch.zeros(batch, MAX_TIMESTEPS, dtype=torch.int64)
    motions = motions.expand(batch, -1).cpu()
    # The reference draws one kernel set per batch; per-sample draws mean one conv per distinct set.
    diff = torch.empty(batch, len(order), *v.shape[2:], dtype=torch.float32, device=v.device)
    rows_by_choice: dict[tuple[int, ...], list[int]] = {}
    for b, row in enumerate(motions.tolist()):
        rows_by_choice.setdefault(tuple(row), []).append(b)
    for choices, rows in rows_by_choice.items():
        weight = motion_kernels(order, choices, device=v.device)
        if len(rows) == batch:
            diff = F.conv2d(padded, weight)
        else:
            idx = torch.tensor(rows, device=v.device)
            diff[idx] = F.conv2d(padded[idx], weight)
    on = diff >= thr
    off = -diff >= thr
    fires = (value_range > 0).view(batch, 1, 1, 1)
    events = torch.stack([on & fires, off & fires], dim=2)  # [B, T, 2, H, W]
    return events.transpose(0, 1).to(dtype)
