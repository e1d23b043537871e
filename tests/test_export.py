"""Export: round trip against the live loader, layout, resume after SIGKILL, full disk, bad paths."""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i2e_dali.data.sources import CifarSource, ImageFolderSource
from i2e_dali.tools.export import PARTIAL_SUFFIX, ExportConfig, ExportError, export
from loader_data import event_loader as EventLoader
from i2e_dali.data.npz import NpzEventDataset, load_events, read_npz_info

REPO = Path(__file__).resolve().parents[1]


def _blocky(rng, h, w):
    """Random colour blocks: sharp edges that survive the resize to 224, so events fire."""
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    img = np.kron(small, np.ones((8, 8, 1), np.uint8))[:h, :w]
    return np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), mode="edge")


def make_images(root: Path, per_class: dict[str, int], seed=0, size=(48, 56)):
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = size[0] + int(rng.integers(0, 8)), size[1] + int(rng.integers(0, 8))
                Image.fromarray(_blocky(rng, h, w)).save(d / f"{c}_{i:02d}.JPEG", quality=95)
    return root


def make_cifar(root: Path, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = np.stack([_blocky(rng, 32, 32) for _ in range(per_batch)])
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": rng.integers(0, 10, per_batch).tolist(),
                         b"data": imgs.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return folder


def live_events(source, view, device="cpu", **kw):
    """index -> bool events [T, 2, H, W] from the live loader (evaluation mode)."""
    loader = EventLoader(source, 4, train=False, with_index=True, eval_view=view, dtype=torch.bool,
                         device=device, num_threads=1, **kw)
    out = {}
    for ev, _, idx in loader:
        assert ev.device.type == torch.device(device).type
        for b, i in enumerate(idx.tolist()):
            out[i] = ev[:, b].cpu().numpy()
    assert len(out) == len(source.samples)
    return out


def _cfg(data, out, **kw):
    base = dict(batch_size=4, workers=2, dali_threads=1, device="cpu", progress=False)
    base.update(kw)
    return ExportConfig(data=data, out=out, **base)


def _all_npz(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): load_events(p) for p in sorted(root.rglob("*.npz"))}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("img") / "data", {"train": 3, "val": 2})


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_export_round_trip_equals_live_conversion(images, tmp_path, fmt):
    out = tmp_path / "out"
    summaries = export(_cfg(images, out, format=fmt))
    assert [s.written for s in summaries] == [6, 4]
    for split, view in (("train", "resize"), ("val", "crop")):
        src = ImageFolderSource(images / split)
        live = live_events(src, view)
        assert any(e.any() for e in live.values())
        ds = NpzEventDataset(out / split)
        assert ds.format == fmt and ds.classes == src.classes and ds.frame_shape == (8, 224, 224)
        for i, (path, label) in enumerate(src.samples):
            rel = Path(path).relative_to(src.root).with_suffix(".npz")
            assert ds.samples[i][0] == out / split / rel  # same layout and stems
            frames, lab = ds[i]
            assert lab == label and frames.dtype == torch.bool
            assert np.array_equal(frames.numpy(), live[i]), f"{split} sample {i} differs"
        meta = json.loads((out / split / "i2e_meta.json").read_text())
        assert meta["format"] == fmt and meta["view"] == view and meta["ratio"] == 0.12
        s = summaries[0 if split == "train" else 1]
        want_rate = np.mean([e.mean() for e in live.values()])
        assert s.event_rate == pytest.approx(want_rate, rel=1e-9)
        assert s.bytes_written == sum(p.stat().st_size for p in (out / split).rglob("*.npz"))
    if fmt == "sparse":  # p = 1 is ON = dense channel 0
        with np.load(ds.samples[0][0]) as d:
            rows = d["arr_0"]
        on = live[0][rows[rows[:, 1] == 1][:, 0], 0, rows[rows[:, 1] == 1][:, 3], rows[rows[:, 1] == 1][:, 2]]
        assert rows.dtype == np.uint8 and on.all() and len(rows) == live[0].sum()


