"""pipelines/: the DALI graphs on their own (no torch inside), checked against numpy references."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from loader_data import dali_pixels, make_folder, smooth_image
from pipelines.cifar import CifarFeed, CifarPipelineConfig, build_cifar_pipeline, shard_bounds
from pipelines.folder import FolderPipelineConfig, build_folder_pipeline


def run_folder(files, cfg, iters=1):
    pipe = build_folder_pipeline([str(f) for f in files], list(range(len(files))), cfg)
    pipe.build()
    out = []
    for _ in range(iters):
        images, ids = pipe.run()
        out += [(np.array(images[i]), int(np.array(ids[i]).reshape(-1)[0])) for i in range(len(ids))]
    return out


def test_pipelines_do_not_import_torch():
    code = "import sys, pipelines.folder, pipelines.cifar; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(20, 26), (26, 20), (20, 20), (22, 30)]):
        p = root / f"img{i}.JPEG"
        Image.fromarray(smooth_image(rng, h, w)).save(p, quality=95)
        paths.append(p)
    return paths


def test_eval_crop_view_is_a_centre_crop_in_chw(files):
    # resize_size == shorter side: the resize is the identity, so the view must be exactly the
    # centre crop of the decoded pixels, in CHW.
    decoded = dali_pixels(files[:3], view="decode", crop=0)
    cfg = FolderPipelineConfig(train=False, batch_size=3, crop_size=16, resize_size=20, num_threads=1)
    for (img, sid), dec in zip(run_folder(files[:3], cfg), decoded):
        assert img.dtype == np.uint8 and img.shape == (3, 16, 16)
        _, h, w = dec.shape
        top, left = round((h - 16) / 2), round((w - 16) / 2)
        assert np.array_equal(img, dec[:, top:top + 16, left:left + 16]), sid


def test_eval_resize_view_and_shapes(files):
    cfg = FolderPipelineConfig(train=False, batch_size=4, crop_size=12, eval_view="resize", num_threads=1)
    out = run_folder(files, cfg)
    assert [o[0].shape for o in out] == [(3, 12, 12)] * 4 and [o[1] for o in out] == [0, 1, 2, 3]
    # identity when already at size: img2 is 20x20
    cfg = FolderPipelineConfig(train=False, batch_size=1, crop_size=20, eval_view="resize", num_threads=1)
    (img, _), = run_folder([files[2]], cfg)
    assert np.array_equal(img, dali_pixels([files[2]], view="decode", crop=0)[0])


def test_train_flip_only_when_crop_covers_image(files):
    # area 1 and aspect 1 on a square image: the "random" crop is the whole image, the resize the
    # identity, so each output is the decoded image or its mirror, and both occur.
    dec = dali_pixels([files[2]], view="decode", crop=0)[0]
    cfg = FolderPipelineConfig(train=True, batch_size=1, crop_size=20, random_area=(1.0, 1.0),
                               random_aspect_ratio=(1.0, 1.0), num_threads=1, seed=1)
    seen = set()
    for img, _ in run_folder([files[2]], cfg, iters=12):
        if np.array_equal(img, dec):
            seen.add("same")
        elif np.array_equal(img, dec[:, :, ::-1]):
            seen.add("flipped")
        else:
            pytest.fail("train output is neither the image nor its mirror")
    assert seen == {"same", "flipped"}


def test_train_random_resized_crops_vary(files):
    cfg = FolderPipelineConfig(train=True, batch_size=4, crop_size=16, num_threads=1, seed=3)
    out = run_folder(files, cfg, iters=3)
    assert all(img.shape == (3, 16, 16) for img, _ in out)
    by_id = {}
    for img, sid in out:
        by_id.setdefault(sid, []).append(img)
    assert sorted(by_id) == [0, 1, 2, 3] and all(len(v) == 3 for v in by_id.values())
    assert any(not np.array_equal(v[0], v[1]) for v in by_id.values())


def test_folder_config_validation(files):
    with pytest.raises(ValueError, match="eval_view"):
        build_folder_pipeline([str(files[0])], [0], FolderPipelineConfig(train=False, batch_size=1, eval_view="x"))
    with pytest.raises(ValueError, match="resize_size"):
        build_folder_pipeline([str(files[0])], [0], FolderPipelineConfig(train=False, batch_size=1, resize_size=100))
    with pytest.raises(ValueError, match="empty"):
        build_folder_pipeline([], [], FolderPipelineConfig(train=False, batch_size=1))
    with pytest.raises(ValueError, match="shard_id"):
        FolderPipelineConfig(train=True, batch_size=1, shard_id=1, num_shards=1).validate()


# --------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_images():
    rng = np.random.default_rng(5)
    return np.stack([smooth_image(rng, 32, 32) for _ in range(6)])


def run_cifar(images, cfg, iters=1, **feed_kw):
    feed = CifarFeed(images, cfg.batch_size, train=cfg.train, shard_id=cfg.shard_id, num_shards=cfg.num_shards,
                     seed=cfg.seed, **feed_kw)
    pipe = build_cifar_pipeline(feed, cfg)
    pipe.build()
    out = []
    while len(out) < iters * feed.num_batches * cfg.batch_size:
        try:
            imgs, ids = pipe.run()
        except StopIteration:  # the feed ends each epoch; the next run starts the next one
            pipe.reset()
            continue
        out += [(np.array(imgs[i]), int(np.array(ids[i]))) for i in range(len(ids))]
    return out


def test_cifar_eval_is_identity_at_32_and_resizes_to_128(cifar_images):
    out = run_cifar(cifar_images, CifarPipelineConfig(train=False, batch_size=6, out_size=32, num_threads=1))
    for img, sid in out:
        assert np.array_equal(img, cifar_images[sid].transpose(2, 0, 1))
    out = run_cifar(cifar_images, CifarPipelineConfig(train=False, batch_size=6, num_threads=1))
    assert all(img.shape == (3, 128, 128) and img.dtype == np.uint8 for img, _ in out)


def test_cifar_train_is_edge_pad_crop_and_flip(cifar_images):
    # Every training view (at 32, before the resize) must be one of the 9x9 edge-padded crops of its
    # image, possibly mirrored: reference built with numpy.
    padded = np.pad(cifar_images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="edge")
    out = run_cifar(cifar_images, CifarPipelineConfig(train=True, batch_size=3, out_size=32, num_threads=1, seed=2),
                    iters=8)
    offsets = set()
    for img, sid in out:
        hwc = img.transpose(1, 2, 0)
        found = None
        for dy in range(9):
            for dx in range(9):
                crop = padded[sid, dy:dy + 32, dx:dx + 32]
                for flip in (False, True):
                    if np.array_equal(hwc, crop[:, ::-1] if flip else crop):
                        found = (dy, dx, flip)
        assert found is not None, f"sample {sid} is not an edge-pad crop"
        offsets.add(found)
    assert len(offsets) > 8 and {f for *_, f in offsets} == {False, True}
    out = run_cifar(cifar_images, CifarPipelineConfig(train=True, batch_size=3, num_threads=1))
    assert all(img.shape == (3, 128, 128) for img, _ in out)


def test_cifar_feed_order_and_shards(cifar_images):
    info = lambda e, i: SimpleNamespace(epoch_idx=e, iteration=i)  # noqa: E731
    images = np.zeros((11, 2, 2, 3), np.uint8)
    evals = []
    for r in range(3):
        feed = CifarFeed(images, 2, train=False, shard_id=r, num_shards=3)
        lo, hi = shard_bounds(11, r, 3)
        assert feed.num_batches == -(-(hi - lo) // 2)
        for i in range(feed.num_batches):
            evals += feed(info(0, i))[1].tolist()
        with pytest.raises(StopIteration):
            feed(info(0, feed.num_batches))
    assert evals == list(range(11))
    trains = [CifarFeed(images, 2, train=True, shard_id=r, num_shards=3, seed=4) for r in range(3)]
    assert all(f.num_batches == 1 for f in trains)  # 11 // 3 = 3 per shard, one full batch
    e0 = [f.shard_indices(0) for f in trains]
    assert len(set(np.concatenate(e0).tolist())) == 9  # disjoint
    assert not np.array_equal(trains[0].shard_indices(0), trains[0].shard_indices(1))  # reshuffled


@pytest.mark.gpu
def test_gpu_mixed_decoder_matches_cpu_closely(files, tmp_path):
    root = make_folder(tmp_path / "g", {"a": 4}, size=(64, 80), seed=0)
    paths = sorted((root / "a").iterdir())
    for view in ("crop", "resize"):
        cpu = run_folder(paths, FolderPipelineConfig(train=False, batch_size=4, crop_size=32, resize_size=48,
                                                     eval_view=view, num_threads=1))
        pipe = build_folder_pipeline([str(p) for p in paths], [0, 1, 2, 3], FolderPipelineConfig(
            train=False, batch_size=4, crop_size=32, resize_size=48, eval_view=view, num_threads=1, device_id=0))
        pipe.build()
        images, ids = pipe.run()
        images = images.as_cpu()
        for i, (img, _) in enumerate(cpu):
            gpu_img = np.array(images[i])
            assert gpu_img.shape == img.shape
            # nvJPEG and libjpeg-turbo may round the IDCT differently; the views must agree closely
            assert np.abs(gpu_img.astype(np.int16) - img).mean() < 2.0
    pipe = build_folder_pipeline([str(p) for p in paths], [0, 1, 2, 3], FolderPipelineConfig(
        train=True, batch_size=4, crop_size=32, num_threads=1, device_id=0))
    pipe.build()
    images, _ = pipe.run()
    assert images.as_cpu().as_array().shape == (4, 3, 32, 32)


@pytest.mark.gpu
def test_gpu_cifar_graph_matches_cpu(cifar_images):
    cpu = run_cifar(cifar_images, CifarPipelineConfig(train=False, batch_size=6, out_size=32, num_threads=1))
    feed = CifarFeed(cifar_images, 6, train=False)
    pipe = build_cifar_pipeline(feed, CifarPipelineConfig(train=False, batch_size=6, out_size=32, device_id=0))
    pipe.build()
    images, _ = pipe.run()
    images = images.as_cpu()
    for i, (img, _) in enumerate(cpu):
        assert np.array_equal(np.array(images[i]), img)
