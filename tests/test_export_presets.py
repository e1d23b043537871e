"""The authors' catalog as presets: flags resolve to the catalog's settings, the catalog's sources (MNIST IDX,
Caltech / Mini-ImageNet class folders), the event-rate check, and DALI cubic against PIL bicubic."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from loader_data import event_loader as EventLoader
from i2e_dali.data.idx import IdxSource, read_idx
from i2e_dali.data.parquet import ParquetEventDataset
from i2e_dali.data.sources import open_source
from i2e_dali.errors import DatasetError, MissingDataError
from i2e_dali.tools.export import ExportConfig, _parse_args, export
from i2e_dali.tools.export_presets import PRESETS, rate_check

from test_parquet import authors_decode


def write_idx(path: Path, arr: np.ndarray) -> Path:
    raw = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def make_mnist(root: Path, n_train=6, n_test=4, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for prefix, n, ext in (("train", n_train, ".gz"), ("t10k", n_test, "")):  # both spellings the mirrors use
        imgs = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):  # a bright bar on black, like a stroke
            y, x = rng.integers(4, 20, 2)
            imgs[i, y:y + 6, x:x + 3] = 255
        write_idx(root / "raw" / f"{prefix}-images-idx3-ubyte{ext}", imgs)
        write_idx(root / "raw" / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n))
    return root


def make_class_folders(root: Path, counts: dict[str, int], stray: str | None = None) -> Path:
    rng = np.random.default_rng(1)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.kron(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
            Image.fromarray(img).save(root / cls / f"image_{i:04d}.jpg", quality=95)
    if stray:
        (root / stray).write_text("not an image")
    return root


def test_preset_flags_resolve_to_the_catalog_and_user_flags_win(tmp_path):
    args = _parse_args(["--data", "d", "--out", "o", "--preset", "i2e-cifar10"])
    assert (args.dataset, args.format) == ("cifar10", "parquet")
    cfg = ExportConfig(data=Path("d"), out=Path("o"), preset="i2e-caltech101", size=48, ratio=0.2)
    from i2e_dali.tools.export import _apply_preset

    _apply_preset(cfg)
    assert (cfg.dataset, cfg.size, cfg.ratio, cfg.view, cfg.interp) == ("caltech101", 48, 0.2, "resize", "cubic")
    cfg = ExportConfig(data=Path("d"), out=Path("o"), preset="i2e-imagenet")
    _apply_preset(cfg)
    assert (cfg.size, cfg.ratio, cfg.view, cfg.interp) == (224, 0.12, "resize", "cubic")
    with pytest.raises(SystemExit):
        _parse_args(["--data", "d", "--out", "o", "--preset", "i2e-mnist", "--dataset", "cifar10"])
    assert {p.config for p in PRESETS.values()} >= {"I2E-CIFAR10", "I2E-ImageNet", "I2E-FashionMNIST"}


def test_rate_check_flags_a_large_deviation():
    ok, text = rate_check("i2e-cifar10", 0.061)
    assert ok and "5.86 %" in text and not text.startswith("WARNING")
    ok, text = rate_check("i2e-cifar10", 0.02)
    assert not ok and text.startswith("WARNING")


def test_mnist_idx_source_and_its_errors(tmp_path):
    root = make_mnist(tmp_path / "mnist")
    train, test = IdxSource(root, train=True), open_source(root, "val", "mnist")
    assert train.images.shape == (6, 28, 28, 3) and len(test) == 4 and train.classes[3] == "3"
    assert np.array_equal(train.images[..., 0], train.images[..., 2])  # grey -> RGB
    assert open_source(root, "train", "fashionmnist").classes[0] == "T-shirt-top"
    bad = write_idx(tmp_path / "b" / "x-idx1-ubyte", np.arange(5))
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(DatasetError, match="x-idx1-ubyte.*truncated"):
        read_idx(bad)
    (tmp_path / "b" / "y").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "b" / "y")
    with pytest.raises(MissingDataError, match="train-images-idx3-ubyte"):
        IdxSource(tmp_path / "b", train=True)


def test_mnist_preset_exports_what_the_live_loader_makes(tmp_path):
    root = make_mnist(tmp_path / "mnist")
    out = tmp_path / "I2E-MNIST"
    summaries = export(ExportConfig(data=root, out=out, preset="i2e-mnist", format="parquet", batch_size=4,
                                    dali_threads=1, device="cpu", progress=False))
    assert [s.written for s in summaries] == [6, 4]
    assert all("I2E-MNIST: event rate" in s.rate_note and "9.56 %" in s.rate_note for s in summaries)
    shard = sorted(out.glob("train-*.parquet"))
    meta = json.loads(pq.ParquetFile(shard[0]).schema_arrow.metadata[b"i2e"])
    assert (meta["ratio"], meta["interp"], meta["height"], meta["dataset"]) == (0.10, "cubic", 32, "mnist")
    live = EventLoader(IdxSource(root, train=True), 3, train=False, ratio=0.10, out_size=32, dtype=torch.bool,
                       device="cpu", with_index=True, num_threads=1, pipeline_options={"interp": "cubic"})
    table = pq.read_table(shard)
    ds = ParquetEventDataset(shard)
    for ev, _, idx in live:
        for b, i in enumerate(idx.tolist()):
            np.testing.assert_array_equal(authors_decode(table.column("data")[i].as_py()), ev[:, b].numpy())
            np.testing.assert_array_equal(ds[i][0].numpy(), ev[:, b].numpy())


def test_caltech_and_mini_imagenet_class_folders_split_per_class(tmp_path):
    cal = tmp_path / "caltech101"
    make_class_folders(cal / "101_ObjectCategories", {"BACKGROUND_Google": 3, "accordion": 5, "ant": 10, "solo": 1})
    train, val = open_source(cal, "train", "caltech101"), open_source(cal, "val", "caltech101")
    assert train.classes == val.classes == ["accordion", "ant", "solo"]  # torchvision's rule: no background
    tr, va = {p for p, _ in train.samples}, {p for p, _ in val.samples}
    assert not tr & va and len(tr | va) == 16
    assert [lab for _, lab in val.samples].count(0) == 1 and [lab for _, lab in val.samples].count(1) == 2
    assert [lab for _, lab in val.samples].count(2) == 0  # a class of one image stays in train
    assert all(Path(p).parent.name == train.classes[lab] for p, lab in train.samples + val.samples)
    assert open_source(cal, "val", "caltech101").samples == val.samples  # seeded: the same every time
    c256 = make_class_folders(tmp_path / "c256" / "256_ObjectCategories", {"001.ak47": 4, "257.clutter": 4},
                              stray="001.ak47/RENAME2")
    assert open_source(tmp_path / "c256", "train", "caltech256").classes == ["001.ak47", "257.clutter"]
    assert c256.is_dir()
    few = make_class_folders(tmp_path / "mini" / "train", {"n01": 2})
    make_class_folders(tmp_path / "mini" / "test", {"n02": 2})
    assert few.is_dir()
    with pytest.raises(DatasetError, match="few-shot"):
        open_source(tmp_path / "mini", "train", "mini-imagenet")
    make_class_folders(tmp_path / "mini2" / "train", {"n01": 2, "n02": 2})
    make_class_folders(tmp_path / "mini2" / "val", {"n01": 1, "n02": 1})
    assert len(open_source(tmp_path / "mini2", "val", "mini-imagenet")) == 2  # train/ + val/: used as given


def test_caltech_preset_export_reads_back(tmp_path):
    cal = make_class_folders(tmp_path / "caltech101" / "101_ObjectCategories", {"a": 5, "b": 5})
    out = tmp_path / "I2E-Caltech101"
    s = export(ExportConfig(data=cal.parent, out=out, preset="i2e-caltech101", format="parquet", size=32,
                            batch_size=4, dali_threads=1, device="cpu", progress=False))
    assert [x.written for x in s] == [8, 2] and all(x.rate_note for x in s)
    ds = ParquetEventDataset(sorted(out.glob("validation-*.parquet")))
    assert ds.classes == ["a", "b"] and ds.frame_shape == (8, 32, 32)


def test_dali_cubic_matches_pil_bicubic_on_the_official_samples(official_samples):
    from i2e_dali.tools.interp_compare import compare

    res = compare(official_samples, limit=24)
    for name, r in res.items():
        print(name, r)
    cubic = [r for k, r in res.items() if k.endswith("cubic")]
    linear = [r for k, r in res.items() if k.endswith("linear")]
    assert all(r["mean_abs_pixel_diff"] < 0.5 and r["event_f1"] > 0.95 for r in cubic)
    assert all(c["event_f1"] > lin["event_f1"] for c, lin in zip(cubic, linear))
