"""One loader contract for every data set kind, built through ``make_loader``: each ``iter()`` is a new
epoch (a peek does not eat into the next pass), epochs depend only on the seed and their number,
``set_epoch`` / ``reset`` / ``state_dict`` mean the same for EventLoader and FrameLoader, and what a loader
yields is the documented batch type."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from i2e_dali import Batch, make_loader
from i2e_dali.data.base import BatchLoader, IndexedBatch
from i2e_dali.data.demo import DemoConfig, ensure_demo_dataset
from i2e_dali.data.event_loader import EventLoader
from i2e_dali.data.frame_loader import FrameLoader
from i2e_dali.errors import ConfigError, I2EError
from loader_data import make_folder, write_cifar
from test_export_presets import make_class_folders, make_mnist
from test_parquet import make_config
from test_train_datasets import _dvs_set, _npz_set

FOLDER_VIEW = dict(crop_size=16, resize_size=18)


def _imagenet(root):
    for split, n in (("train", 5), ("val", 3)):
        make_folder(root / split, {"ant": n, "bee": n}, size=(20, 24), seed=len(split))
    return root, {}


def _caltech(root):
    make_class_folders(root / "101_ObjectCategories", {"BACKGROUND_Google": 3, "faces": 10, "leopards": 10})
    return root, {}


def _mini(root):
    make_class_folders(root / "images", {"n01": 6, "n02": 6, "n03": 5})
    return root, {}


def _cifar(variant):
    def make(root):
        write_cifar(root, variant, per_batch=5 if variant == "cifar10" else 20)
        return root, dict(out_size=32)
    return make


def _mnist(variant):
    def make(root):
        make_mnist(root / variant, n_train=20, n_test=9)
        return root / variant, dict(out_size=28)
    return make


def _npz(root):
    return _npz_set(root, per_class=(9, 4)), {}


def _parquet(root):
    make_config(root, np.random.default_rng(0), n_train=20, n_val=7)
    return root, {}


def _dvs(root):
    return _dvs_set(root / "rec", per_class=6), dict(source_options={"cache_dir": str(root / "cache"), "val_fraction": 0.4})


def _wds(root):
    """i2e-shard's tar shards of a small ImageNet-layout folder (kind "wds")."""
    from i2e_dali.tools.shard import main as shard_main

    src, _ = _imagenet(root / "src")
    assert shard_main([str(src), str(root / "shards"), "--shard-size", "4k", "--workers", "1"]) == 0
    return root / "shards", {}


def _demo(root):
    return ensure_demo_dataset(root, DemoConfig(train_per_class=4, val_per_class=2, image_size=32, num_classes=3),
                               progress=False), dict(FOLDER_VIEW)


KINDS = {
    "imagenet": _imagenet, "caltech101": _caltech, "mini-imagenet": _mini, "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"), "mnist": _mnist("mnist"), "fashionmnist": _mnist("fashionmnist"),
    "i2e-npz": _npz, "i2e-parquet": _parquet, "cifar10-dvs": _dvs, "demo": _demo, "wds": _wds,
}
FRAME = ("i2e-npz", "i2e-parquet", "cifar10-dvs")


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind_data(request, tmp_path_factory):
    kind = request.param
    root, extra = KINDS[kind](tmp_path_factory.mktemp(kind))
    if kind in ("imagenet", "caltech101", "mini-imagenet", "wds"):
        extra = {**FOLDER_VIEW, **extra}
    return kind, root, extra


def build(kind_data, split, batch=2, **kw):
    kind, root, extra = kind_data
    opts = dict(dataset=kind, device="cpu", workers=1, with_index=True, seed=3, **extra)
    if kind in FRAME:
        opts["workers"] = 0
    if kind == "demo":  # a small demo set built by the fixture, read as the ImageNet layout it is
        opts["dataset"] = "imagenet"
    opts.update(kw)
    return make_loader(root, split, batch, **opts)


def ids(batches):
    return [b[-1].tolist() for b in batches]  # with_index: the indices are the last field


def clone(loader_or_iter):
    return [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in b) for b in loader_or_iter]


