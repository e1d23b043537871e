"""Fuzzing every reader with seeded mutations of real files: each input parses, or raises the project's
own error naming the file. Never another exception type, never a crash, never a hang.

The readers run in a separate process (tests/fuzz_runner.py), so a native crash or a hang is caught and
pinned on its input instead of killing pytest. The short run (every suite) takes a few seconds per
reader; ``pytest -m fuzz -s`` runs the large one and prints the figures.
"""
from __future__ import annotations

import collections
import gzip
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from damage import GENERIC, json_values, mutate, zip_member
from loader_data import write_cifar

HERE = Path(__file__).resolve().parent
READERS = ("npz_dense", "npz_sparse", "npz_authors", "meta", "aedat", "dvs_cache", "gif", "cifar", "checkpoint",
           "idx", "tar", "wds_index", "shard_manifest", "folder_index")
PER_INPUT_LIMIT_S = 20


def _events(rng: np.random.Generator, t=8, hw=16) -> np.ndarray:
    return rng.random((t, 2, hw, hw)) < 0.1


def make_seeds(root: Path, official: Path | None) -> dict[str, list[Path]]:
    """Real files of every kind the project reads, written by the project's own writers."""
    from i2e_dali.data.dvs import FrameCache
    from i2e_dali.data.npz import META_NAME, dense_to_sparse, write_npz
    from i2e_dali.tools.viz import write_gif
    from i2e_dali.training.checkpoint import CKPT_FORMAT, save_checkpoint

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, list[Path]] = collections.defaultdict(list)
    for i in range(2):
        ev = _events(rng)
        for fmt in ("dense", "sparse"):
            p = root / f"{fmt}{i}.npz"
            with open(p, "wb") as f:
                write_npz(f, ev, fmt)
            seeds[f"npz_{fmt}"].append(p)
        p = root / f"authors{i}.npz"
        np.savez_compressed(p, dense_to_sparse(ev))  # the authors' files: the matrix only
        seeds["npz_authors"].append(p)
    split = root / "metasplit"
    (split / "c").mkdir(parents=True)
    shutil.copy(seeds["npz_authors"][0], split / "c" / "a.npz")
    (split / META_NAME).write_text(json.dumps({"timesteps": 8, "height": 16, "width": 16, "format": "sparse",
                                                "ratio": 0.07, "order": "efghabcd"}))
    seeds["meta"].append(split)
    # AEDAT 2.0: '#' header lines, then big-endian (address, timestamp) records
    rec = root / "rec.aedat"
    words = [((int(rng.integers(128)) << 8) | (int(rng.integers(128)) << 1) | int(rng.integers(2)), 10 * i)
             for i in range(300)]
    rec.write_bytes(b"#!AER-DAT2.0\r\n# fuzz seed\r\n" + b"".join(
        a.to_bytes(4, "big") + t.to_bytes(4, "big") for a, t in words))
    seeds["aedat"].append(rec)
    cache = FrameCache(root / "cache", 8)
    cache.dir.mkdir(parents=True)
    entry = cache.path_for(rec)
    cache.build(rec, entry)
    seeds["dvs_cache"].append(entry)
    gif = write_gif(_events(rng), root / "ev.gif")
    seeds["gif"].append(gif)
    if official is not None:
        seeds["gif"].append(sorted(official.glob("*_es.gif"))[0])
    folder, _ = write_cifar(root / "cifar", per_batch=4)
    seeds["cifar"].append(folder)
    state = {"format": CKPT_FORMAT, "model": {"conv.weight": torch.randn(4, 2, 3, 3), "fc.weight": torch.randn(3, 4)},
             "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 1}, "epoch": 1,
             "step_in_epoch": 0, "global_step": 10, "best_top1": 12.5, "arch": "msresnet18", "width": 4,
             "num_classes": 3, "ranks": []}
    seeds["checkpoint"].append(save_checkpoint(state, root / "last.pt"))
    # MNIST IDX files, plain and gzipped: magic (0, 0, type 0x08 uint8, ndim), big-endian uint32 sizes, data
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    idx = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in images.shape) + images.tobytes()
    (root / "t10k-images-idx3-ubyte").write_bytes(idx)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
    seeds["idx"] += [root / "t10k-images-idx3-ubyte", root / "t10k-images-idx3-ubyte.gz"]
    _shard_seeds(root, seeds)
    return seeds


