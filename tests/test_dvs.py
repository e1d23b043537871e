"""CIFAR10-DVS: AEDAT parsing, framing, split, cache, corrupt recordings, loaders.

The references here are written independently of i2e_dali.data.dvs: recordings are written and read back with
plain ``struct`` loops, frames are counted event by event in Python.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from i2e_dali.data import dvs
from i2e_dali.data.dvs import CIFAR10DVS, DVSFormatError, events_to_frames, read_aedat, split_recordings

HEADER = (
    b"#!AER-DAT2.0\r\n"
    b"# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n"
    b"# created Thu Jan 01 00:00:00 CET 2017\r\n"
)


def address(x_raw: int, y_raw: int, p_raw: int) -> int:
    """DVS128 raw address: polarity bit 0, x bits 1-7, y bits 8-14."""
    return (y_raw << 8) | (x_raw << 1) | p_raw


def write_aedat(path: Path, records, header: bytes = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = b"".join(struct.pack(">II", a, t) for a, t in records)
    path.write_bytes(header + body)
    return path


def random_records(rng: random.Random, n: int, specials: int = 0):
    records, t = [], 0
    for _ in range(n):
        t += rng.randrange(0, 50)
        records.append((address(rng.randrange(128), rng.randrange(128), rng.randrange(2)), t))
    # jAER special (bit 31) and DVS128 external sync (bit 15) events, which carry no pixel.
    for _ in range(specials):
        i = rng.randrange(len(records) + 1)
        records.insert(i, (rng.choice([0x8000_0000, 0x8000, 0x8000 | address(3, 4, 1)]), t))
    return records


def reference_parse(path: Path):
    """Plain-Python AEDAT 2.0 reader: skip '#' lines, unpack >II records, apply the readers' flips."""
    data = path.read_bytes()
    pos = 0
    while data[pos:pos + 1] == b"#":
        pos = data.index(b"\n", pos) + 1
    ts, xs, ys, ps = [], [], [], []
    for off in range(pos, len(data), 8):
        a, t = struct.unpack_from(">II", data, off)
        if a & 0x8000_0000 or a & 0x8000:
            continue
        x_raw, y_raw, p_raw = (a >> 1) & 0x7F, (a >> 8) & 0x7F, a & 1
        ts.append(t)
        xs.append(127 - y_raw)
        ys.append(127 - x_raw)
        ps.append(1 - p_raw)
    return ts, xs, ys, ps


