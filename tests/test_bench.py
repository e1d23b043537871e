"""Smoke tests of every benchmark mode on the CPU (tiny settings) and of the corpus generator."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import torch

from i2e_dali.tools import bench
from i2e_dali.tools.bench.common import default_json_path
from i2e_dali.tools.bench.corpus import CorpusConfig, CorpusError, encode_near, generate_corpus, load_sources, make_image


def _run(capsys, argv):
    code = bench.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _check_environment(record, mode):
    assert record["mode"] == mode
    env = record["environment"]
    assert env["device"] and env["device_type"] in ("cpu", "cuda") and env["cpu_cores"] >= 1
    assert env["date"][:4].isdigit() and "T" in env["date"]
    for lib in ("torch", "triton", "nvidia-dali", "torchvision"):
        assert env["versions"][lib], f"{lib} version missing"
    assert isinstance(record["settings"], dict) and record["settings"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, request):
    samples = request.getfixturevalue("official_samples")
    out = tmp_path_factory.mktemp("bench") / "corpus"
    cfg = CorpusConfig(out=out, images=12, val_images=3, classes=3, samples=samples, workers=2, progress=False)
    return cfg, generate_corpus(cfg)


# ------------------------------------------------------------------------------------------------
# corpus
# ------------------------------------------------------------------------------------------------
def test_corpus_layout_sizes_and_real_content(corpus):
    cfg, manifest = corpus
    train = sorted((cfg.out / "train").glob("*/*.JPEG"))
    val = sorted((cfg.out / "val").glob("*/*.JPEG"))
    assert len(train) == 12 and len(val) == 3
    assert sorted(p.name for p in (cfg.out / "train").iterdir()) == ["n00000000", "n00000001", "n00000002"]
    assert all(len(list(d.iterdir())) == 4 for d in (cfg.out / "train").iterdir())  # round robin
    assert not list(cfg.out.rglob("*.tmp"))  # atomic writes leave no temporaries
    sizes, stds, thumbs = [], [], set()
    for path in train + val:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            w, h = im.size
            pixels = np.asarray(im, dtype=np.float32)
        assert 250 <= max(w, h) <= 800 and 150 <= min(w, h) <= 800, (w, h)
        sizes.append(path.stat().st_size)
        stds.append(pixels.std())
        # real photographs: strong variation inside each image and in every channel
        assert pixels.reshape(-1, 3).std(axis=0).min() > 20
        thumbs.add(Image.fromarray(pixels.astype(np.uint8)).resize((8, 8)).tobytes())
    assert len(thumbs) == len(train) + len(val)  # no two images alike
    assert 60e3 < np.mean(sizes) < 180e3, np.mean(sizes)  # around ImageNet's ~110 KB
    assert manifest["train_images"] == 12 and manifest["classes"] == 3
    assert json.loads((cfg.out / "corpus.json").read_text()) == manifest
    assert abs(manifest["file_kb"]["mean"] * 1e3 - np.mean(sizes)) < 1


def test_corpus_is_deterministic_and_resumes(corpus, tmp_path):
    cfg, manifest = corpus
    # another run with one worker from scratch gives the same bytes (image i depends on seed/split/i only)
    other = CorpusConfig(out=tmp_path / "again", images=4, val_images=0, classes=3, samples=cfg.samples,
                         workers=1, progress=False)
    generate_corpus(other)
    for path in sorted((other.out / "train").glob("*/*.JPEG")):
        assert path.read_bytes() == (cfg.out / path.relative_to(other.out)).read_bytes()
    # an interrupted run (no manifest, a file missing) is finished by running again
    victim = next((other.out / "train").glob("*/*.JPEG"))
    data = victim.read_bytes()
    victim.unlink()
    (other.out / "corpus.json").unlink()
    generate_corpus(other)
    assert victim.read_bytes() == data and (other.out / "corpus.json").exists()
    # same folder, other settings: refused
    with pytest.raises(CorpusError, match="other settings"):
        generate_corpus(CorpusConfig(out=other.out, images=5, classes=3, samples=cfg.samples, progress=False))


def test_corpus_errors(tmp_path, official_samples):
    with pytest.raises(CorpusError, match="not found.*--samples"):
        generate_corpus(CorpusConfig(out=tmp_path / "c", images=2, classes=1, samples=tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no \\*_rgb.jpg"):
        load_sources(tmp_path / "empty")
    with pytest.raises(CorpusError, match="--classes"):
        CorpusConfig(out=tmp_path / "c", images=3, classes=5, samples=official_samples)
    with pytest.raises(CorpusError, match="--images"):
        CorpusConfig(out=tmp_path / "c", images=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(CorpusError, match="not empty"):
        generate_corpus(CorpusConfig(out=tmp_path / "busy", images=2, classes=1, samples=official_samples))


def test_encode_near_hits_the_target(official_samples):
    sources = load_sources(official_samples)[:5]
    image = make_image(sources, np.random.default_rng(0))
    sizes = {q: len(encode_near(image, 10**9, low=q, high=q)) for q in (70, 85, 95)}
    assert sizes[70] < sizes[85] < sizes[95]  # the bisection relies on size growing with quality
    target = (sizes[70] + sizes[95]) // 2
    got = len(encode_near(image, target))
    assert abs(got - target) < 0.15 * target
    assert Image.open(io.BytesIO(encode_near(image, target))).size == image.size


def test_corpus_cli(capsys, tmp_path, official_samples):
    out = _run(capsys, ["corpus", "--out", str(tmp_path / "c"), "--images", "2", "--classes", "2",
                        "--val-images", "0", "--samples", str(official_samples), "--workers", "1", "--quick",
                        "--json", str(tmp_path / "c.json"), "--shards"])
    assert "train images" in out and "file KB mean" in out and "tar shards" in out
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["corpus"]["train_images"] == 2 and record["mode"] == "corpus"
    from i2e_dali.data.shards import ShardSource

    assert record["corpus"]["shards"] == str(tmp_path / "c-wds")
    assert len(ShardSource(str(tmp_path / "c-wds" / "train"))) == 2  # --shards: the corpus as tar shards too


# ------------------------------------------------------------------------------------------------
# convert / loader / train on the CPU
# ------------------------------------------------------------------------------------------------
def test_convert_mode(capsys, tmp_path):
    path = tmp_path / "convert.json"
    out = _run(capsys, ["convert", "--quick", "--device", "cpu", "--json", str(path)])
    assert "I2E conversion on" in out and "x conv" in out and "fused skipped" in out
    record = json.loads(path.read_text())
    _check_environment(record, "convert")
    assert record["copy_bandwidth_gb_per_s"] > 0
    rows = record["results"]
    assert {r["impl"] for r in rows} == {"torch", "conv"} and {r["mode"] for r in rows} == {"eval", "train"}
    for r in rows:
        assert r["median_ms"] > 0 and r["images_per_s"] > 0 and r["gb_per_s"] > 0
        assert 0 < r["roofline_fraction"] < 10 and r["speedup_vs_conv"] > 0
        assert r["identical_to_torch_path"] is True
        assert r["bytes_out"] == 8 * r["batch"] * 2 * r["size"] ** 2 * 4  # float32 events
        assert math.isclose(r["images_per_s"], r["batch"] / (r["median_ms"] / 1e3))
    assert record["summary"]["torch_vs_conv"]
    assert "fused" in record["settings"]["skipped"]


def test_loader_mode(capsys, tmp_path, corpus):
    cfg, _ = corpus
    path = tmp_path / "loader.json"
    out = _run(capsys, ["loader", "--quick", "--device", "cpu", "--data", str(cfg.out), "--batch-size", "2",
                        "--crop", "32", "--json", str(path)])
    assert "Events delivered on cpu" in out and "reference" in out and "dali-cpu" in out
    record = json.loads(path.read_text())
    _check_environment(record, "loader")
    assert [r["pipeline"] for r in record["results"]] == ["dali-cpu", "dali-cpu-wds", "reference"]
    for r in record["results"]:
        assert r["images_per_s"] > 0 and r["seconds"] > 0
        assert r["events_shape"] == [8, 2, 2, 32, 32] and r["dtype"] == "torch.float32"
    assert record["results"][2]["speedup_vs_reference"] == 1
    wds = record["results"][1]  # the same images as tar shards, packed beside the corpus
    assert wds["shards_vs_folder"] == wds["images_per_s"] / record["results"][0]["images_per_s"]
    assert (Path(f"{cfg.out}-wds") / "train" / "shards.npz").is_file()


def test_train_mode(capsys, tmp_path, corpus):
    cfg, _ = corpus
    path = tmp_path / "train.json"
    out = _run(capsys, ["train", "--quick", "--device", "cpu", "--data", str(cfg.out), "--steps", "1",
                        "--json", str(path)])
    assert "training steps" in out and "synthetic" in out and "data wait" in out
    record = json.loads(path.read_text())
    _check_environment(record, "train")
    rows = record["results"]
    assert [r["feed"] for r in rows] == ["synthetic", "dali-cpu", "reference"]
    for r in rows:
        assert r["images_per_s"] > 0 and 0 <= r["data_wait_fraction"] < 1 and math.isfinite(r["last_loss"])
    assert rows[0]["fraction_of_ceiling"] == 1


def test_bad_settings_are_reported(capsys, tmp_path):
    assert bench.main(["loader", "--quick", "--device", "cpu", "--data", str(tmp_path / "none")]) == 2
    assert "expected" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench.main(["convert", "--quick", "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_default_json_path_names_device_date_mode():
    env = {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-23T10:00:00+00:00"}
    assert default_json_path(env, "convert") == Path("benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-23-convert.json")


def test_convert_mode_with_reused_output_buffer(capsys, tmp_path):
    path = tmp_path / "convert_reuse.json"
    _run(capsys, ["convert", "--quick", "--device", "cpu", "--reuse-output", "--modes", "eval", "--json", str(path)])
    rows = json.loads(path.read_text())["results"]
    assert {(r["impl"], r["reused_output"]) for r in rows} == {("torch", True), ("conv", False)}
    assert all(r["identical_to_torch_path"] is True for r in rows)
