"""WebDataset tar shards: i2e-shard writes them, ShardSource + EventLoader read them through DALI's
webdataset reader. Done-when checks of issue 20: eval over shards == eval over the folder image for image;
train epochs over shards visit every sample once across ranks (also under a real 2-process torchrun);
exact mid-epoch resume; shards written by the webdataset library read too; damaged input -> DatasetError
naming the shard (and member)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from i2e_dali.data.event_loader import EventLoader
from i2e_dali.data.shards import ShardSource, expand_braces, index_path_of
from i2e_dali.data.sources import open_source
from i2e_dali.errors import DatasetError, MissingDataError
from i2e_dali.tools.shard import main as shard_main
from i2e_dali.tools.shard import verify
from loader_data import make_folder

VIEW = dict(device="cpu", crop_size=24, resize_size=28, with_index=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_folder(root / "ds" / "train", {"ant": 6, "bee": 5, "cat": 5}, size=(30, 34))
    make_folder(root / "ds" / "val", {"ant": 3, "bee": 2, "cat": 4}, size=(30, 34), seed=1)
    assert shard_main([str(root / "ds"), str(root / "wds"), "--shard-size", "8k", "--workers", "2"]) == 0
    return root


def test_layout_and_manifest(data):
    wds = data / "wds"
    train = ShardSource(str(wds / "train"))
    folder = open_source(data / "ds", "train")
    assert train.classes == folder.classes == ["ant", "bee", "cat"]
    assert len(train.shards) > 3 and all(os.path.exists(index_path_of(s)) for s in train.shards)
    # every folder image once, with its label; member keys are the folder's indices
    keys = [int(train.member_name(i).split(".")[0]) for i in range(len(train))]
    assert sorted(keys) == list(range(len(folder)))
    assert train.label_array.tolist() == [int(folder.label_array[k]) for k in keys]
    assert keys != sorted(keys)  # globally shuffled
    with tarfile.open(train.shards[0]) as tar:  # bytes are the original files'
        first = tar.getmembers()[0]
        assert tar.extractfile(first).read() == Path(folder.path(int(first.name.split(".")[0]))).read_bytes()
    assert verify(wds, progress=lambda *_: None) == len(folder) + len(open_source(data / "ds", "val"))


def test_eval_over_shards_equals_eval_over_folder(data):
    folder = EventLoader(open_source(data / "ds", "val"), 4, train=False, **VIEW)
    shards = EventLoader(ShardSource(str(data / "wds" / "val")), 4, train=False, **VIEW)
    a, b = list(folder), list(shards)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) and torch.equal(x[0], y[0])
    for _ in range(2):  # later evaluation passes (DALI rewinds the same pipeline) give the same batches
        for x, y in zip(a, list(shards)):
            assert torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) and torch.equal(x[0], y[0])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_epochs_visit_every_sample_once_across_ranks(data, world):
    src = ShardSource(str(data / "wds" / "train"))
    n = len(src)
    loaders = [EventLoader(src, 1, train=True, shard_id=r, num_shards=world, **VIEW) for r in range(world)]
    orders = []
    for _epoch in range(2):
        seen = [int(i) for ld in loaders for b in ld for i in b[2].tolist()]
        per_rank = n // world
        assert len(seen) == per_rank * world and len(set(seen)) == len(seen)  # disjoint, none twice
        if world == 1:
            assert sorted(seen) == list(range(n))
        orders.append(seen)
    assert orders[0] != orders[1]  # a new order every epoch
    for ld in loaders:  # labels come with the right ids
        for b in ld:
            assert b[1].tolist() == src.label_array[b[2].numpy()].tolist()


def test_exact_resume_mid_epoch(data):
    src = ShardSource(str(data / "wds" / "train"))
    ref = EventLoader(src, 3, train=True, **VIEW)
    list(ref)  # epoch 0 done; resume inside epoch 1
    it = iter(ref)
    next(it)
    state = ref.state_dict()
    rest = list(it)
    again = EventLoader(src, 3, train=True, **VIEW)
    again.load_state_dict(state)
    got = list(again)
    assert len(got) == len(rest) > 0
    for x, y in zip(rest, got):
        assert torch.equal(x[0], y[0]) and torch.equal(x[2], y[2])


def test_resumable_and_atomic_writer(data, tmp_path):
    out = tmp_path / "w"
    assert shard_main([str(data / "ds"), str(out), "--shard-size", "8k", "--workers", "1", "--splits", "val"]) == 0
    shards = sorted((out / "val").glob("*.tar"))
    before = {p.name: p.read_bytes() for p in shards}
    shards[1].unlink()
    index_path = Path(index_path_of(str(shards[2])))
    index_path.write_text("v1.2 1\njpeg 512 10 x.jpeg\n")  # a killed run's mismatched index: redone
    stamp = {p.name: p.stat().st_mtime_ns for p in shards if p.exists()}
    assert shard_main([str(data / "ds"), str(out), "--shard-size", "8k", "--workers", "1", "--splits", "val"]) == 0
    assert {p.name: p.read_bytes() for p in sorted((out / "val").glob("*.tar"))} == before
    assert shards[0].stat().st_mtime_ns == stamp[shards[0].name]  # complete shards are not rewritten
    assert not list((out / "val").glob(".*"))  # no temp files left


def test_webdataset_library_shards_read(tmp_path):
    """Shards written by webdataset.TarWriter (.jpg/.cls, no index): refused until indexed, then read."""
    import webdataset as wds
    from PIL import Image

    from loader_data import smooth_image

    rng = np.random.default_rng(3)
    folder = tmp_path / "lib"
    folder.mkdir()
    want = []
    for k in range(2):
        with wds.TarWriter(str(folder / f"part-{k:03d}.tar")) as sink:
            for j in range(5):
                img = smooth_image(rng, 28, 30)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
                label = int(rng.integers(0, 3))
                sink.write({"__key__": f"sample{k}{j:03d}", "jpg": buf.getvalue(), "cls": label})
                want.append((buf.getvalue(), label))
    pattern = str(folder / "part-{000..001}.tar")
    assert expand_braces(pattern) == [str(folder / "part-000.tar"), str(folder / "part-001.tar")]
    with pytest.raises(MissingDataError, match="part-000.tar has no index file"):
        ShardSource(pattern)
    scanned = ShardSource(pattern, scan_missing=True)
    assert scanned.label_array.tolist() == [lab for _, lab in want]
    assert shard_main(["--index", str(folder)]) == 0
    src = ShardSource(str(folder))  # the manifest --index wrote
    listed = tmp_path / "list.txt"
    listed.write_text("lib/part-000.tar\nlib/part-001.tar\n")
    assert ShardSource(str(listed)).label_array.tolist() == src.label_array.tolist() == [lab for _, lab in want]
    batches = list(EventLoader(src, 4, train=False, **VIEW))
    assert torch.cat([b[1] for b in batches]).tolist() == [lab for _, lab in want]
    # the same JPEGs as a class folder give the same events, sample for sample
    for j, (jpg, lab) in enumerate(want):
        d = tmp_path / "asfolder" / "val" / f"c{lab}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{j:03d}.jpg").write_bytes(jpg)
    fsrc = open_source(tmp_path / "asfolder", "val")
    by_j = {}
    for b in EventLoader(fsrc, 4, train=False, **VIEW):
        for k, i in enumerate(b[2].tolist()):
            by_j[int(Path(fsrc.path(i)).stem)] = b[0][:, k]
    for b in batches:
        for k, j in enumerate(b[2].tolist()):
            assert torch.equal(b[0][:, k], by_j[j])
    assert len(by_j) == len(want)


def _fresh_copy(data, tmp_path, split="val") -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(data / "wds" / split, dst)
    shutil.copy(data / "wds" / "classes.json", tmp_path / "classes.json")
    return dst


def test_damaged_shards_are_named(data, tmp_path):
    d = _fresh_copy(data, tmp_path)
    shards = sorted(d.glob("*.tar"))
    # truncated tar: the manifest's size no longer matches
    shards[0].write_bytes(shards[0].read_bytes()[:2000])
    with pytest.raises(DatasetError, match=f"{shards[0].name}.*truncated"):
        ShardSource(str(d))
    # a missing shard
    os.unlink(d / "shards.npz")
    shards[1].unlink()
    with pytest.raises(MissingDataError, match=shards[1].name):
        ShardSource([str(shards[1]), str(shards[2])])
    # an index that does not match its tar (points past its end), read without the manifest
    with pytest.raises(DatasetError, match=f"does not match tar shard .*{shards[0].name}"):
        ShardSource([str(shards[0])])
    # a missing index
    os.unlink(index_path_of(str(shards[2])))
    with pytest.raises(MissingDataError, match=f"{shards[2].name} has no index file"):
        ShardSource([str(shards[2])])
    # a damaged manifest
    (d / "shards.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DatasetError, match="shards.npz"):
        ShardSource(str(d))


def test_member_without_label_and_bad_label(tmp_path):
    from i2e_dali.tools.shard import index_shards

    def write(path, members):
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))

    jpg = b"\xff\xd8not decoded here\xff\xd9"
    write(tmp_path / "a.tar", [("k1.jpg", jpg), ("k1.cls", b"1"), ("k2.jpg", jpg)])
    with pytest.raises(DatasetError, match=r"a.tar: sample 'k2' has no .cls member"):
        index_shards(str(tmp_path / "a.tar"), progress=lambda *_: None)
    with pytest.raises(DatasetError, match=r"a.tar: sample 'k2' has no .cls member"):
        ShardSource([str(tmp_path / "a.tar")])  # the index was written; the label is still missing
    write(tmp_path / "b.tar", [("k1.jpg", jpg), ("k1.cls", b"one")])
    with pytest.raises(DatasetError, match=r"b.tar: member 'k1.cls' should hold a class number"):
        ShardSource([str(tmp_path / "b.tar")], scan_missing=True)
    write(tmp_path / "c.tar", [("k1.cls", b"1")])
    with pytest.raises(DatasetError, match=r"c.tar: sample 'k1' has no image member"):
        ShardSource([str(tmp_path / "c.tar")], scan_missing=True)
    (tmp_path / "d.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DatasetError, match="d.tar"):
        index_shards(str(tmp_path / "d.tar"), progress=lambda *_: None)


def test_undecodable_member_names_the_shard(data, tmp_path):
    """Damage inside an image member (same size: the manifest still matches): DALI's decode error becomes a
    DatasetError naming the shard and the member."""
    d = _fresh_copy(data, tmp_path)
    src = ShardSource(str(d))
    shard = src.shards[0]
    off, size = int(src._offset[0]), int(src._size[0])
    raw = bytearray(Path(shard).read_bytes())
    raw[off:off + size] = b"\x00" * size
    Path(shard).write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=rf"{Path(shard).name} \(member {src.member_name(0)}\)"):
        list(EventLoader(ShardSource(str(d)), 4, train=False, **VIEW))


_DDP_SCRIPT = r"""
import json, sys, torch, torch.distributed as dist
from i2e_dali.data.event_loader import EventLoader
from i2e_dali.data.shards import ShardSource
dist.init_process_group("gloo")
src = ShardSource(sys.argv[1])
ld = EventLoader(src, 2, train=True, device="cpu", crop_size=24, resize_size=28, with_index=True)
seen = [[int(i) for b in ld for i in b[2].tolist()] for _ in range(2)]
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, seen)
if dist.get_rank() == 0:
    print("RESULT " + json.dumps(gathered))
