"""Fuzzing the JPEG check: seeded damage of real photos through i2e-check's isolated decoder pool. Every
file ends as decodable or named with a reason; the caller never crashes or hangs, whatever the decoder does.
``pytest -m fuzz -s`` runs the large version and prints the figures."""
from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from damage import GENERIC, JPEG_DAMAGE, bit_flips, mutate
from loader_data import smooth_image

REASONS = ("cannot be decoded (DALI: ", "crashes the decoder (", "decoder hang: ", "declares ")


def _seeds(tmp_path: Path) -> list[bytes]:
    from conftest import OFFICIAL_SAMPLES

    photos = sorted(OFFICIAL_SAMPLES.glob("*_rgb.jpg"))[:40]
    if photos:
        return [p.read_bytes() for p in photos]
    rng = np.random.default_rng(0)  # without the official photos: drawn images, saved as JPEG
    out = []
    for i in range(8):
        p = tmp_path / f"seed{i}.jpg"
        Image.fromarray(smooth_image(rng, 96, 128)).save(p, quality=90)
        out.append(p.read_bytes())
    return out


def _fuzz(tmp_path: Path, n: int, seed: int, ops, time_limit: float, batch_size: int = 16):
    from i2e_dali.data.decode_pool import DecodePool

    seeds = _seeds(tmp_path)
    folder = tmp_path / "fuzzed"
    folder.mkdir()
    files = []
    for i in range(n):
        rng = random.Random(f"{seed}/{i}")
        data = rng.choice(seeds)
        op = rng.choice(ops)
        data = mutate(data, rng, (op,), rounds=1 if op in JPEG_DAMAGE.values() else None)
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(data)
        files.append(str(path))
    pool = DecodePool(2, batch_size=batch_size, time_limit=time_limit)
    t0 = time.perf_counter()
    bad = dict(pool.run(files, progress=False))
    seconds = time.perf_counter() - t0
    outcome = collections.Counter()
    for f in files:
        why = bad.get(f)
        assert why is None or why.startswith(REASONS) or why == "empty (zero-byte) file", (f, why)
        outcome["decodes" if why is None else next((r.split(" (")[0].rstrip(": ") for r in REASONS
                                                      if why.startswith(r)), "empty")] += 1
    print(f"\nJPEG fuzz seed {seed}: {n} files in {seconds:.1f} s; {dict(outcome)}; workers started "
          f"{pool.workers_started}, lost (crash or hang) {pool.workers_lost}")
    assert set(bad) <= set(files) and outcome["decodes"] + sum(v for k, v in outcome.items() if k != "decodes") == n
    return outcome


def test_fuzz_jpeg_check_short(tmp_path):
    # the damage kinds of a scraped data set, and bit flips (absurd declared sizes are refused by the pixel
    # limit before any decoding, so they cost nothing)
    outcome = _fuzz(tmp_path, 32, 2026, tuple(JPEG_DAMAGE.values()) + (bit_flips,), time_limit=60)
    assert outcome["cannot be decoded"] >= 8  # truncated and size-rewritten files always fail


@pytest.mark.fuzz
def test_fuzz_jpeg_check_long(tmp_path):
    n = int(os.environ.get("I2E_FUZZ_JPEG_N", "400"))
    _fuzz(tmp_path, n, int(os.environ.get("I2E_FUZZ_SEED", "7")), tuple(JPEG_DAMAGE.values()) + GENERIC,
          time_limit=60, batch_size=32)


# --------------------------------------------------------------------------------------------------
# the loader: whatever the damage, a training or evaluation pass ends, or stops with the project's error
# naming the damaged file; never a raw DALI RuntimeError
# --------------------------------------------------------------------------------------------------
def _fuzz_loader(tmp_path: Path, n: int, seed: int, ops) -> collections.Counter:
    from i2e_dali.data.event_loader import DaliOptions, EventLoader
    from i2e_dali.data.sources import ImageFolderSource
    from i2e_dali.errors import UndecodableImageError

    seeds = _seeds(tmp_path)
    outcome = collections.Counter()
    for i in range(n):
        rng = random.Random(f"loader/{seed}/{i}")
        root = tmp_path / f"set{i:03d}"
        (root / "x").mkdir(parents=True)
        for j in range(3):
            (root / "x" / f"clean{j}.jpg").write_bytes(seeds[(i + j) % len(seeds)])
        op = rng.choice(ops)
        damaged = root / "x" / "damaged.jpg"
        damaged.write_bytes(mutate(rng.choice(seeds), rng, (op,), rounds=1 if op in JPEG_DAMAGE.values() else None))
        for train in (True, False):
            loader = EventLoader(ImageFolderSource(root), 2, train=train, device="cpu", crop_size=16, resize_size=20,
                                 dali=DaliOptions(num_threads=1))
            try:
                seen = sum(b[1].shape[0] for b in loader)
                assert seen == (4 if not train else 4 // 2 * 2)
                outcome["passes"] += 1
            except UndecodableImageError as exc:
                assert str(damaged) in str(exc) and "i2e-check" in str(exc), str(exc)
                outcome["named"] += 1
            # anything else (a raw RuntimeError from DALI) fails the test here
    print(f"\nloader fuzz seed {seed}: {n} damaged files x 2 views: {dict(outcome)}")
    return outcome


def test_fuzz_loader_short(tmp_path):
    outcome = _fuzz_loader(tmp_path, 10, 2027, tuple(JPEG_DAMAGE.values()))
    assert outcome["named"] >= 4


@pytest.mark.fuzz
def test_fuzz_loader_long(tmp_path):
    _fuzz_loader(tmp_path, int(os.environ.get("I2E_FUZZ_LOADER_N", "80")), int(os.environ.get("I2E_FUZZ_SEED", "7")),
                 tuple(JPEG_DAMAGE.values()) + GENERIC)
