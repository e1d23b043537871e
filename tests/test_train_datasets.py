"""The same engine on the FrameLoader data sets: an exported I2E npz set (dense, the authors' format) and
CIFAR10-DVS recordings (jAER AEDAT 2.0), including the sim-to-real path: pre-train on I2E events, then
fine-tune on DVS recordings with --pretrained and --preset dvs-finetune."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from i2e_dali.training.run import main

from train_helpers import metrics


def _npz_set(root: Path, classes=("cat", "dog"), per_class=(8, 3), t=2, hw=16) -> Path:
    """Dense samples as the spec stores them: <split>/<class>/<name>.npz, arr_0 bool [T, 2, H, W]."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                ev = rng.random((t, 2, hw, hw)) < 0.05
                ev[:, c, :, : hw // 2] |= rng.random((t, hw, hw // 2)) < 0.5  # a learnable class cue
                np.savez_compressed(d / f"{name}_{i}.npz", ev)
    return root


def _aedat(path: Path, n_events: int, rng, label: int) -> None:
    """A DVS128 recording: '#' header lines (CRLF), then big-endian (address, timestamp) uint32 pairs,
    address = y << 8 | x << 1 | p."""
    x = rng.integers(0, 128, n_events)
    y = rng.integers(0, 128, n_events) // 2 + 64 * label  # class cue: which half of the sensor
    p = rng.integers(0, 2, n_events)
    ts = np.sort(rng.integers(0, 10**6, n_events))
    rec = np.empty((n_events, 2), ">u4")
    rec[:, 0] = (y << 8) | (x << 1) | p
    rec[:, 1] = ts
    path.write_bytes(b"#!AER-DAT2.0\r\n# This is a raw AE data file created by a test\r\n" + rec.tobytes())


def _dvs_set(root: Path, classes=("airplane", "automobile"), per_class=10) -> Path:
    rng = np.random.default_rng(1)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _aedat(root / name / f"cifar10_{name}_{i}.aedat", 300, rng, c)
    return root


def _small(out: Path, *extra: str) -> list[str]:
    return ["-T", "2", "--width", "4", "-b", "2", "--epochs", "1", "--no-progress", "--no-tensorboard",
            "-o", str(out), *extra]


def test_i2e_npz_then_finetune_on_cifar10_dvs(tmp_path):
    npz = _npz_set(tmp_path / "i2e")
    pre = tmp_path / "pre"
    main(["--dataset", "i2e-npz", "--data", str(npz), *_small(pre)])
    m = metrics(pre)
    assert m[0]["val_count"] == 6 and m[0]["train_steps"] == 8
    ck = torch.load(pre / "last.pt", weights_only=True)
    assert ck["dataset"] == "i2e-npz" and ck["num_classes"] == 2

    dvs = _dvs_set(tmp_path / "dvs")
    ft = tmp_path / "ft"
    main(["--dataset", "cifar10-dvs", "--data", str(dvs), "--cache-dir", str(tmp_path / "cache"),
          "--pretrained", str(pre / "last.pt"), "--preset", "dvs-finetune", *_small(ft)])
    m = metrics(ft)
    assert m[0]["val_count"] == 2  # 10 % of 10 recordings per class
    assert m[0]["train_lr"] <= 0.001
    cfg = yaml.safe_load((ft / "config.yaml").read_text())["optim"]
    assert (cfg["lr"], cfg["weight_decay"], cfg["batch_size"]) == (0.001, 0.0, 2)
    log = (ft / "train.log").read_text()
    assert "loaded weights from" in log and "re-initialised" not in log  # 2 -> 2 classes: head kept
    assert any((tmp_path / "cache").rglob("*.npz"))  # frames cached for later epochs


def test_wrong_dataset_kind_for_a_checkpoint(tmp_path, capsys):
    npz = _npz_set(tmp_path / "i2e")
    main(["--dataset", "i2e-npz", "--data", str(npz), *_small(tmp_path / "a")])
    dvs = _dvs_set(tmp_path / "dvs")
    with pytest.raises(SystemExit):
        main(["--dataset", "cifar10-dvs", "--data", str(dvs), "--cache-dir", str(tmp_path / "c"),
              "--resume", str(tmp_path / "a" / "last.pt"), *_small(tmp_path / "b")])
    assert "data set i2e-npz (this run: --dataset cifar10-dvs)" in capsys.readouterr().err


def _cifar10(root: Path, per_batch=4, test=6) -> Path:
    """The official CIFAR-10 python layout in miniature: data_batch_1..5, test_batch, batches.meta."""
    import pickle

    rng = np.random.default_rng(2)
    root.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):  # a bright square whose place depends on the class
            data[i, :, 3 * c: 3 * c + 8, 4:12] = 230
        return {b"data": data.reshape(n, -1), b"labels": labels.tolist(),
                b"filenames": [f"img_{rng.integers(1e9)}.png".encode() for _ in range(n)]}

    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (root / "test_batch").write_bytes(pickle.dumps(batch(test)))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return root


def test_cifar10_through_dali_and_exact_resume(tmp_path):
    data = _cifar10(tmp_path / "cifar-10-batches-py")
    args = ["--dataset", "cifar10", "--data", str(tmp_path), "--size", "16", "-T", "2", "--width", "4", "-b", "4",
            "--epochs", "2", "--no-progress", "--no-tensorboard"]
    main([*args, "-o", str(tmp_path / "a")])
    m = metrics(tmp_path / "a")
    assert [r["val_count"] for r in m] == [6, 6] and m[0]["train_steps"] == 5
    main([*args, "-o", str(tmp_path / "b"), "--stop-after-epoch", "1"])
    main([*args, "-o", str(tmp_path / "b"), "--resume", "auto"])
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["class_names"][:2] == ["airplane", "automobile"] and data.is_dir()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
