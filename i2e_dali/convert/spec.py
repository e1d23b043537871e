"""THE I2E conversion (shared/I2E_SPEC.md): static RGB images -> ON/OFF event streams.

Written once and used by the loader, the exporter, the visualiser, the calibrator and the benchmark.
Input ``[B, 3, H, W]`` uint8 (0..255) or float (0..1); output ``[T, B, 2, H, W]`` (time first,
channel 0 = ON, 1 = OFF) in the requested dtype.

CPU/torch path: the eight differences are taken by shifted slicing of the border-replicated intensity
map (no convolution) and compared straight into the output tensor. CUDA tensors go to the fused Triton
kernel (``i2e_dali.i2e_triton``) when it is available; it consumes the same motion draws, so both paths
give identical events.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MOTION_GROUPS",
    "GROUP_SIZES",
    "DEFAULT_ORDER",
    "GROUP_LETTERS",
    "OUT_DTYPES",
    "position_offset",
    "parse_order",
    "draw_motions",
    "intensity_and_threshold",
    "threshold_from_extremes",
    "i2e_convert",
    "event_rate",
    "I2E",
]

# The eight direction groups a..h; each entry is a motion [s, e] over the 3x3 window numbered 1..9
# row-major. The first entry of each group is the canonical (evaluation) motion.
MOTION_GROUPS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((5, 6), (1, 2), (2, 3), (4, 5), (7, 8), (8, 9)),  # a
    ((5, 2), (4, 1), (6, 3), (7, 4), (8, 5), (9, 6)),  # b
    ((5, 3), (4, 2), (7, 5), (8, 6)),  # c
    ((5, 1), (6, 2), (8, 4), (9, 5)),  # d
    ((9, 4), (6, 1)),  # e
    ((4, 3), (7, 6)),  # f
    ((3, 8), (2, 7)),  # g
    ((8, 1), (9, 2)),  # h
)
GROUP_SIZES: tuple[int, ...] = tuple(len(g) for g in MOTION_GROUPS)
GROUP_LETTERS = "abcdefgh"
DEFAULT_ORDER: tuple[int, ...] = (4, 5, 6, 7, 0, 1, 2, 3)  # e f g h a b c d: larger motions first
MAX_TIMESTEPS = len(MOTION_GROUPS)

# uint8 -> float is defined as multiply by float32(1/255) (torchvision's ToDtype(scale=True)).
_U8_SCALE = 1.0 / 255.0
OUT_DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32)


def _f32(value: float, device: torch.device) -> torch.Tensor:
    """A float32 scalar on ``device`` made by a fill kernel: ``torch.tensor(x, device=cuda)`` would
    copy from pageable host memory, which blocks the host until the GPU has caught up."""
    return torch.full((), value, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=None)
def _group_sizes(device: torch.device) -> torch.Tensor:
    """GROUP_SIZES as int64 on ``device``, built once per device (the one host copy happens here)."""
    return torch.tensor(GROUP_SIZES, dtype=torch.int64, device=device)


def position_offset(p: int) -> tuple[int, int]:
    """(row, col) offset of window position p (1..9) from the centre pixel."""
    return (p - 1) // 3 - 1, (p - 1) % 3 - 1


# --------------------------------------------------------------------------------------------------
# argument checks: every message says what was wrong and what is accepted
# --------------------------------------------------------------------------------------------------
def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ValueError(f"ratio must be a float in (0, 1), got {ratio!r} of type {type(ratio).__name__}")
    ratio = float(ratio)
    if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
        raise ValueError(
            f"ratio must be in the open interval (0, 1) (0.12 for ImageNet, 0.07 for CIFAR), got {ratio}"
        )
    return ratio


def _check_timesteps(timesteps) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int):
        raise ValueError(f"timesteps must be an int in 1..{MAX_TIMESTEPS}, got {timesteps!r}")
    if not 1 <= timesteps <= MAX_TIMESTEPS:
        raise ValueError(
            f"timesteps must be in 1..{MAX_TIMESTEPS} (I2E has {MAX_TIMESTEPS} motion groups), got {timesteps}"
        )
    return timesteps


def parse_order(order: Sequence[int] | str | None, timesteps: int = MAX_TIMESTEPS) -> tuple[int, ...]:
    """Validate a timestep order: group indices 0..7 or letters 'a'..'h' ("efghabcd"), no repeats.

    It must name at least ``timesteps`` groups; only the first ``timesteps`` are used.
    """
    timesteps = _check_timesteps(timesteps)
    if order is None:
        order = DEFAULT_ORDER
    if isinstance(order, str):
        letters = order.strip().lower().replace(",", "").replace(" ", "")
        bad = [c for c in letters if c not in GROUP_LETTERS]
        if bad:
            raise ValueError(f"order {order!r}: letters must be among 'abcdefgh', got {''.join(bad)!r}")
        order = [GROUP_LETTERS.index(c) for c in letters]
    try:
        items = list(order)
    except TypeError:
        raise ValueError(f"order must be a sequence of group indices 0..7 or a string like 'efghabcd', got {order!r}")
    groups = []
    for g in items:
        try:  # any integer type (int, numpy integer, 0-d integer tensor), never bool or float
            index = None if isinstance(g, bool) else operator.index(g)
        except TypeError:
            index = None
        if index is None or not 0 <= index < MAX_TIMESTEPS:
            raise ValueError(f"order {items!r}: every entry must be a group index in 0..7, got {g!r}")
        groups.append(index)
    if len(set(groups)) != len(groups):
        raise ValueError(f"order {groups}: a group may appear only once")
    if len(groups) < timesteps:
        raise ValueError(f"order {groups} names {len(groups)} groups but timesteps={timesteps} needs that many")
    return tuple(groups[:timesteps])


def _check_images(images, validate_values: bool) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"images must have 4 dimensions [B, 3, H, W], got shape {tuple(images.shape)}"
            + (" (add a batch dimension with images[None])" if images.dim() == 3 else "")
        )
    if images.shape[1] != 3:
        hint = " (channels-last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else ""
        raise ValueError(f"images must have 3 (RGB) channels in dim 1, got shape {tuple(images.shape)}{hint}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or floating point (0..1), got dtype {images.dtype}")
    if validate_values:
        # One fused reduction; on CUDA this costs a sync, so the loader hands uint8 in (no check needed).
        lo, hi = torch.aminmax(images.detach().to(torch.float32))
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images contain non-finite values (NaN or inf); I2E needs finite pixels in [0, 1]")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]"
                + (" (looks like 0..255: pass uint8 or divide by 255)" if hi > 1.0 else "")
            )
    return images


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in OUT_DTYPES]}, got {dtype!r}")
    return dtype


def _check_motions(motions: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(motions, torch.Tensor) or motions.dtype not in (torch.int64, torch.int32):
        raise ValueError("motions must be an int64 tensor [B, 8] of choices within each group (see draw_motions)")
    if motions.dim() == 1:
        motions = motions.expand(batch, -1)
    if tuple(motions.shape) != (batch, MAX_TIMESTEPS):
        raise ValueError(f"motions must have shape [{batch}, 8] (or [8]), got {tuple(motions.shape)}")
    sizes = _group_sizes(motions.device)
    if bool(((motions < 0) | (motions >= sizes)).any()):
        raise ValueError(f"motions hold a choice outside its group; group sizes are {GROUP_SIZES}")
    return motions.to(device=device, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# the algorithm
# --------------------------------------------------------------------------------------------------
def draw_motions(
    batch_size: int,
    *,
    train: bool,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Choice of motion within each group, ``[B, 8]`` int64 (column g = group g).

    Evaluation: all zeros (canonical motions). Training: uniform per sample, or one draw per group for
    the whole batch (``per_sample=False``, the authors' reference behaviour). Draws happen on the
    generator's device (or ``device``), so a seeded generator reproduces them.
    """
    if generator is not None:
        device = generator.device
    device = torch.device("cpu") if device is None else torch.device(device)
    if not train:
        return torch.zeros(batch_size, MAX_TIMESTEPS, dtype=torch.int64, device=device)
    rows = batch_size if per_sample else 1
    # Uniform integers in [0, size) per group: floor(u * size) with u ~ U[0, 1) in float64 is exact
    # enough (size <= 6) and needs one RNG call for all groups.
    u = torch.rand(rows, MAX_TIMESTEPS, generator=generator, device=device, dtype=torch.float64)
    sizes = _group_sizes(device)
    choices = torch.minimum((u * sizes).floor().to(torch.int64), sizes - 1)
    return choices.expand(batch_size, -1).contiguous()


