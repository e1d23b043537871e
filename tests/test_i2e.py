"""The I2E conversion against an independent, slow reference written from the docs page docs/concepts/i2e.md
(the conversion's definition, also at "Concepts > The I2E conversion" on the docs site)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from i2e_dali import I2E, event_rate, i2e_convert
from i2e_dali.convert.conv_baseline import conv_i2e
from i2e_dali.convert import DEFAULT_ORDER, GROUP_SIZES, draw_motions, parse_order

# The spec's tables, typed in again here (not imported) so a typo in the implementation is caught.
SPEC_GROUPS = [
    [(5, 6), (1, 2), (2, 3), (4, 5), (7, 8), (8, 9)],
    [(5, 2), (4, 1), (6, 3), (7, 4), (8, 5), (9, 6)],
    [(5, 3), (4, 2), (7, 5), (8, 6)],
    [(5, 1), (6, 2), (8, 4), (9, 5)],
    [(9, 4), (6, 1)],
    [(4, 3), (7, 6)],
    [(3, 8), (2, 7)],
    [(8, 1), (9, 2)],
]
SPEC_ORDER = [4, 5, 6, 7, 0, 1, 2, 3]


def reference_events(images: np.ndarray, ratio: float, timesteps: int, order, motions) -> np.ndarray:
    """Pixel-by-pixel numpy float32 reference: explicit clamped taps, no padding, no slicing tricks."""
    b_count, _, height, width = images.shape
    if images.dtype == np.uint8:
        img = images.astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        img = images.astype(np.float32)
    out = np.zeros((timesteps, b_count, 2, height, width), dtype=bool)
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    for b in range(b_count):
        v = np.maximum(np.maximum(img[b, 0], img[b, 1]), img[b, 2])
        value_range = np.float32(v.max() - v.min())
        if value_range == 0:
            continue
        thr = np.float32(value_range * np.float32(ratio))
        for t in range(timesteps):
            group = order[t]
            s, e = SPEC_GROUPS[group][motions[b][group]]

            def tap(p):
                dr, dc = (p - 1) // 3 - 1, (p - 1) % 3 - 1
                return v[np.clip(ys + dr, 0, height - 1), np.clip(xs + dc, 0, width - 1)]

            d = (tap(e) - tap(s)).astype(np.float32)
            out[t, b, 0] = d >= thr
            out[t, b, 1] = -d >= thr
    return out


def random_images(rng: np.random.Generator, b, h, w, kind="uint8"):
    if kind == "uint8":
        return rng.integers(0, 256, size=(b, 3, h, w), dtype=np.uint8)
    if kind == "plateau":  # few exactly representable levels: many exact ties d == thr
        levels = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
        return levels[rng.integers(0, len(levels), size=(b, 3, h, w))]
    return rng.random(size=(b, 3, h, w), dtype=np.float32)


SIZES = [(1, 1), (1, 7), (9, 1), (2, 2), (3, 5), (16, 16), (17, 31), (33, 20)]


@pytest.mark.parametrize("height,width", SIZES)
def test_eval_matches_reference_all_sizes(height, width):
    rng = np.random.default_rng(height * 100 + width)
    images = random_images(rng, 3, height, width)
    zeros = [[0] * 8] * 3
    expected = reference_events(images, 0.12, 8, SPEC_ORDER, zeros)
    got = i2e_convert(torch.from_numpy(images), ratio=0.12, dtype=torch.bool)
    assert got.shape == (8, 3, 2, height, width) and got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("timesteps", range(1, 9))
def test_every_timestep_count_and_random_orders(timesteps):
    rng = np.random.default_rng(timesteps)
    images = random_images(rng, 2, 11, 13)
    for trial in range(3):
        order = list(rng.permutation(8))
        expected = reference_events(images, 0.2, timesteps, order, [[0] * 8] * 2)
        got = i2e_convert(torch.from_numpy(images), ratio=0.2, timesteps=timesteps, order=order, dtype=torch.bool)
        assert got.shape[0] == timesteps
        np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_plateaus_with_exact_ties_at_threshold(ratio):
    rng = np.random.default_rng(7)
    images = random_images(rng, 4, 12, 9, kind="plateau")
    expected = reference_events(images, ratio, 8, SPEC_ORDER, [[0] * 8] * 4)
    got = i2e_convert(torch.from_numpy(images), ratio=ratio, dtype=torch.bool)
    np.testing.assert_array_equal(got.numpy(), expected)
    # the tie case really occurs, so ">=" vs ">" would be caught
    v = images.max(axis=1)
    assert np.any(np.abs(v[:, :, 1:] - v[:, :, :-1]) == np.float32(ratio))
    assert got.any()


def test_float_input_in_zero_one():
    rng = np.random.default_rng(3)
    images = random_images(rng, 3, 10, 14, kind="float")
    expected = reference_events(images, 0.07, 8, SPEC_ORDER, [[0] * 8] * 3)
    got = i2e_convert(torch.from_numpy(images), ratio=0.07, dtype=torch.bool)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_uint8_means_multiply_by_float32_reciprocal():
    u8 = torch.randint(0, 256, (4, 3, 19, 23), dtype=torch.uint8)
    as_float = u8.to(torch.float32) * np.float32(1.0 / 255.0)
    torch.testing.assert_close(as_float, u8.float() * torch.tensor(1 / 255, dtype=torch.float32), rtol=0, atol=0)
    assert torch.equal(i2e_convert(u8, dtype=torch.bool), i2e_convert(as_float, dtype=torch.bool))
    # half precision input is widened exactly, so it converts like its float32 value
    half = torch.rand(2, 3, 8, 8).half()
    assert torch.equal(i2e_convert(half, dtype=torch.bool), i2e_convert(half.float(), dtype=torch.bool))


def test_constant_image_gives_no_events_and_does_not_affect_others():
    const = torch.full((1, 3, 9, 9), 77, dtype=torch.uint8)
    varied = torch.randint(0, 256, (1, 3, 9, 9), dtype=torch.uint8)
    events = i2e_convert(torch.cat([const, varied]), dtype=torch.bool, train=True)
    assert not events[:, 0].any()
    assert events[:, 1].any()
    alone = i2e_convert(varied, dtype=torch.bool, motions=draw_motions(2, train=False)[:1])
    assert torch.equal(i2e_convert(torch.cat([const, varied]), dtype=torch.bool)[:, 1], alone[:, 0])
    # one-pixel images have range 0: no events
    assert not i2e_convert(torch.randint(0, 256, (3, 3, 1, 1), dtype=torch.uint8)).any()


def test_training_draws_match_reference_with_same_motions():
    rng = np.random.default_rng(11)
    images = random_images(rng, 6, 14, 10)
    gen = torch.Generator().manual_seed(5)
    motions = draw_motions(6, train=True, generator=gen)
    expected = reference_events(images, 0.12, 8, SPEC_ORDER, motions.tolist())
    got = i2e_convert(torch.from_numpy(images), motions=motions, dtype=torch.bool)
    np.testing.assert_array_equal(got.numpy(), expected)
    # the same seed gives the same events through the train=True path
    again = i2e_convert(torch.from_numpy(images), train=True, generator=torch.Generator().manual_seed(5), dtype=torch.bool)
    np.testing.assert_array_equal(again.numpy(), expected)


def test_motion_draws_are_uniform_per_sample_and_batch_wide_option():
    gen = torch.Generator().manual_seed(0)
    m = draw_motions(6000, train=True, generator=gen)
    assert m.shape == (6000, 8) and m.dtype == torch.int64
    for g, size in enumerate(GROUP_SIZES):
        counts = torch.bincount(m[:, g], minlength=size)
        assert len(counts) == size
        assert (counts.float() / 6000 - 1 / size).abs().max() < 0.03
    # per sample: rows differ; batch-wide (the authors' behaviour): all rows equal
    assert not bool((m == m[:1]).all())
    wide = draw_motions(64, train=True, per_sample=False, generator=gen)
    assert bool((wide == wide[:1]).all())
    assert not draw_motions(5, train=False).any()


def test_all_output_dtypes_carry_the_same_events():
    images = torch.randint(0, 256, (3, 3, 15, 17), dtype=torch.uint8)
    motions = draw_motions(3, train=True, generator=torch.Generator().manual_seed(1))
    ref = i2e_convert(images, motions=motions, dtype=torch.bool)
    for dtype in (torch.uint8, torch.float16, torch.bfloat16, torch.float32):
        got = i2e_convert(images, motions=motions, dtype=dtype)
        assert got.dtype == dtype
        assert torch.equal(got, ref.to(dtype))


def test_conv_baseline_agrees_with_the_sliced_path():
    images = torch.randint(0, 256, (5, 3, 21, 18), dtype=torch.uint8)
    for motions in (None, draw_motions(5, train=True, generator=torch.Generator().manual_seed(2))):
        fast = i2e_convert(images, motions=motions, dtype=torch.bool)
        slow = conv_i2e(images, motions=motions, dtype=torch.bool)
        assert torch.equal(fast, slow)


def test_module_train_and_eval_modes():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    module = I2E(ratio=0.12, timesteps=6, order="efghab")
    assert "order='efghab'" in repr(module)
    module.eval()
    assert torch.equal(module(images), i2e_convert(images, timesteps=6))
    module.train()
    a = module(images, generator=torch.Generator().manual_seed(3))
    b = module(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (6, 8, 2, 16, 16)
    assert not torch.equal(a, module.eval()(images))


def test_event_rate():
    events = torch.zeros(8, 2, 2, 4, 5, dtype=torch.bool)
    events[0, 0, 0, :2] = True  # 10 of 20 pixels ON in sample 0 at t=0
    events[3, 1, 1] = True  # all OFF in sample 1 at t=3
    rate = event_rate(events)
    assert rate.shape == (8, 2)
    assert rate[0, 0] == pytest.approx(0.25) and rate[3, 1] == pytest.approx(0.5)
    assert rate.sum() == pytest.approx(0.75)
    per = event_rate(events, per_sample=True)
    assert per.shape == (8, 2, 2) and per[3, 1, 1] == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(images=torch.zeros(3, 8, 8, dtype=torch.uint8)), "4 dimensions"),
        (dict(images=torch.zeros(1, 8, 8, 3, dtype=torch.uint8)), "channels-last"),
        (dict(images=torch.zeros(1, 1, 8, 8, dtype=torch.uint8)), "3 \\(RGB\\) channels"),
        (dict(images=torch.zeros(0, 3, 8, 8, dtype=torch.uint8)), "non-empty"),
        (dict(images=torch.zeros(1, 3, 8, 8, dtype=torch.int32)), "uint8"),
        (dict(images=torch.full((1, 3, 4, 4), float("nan"))), "non-finite"),
        (dict(images=torch.full((1, 3, 4, 4), float("inf"))), "non-finite"),
        (dict(images=torch.full((1, 3, 4, 4), 2.0)), "0..255"),
        (dict(images=torch.full((1, 3, 4, 4), -0.5)), "\\[0, 1\\]"),
        (dict(ratio=0.0), "open interval"),
        (dict(ratio=1.0), "open interval"),
        (dict(ratio=float("nan")), "open interval"),
        (dict(ratio="0.1"), "ratio must be a float"),
        (dict(timesteps=0), "1..8"),
        (dict(timesteps=9), "1..8"),
        (dict(timesteps=2.0), "int"),
        (dict(order=[0, 1, 2, 3, 4, 5, 6, 6]), "only once"),
        (dict(order=[0, 1, 8, 3, 4, 5, 6, 7]), "0..7"),
        (dict(order=[0, 1, 2]), "needs that many"),
        (dict(order="abcz"), "letters"),
        (dict(dtype=torch.int64), "dtype must be"),
        (dict(impl="cuda"), "impl must be"),
        (dict(motions=torch.full((1, 8), 6, dtype=torch.int64)), "outside its group"),
        (dict(motions=torch.zeros(2, 8, dtype=torch.int64)), "shape"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs, match):
    kwargs = dict(kwargs)
    images = kwargs.pop("images", torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8))
    with pytest.raises(ValueError, match=match):
        i2e_convert(images, **kwargs)


def test_order_parsing_and_default():
    assert DEFAULT_ORDER == tuple(SPEC_ORDER)
    assert parse_order("efghabcd") == tuple(SPEC_ORDER)
    assert parse_order(None, 3) == (4, 5, 6)
    assert parse_order([7, 6], 2) == (7, 6)


def test_gif_decoding_in_f1_helper_is_honest():
    """The F1 below compares against decoded GIFs; make sure identical events score 1 and noise less."""
    a = np.zeros((8, 2, 4, 4), bool)
    a[0, 0, 1, 1] = a[2, 1, 0, 3] = True
    assert f1_score(a, a) == 1.0
    b = a.copy()
    b[5, 0, 2, 2] = True
    assert f1_score(b, a) == pytest.approx(2 * 2 / (2 * 2 + 1))


def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.logical_and(pred, truth).sum()
    fp = np.logical_and(pred, ~truth).sum()
    fn = np.logical_and(~pred, truth).sum()
    return float(2 * tp / max(2 * tp + fp + fn, 1))


def decode_official_gif(path) -> np.ndarray:
    """The authors' GIF: red = ON, blue = OFF, white = none -> bool [T, 2, H, W]."""
    from PIL import Image, ImageSequence

    frames = []
    with Image.open(path) as gif:
        for frame in ImageSequence.Iterator(gif):
            rgb = np.asarray(frame.convert("RGB")).astype(np.int16)
            red = (rgb[..., 0] > 127) & (rgb[..., 1] < 128) & (rgb[..., 2] < 128)
            blue = (rgb[..., 2] > 127) & (rgb[..., 0] < 128) & (rgb[..., 1] < 128)
            frames.append(np.stack([red, blue]))
    return np.stack(frames)