dist.destroy_process_group()
"""


def test_two_process_torchrun_visits_every_sample(data, tmp_path):
    from train_helpers import REPO, free_port, subprocess_env

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(script), str(data / "wds" / "train")]
    r = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    gathered = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    n = len(ShardSource(str(data / "wds" / "train")))
    for epoch in range(2):
        both = gathered[0][epoch] + gathered[1][epoch]
        assert sorted(both) == list(range(n))  # 16 images, 2 ranks x 4 batches of 2: each exactly once
    assert gathered[0][0] != gathered[0][1]


def test_make_loader_kind_wds(data):
    """make_loader(dataset="wds") reads i2e-shard's layout (DATA/train, DATA/val) with the ImageNet views."""
    from i2e_dali.data.factory import make_loader
    from i2e_dali.errors import ConfigError

    val = make_loader(str(data / "wds"), "val", 4, dataset="wds", device="cpu", size=24, with_index=True)
    folder = make_loader(str(data / "ds"), "val", 4, dataset="imagenet", device="cpu", size=24, with_index=True)
    assert val.num_classes == 3 and val.image_size == (24, 24)
    for x, y in zip(val, folder):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    train = make_loader(str(data / "wds"), "train", 4, dataset="wds", device="cpu", size=24)
    assert len(train) == 16 // 4
    with pytest.raises(ConfigError, match="exclude"):
        make_loader(str(data / "wds"), "val", 4, dataset="wds", device="cpu", source_options={"exclude": ["x"]})


