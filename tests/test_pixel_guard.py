"""The pixel limit on the loader's own data path: the DALI graph reads each header (fn.peek_image_shape) and a
sample declaring more than the limit is swapped for a placeholder before any decoder sees it; the loader
refuses the batch naming the file (or tar shard and member). Without --skip-bad or an exclude list, an
absurd declared size no longer reaches DALI's decoder (the evaluation view decoded it silently before, the
training view broke its crop window). Real JPEGs, their SOF rewritten (tests/damage.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from damage import jpeg_declare_size
from i2e_dali.data.decode_pool import declared_pixels
from i2e_dali.data.event_loader import DaliOptions, EventLoader
from i2e_dali.data.shards import ShardSource
from i2e_dali.data.sources import ImageFolderSource, UndecodableImageError
from i2e_dali.tools.shard import main as shard_main
from loader_data import make_folder
from pipelines.folder import PLACEHOLDER_JPEG, FolderPipelineConfig, build_folder_pipeline

LIMIT = 20_000  # the clean images are ~45 x 52 (~2,300 pixels); the victims declare 200 x 150 (30,000)
VIEW = dict(device="cpu", crop_size=16, resize_size=20)


def _loader(source, *, train: bool, max_pixels=None, batch_size: int = 4, **kw) -> EventLoader:
    extra = {} if max_pixels is None else {"max_pixels": max_pixels}
    return EventLoader(source, batch_size, train=train, dali=DaliOptions(num_threads=1, extra=extra), **VIEW, **kw)


def _lie(path: Path, width: int = 200, height: int = 150) -> str:
    """Rewrite ``path``'s SOF to declare ``width`` x ``height``: its real pixels (entropy data) are unchanged and
    a decoder reads them fine (the rest of the declared frame is padding)."""
    path.write_bytes(jpeg_declare_size(path.read_bytes(), width, height))
    return str(path)


def _drain(loader, epochs: int = 2) -> int:
    n = 0
    for _ in range(epochs):
        for _ in loader:
            n += 1
    return n


@pytest.fixture
def lying(tmp_path):
    """root/{train,val}/<class>/ of clean JPEGs; in each split two files of class b declare 200 x 150."""
    root = tmp_path / "set"
    make_folder(root / "train", {"a": 4, "b": 4}, seed=3)
    make_folder(root / "val", {"a": 3, "b": 3}, seed=4)
    victims = {s: [_lie(root / s / "b" / f"b_00{i}.JPEG") for i in (1, 2)] for s in ("train", "val")}
    return root, victims


def test_the_graph_swaps_an_oversized_sample_for_the_placeholder(lying, tmp_path):
    """Pipeline level: the third output is each header's declared shape; the sample over the limit comes out
    as the placeholder's pixels (so the decoder never saw the file), every other sample exactly as without the
    guard; max_pixels=0 builds the graph without the guard (two outputs)."""
    root, victims = lying
    files = sorted(str(p) for p in (root / "val").rglob("*.JPEG"))
    placeholder = tmp_path / "placeholder.jpg"
    placeholder.write_bytes(PLACEHOLDER_JPEG)

    def run(paths, max_pixels):
        cfg = FolderPipelineConfig(train=False, batch_size=len(paths), crop_size=16, resize_size=20, num_threads=1,
                                   max_pixels=max_pixels)
        pipe = build_folder_pipeline(paths, list(range(len(paths))), cfg)
        pipe.build()
        return [[np.array(t) for t in out] for out in pipe.run()]

    guarded, plain = run(files, LIMIT), run(files, 0)
    assert len(guarded) == 3 and len(plain) == 2
    want_shapes = [(h, w, 3) for w, h in (declared_pixels(Path(f).read_bytes()) for f in files)]
    assert [tuple(d.tolist()) for d in guarded[2]] == want_shapes
    (ph,) = run([str(placeholder)], 0)[0]
    for k, f in enumerate(files):
        if f in victims["val"]:
            assert np.array_equal(guarded[0][k], ph)
            assert not np.array_equal(plain[0][k], ph)  # the file itself decodes to something else
        else:
            assert np.array_equal(guarded[0][k], plain[0][k])
    with pytest.raises(ValueError, match="max_pixels"):
        FolderPipelineConfig(train=False, batch_size=1, max_pixels=-1).validate()


def test_evaluation_refuses_the_declared_size_before_decoding(lying, monkeypatch):
    root, victims = lying
    monkeypatch.setenv("I2E_DALI_MAX_PIXELS", str(LIMIT))  # as i2e-check / --skip-bad read it
    loader = _loader(ImageFolderSource(root / "val"), train=False)
    assert loader.max_pixels == LIMIT
    with pytest.raises(UndecodableImageError) as info:
        _drain(loader)
    msg = str(info.value)
    a, b = victims["val"]
    # both victims are in the second batch of 4; the real pixels of both are fine: the header is what counts
    assert msg.startswith(f"refused image files {a}, {b} before decoding: ")
    assert f"{a}: declares 200 x 150 pixels (30,000 > the limit of 20,000" in msg and "i2e-check" in msg
    assert info.value.__cause__ is None  # no DALI error behind it: DALI never decoded the file
    # disabled (0), the same files are decoded as before, silently: every sample comes out
    monkeypatch.setenv("I2E_DALI_MAX_PIXELS", "0")
    off = _loader(ImageFolderSource(root / "val"), train=False, with_index=True)
    assert off.max_pixels == 0
    assert sorted(i for b in off for i in b[2].tolist()) == list(range(6))


def test_training_view_refuses_it_too_and_the_default_limit_stops_the_crop_window_error(lying, tmp_path):
    root, victims = lying
    loader = _loader(ImageFolderSource(root / "train"), train=True, max_pixels=LIMIT)
    with pytest.raises(UndecodableImageError, match=r"refused image files? .*b_00[12]\.JPEG.* before decoding"):
        _drain(loader)
    # the default limit (PIL's) against the 6081 x 43406 header that broke DALI's crop window: refused by the
    # guard (no DALI error behind it), not found afterwards by the culprit search
    src = make_folder(tmp_path / "absurd", {"a": 2, "b": 2}, seed=5)
    victim = _lie(src / "b" / "b_001.JPEG", 6081, 43406)
    with pytest.raises(UndecodableImageError) as info:
        _drain(_loader(ImageFolderSource(src), train=True, batch_size=2), epochs=3)
    assert f"refused image file {victim} before decoding: declares 6081 x 43406 pixels" in str(info.value)
    assert info.value.__cause__ is None


def test_the_guard_changes_no_pixel_and_no_random_draw(lying):
    """Under the limit the guard is invisible: train (random crops and flips) and eval batches are bit-identical
    with and without it, over two epochs; a loader state saved with it resumes exactly."""
    root, _ = lying
    for split, train in (("train", True), ("val", False)):
        runs = []
        for limit in (0, 10**9):
            loader = _loader(ImageFolderSource(root / split), train=train, max_pixels=limit, with_index=True)
            runs.append([[t.clone() for t in b] for _ in range(2) for b in loader])
        assert len(runs[0]) == len(runs[1]) > 0
        for x, y in zip(*runs):
            assert all(torch.equal(s, t) for s, t in zip(x, y))
    full = _loader(ImageFolderSource(root / "train"), train=True, max_pixels=10**9, with_index=True)
    it = iter(full)
    next(it)
    state = full.state_dict()
    rest = [[t.clone() for t in b] for b in it]
    again = _loader(ImageFolderSource(root / "train"), train=True, max_pixels=10**9, with_index=True)
    again.load_state_dict(state)
    resumed = list(again)
    assert len(resumed) == len(rest) == 1
    assert all(torch.equal(s, t) for x, y in zip(resumed, rest) for s, t in zip(x, y))

def test_tar_shards_name_shard_and_member(lying, tmp_path):
    root, victims = lying
    assert shard_main([str(root), str(tmp_path / "wds"), "--shard-size", "8k", "--workers", "1"]) == 0
    src = ShardSource(str(tmp_path / "wds" / "val"))
    with pytest.raises(UndecodableImageError) as info:
        _drain(_loader(src, train=False, max_pixels=LIMIT))
    msg = str(info.value)
    named = re.findall(r"tar shard (\S+\.tar) \(member (\S+)\)", msg.split(" before decoding")[0])
    assert len(named) == 2 and "declares 200 x 150 pixels" in msg and "Re-create the shards" in msg
    want = sorted(Path(v).read_bytes() for v in victims["val"])
    got = []
    for shard, member in named:  # the named members hold exactly the victims' bytes
        with tarfile.open(shard) as tar:
            got.append(tar.extractfile(member).read())
    assert sorted(got) == want
    assert _drain(_loader(src, train=False, max_pixels=0), epochs=1) == 2  # disabled: read as before


_BOMB = """
import resource, sys
from i2e_dali.data.event_loader import DaliOptions, EventLoader
from i2e_dali.data.sources import ImageFolderSource, UndecodableImageError
loader = EventLoader(ImageFolderSource(sys.argv[1]), 2, train=False, device="cpu", crop_size=16, resize_size=20,
                     dali=DaliOptions(num_threads=1))