def _shard_seeds(root: Path, seeds) -> None:
    """Tar shards (i2e-shard's and webdataset.TarWriter's), a shard + DALI index pair, a shard folder with its
    manifest, and a folder index: the inputs of issue 20's readers."""
    import io as _io

    import webdataset as wds
    from PIL import Image

    from i2e_dali.data.folder_index import index_folder
    from i2e_dali.tools.shard import main as shard_main
    from loader_data import make_folder

    ds = make_folder(root / "folderset" / "train", {"a": 2, "b": 2}, size=(16, 16))
    assert shard_main([str(ds.parent), str(root / "wds"), "--shard-size", "4k", "--workers", "1"]) == 0
    tars = sorted((root / "wds" / "train").glob("*.tar"))
    seeds["tar"].append(tars[0])
    lib = root / "lib.tar"
    with wds.TarWriter(str(lib)) as sink:
        for k in range(3):
            buf = _io.BytesIO()
            Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(buf, format="JPEG")
            sink.write({"__key__": f"s{k}", "jpg": buf.getvalue(), "cls": k})
    seeds["tar"].append(lib)
    pair = root / "pair"
    pair.mkdir()
    shutil.copy(tars[0], pair / "a.tar")
    shutil.copy(tars[0].with_suffix(".idx"), pair / "a.idx")
    seeds["wds_index"].append(pair)
    seeds["shard_manifest"].append(root / "wds" / "train")
    index_folder(ds).save(root / "folder-index.npz")
    seeds["folder_index"].append(root / "folder-index.npz")


def _ops(path: Path):
    """Byte-level damage for every file; zips also get damage behind a valid zip layer, JSON wrong values."""
    if path.suffix in (".npz", ".pt"):
        return GENERIC + (zip_member,) * 5
    if path.suffix == ".json":
        return GENERIC + (json_values,) * 5
    return GENERIC


def make_inputs(seeds: dict[str, list[Path]], out: Path, per_reader: int, seed: int) -> list[dict]:
    """``per_reader`` mutated copies per reader (folder inputs: one file inside mutated)."""
    jobs = []
    for reader in READERS:
        for i in range(per_reader):
            rng = random.Random(f"{seed}/{reader}/{i}")
            src = rng.choice(seeds[reader])
            if src.is_dir():
                dst = out / reader / f"{i:05d}"
                shutil.copytree(src, dst)
                files = sorted(p for p in dst.rglob("*") if p.is_file())
                if reader == "cifar":  # mostly the batch, sometimes the class names
                    files = [dst / "test_batch"] * 4 + [dst / "batches.meta"]
                elif reader == "meta":  # mostly the metadata, sometimes the events it describes
                    files = [p for p in files if p.name.endswith(".json")] * 3 + files
                elif reader in ("wds_index", "shard_manifest"):  # mostly the index / manifest, sometimes a tar
                    files = [p for p in files if p.suffix in (".idx", ".npz")] * 3 + files
                victim = rng.choice(files)
                victim.write_bytes(mutate(victim.read_bytes(), rng, _ops(victim)))
            else:
                dst = out / reader / f"{i:05d}{src.suffix}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(mutate(src.read_bytes(), rng, _ops(src)))
            jobs.append({"reader": reader, "path": str(dst)})
    return jobs