@pytest.mark.gpu
def test_gpu_decode_over_shards_equals_folder(data):
    """GPU ("mixed") decode over shards gives the folder's GPU-decoded eval batches, and a train epoch runs."""
    kw = dict(device="cuda", crop_size=24, resize_size=28, with_index=True)
    folder = list(EventLoader(open_source(data / "ds", "val"), 4, train=False, **kw))
    shards = list(EventLoader(ShardSource(str(data / "wds" / "val")), 4, train=False, **kw))
    assert len(folder) == len(shards)
    for x, y in zip(folder, shards):
        assert x[0].is_cuda and torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
    train = EventLoader(ShardSource(str(data / "wds" / "train")), 4, train=True, **kw)
    assert sorted(int(i) for b in train for i in b[2].tolist()) == list(range(16))


def test_i2e_shard_under_torchrun_writes_the_same_shards(data, tmp_path):
    """Two ranks (gloo) each write their share of the shards; rank 0 writes manifest and class map after the
    barrier: the result is byte for byte what one process writes."""
    from train_helpers import REPO, free_port, subprocess_env

    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "i2e_dali.tools.shard", str(data / "ds"), str(out), "--shard-size", "8k", "--workers", "1"]
    r = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for split in ("train", "val"):
        mine = sorted(p.name for p in (out / split).iterdir())
        assert mine == sorted(p.name for p in (data / "wds" / split).iterdir())
        for name in mine:
            if not name.endswith(".npz"):
                assert (out / split / name).read_bytes() == (data / "wds" / split / name).read_bytes(), name
        a, b = ShardSource(str(out / split)), ShardSource(str(data / "wds" / split))
        assert a.label_array.tolist() == b.label_array.tolist() and a.samples == [
            (s.replace(str(data / "wds"), str(out)), lab) for s, lab in b.samples]
    assert (out / "classes.json").read_text() == (data / "wds" / "classes.json").read_text()


