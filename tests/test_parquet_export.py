"""i2e-export --format parquet: exact round trip against the live conversion, the authors' snippet reads the
rows, shard/row-group layout, byte-identical reruns, resume after a failure mid-shard, and training on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from i2e_dali.data.parquet import ParquetEventDataset, find_parquet_splits, open_parquet_splits
from i2e_dali.data.sources import open_source
from i2e_dali.errors import ExportError
from i2e_dali.tools import export_parquet
from i2e_dali.tools.export import ExportConfig, export

from test_export import live_events, make_cifar, make_images
from test_parquet import authors_decode

REPO = Path(__file__).resolve().parents[1]


def _cfg(data, out, **kw):
    base = dict(format="parquet", batch_size=4, workers=1, dali_threads=1, device="cpu", progress=False,
                rows_per_shard=4, row_group_rows=3)
    base.update(kw)
    return ExportConfig(data=data, out=out, **base)


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("img") / "data", {"train": 5, "val": 3})


def test_folder_export_round_trips_exactly_and_reads_with_the_authors_snippet(folder_data, tmp_path):
    out = tmp_path / "I2E-Folder"
    summaries = export(_cfg(folder_data, out, view="resize", interp="cubic", size=64))
    assert [s.written for s in summaries] == [10, 6] and [s.shards_written for s in summaries] == [3, 2]
    found = find_parquet_splits(out)
    assert [p.name for p in found["train"]] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    assert [p.name for p in found["val"]] == [f"validation-0000{k}-of-00002.parquet" for k in range(2)]
    pf = pq.ParquetFile(found["train"][0])
    assert pf.schema_arrow.names == ["file_path", "label", "data"]
    assert [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)] == [3, 1]
    train, val = open_parquet_splits(out)
    assert train.classes == ["cat", "dog"] and train.frame_shape == (8, 64, 64)
    for split, ds in (("train", train), ("val", val)):
        src = open_source(folder_data, split)
        live = live_events(src, "resize", crop_size=64, pipeline_options={"interp": "cubic"})
        table = pq.read_table(found[split])
        for i in range(len(ds)):
            frames, label = ds[i]
            np.testing.assert_array_equal(frames.numpy(), live[i])
            np.testing.assert_array_equal(authors_decode(table.column("data")[i].as_py()), live[i])
            assert label == src.samples[i][1] == table.column("label")[i].as_py()
        assert table.column("file_path")[0].as_py() == f"{src.samples[0][1]}/{Path(src.samples[0][0]).stem}.npy"


def test_cifar_export_rerun_is_byte_identical_and_resumes_a_missing_shard(tmp_path):
    data = tmp_path / "cifar"
    make_cifar(data, per_batch=2)
    a, b = tmp_path / "a", tmp_path / "b"
    export(_cfg(data, a, dataset="cifar10", size=32))
    export(_cfg(data, b, dataset="cifar10", size=32))
    names = sorted(p.name for p in a.glob("*.parquet"))
    assert names == sorted(p.name for p in b.glob("*.parquet")) and len(names) == 3 + 1
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    live = live_events(open_source(data, "train", "cifar10"), "resize", out_size=32)
    ds = ParquetEventDataset(sorted(a.glob("train-*.parquet")))
    assert all(np.array_equal(ds[i][0].numpy(), live[i]) for i in range(len(ds)))
    # resume: one shard lost, a killed writer's temp file left behind
    (b / names[1]).unlink()
    (b / f".{names[1]}.x1y2.partial").write_bytes(b"half a shard")
    again = export(_cfg(data, b, dataset="cifar10", size=32))
    assert again[0].shards_written == 1 and again[0].shards_skipped == 2 and again[0].removed_partials == 1
    assert sorted(p.name for p in b.iterdir()) == names
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    with pytest.raises(ExportError, match="other settings.*ratio"):
        export(_cfg(data, b, dataset="cifar10", size=32, ratio=0.2))


def test_a_failure_mid_shard_leaves_only_complete_shards(folder_data, tmp_path, monkeypatch):
    out = tmp_path / "o"
    real = export_parquet.encode_batch
    calls = {"n": 0}

    def flaky(events):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch, while the second shard is being written
            raise OSError(28, "No space left on device")
        return real(events)

    monkeypatch.setattr(export_parquet, "encode_batch", flaky)
    with pytest.raises(OSError):
        export(_cfg(folder_data, out, splits=("train",), size=32, view="resize"))
    left = sorted(p.name for p in out.iterdir())
    assert left == ["train-00000-of-00003.parquet"]  # no temp file, the finished shard kept
    monkeypatch.setattr(export_parquet, "encode_batch", real)
    s = export(_cfg(folder_data, out, splits=("train",), size=32, view="resize"))[0]
    assert (s.shards_skipped, s.shards_written) == (1, 2)
    assert len(ParquetEventDataset(sorted(out.glob("train-*.parquet")))) == 10


def test_train_dali_trains_on_an_exported_parquet_set(tmp_path):
    from i2e_dali.training.run import main

    from train_helpers import metrics

    data = tmp_path / "cifar"
    make_cifar(data, per_batch=2)
    out = tmp_path / "I2E-CIFAR10"
    export(_cfg(data, out, dataset="cifar10", size=16, rows_per_shard=8))
    run = tmp_path / "run"
    main(["--dataset", "i2e-parquet", "--data", str(out), "--epochs", "1", "-b", "5", "--width", "4", "-T", "2",
          "--device", "cpu", "-o", str(run), "--no-progress", "--workers", "0", "--no-tensorboard"])
    m = metrics(run)
    assert m[0]["val_count"] == 2 and m[0]["train_steps"] == 2 and (run / "last.pt").is_file()


@pytest.mark.gpu
def test_gpu_export_round_trips_exactly(tmp_path):
    data = tmp_path / "cifar"
    make_cifar(data, per_batch=3)
    out = tmp_path / "o"
    export(_cfg(data, out, dataset="cifar10", device="cuda", interp="cubic"))
    live = live_events(open_source(data, "val", "cifar10"), "resize", device="cuda", pipeline_options={"interp": "cubic"})
    ds = ParquetEventDataset(sorted(out.glob("validation-*.parquet")))
    assert len(ds) == 3 and all(np.array_equal(ds[i][0].numpy(), live[i]) for i in range(len(ds)))
