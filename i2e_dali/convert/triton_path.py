"""Fused I2E conversion for CUDA tensors (Triton): read the RGB batch once, write the events once.

Two launches per batch:

1. ``_minmax_kernel`` - per-image min/max of V = max(R, G, B) as per-chunk partials (a few floats per
   image); the threshold ``thr = (vmax - vmin) * ratio`` (infinite for a constant image) is then formed
   by three tiny torch ops with exactly the arithmetic of :func:`i2e_dali.convert.spec.intensity_and_threshold`.
2. ``_convert_kernel`` - one program per (tile, image). It loads the three channels at the nine
   positions of the 3x3 window (the tile plus a one-pixel halo; the halo and neighbouring taps are
   L1/L2 hits, so DRAM sees each input byte about once), forms the nine V tiles in registers, and for
   every timestep picks the motion's two taps, subtracts and writes both polarities in the output dtype.

The timestep order is a compile-time constant (one specialisation per order: the loop over timesteps and
the motion table are unrolled); the motion choice inside a group is per sample (``motions[b, g]``), a
scalar per program, so it costs a handful of selects and no divergence.

Exactness: the kernel performs the torch path's float32 operations one for one (uint8 -> V is
``float32(max(r, g, b)) * float32(1/255)``; ``d = V[e] - V[s]``; ``ON = d >= thr``; ``OFF = d <= -thr``)
and is launched with ``enable_fp_fusion=False`` so the compiler cannot contract ``mul`` + ``sub`` into an
FMA (which would round once instead of twice and flip events that sit exactly on the threshold).

The module imports without a GPU (Triton itself is CPU-installable); it is called by
:func:`i2e_dali.convert.api.i2e_convert` for CUDA tensors, and runs on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is imported), which is how CI checks it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

from .spec import GROUP_SIZES, MAX_TIMESTEPS, MOTION_GROUPS, OUT_DTYPES, U8_SCALE, fixed_threshold, threshold_from_extremes

__all__ = ["FusedConfig", "convert_fused", "fused_threshold", "tile_shape"]

_IN_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MINMAX_BLOCK = 2048  # pixels per program of the min/max pass


@dataclass(frozen=True)
class FusedConfig:
    """Launch shape of the conversion kernel (the benchmark sweeps these on a GPU).

    Defaults come from offline sm_90a compiles (ptxas register reports, no GPU at hand): 1024-pixel
    tiles on 8 warps (4 pixels per lane, 16-byte float32 stores) and a 128-register cap, below which
    ptxas's own choice spilled the nine V tiles to the stack for some output dtypes.
    """

    tile_pixels: int = 1024
    num_warps: int = 8
    maxnreg: int | None = 128

    def __post_init__(self):
        if self.tile_pixels < 16 or self.tile_pixels & (self.tile_pixels - 1):
            raise ValueError(f"tile_pixels must be a power of two >= 16, got {self.tile_pixels}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")


# --------------------------------------------------------------------------------------------------
# compile-time helpers (evaluated by Triton's frontend on constexpr arguments)
# --------------------------------------------------------------------------------------------------
@triton.constexpr_function
def _group_at(order_code, t):
    """Group index of timestep t; the order is packed 3 bits per timestep."""
    return (order_code >> (3 * t)) & 7


@triton.constexpr_function
def _group_size(group):
    return GROUP_SIZES[group]


@triton.constexpr_function
def _tap_index(group, choice, end):
    """Index 0..8 into the nine V tiles of motion ``choice`` of ``group``; end 0 = s, 1 = e."""
    return MOTION_GROUPS[group][choice][end] - 1


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------
@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


# The min/max pass calls tl.reduce with Triton's own element-wise combiners rather than tl.min/tl.max:
# those two are @jit functions decorated when triton itself was imported, so they only run under the
# interpreter if TRITON_INTERPRET was set that early, whereas importing this module under the flag is
# enough this way (the tests rely on it); the interpreter also recognises these combiners and reduces
# with numpy instead of element by element. Own combiners are the fallback should the names move.
_ELEMENTWISE_MIN = getattr(tl.standard, "_elementwise_min", _min_combine)
_ELEMENTWISE_MAX = getattr(tl.standard, "_elementwise_max", _max_combine)


@triton.jit
def _minmax_kernel(
    img_ptr,
    pmin_ptr,
    pmax_ptr,
    H,
    W,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    n_chunks,
    IS_U8: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One flat grid axis, image-major (axis 0 allows 2**31 - 1 programs; axes 1 and 2 stop at 65,535,
    # which tiles of a large image would pass): any image i2e_convert accepts launches.
    pid = tl.program_id(0)
    b = pid // n_chunks
    chunk = pid - b * n_chunks
    idx = chunk * BLOCK + tl.arange(0, BLOCK)
    # Clamping the tail onto the last pixel keeps every load in bounds without a mask and cannot change
    # a min or a max (it only repeats a pixel).
    idx = tl.minimum(idx, H * W - 1)
    y = idx // W
    x = idx - y * W
    base = img_ptr + b.to(tl.int64) * stride_b
    off = y.to(tl.int64) * stride_h + x.to(tl.int64) * stride_w
    r = tl.load(base + off)
    g = tl.load(base + stride_c + off)
    bl = tl.load(base + 2 * stride_c + off)
    if IS_U8:
        # max on bytes, reduced as int32 (exact; no 8-bit reduction whose signedness a backend could
        # get wrong); the host scales the two extremes
        v = tl.maximum(tl.maximum(r, g), bl).to(tl.int32)
    else:
        v = tl.maximum(tl.maximum(r.to(tl.float32), g.to(tl.float32)), bl.to(tl.float32))
    slot = b.to(tl.int64) * n_chunks + chunk
    tl.store(pmin_ptr + slot, tl.reduce(v, 0, _ELEMENTWISE_MIN).to(tl.float32))
    tl.store(pmax_ptr + slot, tl.reduce(v, 0, _ELEMENTWISE_MAX).to(tl.float32))


@triton.jit
def _load_v(ptr, stride_c, scale, IS_U8: tl.constexpr):
    """V = max(R, G, B) in float32 at ``ptr`` (R), already clamped in bounds."""
    r = tl.load(ptr)
    g = tl.load(ptr + stride_c)
    bl = tl.load(ptr + 2 * stride_c)
    if IS_U8:
        # Same operations as the torch path: max on uint8, then float32(u) * float32(1/255).
        v = tl.maximum(tl.maximum(r, g), bl).to(tl.float32) * scale
    else:
        v = tl.maximum(tl.maximum(r.to(tl.float32), g.to(tl.float32)), bl.to(tl.float32))
    return v


@triton.jit
def _motion_taps(taps, mot_row_ptr, mot_stride_g, GROUP: tl.constexpr):
    """(V at s, V at e) of this sample's motion in GROUP: the canonical taps, replaced by choice k's."""
    choice = tl.load(mot_row_ptr + GROUP * mot_stride_g)
    v_s = taps[_tap_index(GROUP, 0, 0)]
    v_e = taps[_tap_index(GROUP, 0, 1)]
    for k in tl.static_range(1, _group_size(GROUP)):
        v_s = tl.where(choice == k, taps[_tap_index(GROUP, k, 0)], v_s)
        v_e = tl.where(choice == k, taps[_tap_index(GROUP, k, 1)], v_e)
    return v_s, v_e


@triton.jit
def _convert_kernel(
    img_ptr,
    thr_ptr,
    mot_ptr,
    out_ptr,
    H,
    W,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    mot_stride_b,
    mot_stride_g,
    out_stride_t,
    out_stride_b,
    tiles_w,
    scale,
    IS_U8: tl.constexpr,
    OUT_FLOAT: tl.constexpr,
    ORDER_CODE: tl.constexpr,
    T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)  # one flat grid axis, image-major (see _minmax_kernel)
    n_tiles = ((H + BLOCK_H - 1) // BLOCK_H) * tiles_w  # (not tl.cdiv: a @jit helper, see _ELEMENTWISE_MIN)
    b = pid // n_tiles
    tile = pid - b * n_tiles
    b64 = b.to(tl.int64)
    tile_h = tile // tiles_w
    tile_w = tile - tile_h * tiles_w
    rows = tile_h * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cols = tile_w * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (rows < H) & (cols < W)

    # Border replication = clamped coordinates (spec, stage 2). Clamping also pulls the lanes past the
    # image edge back inside, so the loads need no mask; only the stores do.
    image = img_ptr + b64 * stride_b
    row_up = image + tl.minimum(tl.maximum(rows - 1, 0), H - 1).to(tl.int64) * stride_h
    row_mid = image + tl.minimum(rows, H - 1).to(tl.int64) * stride_h
    row_dn = image + tl.minimum(rows + 1, H - 1).to(tl.int64) * stride_h
    col_lt = tl.minimum(tl.maximum(cols - 1, 0), W - 1).to(tl.int64) * stride_w
    col_mid = tl.minimum(cols, W - 1).to(tl.int64) * stride_w
    col_rt = tl.minimum(cols + 1, W - 1).to(tl.int64) * stride_w

    # The nine window positions 1..9, row-major (spec numbering), as V tiles.
    taps = (
        _load_v(row_up + col_lt, stride_c, scale, IS_U8),
        _load_v(row_up + col_mid, stride_c, scale, IS_U8),
        _load_v(row_up + col_rt, stride_c, scale, IS_U8),
        _load_v(row_mid + col_lt, stride_c, scale, IS_U8),
        _load_v(row_mid + col_mid, stride_c, scale, IS_U8),
        _load_v(row_mid + col_rt, stride_c, scale, IS_U8),
        _load_v(row_dn + col_lt, stride_c, scale, IS_U8),
        _load_v(row_dn + col_mid, stride_c, scale, IS_U8),
        _load_v(row_dn + col_rt, stride_c, scale, IS_U8),
    )

    thr = tl.load(thr_ptr + b)
    neg_thr = -thr
    plane = H * W
    # 64-bit offsets: T x B x 2 x H x W passes 2**31 elements at large batches.
    out_image = out_ptr + b64 * out_stride_b + (rows * W + cols).to(tl.int64)
    step = out_stride_t.to(tl.int64)
    out_ty = out_ptr.dtype.element_ty
    for t in tl.static_range(T):
        v_s, v_e = _motion_taps(taps, mot_ptr + b64 * mot_stride_b, mot_stride_g, _group_at(ORDER_CODE, t))
        d = v_e - v_s
        dst = out_image + t * step
        on = d >= thr
        off = d <= neg_thr
        if OUT_FLOAT:
            # via float32 (exact for 0/1): Triton's interpreter cannot cast bool -> bfloat16 directly
            on = on.to(tl.float32)
            off = off.to(tl.float32)
        tl.store(dst, on.to(out_ty), mask=inside)
        tl.store(dst + plane, off.to(out_ty), mask=inside)


# --------------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------------
_MAX_GRID_X = 2**31 - 1  # CUDA's limit on grid axis 0


def flat_grid(batch: int, programs_per_image: int) -> tuple[int]:
    """The launch grid of both kernels: ``batch x programs_per_image`` programs on axis 0."""
    programs = int(batch) * int(programs_per_image)
    if programs > _MAX_GRID_X:
        raise ValueError(f"{programs} programs ({batch} images x {programs_per_image}) pass CUDA's grid limit "
                         f"{_MAX_GRID_X}; convert the batch in smaller parts")
    return (programs,)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def tile_shape(height: int, width: int, tile_pixels: int = 1024) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W) of a conversion tile: the tile width of 64, 32 or 16 with the fewest lanes
    wasted past the right edge, narrow tiles paying a little for their shorter memory transactions."""
    cost = {bw: triton.cdiv(width, bw) * bw * penalty for bw, penalty in ((64, 1.0), (32, 1.03), (16, 1.1))}
    block_w = min(cost, key=cost.get)
    block_h = max(1, min(tile_pixels // block_w, _next_pow2(height)))
    return block_h, block_w


def _interpreted() -> bool:
    """Were this module's kernels built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)?"""
    return type(_convert_kernel).__name__ == "InterpretedFunction"


def _check_launchable(images: torch.Tensor) -> None:
    if images.is_cuda or _interpreted():
        return
    raise ValueError(
        f"convert_fused runs on CUDA tensors (got a tensor on {images.device}); on the CPU use "
        "i2e_dali.convert.api.i2e_convert(..., impl='torch'), or import this module with TRITON_INTERPRET=1 set "
        "(Triton's interpreter, for tests)"
    )


def fused_threshold(images: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-image threshold ``[B]`` float32: ``(max V - min V) * ratio``, ``inf`` where the range is 0.

    Bit-identical to the threshold of :func:`i2e_dali.convert.spec.intensity_and_threshold`; no host sync.
    """
    _check_launchable(images)
    batch, _, height, width = images.shape
    n_chunks = triton.cdiv(height * width, _MINMAX_BLOCK)
    pmin = torch.empty((batch, n_chunks), dtype=torch.float32, device=images.device)
    pmax = torch.empty_like(pmin)
    is_u8 = images.dtype == torch.uint8
    _minmax_kernel[flat_grid(batch, n_chunks)](
        images, pmin, pmax, height, width, *images.stride(), n_chunks,
        IS_U8=is_u8, BLOCK=_MINMAX_BLOCK, num_warps=8, enable_fp_fusion=False,
    )
    return threshold_from_extremes(pmin.amin(dim=1), pmax.amax(dim=1), ratio, from_bytes=is_u8)


def convert_fused(
    images: torch.Tensor,
    *,
    ratio: float,
    order: Sequence[int],
    motions: torch.Tensor,
    dtype: torch.dtype,
    config: FusedConfig | None = None,
    out: torch.Tensor | None = None,
    fixed: float | None = None,
) -> torch.Tensor:
    """I2E events ``[T, B, 2, H, W]`` from ``[B, 3, H, W]`` images in two kernel launches.

    Arguments are the already-validated ones of :func:`i2e_dali.convert.api.i2e_convert` (which is the public
    entry point): ``order`` a tuple of group indices (T = len(order)), ``motions`` int ``[B, 8]`` choices
    within each group (any strides, e.g. an expanded batch-wide draw), ``dtype`` the output dtype.
    Any input strides are accepted (e.g. a channels-last batch viewed as [B, 3, H, W]) without a copy.
    ``config`` overrides the launch shape (tuning only; every shape gives the same events).
    ``out`` is an optional contiguous output buffer (checked by ``i2e_convert``).
    ``fixed``: an absolute threshold for every image (``threshold="fixed"``) instead of the adaptive one;
    the min/max pass is then skipped and the kernel reads the same per-image threshold vector.
    """
    config = FusedConfig() if config is None else config
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor [B, 3, H, W], got {getattr(images, 'shape', type(images))}")
    if images.dtype != torch.uint8 and images.dtype not in _IN_FLOATS:
        raise ValueError(f"images must be uint8 or float16/bfloat16/float32/float64, got {images.dtype}")
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in OUT_DTYPES]}, got {dtype!r}")
    order = tuple(int(g) for g in order)
    if not 1 <= len(order) <= MAX_TIMESTEPS or any(not 0 <= g < MAX_TIMESTEPS for g in order):
        raise ValueError(f"order must hold 1..8 group indices in 0..7, got {order}")
    batch, _, height, width = images.shape
    if motions.dim() != 2 or tuple(motions.shape) != (batch, MAX_TIMESTEPS) or motions.device != images.device:
        raise ValueError(
            f"motions must be an int tensor [{batch}, 8] on {images.device}, got {tuple(motions.shape)} on "
            f"{motions.device} (i2e_convert prepares it)"
        )
    _check_launchable(images)

    if images.is_cuda:
        # Triton launches on the current device; make it the images' device (multi-GPU processes).
        with torch.cuda.device(images.device):
            return _launch(images, ratio, order, motions, dtype, config, out, fixed)
    return _launch(images, ratio, order, motions, dtype, config, out, fixed)


def _launch(images, ratio, order, motions, dtype, config, out=None, fixed=None) -> torch.Tensor:
    batch, _, height, width = images.shape
    timesteps = len(order)
    # bool output is written as bytes 0/1 and reinterpreted: same storage, no extra pass.
    store_dtype = torch.uint8 if dtype == torch.bool else dtype
    if out is None:
        out = torch.empty((timesteps, batch, 2, height, width), dtype=store_dtype, device=images.device)
    elif dtype == torch.bool:
        out = out.view(torch.uint8)
    thr = fused_threshold(images, ratio) if fixed is None else fixed_threshold(batch, fixed, images.device)
    block_h, block_w = tile_shape(height, width, config.tile_pixels)
    tiles_w = triton.cdiv(width, block_w)
    grid = flat_grid(batch, triton.cdiv(height, block_h) * tiles_w)
    order_code = sum(g << (3 * t) for t, g in enumerate(order))
    _convert_kernel[grid](
        images, thr, motions, out,
        height, width, *images.stride(),
        motions.stride(0), motions.stride(1),
        out.stride(0), out.stride(1),
        tiles_w, U8_SCALE,
        IS_U8=images.dtype == torch.uint8,
        OUT_FLOAT=dtype.is_floating_point,
        ORDER_CODE=order_code,
        T=timesteps,
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        num_warps=config.num_warps,
        enable_fp_fusion=False,
        **({"maxnreg": config.maxnreg} if config.maxnreg else {}),
    )
    return out.view(torch.bool) if dtype == torch.bool else out
