"""The fused Triton conversion (i2e_dali/i2e_triton.py) equals the torch path, bit for bit.

Without a GPU the kernels run under Triton's CPU interpreter: a private copy of the module is imported
with TRITON_INTERPRET=1 set only for that import (Triton reads the flag when ``@triton.jit`` decorates),
so the flag never reaches other tests or the real ``i2e_dali.convert.triton_path``. The ``gpu`` tests run the
compiled kernel on CUDA against the torch path on the same GPU and on the CPU. One more test compiles
the kernel for sm_90 with Triton's bundled ptxas (no GPU needed) to prove it builds for real hardware
and that floating-point contraction stays off.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from i2e_dali.convert.torch_path import convert_torch as _convert_torch
from i2e_dali.convert import (
    DEFAULT_ORDER,
    GROUP_SIZES,
    MAX_TIMESTEPS,

    draw_motions,
    i2e_convert,
    intensity_and_threshold,
    parse_order,
)

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32)
MODULE_PATH = Path(__file__).resolve().parents[1] / "i2e_dali" / "convert" / "triton_path.py"


@pytest.fixture(scope="module")
def fused(interpreted_triton):
    """The fused module with interpreted kernels (conftest.interpreted_triton)."""
    return interpreted_triton


def _images(batch, height, width, seed, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)
    return x if dtype == torch.uint8 else (x.to(torch.float32) / 255.0).to(dtype)


def _all_choices(batch):
    """Motions where sample b takes choice b % size in every group: covers every motion with batch >= 6."""
    sizes = torch.tensor(GROUP_SIZES)
    return torch.arange(batch).unsqueeze(1) % sizes


def _check_equal(fused, images, *, ratio=0.12, order=DEFAULT_ORDER, motions=None, dtype=torch.float32):
    order = tuple(order)
    if motions is None:
        motions = draw_motions(images.shape[0], train=False)
    got = fused.convert_fused(images, ratio=ratio, order=order, motions=motions, dtype=dtype)
    want = _convert_torch(images, ratio, order, motions.expand(images.shape[0], -1), dtype)
    assert got.dtype == dtype and got.shape == want.shape == (len(order), images.shape[0], 2, *images.shape[2:])
    assert torch.equal(got, want), f"fused != torch path for {tuple(images.shape)} {dtype} order={order}"
    return got


# ------------------------------------------------------------------------------------------------
# equality with the torch path (interpreter, CPU)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 17, 23), (2, 1, 9), (2, 9, 1), (1, 1, 1)])
def test_eval_equals_torch_path_all_dtypes(fused, shape):
    images = _images(*shape, seed=sum(shape))
    for dtype in DTYPES:
        events = _check_equal(fused, images, dtype=dtype)
    if min(shape[1:]) > 4:
        assert 0.001 < events.float().mean() < 0.5  # a real image fires some, not all, pixels


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_train_equals_torch_path_same_draws(fused, dtype):
    """Every choice of every group (sample b takes b % size) plus a seeded per-sample draw."""
    images = _images(8, 11, 19, seed=3)
    drawn = draw_motions(2, train=True, generator=torch.Generator().manual_seed(1))
    motions = torch.cat([_all_choices(6), drawn])
    _check_equal(fused, images, motions=motions, dtype=dtype)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_several_tiles_per_image(fused, train):
    images = _images(2, 40, 70, seed=13)  # 70 wide -> two tile columns, the second mostly masked
    motions = draw_motions(2, train=train, generator=torch.Generator().manual_seed(2))
    _check_equal(fused, images, motions=motions, dtype=torch.bool)


def test_every_motion_of_every_group(fused):
    """Six samples cover every choice of every group; with one image repeated, the per-sample outputs
    must differ exactly where the torch path says they do."""
    image = _images(1, 12, 15, seed=7).expand(6, -1, -1, -1).contiguous()
    got = _check_equal(fused, image, motions=_all_choices(6), dtype=torch.bool)
    # group a (timestep 4 in the default order) has six distinct motions -> six distinct event maps
    maps = {got[4, b].numpy().tobytes() for b in range(6)}
    assert len(maps) == 6


def test_batch_wide_draw_with_expanded_motions(fused):
    images = _images(4, 10, 13, seed=3)
    row = draw_motions(1, train=True, generator=torch.Generator().manual_seed(5))
    motions = row.expand(4, -1)  # stride 0 over the batch, as i2e_convert passes a batch-wide draw
    assert motions.stride(0) == 0
    _check_equal(fused, images, motions=motions, dtype=torch.uint8)


@pytest.mark.parametrize("order", ["abcd", (7,), (3, 1, 0), "hgfedcba", (0, 2, 4, 6, 1)])
def test_short_and_custom_orders(fused, order):
    timesteps = len(order)
    order = parse_order(order, timesteps)
    images = _images(6, 9, 11, seed=timesteps)
    _check_equal(fused, images, order=order, motions=_all_choices(6), dtype=torch.float16)


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_float_inputs(fused, in_dtype):
    images = _images(2, 13, 10, seed=11, dtype=in_dtype)
    _check_equal(fused, images, ratio=0.07, motions=_all_choices(2), dtype=torch.float32)


def test_uint8_and_its_float_image_give_the_same_events(fused):
    u8 = _images(3, 8, 9, seed=2)
    as_float = u8.to(torch.float32) * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    kw = dict(ratio=0.12, order=DEFAULT_ORDER, motions=_all_choices(3), dtype=torch.bool)
    assert torch.equal(fused.convert_fused(u8, **kw), fused.convert_fused(as_float, **kw))


def test_constant_images_fire_nothing(fused):
    images = _images(3, 7, 8, seed=4)
    images[1] = 77  # constant image in the middle of the batch
    images[2, :, :, :] = torch.tensor([10, 200, 30], dtype=torch.uint8).view(3, 1, 1)  # constant V
    events = _check_equal(fused, images, motions=_all_choices(3), dtype=torch.uint8)
    assert events[:, 1:].sum() == 0
    assert events[:, 0].sum() > 0


def test_ties_fire_on_and_off(fused):
    """d == thr exactly fires ON (>=) and d == -thr fires OFF: values exact in binary floating point."""
    images = torch.zeros(1, 3, 1, 4)
    images[0, 1, 0] = torch.tensor([0.0, 0.25, 1.0, 0.75])  # V = G; range 1, thr = 0.25 * 1
    # timestep with group a canonical [5, 6]: d(x) = V(x + 1) - V(x)  ->  0.25, 0.75, -0.25, 0 (edge)
    events = _check_equal(fused, images, ratio=0.25, order=(0,), dtype=torch.bool)
    assert events[0, 0, 0, 0].tolist() == [True, True, False, False]
    assert events[0, 0, 1, 0].tolist() == [False, False, True, False]


def test_non_contiguous_inputs(fused):
    base = _images(3, 12, 16, seed=9)
    channels_last = base.contiguous(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    _check_equal(fused, channels_last, motions=_all_choices(3), dtype=torch.bool)
    hwc = base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # DALI-style HWC viewed as CHW
    _check_equal(fused, hwc, motions=_all_choices(3), dtype=torch.float32)
    cropped = base[:, :, 1:-2, 3:]  # a view with row padding
    _check_equal(fused, cropped, motions=_all_choices(3), dtype=torch.bool)


@pytest.mark.parametrize("tile_pixels,num_warps", [(32, 1), (64, 2), (256, 4)])
def test_every_launch_shape_gives_the_same_events(fused, tile_pixels, num_warps):
    images = _images(2, 9, 37, seed=tile_pixels)
    want = _convert_torch(images, 0.12, DEFAULT_ORDER, _all_choices(2), torch.bool)
    config = fused.FusedConfig(tile_pixels=tile_pixels, num_warps=num_warps, maxnreg=None)
    got = fused.convert_fused(images, ratio=0.12, order=DEFAULT_ORDER, motions=_all_choices(2),
                              dtype=torch.bool, config=config)
    assert torch.equal(got, want)


def test_threshold_matches_torch_over_many_chunks(fused):
    """The min/max pass works in 2048-pixel chunks; 55 x 61 pixels spans two, and the extremes are
    placed in the last (partial) chunk so a wrong tail would miss them."""
    images = torch.full((3, 3, 55, 61), 100, dtype=torch.uint8)
    images[0, 2, 54, 60] = 255
    images[0, 0, 54, 59] = 0  # V there is max(0, 100, 100) = 100: no new minimum
    images[0, :, 54, 58] = 3
    images[1] = _images(1, 55, 61, seed=1)[0]
    # images[2] stays constant -> infinite threshold
    got = fused.fused_threshold(images, 0.12)
    _, want = intensity_and_threshold(images, 0.12)
    assert torch.equal(got, want)
    assert torch.isinf(got[2]) and torch.isfinite(got[:2]).all()
    scale = torch.tensor(1.0 / 255.0, dtype=torch.float32)
    expected = (torch.tensor(255.0) * scale - torch.tensor(3.0) * scale) * torch.tensor(0.12, dtype=torch.float32)
    assert got[0] == expected
    floats = images.to(torch.float16) / 255
    assert torch.equal(fused.fused_threshold(floats, 0.07), intensity_and_threshold(floats, 0.07)[1])


def test_tile_shape_prefers_no_masked_columns(fused):
    assert fused.tile_shape(224, 224) == (32, 32)  # 224 = 7 x 32: no masked lanes
    assert fused.tile_shape(128, 128) == (16, 64)
    assert fused.tile_shape(1, 1) == (1, 16)
    assert fused.tile_shape(375, 500, 512) == (8, 64)  # 500 -> 512: 2 % waste beats narrow tiles


def test_bad_arguments_raise_clearly(fused):
    images = _images(2, 4, 4, seed=0)
    motions = draw_motions(2, train=False)
    with pytest.raises(ValueError, match="dtype"):
        fused.convert_fused(images, ratio=0.1, order=(0,), motions=motions, dtype=torch.int32)
    with pytest.raises(ValueError, match="motions"):
        fused.convert_fused(images, ratio=0.1, order=(0,), motions=motions[:1], dtype=torch.bool)
    with pytest.raises(ValueError, match="order"):
        fused.convert_fused(images, ratio=0.1, order=(9,), motions=motions, dtype=torch.bool)
    with pytest.raises(ValueError, match="tile_pixels"):
        fused.FusedConfig(tile_pixels=100)


def test_compiled_module_refuses_cpu_tensors():
    """The real module (compiled kernels) names the fix instead of crashing inside Triton."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set for the whole run")
    from i2e_dali.convert import triton_path as i2e_triton

    assert not i2e_triton._interpreted()
    with pytest.raises(ValueError, match="impl='torch'"):
        i2e_triton.convert_fused(_images(1, 4, 4, seed=0), ratio=0.1, order=(0,),
                                 motions=draw_motions(1, train=False), dtype=torch.bool)


