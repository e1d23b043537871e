"""EventLoader on the CPU: exact events, labels, epochs, last-batch policy, sharding, exact resume."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch

from i2e_dali.data.sources import CifarSource, ImageFolderSource
from i2e_dali.convert import i2e_convert
from loader_data import event_loader as EventLoader
from loader_data import dali_pixels, make_folder, write_cifar

COUNTS = {"cat": 5, "ant": 4, "dog": 6}  # 15 images; sorted classes: ant=0, cat=1, dog=2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs") / "train", COUNTS, seed=1)


@pytest.fixture(scope="module")
def source(folder):
    return ImageFolderSource(folder)


def small(source, batch, **kw):
    kw.setdefault("crop_size", 16)
    kw.setdefault("resize_size", 20)
    kw.setdefault("num_threads", 1)
    kw.setdefault("device", "cpu")
    return EventLoader(source, batch, **kw)


def run_epoch(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_eval_events_equal_conversion_of_decoded_pixels(official_samples, tmp_path):
    # 12 real ImageNet photos in two class folders; loader events vs i2e_convert on pixels decoded
    # and viewed by an independently built DALI CPU pipeline.
    photos = sorted(official_samples.glob("*_rgb.jpg"))[:12]
    for i, p in enumerate(photos):
        d = tmp_path / ("a" if i % 2 else "b")
        d.mkdir(exist_ok=True)
        shutil.copy(p, d / p.name)
    src = ImageFolderSource(tmp_path)
    for view in ("crop", "resize"):
        loader = EventLoader(src, 5, train=False, device="cpu", num_threads=2, eval_view=view, with_index=True,
                             crop_size=224 if view == "crop" else 160, resize_size=256)
        assert loader.image_size == ((224, 224) if view == "crop" else (160, 160))
        seen = []
        for events, labels, idx in loader:
            files = [src.samples[i][0] for i in idx.tolist()]
            pix = torch.from_numpy(np.stack(dali_pixels(files, view=view, crop=loader.crop_size, resize=256)))
            ref = i2e_convert(pix, ratio=0.12, timesteps=8, train=False, impl="torch")
            assert events.dtype == torch.float32 and events.shape == ref.shape
            assert torch.equal(events, ref)
            assert labels.tolist() == [src.samples[i][1] for i in idx.tolist()]
            seen += idx.tolist()
        assert seen == list(range(12))  # eval: file order, each once


def test_labels_follow_sorted_folder_names(source):
    assert source.classes == ["ant", "cat", "dog"]
    loader = small(source, 4, train=True, with_index=True)
    assert loader.num_classes == 3 and loader.class_names == ["ant", "cat", "dog"]
    for _, labels, idx in loader:
        for lab, i in zip(labels.tolist(), idx.tolist()):
            path = source.samples[i][0]
            assert source.classes[lab] in path.split("/")[-2]
            assert labels.dtype == torch.int64 and idx.dtype == torch.int64


def test_epochs_shuffle_drop_and_len(source):
    loader = small(source, 4, train=True, with_index=True, timesteps=3, dtype=torch.bool)
    assert len(loader) == 3 and loader.num_samples == 12 and loader.total_samples == 15
    orders = []
    for _ in range(3):
        batches = run_epoch(loader)
        assert len(batches) == 3
        for ev, lab, idx in batches:
            assert ev.shape == (3, 4, 2, 16, 16) and ev.dtype == torch.bool
        ids = torch.cat([b[2] for b in batches]).tolist()
        assert len(set(ids)) == 12  # no repeats inside an epoch
        orders.append(ids)
    assert orders[0] != orders[1] != orders[2]  # fresh shuffle every epoch
    assert loader.epoch == 2  # the epoch last read (0-based); the next iter() starts epoch 3


def test_eval_keeps_and_trims_last_batch(source):
    loader = small(source, 4, train=False, with_index=True)
    assert len(loader) == 4 and loader.num_samples == 15
    for _ in range(2):
        batches = run_epoch(loader)
        assert [b[0].shape[1] for b in batches] == [4, 4, 4, 3]
        assert torch.cat([b[2] for b in batches]).tolist() == list(range(15))
    # deterministic view + canonical motions: two epochs give the same events
    a, b = run_epoch(loader), run_epoch(loader)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))


def test_every_iter_starts_a_new_epoch_and_reset_abandons(source):
    # (was: a second iter() continued the unfinished epoch; the loader contract now follows DataLoader)
    loader = small(source, 4, train=False, with_index=True)
    it = iter(loader)
    first = next(it)[2].tolist()
    assert first == [0, 1, 2, 3]
    full = [b[2].tolist() for b in loader]  # a new pass is a whole epoch
    assert full == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14]]
    assert next(it, None) is None  # the abandoned pass yields nothing more
    it = iter(loader)
    next(it)
    loader.reset()
    assert [b[2].tolist()[0] for b in loader] == [0, 4, 8, 12]  # full fresh epoch after reset
    train = small(source, 4, train=True, with_index=True, seed=5)
    ref = small(source, 4, train=True, with_index=True, seed=5)
    next(iter(train))  # epoch 0 cut short after one batch
    run_epoch(ref)  # epoch 0 read to its end
    assert _same(run_epoch(train), run_epoch(ref))  # epoch 1 does not depend on how far epoch 0 went


def test_train_views_are_random_and_eval_views_fixed(source):
    loader = small(source, 5, train=True, with_index=True, seed=3)
    e1 = {i: ev for ev, _, idx in run_epoch(loader) for i, ev in zip(idx.tolist(), ev.unbind(1))}
    e2 = {i: ev for ev, _, idx in run_epoch(loader) for i, ev in zip(idx.tolist(), ev.unbind(1))}
    common = set(e1) & set(e2)
    assert common and any(not torch.equal(e1[i], e2[i]) for i in common)


def test_seed_changes_order(source):
    a = [b[2].tolist() for b in small(source, 4, train=True, with_index=True, seed=1)]
    b = [b[2].tolist() for b in small(source, 4, train=True, with_index=True, seed=2)]
    c = [b[2].tolist() for b in small(source, 4, train=True, with_index=True, seed=1)]
    assert a != b and a == c


@pytest.mark.parametrize("num_shards,batch", [(2, 2), (3, 2), (4, 3)])
def test_explicit_shards_disjoint_and_cover(source, num_shards, batch):
    evals, trains = [], []
    for r in range(num_shards):
        ev = small(source, batch, train=False, with_index=True, shard_id=r, num_shards=num_shards)
        ids = [i for b in ev for i in b[2].tolist()]
        assert len(ids) == ev.num_samples and len(ev) == -(-ev.num_samples // batch)
        evals += ids
        tr = small(source, batch, train=True, with_index=True, shard_id=r, num_shards=num_shards)
        assert len(tr) == (15 // num_shards) // batch
        trains.append([i for _ in range(2) for b in tr for i in b[2].tolist()])
    assert sorted(evals) == list(range(15))
    # per epoch, the shards never overlap
    per_epoch = [[t[e * len(t) // 2:(e + 1) * len(t) // 2] for t in trains] for e in range(2)]
    for epoch in per_epoch:
        flat = [i for t in epoch for i in t]
        assert len(flat) == len(set(flat))


def test_batch_larger_than_train_shard_is_refused(source):
    with pytest.raises(ValueError, match="lower the batch size"):
        small(source, 8, train=True, shard_id=0, num_shards=2)


def _collect(loader, n):
    out = []
    for batch in loader:
        out.append(tuple(t.clone() for t in batch))
        if len(out) == n:
            break
    return out


def _same(a, b):
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def test_state_dict_resumes_exactly_mid_epoch(source):
    ref = small(source, 4, train=True, with_index=True, seed=7)
    it = iter(ref)
    next(it), next(it)  # two batches into epoch 0
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    expected = [tuple(t.clone() for t in b) for b in it] + run_epoch(ref) + run_epoch(ref)  # rest of 0, 1, 2
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = small(source, 4, train=True, with_index=True, seed=7)
    resumed.load_state_dict(state)
    assert resumed.epoch == 0
    got = run_epoch(resumed) + run_epoch(resumed) + run_epoch(resumed)
    assert len(got) == 1 + 3 + 3
    assert _same(expected, got)


def test_state_dict_at_epoch_boundary(source):
    ref = small(source, 4, train=True, with_index=True, seed=9)
    run_epoch(ref)
    state = ref.state_dict()
    expected = run_epoch(ref)
    resumed = small(source, 4, train=True, with_index=True, seed=9)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    assert _same(expected, run_epoch(resumed))


def test_state_dict_mismatch_is_refused(source):
    state = small(source, 4, train=True).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        small(source, 3, train=True).load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"), per_batch=6)


def test_cifar_eval_exact_pixels_and_labels(cifar):
    folder, batches = cifar
    src = CifarSource(folder.parent, train=False)
    imgs, labels = batches["test_batch"]
    loader = EventLoader(src, 4, train=False, device="cpu", num_threads=1, out_size=32, with_index=True)
    assert loader.ratio == 0.07 and loader.image_size == (32, 32) and len(loader) == 2
    got = run_epoch(loader)
    idx = torch.cat([b[2] for b in got])
    assert idx.tolist() == list(range(6))
    ref = i2e_convert(torch.from_numpy(imgs).permute(0, 3, 1, 2), ratio=0.07, train=False, impl="torch")
    assert torch.equal(torch.cat([b[0] for b in got], dim=1), ref)
    assert torch.cat([b[1] for b in got]).tolist() == labels.tolist()


def test_cifar_train_epochs_and_resume(cifar):
    folder, batches = cifar
    src = CifarSource(folder, train=True)
    assert len(src) == 30
    kw = dict(device="cpu", num_threads=1, with_index=True, seed=5, out_size=48, timesteps=4)
    loader = EventLoader(src, 4, train=True, **kw)
    assert len(loader) == 7 and loader.image_size == (48, 48)
    e0 = run_epoch(loader)
    assert len(e0) == 7 and e0[0][0].shape == (4, 4, 2, 48, 48)
    ids0 = torch.cat([b[2] for b in e0]).tolist()
    assert len(set(ids0)) == 28
    all_labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    for _, lab, idx in e0:
        assert lab.tolist() == all_labels[idx.numpy()].tolist()
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    expected = [tuple(t.clone() for t in b) for b in it] + run_epoch(loader)  # rest of epoch 1, epoch 2
    assert torch.cat([b[2] for b in expected[4:]]).tolist() != ids0[:28]  # epoch 2 reshuffled
    resumed = EventLoader(src, 4, train=True, **kw)
    resumed.load_state_dict(state)
    assert _same(expected, run_epoch(resumed) + run_epoch(resumed))


def test_cifar_shards(cifar):
    folder, _ = cifar
    src = CifarSource(folder, train=False)
    ids = []
    for r in range(4):
        ld = EventLoader(src, 4, train=False, device="cpu", num_threads=1, shard_id=r, num_shards=4, with_index=True)
        ids += [i for b in ld for i in b[2].tolist()]
    assert sorted(ids) == list(range(6))


def test_pipeline_options_pass_through_and_are_checked(source):
    ld = small(source, 4, train=False, pipeline_options={"dont_use_mmap": True, "prefetch_queue_depth": 1})
    assert sum(e.shape[1] for e, _ in ld) == 15
    with pytest.raises(ValueError, match="not a settable option"):
        small(source, 4, train=False, pipeline_options={"shard_id": 1})
    with pytest.raises(ValueError, match="not a settable option"):
        small(source, 4, train=False, pipeline_options={"no_such_knob": 1})


def test_images_mode_and_subset_feed_the_same_conversion(source, cifar):
    # convert=False hands out the uint8 views the conversion would have seen; subset() keeps order.
    picked = [7, 2, 5, 0]
    sub = source.subset(picked)
    assert sub.samples == [source.samples[i] for i in picked] and sub.classes == source.classes
    images = torch.cat([im for im, _ in small(sub, 3, train=False, convert=False)])
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
    events = torch.cat([ev for ev, _ in small(sub, 3, train=False)], dim=1)
    assert torch.equal(events, i2e_convert(images, ratio=0.12, impl="torch"))
    folder, _ = cifar
    full = CifarSource(folder, train=False)
    csub = full.subset([4, 1])
    assert csub.samples == [full.samples[4], full.samples[1]]
    assert np.array_equal(csub.images, full.images[[4, 1]]) and csub.label_array.tolist() == full.label_array[[4, 1]].tolist()
    pix = torch.cat([im for im, _ in EventLoader(csub, 2, train=False, convert=False, device="cpu", num_threads=1)])
    assert pix.shape == (2, 3, 128, 128) and pix.dtype == torch.uint8