def test_official_samples_f1_against_authors_gifs(official_samples):
    from PIL import Image

    scores = []
    paths = sorted(official_samples.glob("*_rgb.jpg"))
    assert len(paths) == 100
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    events = i2e_convert(batch, ratio=0.12, dtype=torch.bool).numpy()
    for i, path in enumerate(paths):
        truth = decode_official_gif(path.with_name(path.name.replace("_rgb.jpg", "_es.gif")))
        assert truth.shape == (8, 2, 224, 224)
        scores.append(f1_score(events[:, i], truth))
    mean_f1 = float(np.mean(scores))
    print(f"mean F1 vs the authors' GIFs over {len(scores)} images: {mean_f1:.4f}")
    assert mean_f1 >= 0.78
    # and a wrong order (same events, shuffled in time) must score clearly worse: the test has teeth
    shuffled = i2e_convert(batch[:10], ratio=0.12, order="abcdefgh", dtype=torch.bool).numpy()
    worse = np.mean([f1_score(shuffled[:, i], decode_official_gif(str(paths[i]).replace("_rgb.jpg", "_es.gif")))
                     for i in range(10)])
    assert worse < mean_f1 - 0.2


@pytest.mark.gpu
def test_cuda_matches_cpu_eval_and_train():
    images = torch.randint(0, 256, (7, 3, 37, 45), dtype=torch.uint8)
    motions = draw_motions(7, train=True, generator=torch.Generator().manual_seed(4))
    for m in (None, motions):
        cpu = i2e_convert(images, motions=m, dtype=torch.bool)
        for impl in ("torch", "auto"):
            gpu = i2e_convert(images.cuda(), motions=None if m is None else m.cuda(), dtype=torch.bool, impl=impl)
            assert gpu.device.type == "cuda"
            assert torch.equal(gpu.cpu(), cpu)
    # a CUDA generator drives the draws on the GPU reproducibly
    g1 = torch.Generator(device="cuda").manual_seed(9)
    g2 = torch.Generator(device="cuda").manual_seed(9)
    a = i2e_convert(images.cuda(), train=True, generator=g1)
    b = i2e_convert(images.cuda(), train=True, generator=g2)
    assert torch.equal(a, b)