def test_i2e_convert_stays_on_torch_path_for_cpu_tensors():
    images = _images(2, 6, 6, seed=0)
    assert torch.equal(i2e_convert(images, impl="auto"), i2e_convert(images, impl="torch"))


# ------------------------------------------------------------------------------------------------
# real compile for sm_90 (no GPU needed: Triton ships ptxas)
# ------------------------------------------------------------------------------------------------
def _compile_sm90(fn, signature, constexprs, **options):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else signature.get(n, "i32") for n in names}
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


@triton.jit
def _contractible(a_ptr, b_ptr, out_ptr, scale):
    """d = a * scale - b * scale: what the conversion computes for uint8 input, in miniature."""
    out = tl.load(a_ptr) * scale - tl.load(b_ptr) * scale
    tl.store(out_ptr, out)


@pytest.mark.slow
def test_kernel_compiles_for_sm90_without_fma():
    """The interpreter does not compile; this does (MLIR -> PTX -> cubin with the bundled ptxas), as
    convert_fused launches it. Its PTX must hold no fused multiply-add (one rounding instead of two would
    flip events lying exactly on the threshold). A miniature of the same arithmetic compiled with
    contraction allowed does fuse, so the check sees what it guards against."""
    from i2e_dali.convert import triton_path as i2e_triton

    if i2e_triton._interpreted():
        pytest.skip("TRITON_INTERPRET=1 is set for the whole run")
    constexprs = dict(IS_U8=True, OUT_FLOAT=True, T=8, BLOCK_H=32, BLOCK_W=32,
                      ORDER_CODE=sum(g << (3 * t) for t, g in enumerate(DEFAULT_ORDER)))
    pointers = dict(img_ptr="*u8", thr_ptr="*fp32", mot_ptr="*i64", out_ptr="*fp32", scale="fp32")
    try:
        kernel = _compile_sm90(i2e_triton._convert_kernel, pointers, constexprs,
                               num_warps=8, maxnreg=128, enable_fp_fusion=False)
    except (RuntimeError, FileNotFoundError) as exc:  # a Triton build without the NVIDIA backend
        if "ptxas" in str(exc).lower():
            pytest.skip(f"cannot compile for sm_90 here: {exc}")
        raise
    assert kernel.asm.get("cubin"), "no cubin produced"
    ptx = kernel.asm["ptx"]
    assert not re.search(r"\bfma\.", ptx)
    assert ptx.count("st.global") >= 16  # 8 timesteps x 2 polarities: nothing optimised away
    # the other specialisations convert_fused launches: float input with byte output, and the min/max pass
    float_in = dict(pointers, img_ptr="*bf16", out_ptr="*u8")
    assert _compile_sm90(i2e_triton._convert_kernel, float_in, dict(constexprs, IS_U8=False, OUT_FLOAT=False, T=3),
                         num_warps=8, maxnreg=128, enable_fp_fusion=False).asm.get("cubin")
    minmax = dict(img_ptr="*u8", pmin_ptr="*fp32", pmax_ptr="*fp32")
    assert _compile_sm90(i2e_triton._minmax_kernel, minmax, dict(IS_U8=True, BLOCK=2048),
                         num_warps=8, enable_fp_fusion=False).asm.get("cubin")
    mini = dict(a_ptr="*fp32", b_ptr="*fp32", out_ptr="*fp32", scale="fp32")
    assert re.search(r"\bfma\.", _compile_sm90(_contractible, mini, {}, enable_fp_fusion=True).asm["ptx"])
    assert not re.search(r"\bfma\.", _compile_sm90(_contractible, mini, {}, enable_fp_fusion=False).asm["ptx"])


