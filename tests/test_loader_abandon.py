"""Abandoning an epoch is cheap: after one batch of a 10,000-batch epoch, the next ``iter()`` reads no more
than building the loader does. Counted, not timed: samples the external-source feed hands DALI (MNIST's
in-memory path), and bytes the process reads (``rchar`` of /proc/self/io, with DALI reading files through
read() instead of mmap) for a folder of 10,001 files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from i2e_dali import Conversion, DaliOptions, make_loader
from i2e_dali.data.event_loader import EventLoader
from i2e_dali.data.sources import ImageFolderSource
from pipelines.cifar import CifarFeed
from test_export_presets import make_mnist

BATCHES = 10_000
TINY = Conversion(timesteps=1)


def test_feed_path_abandon_reads_no_more_than_a_build(tmp_path, monkeypatch):
    make_mnist(tmp_path / "mnist", n_train=BATCHES, n_test=4)
    served = []
    original = CifarFeed.__call__

    def counting(self, info):  # counts the samples the feed hands DALI, then serves them unchanged
        out = original(self, info)
        served.append(len(out[1]))
        return out

    monkeypatch.setattr(CifarFeed, "__call__", counting)
    loader = make_loader(tmp_path / "mnist", "train", 1, dataset="mnist", device="cpu", workers=1,
                         conversion=TINY, out_size=8)
    assert len(loader) == BATCHES
    next(iter(loader))
    build = sum(served)
    served.clear()
    next(iter(loader))  # abandons epoch 0 after one batch, starts epoch 1
    abandon = sum(served)
    assert 1 <= abandon <= build <= 16  # a few prefetched batches, never the 9,999 left in epoch 0
    assert loader.epoch == 1


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_folder_abandon_reads_no_more_than_a_build(tmp_path):
    root = tmp_path / "train"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    proto = root / "a" / "proto.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(proto, quality=95)
    for i in range(BATCHES):  # hard links: 10,001 files, one inode
        os.link(proto, root / ("a" if i % 2 else "b") / f"im{i:05d}.jpg")
    file_bytes = proto.stat().st_size
    source = ImageFolderSource(root, progress=False)
    dali = DaliOptions(num_threads=1, extra={"dont_use_mmap": True})  # reads show up in rchar
    # warm up DALI's plugins and the decoder once, so the build below counts the loader's own reads
    warm = EventLoader(source.subset(range(4)), 1, train=True, device="cpu", dali=dali, conversion=TINY,
                       crop_size=8, resize_size=8)
    next(iter(warm))
    del warm
    r0 = _rchar()
    loader = EventLoader(source, 1, train=True, device="cpu", dali=dali, conversion=TINY, crop_size=8, resize_size=8)
    next(iter(loader))
    build = _rchar() - r0
    r1 = _rchar()
    next(iter(loader))  # abandons epoch 0 after one batch
    abandon = _rchar() - r1
    epoch_bytes = len(loader) * file_bytes
    assert len(loader) == BATCHES + 1
    assert abandon <= 1.25 * build, (abandon, build)
    assert abandon < 0.05 * epoch_bytes, (abandon, epoch_bytes)  # the old reset() read the whole rest
