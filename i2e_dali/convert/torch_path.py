"""The torch path of the conversion (CPU, and CUDA when Triton is missing).

The eight differences are taken by shifted slicing of the border-replicated intensity map (no
convolution) and compared straight into the output tensor. Consumes the same motion draws as the fused
kernel, so both paths give identical events.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import MOTION_GROUPS, intensity_and_threshold, position_offset

__all__ = ["convert_torch"]


def convert_torch(
    images: torch.Tensor,
    ratio: float,
    order: tuple[int, ...],
    motions: torch.Tensor,
    dtype: torch.dtype,
    uniform: bool | None = None,
    out: torch.Tensor | None = None,
    fixed: float | None = None,
) -> torch.Tensor:
    batch, _, height, width = images.shape
    v, thr = intensity_and_threshold(images, ratio, fixed)  # fixed: absolute threshold (ablation)
    # Border replication == clamping the coordinates of every tap (spec, stage 2).
    vp = F.pad(v.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    thr_on = thr.view(batch, 1, 1)
    thr_off = -thr_on
    if out is None:
        out = torch.empty((len(order), batch, 2, height, width), dtype=dtype, device=images.device)
    if uniform is None:  # caller-supplied motions: find out (a host sync on CUDA; the fused path has none)
        uniform = motions.shape[0] <= 1 or bool((motions == motions[:1]).all())
    choices = motions[:1].tolist() if uniform else motions.tolist()
    diff = torch.empty((batch, height, width), dtype=torch.float32, device=images.device)
    # torch's CPU comparison kernels are ~4x slower writing bool/uint8 than writing float, so for the
    # storage dtypes compare into a float scratch and cast it into a bool view of the output (uint8
    # 0/1 bytes are bool bytes): two fast passes beat one slow one.
    direct = dtype.is_floating_point
    target = out if direct else out.view(torch.bool)
    scratch = None if direct else torch.empty_like(diff)

    def window(p: int) -> torch.Tensor:
        dr, dc = position_offset(p)
        return vp[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]

    for t, group in enumerate(order):
        if uniform:
            s, e = MOTION_GROUPS[group][choices[0][group]]
            torch.sub(window(e), window(s), out=diff)
        else:
            # Per-sample motions: each sample's difference is a subtraction of two views of its own
            # padded map (no gathers); the compares below still run once over the whole batch.
            for b, row in enumerate(choices):
                s, e = MOTION_GROUPS[group][row[group]]
                torch.sub(window(e)[b], window(s)[b], out=diff[b])
        if direct:  # comparisons write 0/1 straight into the float output: no temporary, no cast
            torch.ge(diff, thr_on, out=target[t, :, 0])
            torch.le(diff, thr_off, out=target[t, :, 1])
        else:
            target[t, :, 0].copy_(torch.ge(diff, thr_on, out=scratch))
            target[t, :, 1].copy_(torch.le(diff, thr_off, out=scratch))
    return out