def reference_frames(xs, ys, ps, T: int, on_first: bool = True):
    """Count events into T frames, frame i = events [i*(N//T), (i+1)*(N//T)), remainder to the last."""
    n = len(xs)
    per = n // T
    frames = np.zeros((T, 2, 128, 128), dtype=np.int64)
    for i in range(n):
        f = T - 1 if per == 0 else min(i // per, T - 1)
        if on_first:
            ch = 0 if ps[i] == 1 else 1
        else:
            ch = ps[i]
        frames[f, ch, ys[i], xs[i]] += 1
    return frames


def make_dataset(root: Path, per_class: dict[str, int], n_events: int = 300, seed: int = 0) -> dict[Path, list]:
    rng = random.Random(seed)
    written = {}
    for ci, (cls, count) in enumerate(per_class.items()):
        for i in range(count):
            # A distinct event count per recording identifies it by the sum of its frames.
            path = write_aedat(root / cls / f"cifar10_{cls}_{i}.aedat", random_records(rng, n_events + 50 * ci + i))
            written[path] = path
    return written


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
def test_known_event_bit_fields_and_flips(tmp_path):
    # raw x=5, y=10, p=0 (jAER: raw 0 is ON) -> column 127-10 = 117, row 127-5 = 122, p' = 1 (ON).
    # raw x=127, y=0, p=1 (OFF) -> column 127, row 0, p' = 0.
    path = write_aedat(tmp_path / "one.aedat", [(0x0A0A, 1000), (0x00FF, 2000)])
    assert address(5, 10, 0) == 0x0A0A and address(127, 0, 1) == 0x00FF
    ev = read_aedat(path)
    assert ev.x.tolist() == [117, 127]
    assert ev.y.tolist() == [122, 0]
    assert ev.p.tolist() == [1, 0]
    assert ev.t.tolist() == [1000, 2000]
    frames = events_to_frames(ev, 1)
    assert frames[0, 0, 122, 117] == 1  # ON -> channel 0
    assert frames[0, 1, 0, 127] == 1  # OFF -> channel 1
    assert frames.sum() == 2
    sj = events_to_frames(ev, 1, polarity="spikingjelly")
    assert sj[0, 1, 122, 117] == 1 and sj[0, 0, 0, 127] == 1


def test_parse_matches_struct_reference(tmp_path):
    rng = random.Random(1)
    records = random_records(rng, 3000, specials=7)
    records += [(address(0, 0, 0), 10**9), (address(127, 127, 1), 2**32 - 1)]  # corners, max timestamp
    path = write_aedat(tmp_path / "rec.aedat", records)
    ev = read_aedat(path)
    ts, xs, ys, ps = reference_parse(path)
    assert len(ev) == 3002
    assert ev.t.tolist() == ts
    assert ev.x.tolist() == xs
    assert ev.y.tolist() == ys
    assert ev.p.tolist() == ps


def test_header_variants(tmp_path):
    recs = [(address(1, 2, 0), 5), (address(3, 4, 1), 6)]
    lf_only = write_aedat(tmp_path / "lf.aedat", recs, header=b"#!AER-DAT2.0\n# comment\n")
    no_magic = write_aedat(tmp_path / "nomagic.aedat", recs, header=b"# just a comment\r\n")
    for path in (lf_only, no_magic):
        assert read_aedat(path).x.tolist() == [127 - 2, 127 - 4]


def _spikingjelly_cifar10_dvs(monkeypatch):
    """spikingjelly's CIFAR10-DVS reader and frame integrator, or skip.

    ``spikingjelly/datasets/__init__.py`` imports every dataset module, torchaudio's included, which fails
    in some environments (torchaudio built for another CUDA). Register the package without running its
    ``__init__`` so that only cifar10_dvs.py and its own imports (base, utils) are executed.
    """
    import importlib
    import sys
    import types

    sj = pytest.importorskip("spikingjelly")
    pkg = types.ModuleType("spikingjelly.datasets")
    pkg.__path__ = [str(Path(sj.__file__).parent / "datasets")]
    monkeypatch.setitem(sys.modules, "spikingjelly.datasets", pkg)
    for name in ("base", "utils", "cifar10_dvs"):
        monkeypatch.delitem(sys.modules, f"spikingjelly.datasets.{name}", raising=False)
    try:
        reader = importlib.import_module("spikingjelly.datasets.cifar10_dvs")
        utils = importlib.import_module("spikingjelly.datasets.utils")
    except Exception as exc:  # an unrelated broken dependency must not fail this project's suite
        pytest.skip(f"spikingjelly's CIFAR10-DVS reader does not import here: {exc}")
    for name in ("base", "utils", "cifar10_dvs"):  # do not leak the half-registered package
        monkeypatch.delitem(sys.modules, f"spikingjelly.datasets.{name}", raising=False)
    return reader, utils


def test_parse_and_frames_match_spikingjelly(tmp_path, monkeypatch):
    cifar10_dvs, sj_utils = _spikingjelly_cifar10_dvs(monkeypatch)
    path = write_aedat(tmp_path / "rec.aedat", random_records(random.Random(2), 2501))
    ours = read_aedat(path)
    theirs = cifar10_dvs._load_origin_data(path)
    for key in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(ours, key).astype(np.int64), np.asarray(theirs[key], dtype=np.int64))
    for T in (1, 8, 10):
        sj = sj_utils.integrate_events_by_fixed_frames_number(theirs, "number", T, 128, 128)
        np.testing.assert_array_equal(events_to_frames(ours, T, polarity="spikingjelly"), sj)
        # The project's order is spikingjelly's with the two channels swapped.
        np.testing.assert_array_equal(events_to_frames(ours, T), sj[:, ::-1])


