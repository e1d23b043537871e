"""The fixed-threshold ablation (paper Table 4, "ablation-1"): one absolute threshold on V for every
image, in the torch path and in the fused kernel (interpreted), against an independent numpy reference;
plus the authors' numbered timestep orders and the static-frame inputs (Table 6)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i2e_dali.convert import I2E, MOTION_GROUPS, draw_motions, i2e_convert, parse_order
from i2e_dali.convert.spec import ORDER_PRESETS
from i2e_dali.convert.static import input_channels, static_frames


def numpy_fixed_reference(images_u8: np.ndarray, value: float, order, motions: np.ndarray) -> np.ndarray:
    """Written from the spec alone: V = max(R,G,B) * float32(1/255), edge-replicated, d = V[e] - V[s],
    ON iff d >= value, OFF iff -d >= value, in float32."""
    v = images_u8.max(axis=1).astype(np.float32) * np.float32(1.0 / 255.0)
    b, h, w = v.shape
    vp = np.pad(v, ((0, 0), (1, 1), (1, 1)), mode="edge")
    thr = np.float32(value)
    out = np.zeros((len(order), b, 2, h, w), bool)
    for t, g in enumerate(order):
        for i in range(b):
            s, e = MOTION_GROUPS[g][motions[i, g]]
            (rs, cs), (re_, ce) = [((p - 1) // 3, (p - 1) % 3) for p in (s, e)]
            d = vp[i, re_:re_ + h, ce:ce + w] - vp[i, rs:rs + h, cs:cs + w]
            out[t, i, 0] = d >= thr
            out[t, i, 1] = -d >= thr
    return out


def _images(b=4, h=13, w=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    x[1] = 77  # a constant image: fires nothing under a fixed threshold as well
    x[min(2, b - 1)] //= 4  # a dark, low-contrast image: the adaptive rule scales to it, the fixed one does not
    return x


@pytest.mark.parametrize("value", [0.05, 0.1, 20 / 255])  # 20/255: exact ties on uint8 steps
@pytest.mark.parametrize("train", [False, True])
def test_fixed_threshold_equals_numpy_reference(value, train):
    x = _images()
    motions = draw_motions(4, train=train, generator=torch.Generator().manual_seed(3))
    order = parse_order("efghabcd", 8)
    got = i2e_convert(x, motions=motions, threshold="fixed", threshold_value=value, dtype=torch.bool)
    want = numpy_fixed_reference(x.numpy(), value, order, motions.numpy())
    assert np.array_equal(got.numpy(), want)
    assert not got[:, 1].any()  # the constant image
    # float input in [0, 1] means the same thing as uint8
    xf = x.to(torch.float32) * torch.tensor(1 / 255, dtype=torch.float32)
    assert torch.equal(i2e_convert(xf, motions=motions, threshold="fixed", threshold_value=value, dtype=torch.bool), got)


def test_fixed_differs_from_adaptive_where_contrast_differs():
    x = _images()
    fixed = i2e_convert(x, threshold="fixed", threshold_value=0.12, dtype=torch.bool)
    adaptive = i2e_convert(x, ratio=0.12, dtype=torch.bool)
    # a dark image has a small range: the adaptive threshold drops with it, the fixed one does not
    assert adaptive[:, 2].sum() > fixed[:, 2].sum()
    m = I2E(threshold="fixed", threshold_value=0.12).eval()
    assert torch.equal(m(x).bool(), fixed) and "fixed threshold=0.12" in repr(m)


@pytest.mark.parametrize("kwargs,match", [
    (dict(threshold="fixed"), "needs threshold_value"),
    (dict(threshold="fixed", threshold_value=0.0), r"\(0, 1\]"),
    (dict(threshold="fixed", threshold_value=1.5), r"\(0, 1\]"),
    (dict(threshold="adaptive", threshold_value=0.1), "only used with"),
    (dict(threshold="absolute"), "threshold must be one of"),
])
def test_fixed_threshold_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        i2e_convert(_images(), **kwargs)


@pytest.fixture(scope="module")
def interpreted(interpreted_triton):
    """The fused module with interpreted kernels (conftest.interpreted_triton)."""
    return interpreted_triton


def test_fused_kernel_fixed_threshold_equals_torch_path(interpreted):
    x = _images(b=3, h=9, w=21, seed=5)
    motions = draw_motions(3, train=True, generator=torch.Generator().manual_seed(4))
    for dtype in (torch.bool, torch.float32):
        got = interpreted.convert_fused(x, ratio=0.12, order=parse_order(None, 8), motions=motions, dtype=dtype,
                                        fixed=20 / 255)
        want = i2e_convert(x, motions=motions, threshold="fixed", threshold_value=20 / 255, dtype=dtype,
                           impl="torch")
        assert torch.equal(got, want)
        assert want.sum() > 0


def test_authors_numbered_orders():
    # the authors' --shuffle 0..5 (TrainScript/Baseline-I/train.py)
    assert parse_order(0) == (0, 1, 2, 3, 4, 5, 6, 7)
    assert parse_order("1") == (0, 1, 4, 5, 6, 7, 2, 3)
    assert parse_order("2") == (2, 3, 0, 1, 4, 5, 6, 7)
    assert parse_order(3) == (2, 3, 4, 5, 6, 7, 0, 1)
    assert parse_order("4") == parse_order(None) == (4, 5, 6, 7, 0, 1, 2, 3)
    assert parse_order(5, 4) == (4, 5, 6, 7)
    assert set(ORDER_PRESETS) == set(range(6))
    with pytest.raises(ValueError, match="0..5"):
        parse_order("7")


def test_static_frames_rgb_and_v():
    x = _images(b=2, h=5, w=6)
    rgb = static_frames(x, kind="rgb", timesteps=3)
    v = static_frames(x, kind="v", timesteps=3)
    assert rgb.shape == (3, 2, 3, 5, 6) and v.shape == (3, 2, 1, 5, 6)
    ref = x.numpy().astype(np.float32) * np.float32(1 / 255)
    for t in range(3):
        assert np.array_equal(rgb[t].numpy(), ref)
        assert np.array_equal(v[t, :, 0].numpy(), ref.max(axis=1))
    assert (input_channels("events"), input_channels("rgb"), input_channels("v")) == (2, 3, 1)


# ------------------------------------------------------------------------------------------------
# --fixed-threshold on export and viz
# ------------------------------------------------------------------------------------------------
def test_viz_fixed_threshold(tmp_path):
    from PIL import Image

    from i2e_dali.tools import viz

    rng = np.random.default_rng(0)
    img = (rng.random((20, 24, 3)) * 120).astype(np.uint8)  # low contrast
    Image.fromarray(img).save(tmp_path / "x.png")
    args = viz._parse_args([str(tmp_path / "x.png"), "--out", str(tmp_path / "x.gif"), "--fixed-threshold", "0.2"])
    _, _, events = viz.run(args)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    want = i2e_convert(x, threshold="fixed", threshold_value=0.2, dtype=torch.bool)[:, 0].numpy()
    assert np.array_equal(events, want)
    adaptive = i2e_convert(x, ratio=0.12, dtype=torch.bool)[:, 0].numpy()
    assert not np.array_equal(events, adaptive)
    assert np.array_equal(viz.gif_to_events(tmp_path / "x.gif"), events)


def test_export_fixed_threshold_round_trip(tmp_path):
    import json

    from loader_data import make_folder

    from loader_data import event_loader as EventLoader
    from i2e_dali.data.npz import load_events
    from i2e_dali.data.sources import ImageFolderSource
    from i2e_dali.tools.export import ExportConfig, ExportError, export

    data = tmp_path / "data"
    make_folder(data / "val", {"a": 2, "b": 2}, seed=4)
    out = tmp_path / "out"
    cfg = dict(data=data, out=out, splits=("val",), batch_size=4, workers=1, dali_threads=1, device="cpu",
               progress=False, size=32, view="resize")
    export(ExportConfig(**cfg, fixed_threshold=0.05))
    src = ImageFolderSource(data / "val")
    loader = EventLoader(src, 4, train=False, with_index=True, eval_view="resize", dtype=torch.bool, device="cpu",
                         num_threads=1, crop_size=32, threshold="fixed", threshold_value=0.05)
    live = {int(i): ev[:, b].numpy() for ev, _, idx in loader for b, i in enumerate(idx)}
    for i, (path, _) in enumerate(src.samples):
        rel = Path(path).relative_to(src.root).with_suffix(".npz")
        assert np.array_equal(load_events(out / "val" / rel), live[i])
    assert json.loads((out / "val" / "i2e_meta.json").read_text())["fixed_threshold"] == 0.05
    with pytest.raises(ExportError, match="fixed_threshold"):  # resuming with another threshold is refused
        export(ExportConfig(**cfg))
