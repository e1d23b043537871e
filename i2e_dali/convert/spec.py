"""The I2E spec (defined in docs/concepts/i2e.md) as code: motion table, timestep orders, motion draws, the
threshold rule and the argument checks. Both conversion paths (``torch_path``, ``triton_path``) and the
conv baseline build on this module and nothing else of the package; ``api`` dispatches between them.

Input ``[B, 3, H, W]`` uint8 (0..255) or float (0..1); output ``[T, B, 2, H, W]`` (time first,
channel 0 = ON, 1 = OFF) in the requested dtype.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Sequence

import torch

__all__ = [
    "MOTION_GROUPS",
    "GROUP_SIZES",
    "GROUP_LETTERS",
    "DEFAULT_ORDER",
    "ORDER_PRESETS",
    "THRESHOLD_MODES",
    "MAX_TIMESTEPS",
    "U8_SCALE",
    "OUT_DTYPES",
    "position_offset",
    "parse_order",
    "draw_motions",
    "threshold_from_extremes",
    "fixed_threshold",
    "intensity_and_threshold",
    "check_ratio",
    "check_threshold",
    "check_timesteps",
    "check_images",
    "check_dtype",
    "check_motions",
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
# The authors' numbered orders (their training scripts' ``--shuffle 0..5``, TrainScript/*/train.py of
# github.com/Ruichen0424/I2E), as group letters; 4 is the default above.
ORDER_PRESETS: dict[int, str] = {0: "abcdefgh", 1: "abefghcd", 2: "cdabefgh", 3: "cdefghab", 4: "efghabcd",
                                 5: "efghcdab"}
# "adaptive": thr = ratio x (max V - min V) per image (the paper's); "fixed": one absolute threshold on V
# in [0, 1] for every image (the paper's Table 4 ablation).
THRESHOLD_MODES = ("adaptive", "fixed")
MAX_TIMESTEPS = len(MOTION_GROUPS)

# uint8 -> float is defined as multiply by float32(1/255) (torchvision's ToDtype(scale=True)).
U8_SCALE = 1.0 / 255.0
OUT_DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32)


def f32_scalar(value: float, device: torch.device) -> torch.Tensor:
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
def check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ValueError(f"ratio must be a float in (0, 1), got {ratio!r} of type {type(ratio).__name__}")
    ratio = float(ratio)
    if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
        raise ValueError(
            f"ratio must be in the open interval (0, 1) (0.12 for ImageNet, 0.07 for CIFAR), got {ratio}"
        )
    return ratio


def check_threshold(threshold, value) -> float | None:
    """The fixed threshold (a float in (0, 1]) for ``threshold="fixed"``, None for ``"adaptive"``."""
    if threshold not in THRESHOLD_MODES:
        raise ValueError(f"threshold must be one of {THRESHOLD_MODES}, got {threshold!r}")
    if threshold == "adaptive":
        if value is not None:
            raise ValueError("threshold_value is only used with threshold='fixed' (adaptive uses ratio)")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"threshold='fixed' needs threshold_value, an absolute threshold on V in (0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"threshold_value must be in (0, 1] (V = max(R, G, B) lies in [0, 1]), got {value}")
    return value


def check_timesteps(timesteps) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int):
        raise ValueError(f"timesteps must be an int in 1..{MAX_TIMESTEPS}, got {timesteps!r}")
    if not 1 <= timesteps <= MAX_TIMESTEPS:
        raise ValueError(
            f"timesteps must be in 1..{MAX_TIMESTEPS} (I2E has {MAX_TIMESTEPS} motion groups), got {timesteps}"
        )
    return timesteps


def parse_order(order: Sequence[int] | str | None, timesteps: int = MAX_TIMESTEPS) -> tuple[int, ...]:
    """Validate a timestep order: group indices 0..7 or letters 'a'..'h' ("efghabcd"), no repeats, or
    one of the authors' numbered presets (an int 0..5 or the string "0".."5", see ORDER_PRESETS).

    It must name at least ``timesteps`` groups; only the first ``timesteps`` are used.
    """
    timesteps = check_timesteps(timesteps)
    if order is None:
        order = DEFAULT_ORDER
    preset = order.strip() if isinstance(order, str) else order
    if isinstance(preset, str) and preset.isdigit() or isinstance(preset, int) and not isinstance(preset, bool):
        if int(preset) not in ORDER_PRESETS:
            raise ValueError(f"order preset {order!r}: the authors' numbered orders are 0..5 ({ORDER_PRESETS})")
        order = ORDER_PRESETS[int(preset)]
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


def check_images(images, validate_values: bool) -> torch.Tensor:
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


def check_dtype(dtype) -> torch.dtype:
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in OUT_DTYPES]}, got {dtype!r}")
    return dtype


def check_motions(motions: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
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
        scale = f32_scalar(U8_SCALE, device)
        vmin, vmax = vmin.to(torch.float32) * scale, vmax.to(torch.float32) * scale
    value_range = vmax - vmin
    thr = value_range * f32_scalar(ratio, device)
    return torch.where(value_range > 0, thr, torch.full_like(thr, math.inf))


def fixed_threshold(batch: int, value: float, device: torch.device) -> torch.Tensor:
    """The threshold ``[B]`` float32 of ``threshold="fixed"``: ``float32(value)`` for every image (also a
    constant one, which fires nothing since all its differences are 0 < value). Shared by both paths."""
    return torch.full((batch,), value, dtype=torch.float32, device=device)


def intensity_and_threshold(
    images: torch.Tensor, ratio: float, fixed: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """V = max(R, G, B) in float32 ``[B, H, W]`` and the per-sample threshold ``[B]`` (adaptive, or the
    absolute ``fixed`` value when given)."""
    batch = images.shape[0]
    if fixed is not None:
        v = images.amax(dim=1).to(torch.float32)
        if images.dtype == torch.uint8:
            v.mul_(f32_scalar(U8_SCALE, images.device))
        return v, fixed_threshold(batch, fixed, images.device)
    if images.dtype == torch.uint8:
        # max commutes with the (monotonic) uint8 -> float scaling: take it on bytes, a third of the
        # traffic, and reduce min/max on bytes too. Bit-identical to working on the float image.
        m = images.amax(dim=1)
        flat = m.view(batch, -1)
        thr = threshold_from_extremes(flat.amin(dim=1), flat.amax(dim=1), ratio, from_bytes=True)
        v = m.to(torch.float32).mul_(f32_scalar(U8_SCALE, images.device))
    else:
        v = images.to(torch.float32).amax(dim=1)
        flat = v.view(batch, -1)
        # amin + amax: torch.aminmax(dim=1) is ~15x slower on the CPU for this shape.
        thr = threshold_from_extremes(flat.amin(dim=1), flat.amax(dim=1), ratio)
    return v, thr
