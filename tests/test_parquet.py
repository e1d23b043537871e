"""Parquet I2E sets (the authors' hub format): row bytes against an independent decoder, the hub's layouts,
reading through FrameLoader (shuffle, shards, exact resume, len), bad shards and rows, seeded fuzzing."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from i2e_dali.data.frame_loader import FrameLoader
from i2e_dali.data.parquet import (ParquetEventDataset, RowGroupShuffleSampler, decode_data, encode_batch,
                                   encode_events, find_parquet_splits, hf_schema_metadata, open_parquet_splits)
from i2e_dali.errors import MissingDataError, ParquetFormatError


def authors_decode(data: bytes) -> np.ndarray:
    """An independent numpy-only re-implementation of the hub README's snippet: ``data`` is an .npy file of
    uint8; its first 8 bytes are (T, C, H, W) as little-endian uint16, the rest packbits of the events."""
    arr = np.load(io.BytesIO(data))
    t, c, h, w = (int(v) for v in arr[:8].view("<u2"))
    bits = np.unpackbits(arr[8:])[: t * c * h * w]
    return bits.reshape(t, c, h, w).astype(bool)


def random_events(rng, n, t=8, h=6, w=7, p=0.08):
    return rng.random((n, t, 2, h, w)) < p


def write_shard(path: Path, events: np.ndarray, labels, *, group=4, classes=None, drop=(), data=None):
    rows = data if data is not None else encode_batch(events)
    cols = {"file_path": pa.array([f"{lab}/{i:05d}.npy" for i, lab in enumerate(labels)]),
            "label": pa.array(np.asarray(labels, np.int64)), "data": pa.array(rows, pa.binary())}
    for c in drop:
        cols.pop(c)
    table = pa.table(cols)
    if classes is not None:
        table = table.replace_schema_metadata(hf_schema_metadata(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=group)
    return path


def make_config(root: Path, rng, n_train=20, n_val=7, shards=2, **kw):
    """A config folder in the hub's naming: train-0000k-of-0000n.parquet, validation-...; returns events."""
    out = {}
    for split, n, name in (("train", n_train, "train"), ("val", n_val, "validation")):
        ev = random_events(rng, n, **kw)
        labels = rng.integers(0, 3, n)
        bounds = np.linspace(0, n, shards + 1).astype(int)
        for k in range(shards):
            a, b = bounds[k], bounds[k + 1]
            write_shard(root / f"{name}-{k:05d}-of-{shards:05d}.parquet", ev[a:b], labels[a:b], classes=["a", "b", "c"])
        out[split] = (ev, labels)
    return out


# --------------------------------------------------------------------------------------------------
# row bytes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 128, 128), (3, 5, 7), (1, 1, 1), (8, 31, 33)])
def test_row_bytes_are_what_the_authors_snippet_reads(shape):
    t, h, w = shape
    ev = np.random.default_rng(sum(shape)).random((t, 2, h, w)) < 0.3
    data = encode_events(ev)
    assert data[:6] == b"\x93NUMPY"  # a complete .npy file, as the hub's cells are
    arr = np.load(io.BytesIO(data))
    assert arr.dtype == np.uint8 and arr.ndim == 1 and arr.size == 8 + (t * 2 * h * w + 7) // 8
    assert tuple(np.frombuffer(arr[:8].tobytes(), "<u2")) == (t, 2, h, w)
    np.testing.assert_array_equal(authors_decode(data), ev)
    np.testing.assert_array_equal(decode_data(data), ev)
    if shape == (8, 128, 128):
        assert arr.size == 32776  # the size the hub's I2E-CIFAR10 rows declare


def test_decoder_also_takes_rows_without_the_npy_wrapper():
    ev = np.random.default_rng(1).random((2, 2, 3, 5)) < 0.5
    raw = np.array([2, 2, 3, 5], "<u2").tobytes() + np.packbits(ev.reshape(-1)).tobytes()
    np.testing.assert_array_equal(decode_data(raw), ev)