try:
    for _ in loader:
        pass
    print("NO ERROR")
except UndecodableImageError as exc:
    print("REFUSED", str(exc).splitlines()[0])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_decompression_bomb_costs_no_decode(tmp_path):
    """A 40 x 48 JPEG declaring 30000 x 30000 (DALI allocated 2.7 GB decoding one in a fuzz run) under the default
    limit: refused, and the process grows no more than the same run over clean files does (a decode of the
    declared frame alone is 2.5 GiB; the absolute peak depends on the machine's torch and DALI builds)."""
    env = {k: v for k, v in os.environ.items() if k != "I2E_DALI_MAX_PIXELS"}

    def peak_gb(root):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(_BOMB), str(root)], capture_output=True,
                             text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout, int(out.stdout.split("MAXRSS_KB")[1]) / 2**20

    clean_out, clean_gb = peak_gb(make_folder(tmp_path / "clean", {"a": 2, "b": 2}, seed=6))
    assert "NO ERROR" in clean_out
    root = make_folder(tmp_path / "bomb", {"a": 2, "b": 2}, seed=6)
    victim = _lie(root / "a" / "a_000.JPEG", 30000, 30000)
    out, bomb_gb = peak_gb(root)
    assert f"REFUSED refused image file {victim} before decoding: declares 30000 x 30000 pixels" in out
    assert bomb_gb - clean_gb < 0.5, (bomb_gb, clean_gb)