def test_nested_folders_keep_their_layout_and_order(tmp_path):
    data = make_images(tmp_path / "data", {"train": 1, "val": 3}, seed=5)
    (data / "val" / "dog" / "sub").mkdir()
    (data / "val" / "dog" / "dog_01.JPEG").rename(data / "val" / "dog" / "sub" / "dog_01.JPEG")
    export(_cfg(data, tmp_path / "out", splits=("val",)))
    src = ImageFolderSource(data / "val")
    ds = NpzEventDataset(tmp_path / "out" / "val")
    assert (tmp_path / "out" / "val" / "dog" / "sub" / "dog_01.npz").is_file()
    want = [Path(p).relative_to(src.root).with_suffix(".npz") for p, _ in src.samples]
    assert [p.relative_to(ds.root) for p, _ in ds.samples] == want
    assert [lab for _, lab in ds.samples] == [lab for _, lab in src.samples]


@pytest.mark.gpu
def test_gpu_export_round_trip(images, tmp_path):
    out = tmp_path / "out"
    export(_cfg(images, out, splits=("val",), device="cuda"))
    src = ImageFolderSource(images / "val")
    live = live_events(src, "crop", device="cuda")  # GPU decode + fused conversion, as the export
    ds = NpzEventDataset(out / "val")
    for i in range(len(src.samples)):
        assert np.array_equal(ds[i][0].numpy(), live[i])


def test_cifar_export_names_by_index_and_matches_live(tmp_path):
    folder = make_cifar(tmp_path)
    out = tmp_path / "out"
    export(_cfg(folder, out, dataset="cifar10", splits=("val",), format="sparse"))
    src = CifarSource(folder, train=False)
    live = live_events(src, "crop")
    ds = NpzEventDataset(out / "val")
    assert ds.frame_shape == (8, 128, 128)
    files = sorted(out.rglob("*.npz"))
    assert len(files) == 3
    for i, (_, label) in enumerate(src.samples):
        path = out / "val" / src.classes[label] / f"{i:05d}.npz"
        assert np.array_equal(load_events(path), live[i])
    assert json.loads((out / "val" / "i2e_meta.json").read_text())["ratio"] == 0.07


def test_rerun_skips_finished_redoes_damaged_and_removes_partials(images, tmp_path):
    out = tmp_path / "out"
    export(_cfg(images, out, splits=("val",)))
    ref = _all_npz(out)
    victim = out / "val" / "dog" / "dog_01.npz"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # damaged final file (e.g. a disk that lied)
    (out / "val" / "cat" / "cat_00.npz").unlink()
    leftover = out / "val" / "cat" / f".cat_01.npz.x1y2{PARTIAL_SUFFIX}"
    leftover.write_bytes(b"half")
    before = {p: p.stat().st_mtime_ns for p in (out / "val").rglob("*.npz") if p != victim}
    (s,) = export(_cfg(images, out, splits=("val",)))
    assert (s.written, s.skipped, s.removed_partials) == (2, 2, 1)
    assert not leftover.exists()
    now = _all_npz(out)
    assert now.keys() == ref.keys() and all(np.array_equal(ref[k], now[k]) for k in ref)
    for p, t in before.items():  # finished files were not rewritten
        assert p.stat().st_mtime_ns == t
    with pytest.raises(ExportError, match="ratio: 0.12 there vs 0.2 now"):
        export(_cfg(images, out, splits=("val",), ratio=0.2))


class _FullDisk:
    """Opener whose files fail with ENOSPC once ``budget`` bytes have been written in total."""

    def __init__(self, budget):
        self.budget = budget

    def __call__(self, path, mode):
        opener = self

        class LimitedFile:
            def __init__(self):
                self.f = open(path, mode)

            def write(self, b):
                n = len(memoryview(b).cast("B"))
                if opener.budget - n < 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
                opener.budget -= n
                return self.f.write(b)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        return LimitedFile()