# --------------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------------
def test_hub_layouts_are_found(tmp_path):
    rng = np.random.default_rng(0)
    make_config(tmp_path / "I2E-CIFAR10", rng)
    found = find_parquet_splits(tmp_path / "I2E-CIFAR10")
    assert [p.name for p in found["train"]] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [p.name for p in found["val"]][0].startswith("validation-")
    # the older hub naming under data/
    ev = random_events(rng, 5)
    write_shard(tmp_path / "old" / "data" / "train-00000-of-00001-abc123.parquet", ev, [0] * 5)
    write_shard(tmp_path / "old" / "data" / "test-00000-of-00001-def456.parquet", ev, [1] * 5)
    assert set(find_parquet_splits(tmp_path / "old")) == {"train", "val"}
    # train/ and validation/ folders of plain .parquet files
    write_shard(tmp_path / "folders" / "train" / "a.parquet", ev, [0] * 5)
    write_shard(tmp_path / "folders" / "validation" / "b.parquet", ev, [0] * 5)
    assert [p.name for p in find_parquet_splits(tmp_path / "folders")["val"]] == ["b.parquet"]
    # a plain folder of shards is one split for the Python dataset
    ds = ParquetEventDataset(tmp_path / "folders" / "train")
    assert len(ds) == 5 and ds.frame_shape == (8, 6, 7)
    # the repository root (several configs) -> a hint naming them
    with pytest.raises(MissingDataError, match="I2E-CIFAR10"):
        find_parquet_splits(tmp_path)


def test_dataset_items_labels_and_class_names(tmp_path):
    rng = np.random.default_rng(2)
    ref = make_config(tmp_path, rng)
    train, val = open_parquet_splits(tmp_path, timesteps=5)
    assert train.classes == ["a", "b", "c"] and len(train) == 20 and len(val) == 7
    assert train.frame_shape == (5, 6, 7) and train.stored_shape == (8, 6, 7)
    for i in (0, 9, 10, 19):
        frames, label = train[i]
        np.testing.assert_array_equal(frames.numpy(), ref["train"][0][i][:5])
        assert label == ref["train"][1][i]
    assert [g[1] - g[0] for g in train.row_groups] == [4, 4, 2, 4, 4, 2]


# --------------------------------------------------------------------------------------------------
# through FrameLoader: the loader contract
# --------------------------------------------------------------------------------------------------
def _batches(loader, n=None):
    out = []
    for k, (ev, lab, idx) in enumerate(loader):
        out.append((ev.clone(), lab.clone(), idx.clone()))
        if n is not None and k + 1 == n:
            break
    return out


