"""The paper's experiment options in the live loader (issue 12): the Baseline-I view on known pixels,
canonical motions in training, the fixed threshold, static rgb/v frames, and the mixing hook that sees the
augmented images before their conversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from i2e_dali.convert import i2e_convert
from loader_data import event_loader as EventLoader
from i2e_dali.data.sources import CifarSource, ImageFolderSource
from loader_data import make_folder, write_cifar


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    folder, batches = write_cifar(tmp_path_factory.mktemp("cifar"), per_batch=6)
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])  # [30, 32, 32, 3]
    return CifarSource(folder.parent, train=True), train


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ImageFolderSource(make_folder(tmp_path_factory.mktemp("imgs") / "train", {"a": 4, "b": 4}, seed=2))


def _views(loader):
    """(uint8 views [N,3,H,W], indices [N]) of one epoch of a convert=False, with_index loader."""
    out = [(v.clone(), i.clone()) for v, _, i in loader]
    return torch.cat([v for v, _ in out]), torch.cat([i for _, i in out])


def test_cifar_baseline1_is_the_image_or_its_mirror_exactly(cifar):
    """Baseline-I at 32 px: no crop, no shift, no resize, so every view is the stored image or its flip."""
    src, pixels = cifar
    loader = EventLoader(src, 5, train=True, device="cpu", num_threads=1, out_size=32, aug="baseline1",
                         convert=False, with_index=True)
    views, idx = _views(loader)
    ref = torch.from_numpy(pixels).permute(0, 3, 1, 2)[idx]
    same = (views == ref).flatten(1).all(1)
    mirrored = (views == ref.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert same.any() and mirrored.any()  # the flip is random, both happen in 30 images
    # Baseline-II shifts by up to 4 pixels: most views are neither the image nor its mirror
    loader2 = EventLoader(src, 5, train=True, device="cpu", num_threads=1, out_size=32, convert=False,
                          with_index=True)
    v2, i2 = _views(loader2)
    r2 = torch.from_numpy(pixels).permute(0, 3, 1, 2)[i2]
    assert not ((v2 == r2).flatten(1).all(1) | (v2 == r2.flip(-1)).flatten(1).all(1)).all()


def test_cifar_baseline1_resize_matches_a_bilinear_reference(cifar):
    """At 64 px (the paper's 128 on a smaller scale) the view is the image resized (bilinear, half-pixel
    centres), mirrored or not: compared with torch's bilinear resize of the known pixels."""
    src, pixels = cifar
    loader = EventLoader(src, 5, train=True, device="cpu", num_threads=1, out_size=64, aug="baseline1",
                         convert=False, with_index=True)
    views, idx = _views(loader)
    ref = F.interpolate(torch.from_numpy(pixels).permute(0, 3, 1, 2)[idx].float(), size=(64, 64),
                        mode="bilinear", align_corners=False).round()
    v = views.float()
    err = torch.minimum((v - ref).abs().amax(dim=(1, 2, 3)), (v - ref.flip(-1)).abs().amax(dim=(1, 2, 3)))
    assert float(err.max()) <= 1.0


def test_folder_baseline1_is_the_resize_view_or_its_mirror(folder):
    common = dict(device="cpu", num_threads=1, crop_size=16, convert=False, with_index=True)
    train = EventLoader(folder, 4, train=True, aug="baseline1", **common)
    ref_loader = EventLoader(folder, 8, train=False, eval_view="resize", **common)
    views, idx = _views(train)
    ref_views, ref_idx = _views(ref_loader)
    ref = ref_views[torch.argsort(ref_idx)][idx]
    same = (views == ref).flatten(1).all(1)
    mirrored = (views == ref.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()


class _Spy:
    """A mix hook that records the images handed to the conversion and changes nothing."""

    def __init__(self):
        self.seen = []

    def __call__(self, images, labels):
        self.seen.append(images.clone())
        return images, None


@pytest.mark.parametrize("case", ["canonical", "random", "fixed", "rgb", "v"])
def test_training_batches_are_the_conversion_of_the_views(cifar, case):
    src, _ = cifar
    spy = _Spy()
    kw = {"canonical": dict(random_motion=False), "random": {},
          "fixed": dict(random_motion=False, threshold="fixed", threshold_value=0.1),
          "rgb": dict(output="rgb"), "v": dict(output="v")}[case]
    loader = EventLoader(src, 5, train=True, device="cpu", num_threads=1, out_size=32, timesteps=4, mix=spy, **kw)
    batches = [(e.clone(), lab.clone(), soft) for e, lab, soft in loader]
    assert len(batches) == 6 and all(soft is None for _, _, soft in batches)
    for (events, _, _), images in zip(batches, spy.seen):
        if case in ("rgb", "v"):
            x = images.float() * torch.tensor(1 / 255, dtype=torch.float32)
            x = x.amax(dim=1, keepdim=True) if case == "v" else x
            assert events.shape == (4, 5, x.shape[1], 32, 32) and torch.equal(events[3], x)
            continue
        fixed = dict(threshold="fixed", threshold_value=0.1) if case == "fixed" else {}
        canonical = i2e_convert(images, ratio=0.07, timesteps=4, train=False, **fixed)
        if case == "random":
            continue
        assert torch.equal(events, canonical)
    if case == "random":  # random motions per sample: differs from the canonical conversion somewhere
        assert any(not torch.equal(e, i2e_convert(im, ratio=0.07, timesteps=4, train=False))
                   for (e, _, _), im in zip(batches, spy.seen))


# ------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA): the same options through the mixed decoder and the fused kernel
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_fixed_threshold_fused_equals_cpu_torch_path():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 37, 53), dtype=torch.uint8, generator=g)
    motions = torch.zeros(4, 8, dtype=torch.int64)
    for dtype in (torch.bool, torch.bfloat16, torch.float32):
        got = i2e_convert(x.cuda(), motions=motions.cuda(), threshold="fixed", threshold_value=0.1, dtype=dtype)
        want = i2e_convert(x, motions=motions, threshold="fixed", threshold_value=0.1, dtype=dtype, impl="torch")
        assert torch.equal(got.cpu(), want)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["canonical", "fixed", "v"])
def test_gpu_loader_options_and_mix_hook(folder, case):
    spy = _Spy()
    kw = {"canonical": dict(random_motion=False), "fixed": dict(random_motion=False, threshold="fixed",
                                                                   threshold_value=0.1), "v": dict(output="v")}[case]
    loader = EventLoader(folder, 4, train=True, device="cuda", num_threads=1, crop_size=32, aug="baseline1",
                         timesteps=4, mix=spy, **kw)
    for (events, labels, soft), images in zip(loader, spy.seen):
        assert events.is_cuda and labels.is_cuda and soft is None and images.is_cuda
        if case == "v":
            x = (images.float() * torch.tensor(1 / 255, device="cuda")).amax(dim=1, keepdim=True)
            assert torch.equal(events[0], x)
        else:
            fixed = dict(threshold="fixed", threshold_value=0.1) if case == "fixed" else {}
            assert torch.equal(events, i2e_convert(images, ratio=0.12, timesteps=4, train=False, **fixed))


@pytest.mark.gpu
def test_gpu_mixer_runs_on_device_without_host_sync():
    from i2e_dali.training.mixing import BatchMixer

    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, device="cuda")
    labels = torch.arange(8, device="cuda") % 4
    mixer = BatchMixer(4)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):
            mixed, soft = mixer(images, labels)
            assert mixed.is_cuda and soft.is_cuda
    finally:
        torch.cuda.set_sync_debug_mode(0)
