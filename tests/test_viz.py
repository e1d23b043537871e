"""viz: GIF write/decode round trip, the authors' GIFs, near colours, the CLI on images and npz files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i2e_dali.convert import i2e_convert
from i2e_dali.data.npz import write_npz
from i2e_dali.tools.viz import contact_sheet, events_to_rgb, gif_to_events, main, write_gif


def _random_events(seed, T=8, H=17, W=23, p=0.15):
    rng = np.random.default_rng(seed)
    ev = np.zeros((T, 2, H, W), dtype=bool)
    u = rng.random((T, H, W))
    ev[:, 0] = u < p  # ON
    ev[:, 1] = (u > 1 - p)  # OFF, disjoint like I2E
    return ev


def test_gif_round_trip_is_exact_even_with_repeated_and_empty_frames(tmp_path):
    ev = _random_events(0)
    ev[3] = ev[2]  # identical consecutive frames (Pillow's save_all would merge them)
    ev[5:7] = False  # two empty frames in a row
    ev[7, :, 4, 5] = True  # a pixel with both polarities -> magenta
    path = write_gif(ev, tmp_path / "x.gif")
    with Image.open(path) as im:
        assert im.n_frames == 8 and im.info.get("duration") == 200 and im.info.get("loop") == 0
    back = gif_to_events(path)
    assert back.dtype == np.bool_ and back.shape == ev.shape
    assert np.array_equal(back, ev)
    one = write_gif(ev[:1], tmp_path / "one.gif")  # T = 1
    assert np.array_equal(gif_to_events(one), ev[:1])


def test_colours_are_the_authors_convention():
    ev = np.zeros((1, 2, 1, 4), dtype=bool)
    ev[0, 0, 0, 1] = True
    ev[0, 1, 0, 2] = True
    ev[0, :, 0, 3] = True
    assert events_to_rgb(ev)[0, 0].tolist() == [[255, 255, 255], [255, 0, 0], [0, 0, 255], [255, 0, 255]]


def test_decoder_tolerates_palette_and_near_colours(tmp_path):
    ev = _random_events(1, T=3)
    near = {0: (250, 248, 252), 1: (238, 21, 9), 2: (12, 30, 229)}  # re-encoded shades
    frames = []
    for t in range(3):
        rgb = np.empty(ev.shape[2:] + (3,), np.uint8)
        rgb[:] = near[0]
        rgb[ev[t, 0]] = near[1]
        rgb[ev[t, 1]] = near[2]
        frames.append(Image.fromarray(rgb))
    # Pillow's own writer: quantised palettes, delta frames, optimisation
    frames[0].save(tmp_path / "n.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert np.array_equal(gif_to_events(tmp_path / "n.gif"), ev)
    with pytest.raises(ValueError, match="not a readable GIF"):
        (tmp_path / "bad.gif").write_bytes(b"GIF89a nonsense")
        gif_to_events(tmp_path / "bad.gif")


def test_official_gifs_decode_to_8_frames_with_plausible_rates(official_samples):
    gifs = sorted(official_samples.glob("*_es.gif"))
    assert len(gifs) >= 100
    rates = []
    for g in gifs:
        ev = gif_to_events(g)
        assert ev.shape == (8, 2, 224, 224)
        assert not (ev[:, 0] & ev[:, 1]).any()  # I2E never fires both polarities at once
        rates.append(ev.mean())
    rates = np.array(rates)
    # ratio 0.12 is chosen for about 5 % of the (pixel, polarity, timestep) cells firing
    assert 0.03 < rates.mean() < 0.09 and (rates > 0).all()  # measured: 0.058


def _f1(a, b):
    tp = (a & b).sum()
    return 2 * tp / (a.sum() + b.sum())


def test_cli_on_an_official_image_matches_the_conversion_and_the_authors_gif(official_samples, tmp_path, capsys):
    img = sorted(official_samples.glob("*_rgb.jpg"))[0]
    out = tmp_path / "x.gif"
    assert main([str(img), "--out", str(out)]) == 0
    assert "mean event rate" in capsys.readouterr().out
    pixels = torch.from_numpy(np.array(Image.open(img).convert("RGB"))).permute(2, 0, 1)[None]
    want = i2e_convert(pixels, ratio=0.12, dtype=torch.bool)[:, 0].numpy()
    got = gif_to_events(out)
    assert np.array_equal(got, want)
    authors = gif_to_events(img.with_name(img.name.replace("_rgb.jpg", "_es.gif")))
    assert _f1(got, authors) > 0.6  # JPEG re-encoding keeps this close, not exact (spec: ~0.80 mean)
    with Image.open(tmp_path / "x.png") as sheet:  # source + 8 frames side by side
        assert sheet.width >= 9 * 224 and sheet.height > 224
    # fewer timesteps, other ratio
    assert main([str(img), "--out", str(tmp_path / "y.gif"), "--timesteps", "3", "--ratio", "0.2", "--no-sheet"]) == 0
    want3 = i2e_convert(pixels, ratio=0.2, timesteps=3, dtype=torch.bool)[:, 0].numpy()
    assert np.array_equal(gif_to_events(tmp_path / "y.gif"), want3)
    assert not (tmp_path / "y.png").exists()


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_cli_on_npz_files(tmp_path, fmt):
    ev = _random_events(2, T=8, H=20, W=30)
    with open(tmp_path / "s.npz", "wb") as f:
        write_npz(f, ev, fmt)
    assert main([str(tmp_path / "s.npz"), "--out", str(tmp_path / "s.gif")]) == 0
    assert np.array_equal(gif_to_events(tmp_path / "s.gif"), ev)
    assert (tmp_path / "s.png").is_file()
    assert main([str(tmp_path / "s.npz"), "--out", str(tmp_path / "t.gif"), "--timesteps", "2"]) == 0
    assert np.array_equal(gif_to_events(tmp_path / "t.gif"), ev[:2])


def test_contact_sheet_upscales_tiny_frames():
    sheet = contact_sheet(_random_events(3, T=2, H=8, W=8), np.zeros((8, 8, 3), np.uint8))
    assert sheet.width >= 3 * 96 and sheet.height >= 96


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "a.gif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    assert main([str(tmp_path / "junk.jpg"), "--out", str(tmp_path / "a.gif")]) == 2
    assert "junk.jpg: cannot decode" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"PK broken")
    assert main([str(tmp_path / "bad.npz"), "--out", str(tmp_path / "a.gif")]) == 2
    assert "bad.npz" in capsys.readouterr().err
    assert main([str(tmp_path / "junk.jpg"), "--out", str(tmp_path / "a.png")]) == 2
    assert "ending in .gif" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gif")) and not list(tmp_path.glob(".*partial"))