def test_loader_yields_events_shuffles_shards_and_resumes_exactly(tmp_path):
    rng = np.random.default_rng(3)
    ref = make_config(tmp_path, rng, n_train=40, n_val=9, shards=3)
    train_set, val_set = open_parquet_splits(tmp_path)
    kw = dict(device="cpu", num_workers=0, with_index=True, dtype=torch.float32)
    loader = FrameLoader(train_set, 4, train=True, flip=False, **kw)
    assert len(loader) == 10
    epoch0 = _batches(loader)
    epoch1 = _batches(loader)
    ev, lab, idx = epoch0[0]
    assert ev.shape == (8, 4, 2, 6, 7) and ev.dtype == torch.float32
    for b, i in enumerate(idx.tolist()):
        np.testing.assert_array_equal(ev[:, b].numpy().astype(bool), ref["train"][0][i])
        assert lab[b].item() == ref["train"][1][i]
    order0 = torch.cat([b[2] for b in epoch0]).tolist()
    order1 = torch.cat([b[2] for b in epoch1]).tolist()
    assert sorted(order0) == list(range(40)) and order0 != order1 and order0 != list(range(40))
    # two ranks: disjoint, equal length
    shards = [torch.cat([b[2] for b in _batches(FrameLoader(train_set, 4, train=True, flip=False, shard_id=r,
                                                                 num_shards=2, **kw))]).tolist() for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 20 and not set(shards[0]) & set(shards[1])
    # exact resume mid-epoch (with workers: the cache lives in the worker processes)
    a = FrameLoader(train_set, 4, train=True, device="cpu", num_workers=1, with_index=True)
    _batches(a)
    it = iter(a)  # epoch 1: three batches, then the state, then the rest from the same pass
    for _ in range(3):
        next(it)
    state = a.state_dict()
    rest = [(ev.clone(), lab.clone(), idx.clone()) for ev, lab, idx in it]
    b = FrameLoader(train_set, 4, train=True, device="cpu", num_workers=1, with_index=True)
    b.load_state_dict(state)
    again = _batches(b)
    assert len(rest) == len(again) == 7
    for (e1, l1, i1), (e2, l2, i2) in zip(rest, again):
        assert torch.equal(e1, e2) and torch.equal(l1, l2) and torch.equal(i1, i2)
    # evaluation: every sample once, in order, last batch short
    val = FrameLoader(val_set, 4, train=False, **kw)
    got = _batches(val)
    assert [len(b[2]) for b in got] == [4, 4, 1] and torch.cat([b[2] for b in got]).tolist() == list(range(9))


def test_training_order_reads_row_groups_not_rows():
    groups = [(a, a + 10) for a in range(0, 100, 10)]
    s = RowGroupShuffleSampler(groups, num_replicas=1, rank=0, seed=5, window=2)
    order = list(s)
    assert sorted(order) == list(range(100))
    # every window of 20 rows holds exactly the rows of 2 row groups, shuffled
    for w in range(0, 100, 20):
        part = order[w:w + 20]
        assert len({i // 10 for i in part}) == 2 and part != sorted(part)
    s.set_epoch(1)
    assert list(s) != order


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
def test_bad_shards_and_rows_name_the_shard_and_row(tmp_path):
    rng = np.random.default_rng(4)
    ev = random_events(rng, 6)
    good = write_shard(tmp_path / "good" / "train-00000-of-00001.parquet", ev, [0] * 6)
    corrupt = tmp_path / "corrupt" / "x.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ParquetFormatError, match=r"x\.parquet.*corrupt or truncated"):
        ParquetEventDataset(corrupt)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all" * 10)
    with pytest.raises(ParquetFormatError, match="junk.parquet"):
        ParquetEventDataset(tmp_path / "junk.parquet")
    nolabel = write_shard(tmp_path / "nolabel" / "s.parquet", ev, [0] * 6, drop=("label",))
    with pytest.raises(ParquetFormatError, match=r"s\.parquet: no 'label' column"):
        ParquetEventDataset(nolabel)
    nodata = write_shard(tmp_path / "nodata" / "s.parquet", ev, [0] * 6, drop=("data",))
    with pytest.raises(ParquetFormatError, match="no 'data' column"):
        ParquetEventDataset(nodata)
    rows = encode_batch(ev)
    rows[4] = rows[4][:-3]  # body shorter than the header says
    short = write_shard(tmp_path / "short" / "s.parquet", ev, [0] * 6, data=rows)
    ds = ParquetEventDataset(short)
    ds[3]
    with pytest.raises(ParquetFormatError, match=r"s\.parquet: row 4: 'data' declares"):
        ds[4]
    rows = encode_batch(ev)
    head = bytearray(rows[5])
    npy_len = len(rows[5]) - (8 + (8 * 2 * 6 * 7 + 7) // 8)
    head[npy_len + 4] = 3  # header says H = 3: disagrees with the body length
    rows[5] = bytes(head)
    bad_hdr = write_shard(tmp_path / "hdr" / "s.parquet", ev, [0] * 6, data=rows)
    with pytest.raises(ParquetFormatError, match=r"row 5: header says \(T, C, H, W\) = \(8, 2, 3, 7\)"):
        ParquetEventDataset(bad_hdr)[5]
    neg = write_shard(tmp_path / "neg" / "s.parquet", ev, [0, 1, -1, 0, 0, 0])
    with pytest.raises(ParquetFormatError, match="row 2 has the negative label"):
        ParquetEventDataset(neg)


_FUZZ = textwrap.dedent("""
    import sys, time, numpy as np
    from pathlib import Path
    from i2e_dali.data.parquet import ParquetEventDataset
    from i2e_dali.errors import I2EError
    src, work, n, limit, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    blob = src.read_bytes()
    rng = np.random.default_rng(seed)
    ok = err = 0
    start = time.time()
    for k in range(n):
        b = bytearray(blob)
        kind = k % 3
        if kind == 0:  # flip a few bytes anywhere
            for pos in rng.integers(0, len(b), int(rng.integers(1, 8))):
                b[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # truncate
            b = b[: int(rng.integers(0, len(b)))]
        else:  # overwrite a run of bytes
            pos = int(rng.integers(0, len(b)))
            b[pos:pos + 32] = rng.integers(0, 256, len(b[pos:pos + 32]), dtype=np.uint8).tobytes()
        path = work / f"m{k}.parquet"
        path.write_bytes(bytes(b))
        try:
            ds = ParquetEventDataset(path)
            for i in range(len(ds)):
                ds[i]
            ok += 1
        except I2EError:
            err += 1
        except Exception as exc:
            print(f"mutation {k}: {type(exc).__name__}: {exc}")
            sys.exit(3)
        path.unlink()
        if time.time() - start > limit:
            break
    print(f"ok={ok} err={err}")
""")


def test_fuzzed_shards_give_project_errors_or_data(tmp_path):
    """Seeded mutations of a real shard: each either reads or raises an I2EError; never another exception,
    a crash or a hang (run in a child process with a time limit, so a crash is seen, not suffered)."""
    ev = random_events(np.random.default_rng(6), 12, h=9, w=9)
    shard = write_shard(tmp_path / "s.parquet", ev, list(range(3)) * 4, group=5)
    work = tmp_path / "m"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", _FUZZ, str(shard), str(work), "150", "40", "12345"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok, err = (int(x.split("=")[1]) for x in proc.stdout.split()[-2:])
    assert err > 0 and ok + err > 0


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", [777, 2024])
def test_fuzzed_shards_long(tmp_path, seed):
    """The long run (pytest -m fuzz): 3,000 mutations per seed of a bigger shard, five minutes at most each."""
    ev = random_events(np.random.default_rng(seed), 30, h=16, w=16)
    shard = write_shard(tmp_path / "s.parquet", ev, list(range(3)) * 10, group=7)
    work = tmp_path / "m"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", _FUZZ, str(shard), str(work), "3000", "300", str(seed)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.gpu
def test_reader_on_the_gpu_pins_and_yields_the_cpu_batches(tmp_path):
    make_config(tmp_path, np.random.default_rng(8), n_train=16, n_val=4)
    train_set, _ = open_parquet_splits(tmp_path)
    cpu = FrameLoader(train_set, 4, train=True, device="cpu", num_workers=1, with_index=True)
    gpu = FrameLoader(train_set, 4, train=True, device="cuda", num_workers=1, with_index=True, dtype=torch.bfloat16)
    assert gpu._loader.pin_memory
    n = 0
    for (e1, l1, i1), (e2, l2, i2) in zip(cpu, gpu):
        assert e2.is_cuda and torch.equal(e1, e2.float().cpu()) and torch.equal(l1, l2.cpu()) and torch.equal(i1, i2)
        n += 1
    assert n == len(cpu) == 4


def test_each_worker_reads_only_its_own_row_groups():
    groups = [(a, a + 16) for a in range(0, 256, 16)]  # 16 row groups of 16 rows
    s = RowGroupShuffleSampler(groups, num_replicas=1, rank=0, seed=3, window=2, batch_size=8, streams=4)
    order = list(s)
    assert sorted(order) == list(range(256))
    batches = [order[i:i + 8] for i in range(0, 256, 8)]
    per_worker = [{i // 16 for k, b in enumerate(batches) if k % 4 == w for i in b} for w in range(4)]
    assert all(len(g) == 4 for g in per_worker)  # 16 groups / 4 workers: no group read by two workers
    assert len(set.union(*per_worker)) == 16
    assert s.fingerprint == "row-groups/window2/streams4"
