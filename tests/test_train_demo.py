"""The embedded demo: deterministic, cached, atomic generation; `python train_dali.py` learns it."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from i2e_dali.data.demo import CLASSES, DemoConfig, draw_sample, ensure_demo_dataset

from train_helpers import REPO, metrics, subprocess_env


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jpg")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_demo_set_is_deterministic_cached_and_complete(tmp_path):
    cfg = DemoConfig(train_per_class=3, val_per_class=2, image_size=20)
    a = ensure_demo_dataset(tmp_path / "a", cfg, progress=False)
    b = ensure_demo_dataset(tmp_path / "b", cfg, progress=False)
    assert _digest(a) == _digest(b)  # same bytes on every machine
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(CLASSES)
    assert len(list((a / "train").rglob("*.jpg"))) == 30 and len(list((a / "val").rglob("*.jpg"))) == 20
    with Image.open(next((a / "val" / "ring").iterdir())) as im:
        assert im.format == "JPEG" and im.size == (20, 20) and im.mode == "RGB"
    # cached: a second call returns the same folder without touching it
    stamp = (a / "demo.json").stat().st_mtime_ns
    assert ensure_demo_dataset(tmp_path / "a", cfg, progress=False) == a
    assert (a / "demo.json").stat().st_mtime_ns == stamp
    # other settings -> another folder; no temporary build folders left behind
    c = ensure_demo_dataset(tmp_path / "a", DemoConfig(train_per_class=3, val_per_class=2, image_size=20, seed=1),
                            progress=False)
    assert c != a and _digest(c) != _digest(a)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([a.name, c.name])
    assert json.loads((a / "demo.json").read_text())["classes"] == list(CLASSES)


def test_interrupted_generation_leaves_no_half_set(tmp_path, monkeypatch):
    import i2e_dali.data.demo as demo

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "draw_sample", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_dataset(tmp_path, DemoConfig(train_per_class=2, val_per_class=1, image_size=16), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_classes_differ_in_what_i2e_sees():
    """Foreground and background differ by >= 70/255 in HSV value, so every shape produces events."""
    for c in range(len(CLASSES)):
        img = np.asarray(draw_sample(c, np.random.default_rng(c), 48)).max(axis=2).astype(float)
        assert img.max() - img.min() > 50


@pytest.mark.slow
def test_demo_command_learns(tmp_path):
    """`python train_dali.py` with no --data (2 epochs here to keep CI short): far above 10 % chance."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train_dali.py"), "--epochs", "2", "--demo-dir", str(tmp_path / "cache"),
           "-o", str(out), "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    m = metrics(out)
    assert [x["epoch"] for x in m] == [1, 2]
    assert m[-1]["val_count"] == 400 and m[-1]["val_top1"] >= 40.0
    assert list((out / "tb").glob("events.out.tfevents.*"))  # TensorBoard scalars written
