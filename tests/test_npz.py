"""Reading I2E npz datasets: dense/sparse layouts, polarity convention, shapes, corrupt files, loaders."""
from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
import torch

from i2e_dali.data.npz import (
    META_NAME,
    NpzEventDataset,
    NpzFormatError,
    dense_to_sparse,
    load_events,
    read_npz_info,
    sparse_dtype,
    sparse_to_dense,
    write_npz,
)


def build_loaders(args):
    """The trainer's own path: flags -> resolved config -> training.data.build_loaders."""
    from i2e_dali.training.cli import parse_config
    from i2e_dali.training.data import build_loaders as trainer_loaders
    from i2e_dali.training.runtime import Runtime

    cfg = parse_config([
        "--dataset", "i2e-npz", "--data", args.data, "-b", str(args.batch_size), "-T", str(args.timesteps),
        "--seed", str(args.seed), "--workers", str(args.workers), "--device", "cpu"])
    return trainer_loaders(cfg, Runtime(torch.device("cpu")))



def _events(seed, T=4, H=6, W=9, p=0.2):
    return np.random.default_rng(seed).random((T, 2, H, W)) < p


def _write(path, events, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write_npz(f, events, fmt)


def test_sparse_columns_are_t_p_x_y_with_p1_on():
    ev = np.zeros((3, 2, 4, 5), dtype=bool)
    ev[2, 0, 3, 1] = True  # ON at t=2, y=3, x=1
    ev[1, 1, 0, 4] = True  # OFF at t=1, y=0, x=4
    rows = dense_to_sparse(ev)
    assert rows.dtype == np.uint8
    assert rows.tolist() == [[1, 0, 4, 0], [2, 1, 1, 3]]  # sorted by t; (t, p, x, y)
    assert np.array_equal(sparse_to_dense(rows, (3, 4, 5)), ev)


def test_dense_sparse_round_trip_and_dtypes():
    for seed in range(5):
        ev = _events(seed, T=1 + seed, H=3 + seed, W=11 - seed)
        assert np.array_equal(sparse_to_dense(dense_to_sparse(ev), ev.shape[:1] + ev.shape[2:]), ev)
    assert sparse_dtype(8, 224, 224) == np.uint8 and sparse_dtype(8, 256, 256) == np.uint8
    assert sparse_dtype(8, 257, 100) == np.uint16
    big = np.zeros((2, 2, 300, 3), dtype=bool)
    big[1, 1, 299, 2] = True
    rows = dense_to_sparse(big)
    assert rows.dtype == np.uint16 and rows.tolist() == [[1, 0, 2, 299]]


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_write_then_load_gives_the_same_events(tmp_path, fmt):
    ev = _events(1)
    _write(tmp_path / "x.npz", ev, fmt)
    info = read_npz_info(tmp_path / "x.npz")
    assert info.format == fmt and info.frame_shape == (4, 6, 9)
    with np.load(tmp_path / "x.npz") as d:
        assert d.files[0] == "arr_0"
        if fmt == "dense":
            assert d["arr_0"].dtype == np.bool_ and d["arr_0"].shape == (4, 2, 6, 9)
        else:
            assert d["arr_0"].shape == (int(ev.sum()), 4)
    got = load_events(tmp_path / "x.npz")
    assert got.dtype == np.bool_ and np.array_equal(got, ev)


def test_authors_sparse_files_need_or_infer_the_shape(tmp_path):
    root = tmp_path / "val"
    ev = {}
    for c in ("cat", "dog"):
        for i in range(3):
            e = np.zeros((8, 2, 128, 128), dtype=bool)
            e[i, i % 2, 100 + i, 120 + i] = True  # x up to 122 -> 128 is the standard size that fits
            ev[c, i] = e
            (root / c).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(root / c / f"{i}.npz", dense_to_sparse(e))  # matrix only, like the authors'
    with pytest.raises(NpzFormatError, match="--timesteps 8 --size 224"):
        load_events(root / "cat" / "0.npz")
    explicit = NpzEventDataset(root, timesteps=8, size=128)
    assert explicit.format == "sparse" and explicit.frame_shape == (8, 128, 128)
    frames, label = explicit[4]
    assert label == 1 and torch.equal(frames, torch.from_numpy(ev["dog", 1]))
    with pytest.warns(UserWarning, match="assuming T=8, H x W = 128 x 128"):
        guessed = NpzEventDataset(root)
    assert guessed.frame_shape == (8, 128, 128)
    # dataset-level metadata replaces the guess
    (root / META_NAME).write_text(json.dumps({"timesteps": 8, "height": 128, "width": 128}))
    assert NpzEventDataset(root).frame_shape == (8, 128, 128)
    with pytest.raises(NpzFormatError, match="column x"):
        load_events(root / "cat" / "0.npz", (8, 64, 64))


def test_dense_dataset_timesteps_slice_and_limits(tmp_path):
    root = tmp_path / "train"
    evs = [_events(i, T=8) for i in range(4)]
    for i, e in enumerate(evs):
        _write(root / ("b" if i % 2 else "a") / f"s{i}.npz", e, "dense")
    ds = NpzEventDataset(root, timesteps=3)
    assert ds.classes == ["a", "b"] and len(ds) == 4 and ds.frame_shape == (3, 6, 9)
    frames, label = ds[1]  # sorted: a/s0, a/s2, b/s1, b/s3
    assert label == 0 and torch.equal(frames, torch.from_numpy(evs[2][:3]))
    with pytest.raises(ValueError, match="timesteps=9"):
        NpzEventDataset(root, timesteps=9)
    with pytest.raises(ValueError, match="size=5x5"):
        NpzEventDataset(root, size=5)


def test_corrupt_truncated_and_foreign_files_name_the_file(tmp_path):
    good = tmp_path / "good.npz"
    _write(good, _events(2), "dense")
    data = good.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "garbage.npz": b"this is not a zip file at all" * 10,
        "empty.npz": b"",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        for fn in (load_events, read_npz_info):
            with pytest.raises(NpzFormatError, match=name) as exc:
                fn(tmp_path / name)
            assert "corrupt or truncated" in str(exc.value)
    # damaged compressed payload, intact zip directory
    broken = bytearray(data)
    mid = len(broken) // 2
    broken[mid : mid + 40] = bytes(40)
    (tmp_path / "flipped.npz").write_bytes(bytes(broken))
    with pytest.raises(NpzFormatError, match="flipped.npz"):
        load_events(tmp_path / "flipped.npz")
    buf = io.BytesIO()
    np.savez_compressed(buf, np.zeros((3, 3)))
    (tmp_path / "foreign.npz").write_bytes(buf.getvalue())
    with pytest.raises(NpzFormatError, match="foreign.npz.*expected dense"):
        load_events(tmp_path / "foreign.npz")
    np.savez_compressed(tmp_path / "other_key.npz", events=np.zeros((1, 2, 2, 2), bool))
    with pytest.raises(NpzFormatError, match="no array 'arr_0'"):
        load_events(tmp_path / "other_key.npz")
    with pytest.raises(NpzFormatError, match="missing.npz: file not found"):
        load_events(tmp_path / "missing.npz")


def test_corrupt_file_inside_a_dataset_fails_with_its_name(tmp_path):
    root = tmp_path / "val"
    _write(root / "a" / "ok.npz", _events(0), "dense")
    (root / "a" / "zz_bad.npz").write_bytes(b"PK\x03\x04 truncated")
    ds = NpzEventDataset(root)
    with pytest.raises(NpzFormatError, match="zz_bad.npz"):
        ds[1]


def _tree(root, fmt, classes=("a", "b", "c"), per_class=3, T=8, H=6, W=9):
    truth = {}
    for split in ("train", "val"):
        for c in classes:
            for i in range(per_class):
                e = _events(hash((split, c, i)) % 1000, T=T, H=H, W=W)
                _write(root / split / c / f"{i}.npz", e, fmt)
                truth[split, c, i] = e
    return truth


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_build_loaders_reads_an_exported_tree(tmp_path, fmt):
    truth = _tree(tmp_path, fmt)
    args = argparse.Namespace(data=str(tmp_path), batch_size=4, timesteps=8, seed=1, workers=0, device="cpu")
    train, val = build_loaders(args)
    assert (train.num_classes, val.num_classes) == (3, 3) and val.image_size == (6, 9)
    assert len(train) == 2 and len(val) == 3 and val.total_samples == 9
    got = []
    for ev, lab in val:
        assert ev.dtype == torch.float32 and ev.shape[0] == 8 and lab.dtype == torch.int64
        got += [(ev[:, b].bool().numpy(), int(lab[b])) for b in range(ev.shape[1])]
    want = [(truth["val", c, i], k) for k, c in enumerate("abc") for i in range(3)]
    assert len(got) == 9
    for (g, gl), (w, wl) in zip(got, want):
        assert gl == wl and np.array_equal(g, w)


def test_build_loaders_refuses_bad_trees(tmp_path):
    args = argparse.Namespace(data=str(tmp_path / "nope"), batch_size=2, timesteps=4, seed=1, workers=0, device="cpu")
    from i2e_dali.errors import TrainError

    with pytest.raises(TrainError, match="does not exist"):
        build_loaders(args)
    _write(tmp_path / "d" / "train" / "a" / "0.npz", _events(0), "dense")
    args.data = str(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="'val/' or 'test/'"):
        build_loaders(args)
    _write(tmp_path / "d" / "val" / "b" / "0.npz", _events(0), "dense")
    with pytest.raises(ValueError, match="different class folders"):
        build_loaders(args)
    (tmp_path / "d" / "val" / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="without .npz files: a"):
        build_loaders(args)


def test_default_archive_is_numpys_and_levels_read_back(tmp_path):
    import zipfile

    ev = _events(7, T=8, H=30, W=40, p=0.05)
    ours, numpys = io.BytesIO(), io.BytesIO()
    write_npz(ours, ev, "dense")
    np.savez_compressed(numpys, ev)
    a, b = zipfile.ZipFile(ours), zipfile.ZipFile(numpys)
    assert [(i.filename, i.compress_size, i.compress_type) for i in a.infolist()] == \
        [(i.filename, i.compress_size, i.compress_type) for i in b.infolist()]
    assert a.read("arr_0.npy") == b.read("arr_0.npy")
    for level in (1, 9):
        for fmt in ("dense", "sparse"):
            with open(tmp_path / f"{fmt}{level}.npz", "wb") as f:
                write_npz(f, ev, fmt, level=level)
            assert np.array_equal(load_events(tmp_path / f"{fmt}{level}.npz"), ev)
    with pytest.raises(ValueError, match="compression level"):
        write_npz(io.BytesIO(), ev, "dense", level=11)