def test_out_buffer_is_filled_and_reused():
    images = torch.randint(0, 256, (4, 3, 12, 10), dtype=torch.uint8)
    motions = draw_motions(4, train=True, generator=torch.Generator().manual_seed(8))
    for dtype in (torch.bool, torch.float16, torch.float32):
        buf = torch.full((8, 4, 2, 12, 10), 7, dtype=dtype) if dtype != torch.bool else torch.ones(8, 4, 2, 12, 10, dtype=torch.bool)
        got = i2e_convert(images, motions=motions, dtype=dtype, out=buf)
        assert got.data_ptr() == buf.data_ptr()
        assert torch.equal(buf, i2e_convert(images, motions=motions, dtype=dtype))
    with pytest.raises(ValueError, match="out must be a contiguous tensor"):
        i2e_convert(images, dtype=torch.bool, out=torch.empty(8, 4, 2, 12, 10))  # wrong dtype
    with pytest.raises(ValueError, match="out must be a contiguous tensor"):
        i2e_convert(images, timesteps=4, out=torch.empty(8, 4, 2, 12, 10))  # wrong T


@pytest.mark.gpu
def test_cuda_conversion_never_syncs_the_host():
    """The loader's hot path: uint8 on CUDA, motions drawn inside on a CUDA generator, no value check.
    Any blocking host<->device copy (e.g. torch.tensor(x, device=cuda)) or .item() raises here."""
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for train in (False, True):  # warm-up: kernel compilation and the per-device constants
        i2e_convert(images, train=train, generator=gen, validate=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for train in (False, True):
            for dtype in (torch.bool, torch.float16):
                i2e_convert(images, train=train, generator=gen, dtype=dtype, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