# ------------------------------------------------------------------------------------------------
# the real kernel on a GPU
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("size", [(224, 224), (128, 128), (37, 1), (375, 500)])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_gpu_kernel_equals_torch_on_gpu_and_cpu(size, train):
    from i2e_dali.convert import triton_path as i2e_triton

    batch = 16
    images_cpu = _images(batch, *size, seed=size[0] + train)
    images_cpu[3] = 9  # one constant image
    images = images_cpu.cuda()
    gen = torch.Generator(device="cuda").manual_seed(2024)
    motions = draw_motions(batch, train=train, generator=gen) if train else draw_motions(batch, train=False, device="cuda")
    for dtype in DTYPES:
        got = i2e_convert(images, motions=motions, dtype=dtype)  # auto -> fused kernel for CUDA tensors
        direct = i2e_triton.convert_fused(images, ratio=0.12, order=DEFAULT_ORDER, motions=motions, dtype=dtype)
        torch_gpu = i2e_convert(images, motions=motions, dtype=dtype, impl="torch")
        torch_cpu = i2e_convert(images_cpu, motions=motions.cpu(), dtype=dtype, impl="torch")
        assert got.is_cuda and got.dtype == dtype
        assert torch.equal(got, direct)
        assert torch.equal(got, torch_gpu)
        assert torch.equal(got.cpu(), torch_cpu)