def same(a, b):
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def test_contract(kind_data):
    kind = kind_data[0]
    for split in ("train", "val"):
        loader = build(kind_data, split)
        assert isinstance(loader, BatchLoader)
        assert isinstance(loader, FrameLoader if kind in FRAME else EventLoader)
        assert loader.train == (split == "train") and len(loader) >= 1 and loader.num_classes >= 2
        iter(loader)  # made and dropped unread (Lightning's "is it iterable" check): starts no epoch
        first = next(iter(loader))  # a peek, the way Lightning's sanity check and `next(iter(val))` take one
        assert isinstance(first, IndexedBatch)
        events, labels, idx = first
        assert events.dim() == 5 and events.shape[1] == labels.shape[0] == idx.shape[0]
        full = clone(loader)  # ... then a full pass: a whole epoch, not the rest of the peeked one
        assert len(full) == len(loader)
        flat = sum(ids(full), [])
        assert len(flat) == len(set(flat)) == loader.num_samples
        ref = build(kind_data, split)
        epochs = [clone(ref) for _ in range(3)]
        if split == "val":
            assert same(full, epochs[0]) and flat == sorted(flat)
            assert len(flat) == len(ref.dataset if kind in FRAME else ref.source)  # every sample once
        else:
            assert same(full, epochs[1])  # the peek started epoch 0; this pass was epoch 1, whole
            assert ids(epochs[0]) != ids(epochs[1])  # reshuffled per epoch
            loader.set_epoch(0)  # set_epoch: the next pass is that epoch, from its first batch
            assert same(clone(loader), epochs[0])
        # exact resume mid-epoch through torch.save / weights_only load
        run = build(kind_data, split)
        it = iter(run)
        next(it)
        buf = io.BytesIO()
        torch.save(run.state_dict(), buf)
        rest = clone(it)
        buf.seek(0)
        resumed = build(kind_data, split)
        resumed.load_state_dict(torch.load(buf, weights_only=True))
        assert same(clone(resumed), rest)
        assert same(clone(resumed), epochs[1])  # and the pass after it is the next epoch
        # a state saved after the epoch was abandoned (a newer iter(), or reset()) starts the next epoch
        for abandon in ("iter", "reset"):
            cut = build(kind_data, split)
            next(iter(cut))
            iter(cut) if abandon == "iter" else cut.reset()
            again = build(kind_data, split)
            again.load_state_dict(cut.state_dict())
            assert same(clone(again), epochs[1] if split == "train" else epochs[0]), abandon
        # reset() abandons the epoch; the next pass is the next epoch, whole; the old pass ends
        it = iter(run)  # epoch 1
        next(it)
        run.reset()
        assert same(clone(run), epochs[2] if split == "train" else epochs[0])
        assert next(it, None) is None


def test_default_batch_unpacks_as_events_labels(kind_data):
    loader = build(kind_data, "val", with_index=False)
    batch = next(iter(loader))
    assert type(batch) is Batch and batch._fields == ("events", "labels")
    events, labels = batch
    assert labels.dtype == torch.int64 and events is batch.events


def test_bad_arguments_name_the_argument(tmp_path):
    root, _ = _imagenet(tmp_path / "d")
    for kw, name in ((dict(dataset="imagenette"), "dataset"), (dict(train=True, split="val"), "train=True"),
                     (dict(conversion="fast"), "conversion"), (dict(split="test"), "split"),
                     (dict(batch_size=0), "batch_size"), (dict(dali={"decode": "gpu"}), "dali"),
                     (dict(flip=True), "flip"), (dict(dataset="i2e-npz", mix=lambda x, y: (x, y)), "mix")):
        args = dict(split="train", batch_size=2, device="cpu", **({} if "mix" in kw else FOLDER_VIEW))
        args.update(kw)
        split, batch = args.pop("split"), args.pop("batch_size")
        with pytest.raises(ConfigError, match=name) as err:
            make_loader(root, split, batch, **args)
        assert isinstance(err.value, I2EError) and isinstance(err.value, ValueError)


def test_device_names_are_checked():
    from i2e_dali.placement import resolve_device

    assert resolve_device("auto") == (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                                      else torch.device("cpu"))
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")


@pytest.mark.gpu
def test_auto_device_follows_local_rank_when_the_loader_is_built(monkeypatch):
    from i2e_dali.placement import resolve_device

    n = torch.cuda.device_count()
    torch.cuda.set_device(0)  # a loader built before torch.cuda.set_device(local_rank) must not land here
    for local in range(n + 1):
        monkeypatch.setenv("LOCAL_RANK", str(local))
        assert resolve_device("auto") == torch.device("cuda", local % n)
        assert resolve_device("cuda") == torch.device("cuda", local % n)