def test_verify_finds_index_and_content_mismatches(data, tmp_path):
    import shutil

    out = tmp_path / "v"
    shutil.copytree(data / "wds", out)
    assert verify(out, progress=lambda *_: None) == 16 + 9
    idx = Path(index_path_of(str(sorted((out / "val").glob("*.tar"))[0])))
    good = idx.read_text()
    lines = good.splitlines()
    a, b = lines[1].split(), lines[2].split()  # swap two samples' image members: offsets inside the tar, wrong
    lines[1], lines[2] = " ".join(b[:4] + a[4:]), " ".join(a[:4] + b[4:])
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=f"index file .*{idx.name} does not match tar shard"):
        verify(out, progress=lambda *_: None)
    idx.write_text(good)
    tar = sorted((out / "train").glob("*.tar"))[0]  # a label changed inside the tar (same size)
    raw = bytearray(tar.read_bytes())
    src = ShardSource(str(out / "train"))
    with tarfile.open(tar) as t:
        cls = next(m for m in t.getmembers() if m.name.endswith(".cls"))
    raw[cls.offset_data] = ord("2") if raw[cls.offset_data] != ord("2") else ord("1")
    tar.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=f"{tar.name}: member .* differs from the manifest"):
        verify(out, progress=lambda *_: None)
    assert len(src) == 16
