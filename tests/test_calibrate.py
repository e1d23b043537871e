"""calibrate: bisection on ramp images whose event rate as a function of the ratio is known in closed form.

A grey image whose rows are ``V[x] = s * min(x, L-1)`` (a ramp of length L, then a plateau) has, with
the canonical motions, only horizontal differences: one-pixel ones of size s (groups a, c, d, g, h, at
L-1 columns each) and two-pixel ones of size 2s (groups e, f, at L-2 columns; the two ends of the
ramp see s). Its range is s(L-1), so with q = ratio * (L-1):
  q <= 1:     5(L-1) + 2L events per row (everything non-zero fires)
  1 < q <= 2: 2(L-2)                     (only the two-pixel differences)
  q > 2:      0
out of 2 * 8 * W cells per row (T = 8, two polarities). Nothing here calls the conversion.
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from i2e_dali.tools.calibrate import event_rate_at, find_ratio, load_sample, main
from i2e_dali.data.sources import CifarSource, open_source

W = 96
S = 3
LENGTHS = (9, 17, 33, 64)


def ramp(L: int, width: int = W, height: int = 24) -> np.ndarray:
    v = (S * np.minimum(np.arange(width), L - 1)).astype(np.uint8)
    return np.repeat(np.repeat(v[None, :, None], height, 0), 3, 2)  # HWC grey


def analytic_rate(r: float, lengths=LENGTHS, width: int = W) -> float:
    rates = []
    for L in lengths:
        q = r * (L - 1)
        count = 5 * (L - 1) + 2 * L if q <= 1 else (2 * (L - 2) if q <= 2 else 0)
        rates.append(count / (16 * width))
    return float(np.mean(rates))


def expected(target: float):
    """The boundary where the analytic staircase crosses ``target``, and the closer of its two levels."""
    bounds = sorted({k / (L - 1) for L in LENGTHS for k in (1, 2)})
    for b in bounds:
        above, below = analytic_rate(b), analytic_rate(b + 1e-9)
        if above >= target > below:
            return b, (above if abs(above - target) <= abs(below - target) else below)
    raise AssertionError("target not crossed")


@pytest.fixture(scope="module")
def ramps() -> torch.Tensor:
    return torch.from_numpy(np.stack([ramp(L) for L in LENGTHS])).permute(0, 3, 1, 2).contiguous()


def test_event_rate_matches_the_closed_form_between_steps(ramps):
    bounds = sorted({k / (L - 1) for L in LENGTHS for k in (1, 2)})
    probes = [bounds[0] / 2] + [(a + b) / 2 for a, b in zip(bounds, bounds[1:])] + [bounds[-1] + 0.05]
    for r in probes:
        mean, per = event_rate_at(ramps, r)
        assert mean == pytest.approx(analytic_rate(r), abs=1e-12)
        assert per.shape == (8, 2)
    rates = [event_rate_at(ramps, r)[0] for r in np.linspace(0.001, 0.5, 25)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # non-increasing in the ratio


@pytest.mark.parametrize("target", [0.12, 0.07, 0.05, 0.03, 0.01, 0.001])
def test_bisection_finds_the_known_ratio(ramps, target):
    b, level = expected(target)
    res = find_ratio(ramps, target, tol=1e-5, progress=False)
    assert res.reachable
    assert abs(res.ratio - b) <= 1e-5 + 1e-7
    assert res.rate == pytest.approx(level, abs=1e-12)
    lo, hi = res.bracket
    assert res.bracket_rates[0] >= target > res.bracket_rates[1] and hi - lo <= 1e-5
    assert res.evaluations <= 2 + 18


def test_unreachable_targets_and_bad_arguments(ramps):
    top = find_ratio(ramps, 0.9, progress=False)  # more than everything firing at the smallest ratio
    assert not top.reachable and top.ratio < 1e-5 and top.rate == pytest.approx(analytic_rate(1e-6))
    with pytest.raises(ValueError, match="target rate"):
        find_ratio(ramps, 0.0)
    with pytest.raises(ValueError, match="target rate"):
        find_ratio(ramps, 5)
    with pytest.raises(ValueError, match="tol"):
        find_ratio(ramps, 0.1, tol=0)


def test_cli_on_a_folder_of_ramps(tmp_path, capsys):
    for L in LENGTHS:
        d = tmp_path / "data" / "val" / f"len{L:02d}"
        d.mkdir(parents=True)
        # 224x224 PNGs: the "resize" view to 224x224 keeps the pixels as they are (checked below)
        Image.fromarray(ramp(L, width=224, height=224)).save(d / "ramp.png")
    src = open_source(tmp_path / "data", "val")
    pixels = load_sample(src, 10, view="resize")
    assert pixels.shape == (4, 3, 224, 224)
    assert torch.equal(pixels, torch.from_numpy(np.stack([ramp(L, 224, 224) for L in LENGTHS])).permute(0, 3, 1, 2))
    out = tmp_path / "res.json"
    target = 0.03
    rc = main(["--data", str(tmp_path / "data"), "--target-rate", str(target), "--view", "resize",
               "--samples", "4", "--json", str(out), "--no-progress", "--tol", "1e-5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "event rate per timestep" in text and text.count("\n") >= 10
    res = json.loads(out.read_text())
    bounds = sorted({k / (L - 1) for L in LENGTHS for k in (1, 2)})
    b = next(b for b in bounds if analytic_rate(b, width=224) >= target > analytic_rate(b + 1e-9, width=224))
    assert abs(res["ratio"] - b) <= 1e-5 + 1e-7
    assert res["rate"] == pytest.approx(analytic_rate(res["ratio"], width=224), abs=1e-12)
    assert len(res["per_timestep"]) == 8


def test_cli_on_cifar_and_errors(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": [0, 1, 2], b"data": imgs.transpose(0, 3, 1, 2).reshape(3, -1)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    pixels = load_sample(CifarSource(folder, train=False), 5)
    assert pixels.shape == (3, 3, 128, 128) and pixels.dtype == torch.uint8
    assert main(["--data", str(tmp_path), "--dataset", "cifar10", "--target-rate", "0.05", "--no-progress"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert main(["--data", str(tmp_path / "nope"), "--target-rate", "0.05"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--data", str(tmp_path), "--dataset", "cifar10", "--target-rate", "2"]) == 1
    assert "target rate" in capsys.readouterr().err