# ------------------------------------------------------------------------------------------------
# Framing
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,T", [(1003, 8), (800, 8), (77, 3), (40, 1), (5, 8)])
def test_frames_match_reference(tmp_path, n, T):
    path = write_aedat(tmp_path / "rec.aedat", random_records(random.Random(n * 31 + T), n))
    ts, xs, ys, ps = reference_parse(path)
    ev = read_aedat(path)
    frames = events_to_frames(ev, T)
    assert frames.shape == (T, 2, 128, 128)
    np.testing.assert_array_equal(frames, reference_frames(xs, ys, ps, T))
    np.testing.assert_array_equal(events_to_frames(ev, T, polarity="spikingjelly"),
                                  reference_frames(xs, ys, ps, T, on_first=False))
    per = n // T
    sizes = frames.reshape(T, -1).sum(1).tolist()
    if per:
        assert sizes == [per] * (T - 1) + [n - per * (T - 1)]
    else:
        assert sizes == [0] * (T - 1) + [n]


def test_frames_argument_errors(tmp_path):
    ev = read_aedat(write_aedat(tmp_path / "r.aedat", [(address(1, 1, 1), 1)]))
    with pytest.raises(ValueError, match="timesteps"):
        events_to_frames(ev, 0)
    with pytest.raises(ValueError, match="polarity"):
        events_to_frames(ev, 8, polarity="off-on")