def threshold_from_extremes(
    vmin: torch.Tensor, vmax: torch.Tensor, ratio: float, *, from_bytes: bool = False
) -> torch.Tensor:
    """Per-sample threshold ``[B]`` float32 from the extremes of V: ``(max - min) * ratio``.

    ``from_bytes``: the extremes were taken on the uint8 max map (0..255); scaling is monotonic and
    per value, so scaling them afterwards gives exactly the extremes of the float32 V. Constant images
    (range 0) get an infinite threshold: no event fires (the spec's deliberate difference from the
    reference, which fires everything there). Shared by the torch path and the fused kernel.
    """
    device = vmin.device
    if from_bytes:
        scale = _f32(_U8_SCALE, device)
        vmin, vmax = vmin.to(torch.float32) * scale, vmax.to(torch.float32) * scale
    value_range = vmax - vmin
    thr = value_range * _f32(ratio, device)
    return torch.where(value_range > 0, thr, torch.full_like(thr, math.inf))


def intensity_and_threshold(images: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """V = max(R, G, B) in float32 ``[B, H, W]`` and the per-sample threshold ``[B]``."""
    batch = images.shape[0]
    if images.dtype == torch.uint8:
        # max commutes with the (monotonic) uint8 -> float scaling: take it on bytes, a third of the
        # traffic, and reduce min/max on bytes too. Bit-identical to working on the float image.
        m = images.amax(dim=1)
        flat = m.view(batch, -1)
        thr = threshold_from_extremes(flat.amin(dim=1), flat.amax(dim=1), ratio, from_bytes=True)
        v = m.to(torch.float32).mul_(_f32(_U8_SCALE, images.device))
    else:
        v = images.to(torch.float32).amax(dim=1)
        flat = v.view(batch, -1)
        # amin + amax: torch.aminmax(dim=1) is ~15x slower on the CPU for this shape.
        thr = threshold_from_extremes(flat.amin(dim=1), flat.amax(dim=1), ratio)
    return v, thr


def _convert_torch(
    images: torch.Tensor,
    ratio: float,
    order: tuple[int, ...],
    motions: torch.Tensor,
    dtype: torch.dtype,
    uniform: bool | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    batch, _, height, width = images.shape
    v, thr = intensity_and_threshold(images, ratio)
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


def _fused_available(images: torch.Tensor, impl: str) -> bool:
    if impl == "torch" or not images.is_cuda:
        return False
    try:
        from . import i2e_triton  # noqa: F401  (lazy: Triton is only needed on CUDA)
    except ImportError:
        if impl == "triton":
            raise
        return False
    return True


def i2e_convert(
    images: torch.Tensor,
    *,
    ratio: float = 0.12,
    timesteps: int = 8,
    order: Sequence[int] | str | None = None,
    train: bool = False,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
    motions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    impl: str = "auto",
    validate: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Convert ``[B, 3, H, W]`` images to events ``[T, B, 2, H, W]`` (shared/I2E_SPEC.md).

    Args:
        images: uint8 0..255 or float 0..1, on CPU or CUDA.
        ratio: threshold as a fraction of each image's intensity range (0.12 ImageNet, 0.07 CIFAR@128).
        timesteps: T in 1..8; the first T groups of ``order`` are used.
        order: group order, indices 0..7 or letters ("efghabcd" is the default).
        train: random motion within each group (augmentation); False uses the canonical motions.
        per_sample: in training, draw per sample (this project) or once per batch (the authors').
        generator: torch.Generator for reproducible draws (on the images' device).
        motions: explicit ``[B, 8]`` choices (overrides train/per_sample/generator).
        dtype: bool/uint8 for storage, float16/bfloat16/float32 for a model.
        impl: "auto" (fused Triton kernel for CUDA tensors when available), "torch" or "triton".
        validate: check float inputs for NaN/inf/range (one reduction; costs a sync on CUDA).
        out: optional contiguous ``[T, B, 2, H, W]`` tensor of ``dtype`` on the images' device to write
            into. Reusing one buffer across calls (export, benchmarks) saves fresh-memory page faults,
            which on the CPU cost as much as the conversion itself.
    """
    ratio = _check_ratio(ratio)
    order = parse_order(order, timesteps)
    dtype = _check_dtype(dtype)
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    images = _check_images(images, validate)
    batch = images.shape[0]
    uniform = None
    if motions is None:
        gen_device = generator.device if generator is not None else images.device
        motions = draw_motions(batch, train=train, per_sample=per_sample, generator=generator, device=gen_device)
        motions = motions.to(images.device)  # valid by construction: no check, no CUDA sync
        uniform = not train or not per_sample or batch == 1
    else:
        motions = _check_motions(motions, batch, images.device)
    if out is not None:
        expected = (len(order), batch, 2, images.shape[2], images.shape[3])
        if (not isinstance(out, torch.Tensor) or tuple(out.shape) != expected or out.dtype != dtype
                or out.device != images.device or not out.is_contiguous()):
            got = (tuple(out.shape), out.dtype, out.device) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"out must be a contiguous tensor {list(expected)} of {dtype} on {images.device}, got {got}")
    if _fused_available(images, impl):
        from .i2e_triton import convert_fused

        return convert_fused(images, ratio=ratio, order=order, motions=motions, dtype=dtype, out=out)
    return _convert_torch(images, ratio, order, motions, dtype, uniform, out)


def event_rate(events: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Fraction of pixels firing, per timestep and polarity.

    ``events`` is ``[T, B, 2, H, W]``; returns ``[T, 2]`` (mean over the batch) or ``[T, B, 2]``.
    """
    if not isinstance(events, torch.Tensor) or events.dim() != 5 or events.shape[2] != 2:
        shape = tuple(events.shape) if isinstance(events, torch.Tensor) else type(events).__name__
        raise ValueError(f"events must be a tensor [T, B, 2, H, W], got {shape}")
    rate = events.to(torch.float32).mean(dim=(-2, -1))  # [T, B, 2]
    return rate if per_sample else rate.mean(dim=1)


class I2E(nn.Module):
    """The I2E conversion as a module: ``training`` mode draws random motions, ``eval()`` is canonical.

    >>> i2e = I2E(ratio=0.12).eval()
    >>> events = i2e(images_uint8)          # [8, B, 2, H, W] float32
    """

    def __init__(
        self,
        ratio: float = 0.12,
        timesteps: int = 8,
        order: Sequence[int] | str | None = None,
        per_sample: bool = True,
        dtype: torch.dtype = torch.float32,
        impl: str = "auto",
    ):
        super().__init__()
        self.ratio = _check_ratio(ratio)
        self.timesteps = _check_timesteps(timesteps)
        self.order = parse_order(order, timesteps)
        self.per_sample = bool(per_sample)
        self.dtype = _check_dtype(dtype)
        if impl not in ("auto", "torch", "triton"):
            raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
        self.impl = impl

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        motions: torch.Tensor | None = None,
        validate: bool = True,
    ) -> torch.Tensor:
        return i2e_convert(
            images,
            ratio=self.ratio,
            timesteps=self.timesteps,
            order=self.order,
            train=self.training,
            per_sample=self.per_sample,
            generator=generator,
            motions=motions,
            dtype=self.dtype,
            impl=self.impl,
            validate=validate,
        )

    def extra_repr(self) -> str:
        order = "".join(GROUP_LETTERS[g] for g in self.order)
        return f"ratio={self.ratio}, timesteps={self.timesteps}, order={order!r}, per_sample={self.per_sample}, dtype={self.dtype}"