def run_jobs(jobs: list[dict], workdir: Path, timeout_s: float) -> list[tuple[str, str]]:
    """(outcome, detail) per job; a runner that dies is restarted after the input it died on."""
    spec = workdir / "jobs.json"
    spec.write_text(json.dumps(jobs))
    results: dict[int, tuple[str, str]] = {}
    start = 0
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while start < len(jobs):
        proc = subprocess.run([sys.executable, str(HERE / "fuzz_runner.py"), str(spec), str(start),
                               str(PER_INPUT_LIMIT_S)], capture_output=True, text=True, timeout=timeout_s, env=env)
        last = None
        for line in proc.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "S":
                last = int(rest)
            elif kind == "E":
                i, outcome, detail = rest.split(" ", 2)
                results[int(i)] = (outcome, json.loads(detail))
                last = None
        if proc.returncode == 0:
            break
        if last is None:
            raise AssertionError(f"the fuzz runner failed outside a reader (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        how = "hang" if proc.returncode == -14 else "crash"  # -14: SIGALRM, the per-input time limit
        results[last] = (how, f"runner died with {proc.returncode}: {proc.stderr[-500:]}")
        start = last + 1
    return [results[i] for i in range(len(jobs))]


def _fuzz(tmp_path, official, per_reader: int, seed: int, timeout_s: float):
    seeds = make_seeds(tmp_path / "seeds", official)
    jobs = make_inputs(seeds, tmp_path / "inputs", per_reader, seed)
    results = run_jobs(jobs, tmp_path, timeout_s)
    table = collections.defaultdict(collections.Counter)
    failures = []
    for job, (outcome, detail) in zip(jobs, results):
        table[job["reader"]][outcome] += 1
        if outcome not in ("ok", "project"):
            failures.append(f"{job['reader']} {job['path']}: {outcome}: {detail}")
    print(f"\nfuzz seed {seed}: {len(jobs)} inputs")
    for reader in READERS:
        print(f"  {reader:12s} " + ", ".join(f"{k} {v}" for k, v in sorted(table[reader].items())))
    assert not failures, "\n".join(failures[:20])
    # the mutations reach past the first check: some inputs still parse, most are refused
    for reader in READERS:
        assert table[reader]["project"] > 0, reader
    return table


@pytest.fixture
def maybe_official():
    from conftest import OFFICIAL_SAMPLES

    return OFFICIAL_SAMPLES if any(OFFICIAL_SAMPLES.glob("*_es.gif")) else None


def test_fuzz_readers_short(tmp_path, maybe_official):
    _fuzz(tmp_path, maybe_official, per_reader=30, seed=2026, timeout_s=240)


@pytest.mark.fuzz
def test_fuzz_readers_long(tmp_path, maybe_official):
    _fuzz(tmp_path, maybe_official, per_reader=int(os.environ.get("I2E_FUZZ_N", "1000")),
          seed=int(os.environ.get("I2E_FUZZ_SEED", "7")), timeout_s=3600)


# --------------------------------------------------------------------------------------------------
# hostile files made by hand: each claims a huge allocation and must be refused before it is made
# --------------------------------------------------------------------------------------------------
def _npz_with_header(path: Path, shape, dtype="|u1", body: bytes = b"", compress=True, arrays=()):
    import zipfile

    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    h = repr(header).encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + body
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        zf.writestr("arr_0.npy", npy)
        for name, data in arrays:
            zf.writestr(name, data)
    return path


def test_hostile_npz_files_are_refused_before_allocating(tmp_path):
    import io
    import tracemalloc
    import zipfile

    from i2e_dali.data.npz import load_events, read_npz_info
    from i2e_dali.errors import NpzFormatError

    huge = _npz_with_header(tmp_path / "huge.npz", (2**31, 4), body=b"\0" * 64)  # 2^31 events, 8 GiB
    stored = _npz_with_header(tmp_path / "stored.npz", (2**31, 4), body=b"\0" * 64, compress=False)
    tracemalloc.start()
    for p in (huge, stored):
        with pytest.raises(NpzFormatError, match=rf"{p.name}.*claims shape \[2147483648, 4\]"):
            load_events(p, (8, 16, 16))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing near the claimed 8 GiB was allocated
    # a stored frame shape of 10^12 cells, an object array, an unknown compression method
    buf = io.BytesIO()
    np.save(buf, np.array([8, 10**6, 10**6], dtype=np.int64))
    shape = _npz_with_header(tmp_path / "shape.npz", (1, 4), body=b"\0" * 4, arrays=[("shape.npy", buf.getvalue())])
    with pytest.raises(NpzFormatError, match=r"shape.npz.*not a plausible frame shape"):
        load_events(shape)
    with pytest.raises(NpzFormatError, match=r"obj.npz.*object"):
        load_events(_npz_with_header(tmp_path / "obj.npz", (1, 4), dtype="|O"))
    odd = tmp_path / "method.npz"
    with zipfile.ZipFile(odd, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("arr_0.npy", b"\x93NUMPY" + b"\0" * 100)
    data = bytearray(odd.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # set the compression method in both headers to 99
        i = data.find(sig)
        off = i + (8 if sig == b"PK\x03\x04" else 10)
        data[off:off + 2] = (99).to_bytes(2, "little")
    odd.write_bytes(bytes(data))
    for fn in (load_events, read_npz_info):
        with pytest.raises(NpzFormatError, match=r"method.npz.*NotImplementedError"):
            fn(odd)


def test_hostile_gif_and_metadata_are_refused(tmp_path):
    from i2e_dali.data.npz import NpzEventDataset, read_meta
    from i2e_dali.errors import EventGIFError, NpzFormatError
    from i2e_dali.tools.viz import gif_to_events, write_gif

    gif = write_gif(np.zeros((2, 2, 8, 8), bool), tmp_path / "small.gif")
    for side, match in ((65535, "decompression bomb"), (8000, "8000 x 8000 pixels")):  # 4.3e9 / 6.4e7 pixels
        data = bytearray(gif.read_bytes())
        data[6:10] = side.to_bytes(2, "little") * 2  # logical screen
        i = data.find(b"\x2c")  # image descriptor: its size too
        data[i + 5:i + 9] = side.to_bytes(2, "little") * 2
        (tmp_path / "big.gif").write_bytes(bytes(data))
        with pytest.raises(EventGIFError, match=rf"big.gif.*{match}"):
            gif_to_events(tmp_path / "big.gif")
    (tmp_path / "junk.gif").write_bytes(b"GIF89a" + b"\xff" * 40)
    with pytest.raises(EventGIFError, match="junk.gif"):
        gif_to_events(tmp_path / "junk.gif")
    split = tmp_path / "split"
    (split / "c").mkdir(parents=True)
    np.savez_compressed(split / "c" / "a.npz", np.zeros((3, 4), np.uint8))
    for bad, match in (("[8, 16, 16]", "must be a JSON object"), ("{\"timesteps\": 8, \"height\": -1, \"width\": 4}",
                                                                  "not a plausible frame shape"),
                       ("{\"timesteps\": \"x\", \"height\": 1, \"width\": 4}", "must hold"),
                       ("\xff\xfe", "unreadable metadata")):
        (split / "i2e_meta.json").write_bytes(bad.encode("latin-1"))
        with pytest.raises(NpzFormatError, match=match) as err:
            NpzEventDataset(split)
        assert "i2e_meta.json" in str(err.value)
    assert read_meta(tmp_path / "nowhere") is None


def test_damaged_cifar_batches_and_checkpoint_fields(tmp_path):
    from i2e_dali.data.sources import CifarSource, DatasetError
    from i2e_dali.errors import CheckpointError
    from i2e_dali.training.checkpoint import CKPT_FORMAT, load_checkpoint, save_checkpoint

    folder, _ = write_cifar(tmp_path, per_batch=2)
    cases = {
        "list": [1, 2, 3],
        "no array": {b"data": [[1] * 3072], b"labels": [0]},
        "short names": {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"filenames": [b"a"]},
        "bad utf8": {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"filenames": [b"\xff\xfe"]},
    }
    for what, obj in cases.items():
        with open(folder / "test_batch", "wb") as f:
            pickle.dump(obj, f)
        with pytest.raises(DatasetError, match="test_batch") as err:
            CifarSource(folder, train=False)
        assert "test_batch" in str(err.value), what
    (folder / "test_batch").write_bytes(pickle.dumps({b"x": 1})[:-3] + b"\x00\x01")
    with pytest.raises(DatasetError, match="test_batch is not a readable CIFAR"):
        CifarSource(folder, train=False)
    good = {"format": CKPT_FORMAT, "model": {"w": torch.zeros(1)}, "optimizer": {}, "scheduler": {}, "epoch": 1,
            "step_in_epoch": 0, "global_step": 3, "best_top1": 1.0}
    assert load_checkpoint(save_checkpoint(good, tmp_path / "ok.pt"))["global_step"] == 3
    for field, value in (("model", {"w": 3}), ("epoch", -1), ("optimizer", None), ("best_top1", "high"),
                         ("ranks", {"0": 1})):
        path = save_checkpoint({**good, field: value}, tmp_path / f"{field}.pt")
        with pytest.raises(CheckpointError, match=rf"{field}.pt: damaged checkpoint: '{field}'"):
            load_checkpoint(path)
    # a resume needs every field the trainer restores; a missing one is named too
    from i2e_dali.training.checkpoint import check_compatible

    partial = load_checkpoint(save_checkpoint({k: v for k, v in good.items() if k != "scheduler"},
                                              tmp_path / "partial.pt"))
    with pytest.raises(CheckpointError, match=r"partial.pt: damaged checkpoint: 'scheduler' is missing"):
        check_compatible(partial, arch="msresnet18", width=64, dataset="demo", num_classes=3, class_names=[],
                         source=str(tmp_path / "partial.pt"))