# ------------------------------------------------------------------------------------------------
# Corrupt recordings
# ------------------------------------------------------------------------------------------------
CORRUPT = {
    "truncated": (HEADER + struct.pack(">II", address(1, 2, 0), 7) + b"\x00\x01\x02", "not a multiple of 8"),
    "empty": (b"", "empty"),
    "header_only": (HEADER, "no event records"),
    "header_no_newline": (b"#!AER-DAT2.0", "no event records"),
    "not_aedat_png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a jAER AEDAT file"),
    "not_aedat_text": (b"hello, this is a text file\n" * 4, "not a jAER AEDAT file"),
    "out_of_range": (HEADER + struct.pack(">IIII", address(1, 2, 0), 7, 0x0001_0000 | address(1, 1, 1), 8),
                     "outside the DVS128 layout"),
    "aedat3": (b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + b"\x00" * 28, "version '3.1'"),
    "only_special": (HEADER + struct.pack(">II", 0x8000_0000, 7), "no pixel events"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_recording_names_file(tmp_path, case):
    content, message = CORRUPT[case]
    path = tmp_path / f"bad_{case}.aedat"
    path.write_bytes(content)
    with pytest.raises(DVSFormatError, match=message) as info:
        read_aedat(path)
    assert str(path) in str(info.value)


def test_missing_recording(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.aedat"):
        read_aedat(tmp_path / "nope.aedat")


def test_corrupt_recording_in_dataset_names_file_and_leaves_no_cache(tmp_path):
    make_dataset(tmp_path / "data", {"airplane": 3, "cat": 3})
    bad = tmp_path / "data" / "cat" / "cifar10_cat_1.aedat"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DVSFormatError, match="cifar10_cat_1.aedat"):
        CIFAR10DVS(tmp_path / "data", True, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert list((tmp_path / "cache").rglob("cifar10_cat_1-*")) == []
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 5  # the good ones are cached
    # Several bad files: one error lists them all.
    also_bad = tmp_path / "data" / "airplane" / "cifar10_airplane_2.aedat"
    also_bad.write_bytes(b"not an aedat file")
    with pytest.raises(DVSFormatError, match="2 unreadable") as info:
        CIFAR10DVS(tmp_path / "data", True, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert "cifar10_cat_1.aedat" in str(info.value) and "cifar10_airplane_2.aedat" in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_dataset_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CIFAR10DVS(tmp_path / "absent", True)
    (tmp_path / "empty" / "airplane").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no recordings found"):
        CIFAR10DVS(tmp_path / "empty", True)
    make_dataset(tmp_path / "d", {"airplane": 2})
    with pytest.raises(ValueError, match="val_fraction"):
        CIFAR10DVS(tmp_path / "d", True, val_fraction=1.0)
    with pytest.raises(ValueError, match="split mode"):
        CIFAR10DVS(tmp_path / "d", True, split="random")
    # spikingjelly's rule keeps ceil(0.9 * 2) = 2 of 2 for training: nothing left to validate.
    with pytest.raises(ValueError, match="leaves no validation recordings"):
        CIFAR10DVS(tmp_path / "d", False, split="authors")


# ------------------------------------------------------------------------------------------------
# Split
# ------------------------------------------------------------------------------------------------
def fake_samples(per_class: dict[str, int]):
    return [(Path("/data") / cls / f"cifar10_{cls}_{i}.aedat", label)
            for label, (cls, count) in enumerate(per_class.items()) for i in range(count)]


def test_seeded_split_per_class_disjoint_complete_deterministic():
    counts = {"airplane": 1000, "bird": 20, "cat": 10, "dog": 6, "frog": 1}
    samples = fake_samples(counts)
    train, val = split_recordings(samples, val_fraction=0.1, seed=2024)
    assert sorted(train + val) == list(range(len(samples)))
    assert not set(train) & set(val)
    for label, (cls, n) in enumerate(counts.items()):
        n_val = sum(samples[i][1] == label for i in val)
        assert n_val == {1000: 100, 20: 2, 10: 1, 6: 1, 1: 0}[n], cls
    assert split_recordings(samples, val_fraction=0.1, seed=2024) == (train, val)
    # Stable under listing order: shuffle the list, the same recordings validate.
    shuffled = samples[:]
    random.Random(5).shuffle(shuffled)
    tr2, va2 = split_recordings(shuffled, val_fraction=0.1, seed=2024)
    assert {shuffled[i][0] for i in va2} == {samples[i][0] for i in val}
    # Another seed, another split.
    _, va3 = split_recordings(samples, val_fraction=0.1, seed=7)
    assert {samples[i][0] for i in va3} != {samples[i][0] for i in val}


def test_authors_split_matches_spikingjelly_rule():
    samples = fake_samples({"airplane": 12, "cat": 1000})
    train, val = split_recordings(samples, val_fraction=0.1, mode="authors")
    # spikingjelly: per class, in sorted file-name order, first ceil(0.9 n) train.
    for cls, n in (("airplane", 12), ("cat", 1000)):
        names = sorted(f"cifar10_{cls}_{i}.aedat" for i in range(n))
        cut = -(-n * 9 // 10)
        assert [samples[i][0].name for i in train if samples[i][0].parent.name == cls] == names[:cut]
        assert [samples[i][0].name for i in val if samples[i][0].parent.name == cls] == names[cut:]
    cat_val = [samples[i][0].name for i in val if samples[i][0].parent.name == "cat"]
    # Lexicographic, not numeric: the authors' validation files are not simply numbers 900-999.
    assert len(cat_val) == 100 and cat_val[0] == "cifar10_cat_909.aedat"
    assert "cifar10_cat_99.aedat" in cat_val and "cifar10_cat_900.aedat" not in cat_val


def test_dataset_split_sides(tmp_path):
    make_dataset(tmp_path, {"airplane": 10, "automobile": 10, "bird": 5})
    train = CIFAR10DVS(tmp_path, True, timesteps=4, progress=False)
    val = CIFAR10DVS(tmp_path, False, timesteps=4, progress=False)
    assert train.classes == ["airplane", "automobile", "bird"]
    assert len(train) == 22 and len(val) == 3
    assert sorted(val.targets) == [0, 1, 2]
    assert not set(train.recordings) & set(val.recordings)
    assert (tmp_path / ".i2e_cache").is_dir()  # default cache beside the data


# ------------------------------------------------------------------------------------------------
# Dataset items and the cache
# ------------------------------------------------------------------------------------------------
def test_items_are_reference_frames(tmp_path):
    make_dataset(tmp_path / "d", {"airplane": 3, "cat": 2})
    for polarity, on_first in (("on-off", True), ("spikingjelly", False)):
        ds = CIFAR10DVS(tmp_path / "d", True, timesteps=5, cache_dir=tmp_path / "c", polarity=polarity,
                        val_fraction=0.3, progress=False)
        for i in range(len(ds)):
            frames, label = ds[i]
            assert frames.dtype == np.float32 and frames.shape == (5, 2, 128, 128)
            assert label == ds.classes.index(ds.recordings[i].parent.name)
            _, xs, ys, ps = reference_parse(ds.recordings[i])
            np.testing.assert_array_equal(frames, reference_frames(xs, ys, ps, 5, on_first=on_first))
    binary = CIFAR10DVS(tmp_path / "d", True, timesteps=5, cache_dir=tmp_path / "c", binarize=True,
                        val_fraction=0.3, progress=False)
    frames, _ = binary[0]
    _, xs, ys, ps = reference_parse(binary.recordings[0])
    np.testing.assert_array_equal(frames, (reference_frames(xs, ys, ps, 5) > 0).astype(np.float32))


def test_cache_is_used_and_a_changed_recording_is_reparsed(tmp_path):
    make_dataset(tmp_path / "d", {"airplane": 4, "cat": 4})
    cache = tmp_path / "cache"
    first = CIFAR10DVS(tmp_path / "d", True, cache_dir=cache, workers=2, progress=False)
    assert first.parsed == 8
    again = CIFAR10DVS(tmp_path / "d", False, cache_dir=cache, progress=False)
    assert again.parsed == 0
    # Prove the cached file is what is read: plant a sentinel in it.
    target = first._frames[0]
    sentinel = np.full((8, 2, 128, 128), 3, dtype=np.uint8)
    np.savez_compressed(target, frames=sentinel)
    reread = CIFAR10DVS(tmp_path / "d", True, cache_dir=cache, progress=False)
    assert reread.parsed == 0
    np.testing.assert_array_equal(reread[0][0], sentinel.astype(np.float32))
    # Change the recording (new content, new mtime): it is parsed again and the stale frames go.
    rec = first.recordings[0]
    write_aedat(rec, random_records(random.Random(99), 123))
    st = rec.stat()
    os.utime(rec, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    changed = CIFAR10DVS(tmp_path / "d", True, cache_dir=cache, progress=False)
    assert changed.parsed == 1
    assert not target.exists()
    _, xs, ys, ps = reference_parse(rec)
    np.testing.assert_array_equal(changed[0][0], reference_frames(xs, ys, ps, 8))
    # Another T is another cache.
    assert CIFAR10DVS(tmp_path / "d", True, timesteps=4, cache_dir=cache, progress=False).parsed == 8
    assert sorted(p.name for p in cache.iterdir()) == ["cifar10dvs-v1-T4", "cifar10dvs-v1-T8"]


def test_unreadable_cache_file_names_it(tmp_path):
    make_dataset(tmp_path / "d", {"airplane": 3})
    ds = CIFAR10DVS(tmp_path / "d", True, cache_dir=tmp_path / "c", progress=False)
    ds._frames[0].write_bytes(b"garbage")
    with pytest.raises(DVSFormatError, match=str(ds._frames[0].name)):
        ds[0]
    np.savez_compressed(ds._frames[1], frames=np.zeros((4, 2, 128, 128), np.uint8))  # another T's frames
    with pytest.raises(DVSFormatError, match="expected \\[8, 2, 128, 128\\]"):
        ds[1]


def test_spikingjelly_layout_is_found(tmp_path):
    make_dataset(tmp_path / "sj" / "extract", {"airplane": 2, "cat": 2})
    ds = CIFAR10DVS(tmp_path / "sj", True, cache_dir=tmp_path / "c", progress=False)
    assert ds.classes == ["airplane", "cat"] and len(ds) == 2


def trainer_dvs_loaders(args):
    """The trainer's own path: flags -> resolved config -> training.data.build_loaders."""
    from i2e_dali.training.cli import parse_config
    from i2e_dali.training.data import build_loaders
    from i2e_dali.training.runtime import Runtime

    argv = ["--dataset", "cifar10-dvs", "--data", args.data, "-b", str(args.batch_size), "-T", str(args.timesteps),
            "--seed", str(args.seed), "--workers", str(args.workers), "--device", "cpu", "--cache-dir", args.cache_dir,
            "--val-fraction", str(args.val_fraction)]
    if not getattr(args, "progress", True):
        argv.append("--no-progress")
    return build_loaders(parse_config(argv), Runtime(torch.device("cpu")))


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------
def test_build_loaders_end_to_end(tmp_path):
    make_dataset(tmp_path / "d", {"airplane": 6, "cat": 6, "dog": 6}, n_events=200)
    args = argparse.Namespace(
        data=str(tmp_path / "d"), batch_size=4, timesteps=8, seed=2024, workers=0, device="cpu",
        cache_dir=str(tmp_path / "cache"), val_fraction=0.1,
    )
    train_loader, val_loader = trainer_dvs_loaders(args)
    assert train_loader.num_classes == 3 and train_loader.class_names == ["airplane", "cat", "dog"]
    assert train_loader.total_samples == 15 and val_loader.total_samples == 3
    assert len(train_loader) == 3 and len(val_loader) == 1
    batches = list(train_loader)
    assert len(batches) == 3
    for events, labels in batches:
        assert events.shape == (8, 4, 2, 128, 128) and events.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.shape == (4,)
    seen = []
    val_set = val_loader.dataset
    for events, labels in val_loader:
        assert events.shape == (8, 3, 2, 128, 128) and events.dtype == torch.float32
        seen += labels.tolist()
        for b in range(events.shape[1]):
            # Evaluation: no flip, frames exactly the dataset's, time first.
            np.testing.assert_array_equal(events[:, b].numpy(), val_set[b][0])
    assert sorted(seen) == [0, 1, 2]
    # Training frames are the dataset's frames, possibly mirrored left-right (the flip augmentation).
    events, labels = batches[0]
    train_set = train_loader.dataset
    sums = {float(train_set[i][0].sum()): i for i in range(len(train_set))}
    for b in range(events.shape[1]):
        i = sums[float(events[:, b].sum())]
        ref = torch.from_numpy(train_set[i][0])
        assert torch.equal(events[:, b], ref) or torch.equal(events[:, b], ref.flip(-1))


def test_unwritable_cache_dir_says_what_to_do(tmp_path):
    make_dataset(tmp_path / "d", {"airplane": 2})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(dvs.DVSCacheError, match="--cache-dir"):
        CIFAR10DVS(tmp_path / "d", True, cache_dir=blocker, progress=False)


_DIST_WORKER = textwrap.dedent(
    """
    import argparse, json, sys
    import torch
    import torch.distributed as dist
    from i2e_dali.data import dvs
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method={init!r}, rank=rank, world_size=2)
    args = argparse.Namespace(data={data!r}, batch_size=2, timesteps=4, seed=1, workers=0, device="cpu",
                              cache_dir={cache!r}, val_fraction=0.25, progress=False)
    try:
        from i2e_dali.training.cli import parse_config
        from i2e_dali.training.data import build_loaders
        from i2e_dali.training.runtime import Runtime
        cfg = parse_config([
            "--dataset", "cifar10-dvs", "--data", args.data, "-b", "2", "-T", "4", "--seed", "1", "--workers", "0",
            "--device", "cpu", "--cache-dir", args.cache_dir, "--val-fraction", "0.25", "--no-progress"])
        train, val = build_loaders(cfg, Runtime(torch.device("cpu"), rank, 2))
    except dvs.DVSFormatError as exc:
        json.dump({{"error": str(exc)}}, open({outdir!r} + f"/rank{{rank}}.json", "w"))
        raise SystemExit(3)
    labels = [l for _, y in val for l in y.tolist()]
    json.dump({{"parsed": train.dataset.parsed, "val_labels": labels, "val_total": val.total_samples}},
              open({outdir!r} + f"/rank{{rank}}.json", "w"))
    dist.destroy_process_group()
    """
)


def _run_two_ranks(tmp_path, data, tag):
    out = tmp_path / tag
    out.mkdir()
    script = out / "worker.py"
    script.write_text(_DIST_WORKER.format(init=f"file://{out / 'store'}", data=str(data),
                                          cache=str(tmp_path / "cache"), outdir=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r)], env=env) for r in range(2)]
    codes = [p.wait(timeout=120) for p in procs]  # a hang fails here instead of blocking the suite
    return codes, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow  # four Python processes importing torch: ~15-30 s on 2 busy cores
def test_ddp_rank0_parses_once_and_a_bad_file_fails_every_rank(tmp_path):
    make_dataset(tmp_path / "d", {"airplane": 4, "cat": 4}, n_events=100)
    codes, (r0, r1) = _run_two_ranks(tmp_path, tmp_path / "d", "good")
    assert codes == [0, 0]
    assert (r0["parsed"], r1["parsed"]) == (8, 0)  # rank 1 waited and found everything cached
    assert r0["val_total"] == 2 and sorted(r0["val_labels"] + r1["val_labels"]) == [0, 1]
    # A corrupt recording: rank 0 fails, still releases rank 1, which fails the same way (no hang).
    bad = tmp_path / "d" / "cat" / "cifar10_cat_9.aedat"
    bad.write_bytes(b"garbage")
    codes, results = _run_two_ranks(tmp_path, tmp_path / "d", "bad")
    assert codes == [3, 3]
    assert all("cifar10_cat_9.aedat" in r["error"] for r in results)
