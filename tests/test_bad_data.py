"""Bad data, each case made in the test: decoded correctly to RGB, or refused with an error naming
the file/folder and what to do."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i2e_dali.errors import ConfigError
from i2e_dali.tools.check import check_folder
from i2e_dali.data.sources import (
    CifarSource,
    DatasetError,
    ImageFolderSource,
    MissingDataError,
    UndecodableImageError,
    open_source,
)
from loader_data import event_loader as EventLoader
from loader_data import make_folder, smooth_image, write_cifar
from pipelines.folder import FolderPipelineConfig, build_folder_pipeline


def decode_views(files, size):
    """Run the project's eval graph with resize_size == crop_size == the images' size: pure decode."""
    cfg = FolderPipelineConfig(train=False, batch_size=len(files), crop_size=size, resize_size=size,
                               num_threads=1, enable_checkpointing=False)
    pipe = build_folder_pipeline([str(f) for f in files], list(range(len(files))), cfg)
    pipe.build()
    images, ids = pipe.run()
    return [np.array(images[i]).transpose(1, 2, 0) for i in range(len(files))]


@pytest.fixture(scope="module")
def rgb():
    return smooth_image(np.random.default_rng(3), 32, 32)


def loader(src, train=False, **kw):
    return EventLoader(src, 2, train=train, device="cpu", num_threads=1, crop_size=16,
                       resize_size=20, **kw)


def test_grayscale_cmyk_and_png_named_jpeg_decode_to_rgb(tmp_path, rgb):
    d = tmp_path / "c"
    d.mkdir()
    Image.fromarray(rgb).convert("L").save(d / "gray.JPEG", quality=95)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.JPEG", quality=95)
    Image.fromarray(rgb).save(d / "png.JPEG", format="PNG")  # ImageNet has a few of these
    gray, cmyk, png = decode_views([d / "gray.JPEG", d / "cmyk.JPEG", d / "png.JPEG"], 32)
    for img in (gray, cmyk, png):
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # grayscale: three equal channels, equal to PIL's decode of the same file (±1: IDCT rounding)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    pil_gray = np.asarray(Image.open(d / "gray.JPEG").convert("L"), dtype=np.int16)
    assert np.abs(gray[..., 0].astype(np.int16) - pil_gray).max() <= 1
    # CMYK: back to the original colours up to JPEG loss (not inverted, not garbage)
    assert np.abs(cmyk.astype(np.int16) - rgb).mean() < 6
    # PNG under a .JPEG name: decoded by content, lossless
    assert np.array_equal(png, rgb)
    # and the loader takes all three
    ev = [b for b in loader(ImageFolderSource(tmp_path))]
    assert sum(e.shape[1] for e, _ in ev) == 3


def test_one_pixel_image_trains_and_evaluates(tmp_path, rgb):
    (tmp_path / "c").mkdir()
    Image.fromarray(rgb[:1, :1]).save(tmp_path / "c" / "tiny.JPEG")
    Image.fromarray(rgb).save(tmp_path / "c" / "normal.JPEG")
    src = ImageFolderSource(tmp_path)
    for train in (True, False):
        (events, labels), = list(loader(src, train=train))
        assert events.shape == (8, 2, 2, 16, 16)
        # the 1x1 image becomes a constant image: no event may fire (spec)
        tiny = [i for i, (p, _) in enumerate(src.samples) if p.endswith("tiny.JPEG")]
        if not train:
            assert events[:, tiny].sum() == 0 and events.sum() > 0


def test_very_large_image(tmp_path):
    (tmp_path / "c").mkdir()
    big = np.asarray(Image.fromarray(smooth_image(np.random.default_rng(0), 200, 300)).resize((6000, 4000)))
    Image.fromarray(big).save(tmp_path / "c" / "big.JPEG", quality=40)
    (events, labels), = list(EventLoader(ImageFolderSource(tmp_path), 1, train=False, device="cpu",
                                         num_threads=2, crop_size=16, resize_size=20))
    assert events.shape == (8, 1, 2, 16, 16) and events.sum() > 0


def test_zero_byte_and_non_image_files_are_refused_by_name(tmp_path):
    root = make_folder(tmp_path / "train", {"a": 2, "b": 2}, seed=2)
    (root / "a" / "empty.JPEG").touch()
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    with pytest.raises(DatasetError) as err:
        ImageFolderSource(root)
    msg = str(err.value)
    assert "empty.JPEG" in msg and "notes.txt" in msg and ".DS_Store" not in msg
    assert "i2e-check" in msg and "skip_invalid" in msg
    src = ImageFolderSource(root, skip_invalid=True)
    assert len(src) == 4 and {p.name for p in src.skipped} == {"empty.JPEG", "notes.txt"}
    assert sum(e.shape[1] for e, _ in loader(src)) == 4


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "train", {"a": 2, "c": 2}, seed=2)
    (root / "b").mkdir()
    with pytest.raises(DatasetError, match=r"(?s)hold no images.*/b\b"):
        ImageFolderSource(root)
    src = ImageFolderSource(root, allow_empty_classes=True)
    assert src.classes == ["a", "b", "c"] and sorted(set(src.labels)) == [0, 2]


def test_missing_split_and_layout_errors(tmp_path):
    make_folder(tmp_path / "ds" / "train", {"a": 1}, seed=0)
    assert len(open_source(tmp_path / "ds", "train")) == 1
    with pytest.raises(MissingDataError, match=r"ds/val does not exist"):
        open_source(tmp_path / "ds", "val")
    with pytest.raises(MissingDataError, match="does not exist"):
        open_source(tmp_path / "nowhere", "train")
    with pytest.raises(MissingDataError, match="does not exist"):
        ImageFolderSource(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat / "x.JPEG")
    with pytest.raises(DatasetError, match="no class sub-folders.*move them"):
        ImageFolderSource(flat)


def test_truncated_jpeg_fails_with_file_name(tmp_path, rgb):
    root = make_folder(tmp_path / "train", {"a": 3}, seed=1, size=(64, 64), vary=False)
    good = (root / "a" / "a_000.JPEG").read_bytes()
    (root / "a" / "a_001.JPEG").write_bytes(good[: len(good) // 2])
    with pytest.raises(UndecodableImageError) as err:
        for _ in loader(ImageFolderSource(root)):
            pass
    msg = str(err.value)
    assert "a_001.JPEG" in msg and "i2e-check" in msg
    assert [p for p, _ in check_folder(root, num_threads=1, progress=False).bad] == [str(root / "a" / "a_001.JPEG")]


def test_non_image_content_under_jpeg_name(tmp_path):
    root = make_folder(tmp_path / "train", {"a": 2}, seed=1)
    (root / "a" / "a_000.JPEG").write_text("<html>404 not found</html>")
    with pytest.raises(UndecodableImageError, match=r"(?s)could not read or decode image file .*a_000.JPEG.*i2e-check"):
        for _ in loader(ImageFolderSource(root)):
            pass


def test_cifar_missing_batch_and_layouts(tmp_path):
    folder, batches = write_cifar(tmp_path / "c10", per_batch=3, skip=("data_batch_3",))
    with pytest.raises(MissingDataError, match=r"lacks data_batch_3.*Re-download"):
        CifarSource(folder, train=True)
    assert len(CifarSource(tmp_path / "c10", train=False)) == 3  # parent folder accepted, test split complete
    folder100, b100 = write_cifar(tmp_path / "c100", variant="cifar100", per_batch=4)
    src = open_source(tmp_path / "c100", "train", "cifar100")
    assert len(src.classes) == 100 and src.labels == b100["train"][1].tolist()  # fine labels
    assert src.samples[0][0] == "train_img_0000"
    with pytest.raises(DatasetError, match="holds cifar100, not cifar10"):
        CifarSource(tmp_path / "c100", train=True, variant="cifar10")
    with pytest.raises(MissingDataError):
        CifarSource(tmp_path / "none", train=True)
    (folder100 / "test").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test is not a readable CIFAR"):
        CifarSource(folder100, train=False, variant="cifar100")


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder, _ = write_cifar(tmp_path, per_batch=2)
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DatasetError, match="unexpected object"):
        CifarSource(folder, train=False)


def test_loader_rejects_bad_arguments(tmp_path):
    src = ImageFolderSource(make_folder(tmp_path / "t", {"a": 2}, seed=0))
    with pytest.raises(ConfigError, match="batch_size"):
        EventLoader(src, 0, train=False, device="cpu")
    with pytest.raises(ConfigError, match="eval_view"):
        EventLoader(src, 1, train=False, device="cpu", eval_view="zoom")
    with pytest.raises(ConfigError, match="ImageFolderSource"):
        EventLoader("/some/path", 1, train=False, device="cpu")
    with pytest.raises(ConfigError, match="shard_id"):
        EventLoader(src, 1, train=False, device="cpu", shard_id=2, num_shards=2)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            EventLoader(src, 1, train=False, device="cuda")


def test_loader_culprit_search_names_the_file_from_isolated_workers(tmp_path):
    """When DALI's error does not name the file, the loader finds it by decoding its shard again, in the
    decode check's worker processes (never in the training process itself)."""
    root = make_folder(tmp_path / "train", {"a": 3, "b": 3}, seed=4)
    victim = root / "b" / "b_001.JPEG"
    victim.write_bytes(victim.read_bytes()[:120])
    ld = loader(ImageFolderSource(root))
    err = ld._data_error("Critical error in pipeline:\nencountered:\n\nnvImageCodec failure: '#3'")
    assert isinstance(err, UndecodableImageError)
    assert str(victim) in str(err) and "i2e-check" in str(err)
