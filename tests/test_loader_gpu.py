"""EventLoader on a CUDA GPU: mixed decoder, GPU ops, and the stream hand-off (skipped without a GPU)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from i2e_dali.data.sources import CifarSource, ImageFolderSource
from i2e_dali.convert import i2e_convert
from loader_data import event_loader as EventLoader
from loader_data import make_folder, write_cifar

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def photos(official_samples, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_photos")
    for i, p in enumerate(sorted(official_samples.glob("*_rgb.jpg"))[:16]):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(exist_ok=True)
        shutil.copy(p, d / p.name)
    return ImageFolderSource(root)


def _gpu_crop_pixels(files) -> np.ndarray:
    """The loader's evaluation view decoded here by the CUDA JPEG decoder alone (hw_decoder_load=0, fancy
    upsampling as the loader sets it): with the hardware decoder in play, which image goes to which
    engine depends on the batch's composition, and the two engines' pixels may differ."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(files), num_threads=2, device_id=0)
    def pipe():
        enc, _ = fn.readers.file(files=[str(f) for f in files])
        img = fn.decoders.image(enc, device="mixed", output_type=types.RGB, hw_decoder_load=0.0,
                                jpeg_fancy_upsampling=True)
        img = fn.resize(img, resize_shorter=256, interp_type=types.INTERP_LINEAR, antialias=True)
        return fn.crop_mirror_normalize(img, crop=(224, 224), crop_pos_x=0.5, crop_pos_y=0.5, dtype=types.UINT8,
                                        output_layout="CHW")

    p = pipe()
    p.build()
    (out,) = p.run()
    out = out.as_cpu()
    return np.stack([np.array(out[i]) for i in range(len(files))])


def test_gpu_eval_events_equal_conversion_of_gpu_decoded_pixels(photos):
    # Deterministic on both sides: the CUDA decoder only (hw_decoder_load=0), the loader's batches of 6
    # (6, 6, 4) compared file by file with the same files decoded as one batch here.
    loader = EventLoader(photos, 6, train=False, device="cuda", with_index=True, num_threads=2, hw_decoder_load=0.0)
    assert loader.decode == "gpu"
    seen = []
    for events, labels, idx in loader:
        assert events.is_cuda and labels.is_cuda and idx.is_cuda
        files = [photos.samples[i][0] for i in idx.tolist()]
        pix = _gpu_crop_pixels(files)
        ref = i2e_convert(torch.from_numpy(pix).cuda(), ratio=0.12, train=False, impl="torch")
        assert torch.equal(events, ref)
        seen += idx.tolist()
    assert seen == list(range(16))


def test_stream_contract_no_sync_no_host_copy(photos, monkeypatch):
    """The batch is handed over and converted on the current stream: run the loop on a side stream
    with every device-wide/host synchronisation forbidden, then check the results on that stream."""
    ref = [(e.clone(), lab.clone()) for e, lab in EventLoader(photos, 8, train=False, device="cuda", num_threads=2)]
    loader = EventLoader(photos, 8, train=False, device="cuda", num_threads=2)

    def forbidden(*a, **k):
        raise AssertionError("the loader must not synchronise in the hot path")

    side = torch.cuda.Stream()
    got = []
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "synchronize", forbidden)
        m.setattr(torch.cuda.Stream, "synchronize", forbidden)
        m.setattr(torch.cuda.Event, "synchronize", forbidden)
        with torch.cuda.stream(side):
            for events, labels in loader:
                assert torch.cuda.current_stream() == side
                got.append((events.sum(dim=(0, 2, 3, 4)), labels * 1))  # consumed on the side stream
    side.synchronize()
    assert len(got) == len(ref) == 2
    for (s, lab), (e, lab_ref) in zip(got, ref):
        assert torch.equal(s, e.sum(dim=(0, 2, 3, 4))) and torch.equal(lab, lab_ref)


def test_gpu_train_resume_is_exact(photos):
    kw = dict(train=True, device="cuda", with_index=True, num_threads=2, crop_size=64, seed=11)
    ref = EventLoader(photos, 4, **kw)
    it = iter(ref)
    next(it)
    state = ref.state_dict()
    expected = [tuple(t.clone() for t in b) for b in it]  # the rest of this pass (a new iter() is a new epoch)
    resumed = EventLoader(photos, 4, **kw)
    resumed.load_state_dict(state)
    got = [tuple(t.clone() for t in b) for b in resumed]
    assert len(got) == len(expected) == 3
    assert all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(expected, got))


def test_cpu_decode_feeding_gpu(photos):
    gpu = EventLoader(photos, 8, train=False, device="cuda", decode="cpu", with_index=True, num_threads=2)
    cpu = EventLoader(photos, 8, train=False, device="cpu", with_index=True, num_threads=2)
    for (eg, lg, ig), (ec, lc, ic) in zip(gpu, cpu):
        assert eg.is_cuda and torch.equal(eg.cpu(), ec) and torch.equal(lg.cpu(), lc)


def test_gpu_cifar_loader_matches_cpu(tmp_path):
    folder, _ = write_cifar(tmp_path, per_batch=5)
    src = CifarSource(folder, train=False)
    gpu = [b for b in EventLoader(src, 4, train=False, device="cuda", out_size=32)]
    cpu = [b for b in EventLoader(src, 4, train=False, device="cpu", out_size=32, num_threads=1)]
    for (eg, lg), (ec, lc) in zip(gpu, cpu):
        assert torch.equal(eg.cpu(), ec) and torch.equal(lg.cpu(), lc)
    train = EventLoader(CifarSource(folder, train=True), 4, train=True, device="cuda", dtype=torch.bfloat16)
    for events, labels in train:
        assert events.shape == (8, 4, 2, 128, 128) and events.dtype == torch.bfloat16 and events.is_cuda


def test_gpu_train_folder_shapes(tmp_path):
    src = ImageFolderSource(make_folder(tmp_path / "f", {"a": 6, "b": 6}, size=(120, 160), seed=0))
    loader = EventLoader(src, 4, train=True, device="cuda", dtype=torch.float16, crop_size=96)
    batches = list(loader)
    assert len(batches) == 3
    for events, labels in batches:
        assert events.shape == (8, 4, 2, 96, 96) and events.dtype == torch.float16 and labels.dtype == torch.int64