@pytest.mark.gpu
def test_gpu_float_and_channels_last_inputs():
    batch = 8
    base = _images(batch, 64, 96, seed=5).cuda()
    motions = _all_choices(batch).cuda()
    for images in (base.contiguous(memory_format=torch.channels_last), base.float() / 255, base.half() / 255):
        for dtype in (torch.bool, torch.bfloat16):
            got = i2e_convert(images, motions=motions, dtype=dtype, impl="triton")
            want = i2e_convert(images.cpu(), motions=motions.cpu(), dtype=dtype, impl="torch")
            assert torch.equal(got.cpu(), want)


@pytest.mark.gpu
def test_gpu_short_orders_and_launch_shapes():
    from i2e_dali.convert import triton_path as i2e_triton

    images = _images(6, 50, 70, seed=8).cuda()
    motions = _all_choices(6).cuda()
    for order in ("abcd", (7,), (3, 1, 0)):
        order = parse_order(order, len(order))
        want = _convert_torch(images.cpu(), 0.12, order, motions.cpu(), torch.float16)
        for config in (i2e_triton.FusedConfig(), i2e_triton.FusedConfig(512, 4, None), i2e_triton.FusedConfig(2048, 8, 255)):
            got = i2e_triton.convert_fused(images, ratio=0.12, order=order, motions=motions, dtype=torch.float16,
                                           config=config)
            assert torch.equal(got.cpu(), want)


@pytest.mark.gpu
def test_gpu_module_form_train_and_eval():
    from i2e_dali.convert import I2E

    images = _images(4, 32, 32, seed=1).cuda()
    i2e = I2E(ratio=0.12, dtype=torch.bool)
    gen = torch.Generator(device="cuda").manual_seed(0)
    motions = draw_motions(4, train=True, generator=gen)
    train_events = i2e.train()(images, motions=motions)
    assert torch.equal(train_events.cpu(), i2e_convert(images.cpu(), motions=motions.cpu(), dtype=torch.bool))
    assert torch.equal(i2e.eval()(images).cpu(), i2e_convert(images.cpu(), dtype=torch.bool))
    assert MAX_TIMESTEPS == train_events.shape[0]


def test_out_buffer_written_in_place(fused):
    images = _images(3, 13, 11, seed=21)
    motions = _all_choices(3)
    for dtype in (torch.bool, torch.float32):
        buf = torch.ones((8, 3, 2, 13, 11), dtype=dtype)
        got = fused.convert_fused(images, ratio=0.12, order=DEFAULT_ORDER, motions=motions, dtype=dtype, out=buf)
        assert got.data_ptr() == buf.data_ptr() and got.dtype == dtype
        assert torch.equal(buf, _convert_torch(images, 0.12, DEFAULT_ORDER, motions, dtype))