def _assert_clean(out: Path):
    assert not [p for p in out.rglob(f"*{PARTIAL_SUFFIX}")], "temp files left behind"
    for p in out.rglob("*.npz"):
        read_npz_info(p)  # every final-named file is complete


def test_full_disk_fails_clearly_leaves_nothing_partial_and_resumes(images, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="disk is full.*rerun the same command to resume"):
        export(_cfg(images, out, splits=("train",), workers=1), opener=_FullDisk(budget=9000))
    _assert_clean(out)
    done = len(list(out.rglob("*.npz")))
    assert 0 < done < 6
    (s,) = export(_cfg(images, out, splits=("train",)))
    assert s.skipped == done and s.written == 6 - done
    fresh = tmp_path / "fresh"
    export(_cfg(images, fresh, splits=("train",)))
    a, b = _all_npz(out), _all_npz(fresh)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_real_full_tmpfs(images, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the ENOSPC path is covered by the opener test")
    try:
        with pytest.raises(ExportError, match="disk is full"):
            export(_cfg(images, mnt / "out", format="dense"))
        _assert_clean(mnt / "out")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_bad_paths_are_refused(images, tmp_path):
    with pytest.raises(ExportError, match="inside the input folder"):
        export(_cfg(images, images / "val" / "events"))
    with pytest.raises(ExportError, match="inside the input folder"):
        export(_cfg(images, images))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot create the output folder"):
        export(_cfg(images, blocker / "out"))
    with pytest.raises(ExportError, match="does not exist"):
        export(_cfg(tmp_path / "missing", tmp_path / "o"))
    clash = tmp_path / "clash"
    make_images(clash, {"train": 1, "val": 1})
    shutil.copy(clash / "val" / "cat" / "cat_00.JPEG", clash / "val" / "cat" / "cat_00.jpg")
    with pytest.raises(ExportError, match="share a file stem"):
        export(_cfg(clash, tmp_path / "o2", splits=("val",)))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another user")
def test_unwritable_output_as_unprivileged_user(images):
    # pytest's tmp folders are private to root: use a world-readable folder, owned by root, for both.
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="i2e-export-perm-"))
    try:
        os.chmod(base, 0o755)
        shutil.copytree(images, base / "data")
        out = base / "locked"
        out.mkdir(mode=0o755)
        r = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
             "i2e_dali.tools.export", "--data", str(base / "data"), "--out", str(out), "--no-progress"],
            capture_output=True, text=True, cwd=REPO, timeout=120,
            env={**os.environ, "HOME": base.as_posix(), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        if r.returncode != 1 or "not writable" not in r.stderr:
            if "Traceback" in r.stderr and "i2e-export: error" not in r.stderr:
                pytest.skip(f"the unprivileged user cannot run the package here: {r.stderr[-300:]}")
        assert r.returncode == 1, r.stderr
        assert "not writable" in r.stderr and str(out) in r.stderr
        assert not any(out.iterdir())
    finally:
        shutil.rmtree(base)


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_equals_fresh_export(tmp_path):
    data = make_images(tmp_path / "data", {"train": 1, "val": 14}, seed=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "i2e_dali.tools.export", "--data", str(data), "--out", str(out), "--split", "val",
           "--format", "sparse", "--batch-size", "2", "--workers", "2", "--dali-threads", "1", "--device", "cpu",
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not list(out.rglob("*.npz")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        # a random point while files are being written (no delay on a retry: the machine is fast)
        time.sleep(random.Random().uniform(0.0, 0.3) if attempt == 0 else 0.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = list(out.rglob("*.npz"))
        if len(finished) < 28:
            break
    assert len(finished) < 28, "the export always finished before the kill; nothing was interrupted"
    for p in finished:  # whatever has a final name is complete, at any kill point
        read_npz_info(p)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"skipped {len(finished)} finished" in r.stdout
    _assert_clean(out)
    fresh = tmp_path / "fresh"
    export(_cfg(data, fresh, splits=("val",), format="sparse"))
    a, b = _all_npz(out), _all_npz(fresh)
    assert len(a) == 28 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
