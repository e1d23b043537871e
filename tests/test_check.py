"""i2e-check: finds every file the pipeline cannot use, exit code 1; clean data -> 0."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from i2e_dali.tools.check import check_folder, main
from loader_data import make_folder


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", {"a": 3, "b": 3}, seed=1)
    make_folder(root / "val", {"a": 2, "b": 2}, seed=2)
    good = (root / "train" / "a" / "a_000.JPEG").read_bytes()
    bad = {
        root / "train" / "a" / "trunc.JPEG": good[: len(good) // 2],
        root / "train" / "a" / "short.JPEG": good[:100],
        root / "train" / "b" / "html.JPEG": b"<html>not found</html>",
        root / "val" / "a" / "zero.JPEG": b"",
    }
    for p, data in bad.items():
        p.write_bytes(data)
    (root / "val" / "b" / "labels.csv").write_text("a,b\n")
    # decodable oddities that must NOT be reported
    rgb = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(root / "train" / "b" / "cmyk.JPEG")
    Image.fromarray(rgb).save(root / "train" / "b" / "png.JPEG", format="PNG")
    Image.fromarray(rgb[:1, :1]).convert("L").save(root / "val" / "b" / "one.JPEG")
    return root, sorted(str(p) for p in bad) + [str(root / "val" / "b" / "labels.csv")]


def test_check_lists_every_bad_file(dataset, tmp_path, capsys):
    root, bad = dataset
    report = check_folder(root, num_threads=2, batch_size=4, progress=False)
    assert sorted(p for p, _ in report.bad) == sorted(bad)
    assert report.checked == 6 + 4 + 3 + 4 + 1 and not report.ok
    listing = tmp_path / "bad.txt"
    assert main([str(root), "--quiet", "--threads", "1", "--list", str(listing)]) == 1
    out = capsys.readouterr().out
    for p in bad:
        assert f"BAD: {p}" in out
    assert "cmyk" not in out and "png.JPEG" not in out and "one.JPEG" not in out
    assert sorted(listing.read_text().split()) == sorted(bad)


def test_check_clean_folder_and_folder_problems(tmp_path, capsys):
    root = make_folder(tmp_path / "classes", {"x": 2, "y": 2}, seed=3)
    assert main([str(root), "--quiet"]) == 0
    assert "OK: every file decodes" in capsys.readouterr().out
    (root / "z").mkdir()
    assert main([str(root), "--quiet"]) == 1
    assert "EMPTY CLASS FOLDER" in capsys.readouterr().out
    ds = tmp_path / "ds"
    make_folder(ds / "train", {"x": 1}, seed=0)
    report = check_folder(ds, progress=False)
    assert any("val is missing" in p for p in report.problems)
    assert main([str(tmp_path / "nowhere"), "--quiet"]) == 2


def test_check_module_entry_point(tmp_path):
    root = make_folder(tmp_path / "c", {"x": 1}, seed=0)
    (root / "x" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0garbage")
    res = subprocess.run([sys.executable, "-m", "i2e_dali.tools.check", str(root), "--quiet"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1, res.stderr
    assert "broken.JPEG" in res.stdout
