"""i2e-check: finds every file the pipeline cannot use, exit code 1; clean data -> 0."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from i2e_dali.tools.check import check_folder, main
from loader_data import make_folder


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", {"a": 3, "b": 3}, seed=1)
    make_folder(root / "val", {"a": 2, "b": 2}, seed=2)
    good = (root / "train" / "a" / "a_000.JPEG").read_bytes()
    bad = {
        root / "train" / "a" / "trunc.JPEG": good[: len(good) // 2],
        root / "train" / "a" / "short.JPEG": good[:100],
        root / "train" / "b" / "html.JPEG": b"<html>not found</html>",
        root / "val" / "a" / "zero.JPEG": b"",
    }
    for p, data in bad.items():
        p.write_bytes(data)
    (root / "val" / "b" / "labels.csv").write_text("a,b\n")
    # decodable oddities that must NOT be reported
    rgb = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(root / "train" / "b" / "cmyk.JPEG")
    Image.fromarray(rgb).save(root / "train" / "b" / "png.JPEG", format="PNG")
    Image.fromarray(rgb[:1, :1]).convert("L").save(root / "val" / "b" / "one.JPEG")
    return root, sorted(str(p) for p in bad) + [str(root / "val" / "b" / "labels.csv")]


def test_check_lists_every_bad_file(dataset, tmp_path, capsys):
    root, bad = dataset
    report = check_folder(root, num_threads=2, batch_size=4, progress=False)
    assert sorted(p for p, _ in report.bad) == sorted(bad)
    assert report.checked == 6 + 4 + 3 + 4 + 1 and not report.ok
    listing = tmp_path / "bad.txt"
    assert main([str(root), "--quiet", "--threads", "1", "--list", str(listing)]) == 1
    out = capsys.readouterr().out
    for p in bad:
        assert f"BAD: {p}" in out
    assert "cmyk" not in out and "png.JPEG" not in out and "one.JPEG" not in out
    assert sorted(listing.read_text().split()) == sorted(bad)


def test_check_clean_folder_and_folder_problems(tmp_path, capsys):
    root = make_folder(tmp_path / "classes", {"x": 2, "y": 2}, seed=3)
    assert main([str(root), "--quiet"]) == 0
    assert "OK: every file decodes" in capsys.readouterr().out
    (root / "z").mkdir()
    assert main([str(root), "--quiet"]) == 1
    assert "EMPTY CLASS FOLDER" in capsys.readouterr().out
    ds = tmp_path / "ds"
    make_folder(ds / "train", {"x": 1}, seed=0)
    report = check_folder(ds, progress=False)
    assert any("val is missing" in p for p in report.problems)
    assert main([str(tmp_path / "nowhere"), "--quiet"]) == 2


def test_check_module_entry_point(tmp_path):
    root = make_folder(tmp_path / "c", {"x": 1}, seed=0)
    (root / "x" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0garbage")
    res = subprocess.run([sys.executable, "-m", "i2e_dali.tools.check", str(root), "--quiet"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1, res.stderr
    assert "broken.JPEG" in res.stdout


# --------------------------------------------------------------------------------------------------
# isolation: a file that crashes, hangs or fails the decoder never takes the check down
# --------------------------------------------------------------------------------------------------
def test_pool_names_crashes_hangs_and_errors_without_blaming_a_flaky_crash(tmp_path):
    from damage import scripted_decode
    from i2e_dali.data.decode_check import decode_check

    d = tmp_path / "files"
    d.mkdir()
    flag = tmp_path / "flaky.flag"
    flag.write_text("armed")
    content = {f"ok{i}": b"OK" for i in range(10)}
    content.update({"bad1": b"BAD", "bad2": b"BAD", "crash": b"CRASH", "hang": b"HANG",
                    "flaky": b"FLAKY:" + str(flag).encode() + b"\n", "zero": b""})
    files = []
    for i, (name, data) in enumerate(content.items()):
        (d / name).write_bytes(data)
        files.append(str(d / name))
    files.insert(3, str(d / "missing"))
    bad = dict(decode_check(files, num_threads=2, batch_size=4, time_limit=1.5, progress=False,
                            decode_fn=scripted_decode))
    assert set(bad) == {str(d / n) for n in ("bad1", "bad2", "crash", "hang", "zero", "missing")}
    assert "cannot be decoded" in bad[str(d / "bad1")] and "scripted" in bad[str(d / "bad1")]
    assert "crashes the decoder" in bad[str(d / "crash")] and "SIGSEGV" in bad[str(d / "crash")]
    assert "decoder hang" in bad[str(d / "hang")] and "1.5 s" in bad[str(d / "hang")]
    assert "empty" in bad[str(d / "zero")] and "cannot read" in bad[str(d / "missing")]
    assert not flag.exists()  # the flaky crash did happen, and its file was not blamed for it


def test_damaged_jpegs_never_crash_check_and_the_loader_trains_past_them(official_samples, tmp_path):
    """A folder of damaged copies of the official photos (bit flips, truncation, damaged header, junk in
    the entropy data, rewritten SOF size) made the in-process check die with SIGSEGV; now: exit 1, every
    bad file named, and an epoch runs over the rest with the list excluded."""
    from damage import JPEG_ALWAYS_BAD, damaged_jpeg_folder
    from i2e_dali.data.decode_check import decode_check
    from loader_data import event_loader as EventLoader
    from i2e_dali.data.exclude import read_exclude_list
    from i2e_dali.data.sources import ImageFolderSource, UndecodableImageError

    root = tmp_path / "damaged"
    made = damaged_jpeg_folder(root, sorted(official_samples.glob("*_rgb.jpg")), per_kind=8, clean=16, seed=11)
    listing = tmp_path / "bad.txt"
    res = subprocess.run([sys.executable, "-m", "i2e_dali.tools.check", str(root), "--quiet", "--list", str(listing)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    listed = set(listing.read_text().split())
    for kind in JPEG_ALWAYS_BAD:
        assert set(made[kind]) <= listed, kind
    assert not listed & set(made["clean"])
    for p in listed:
        assert f"BAD: {p}" in res.stdout
    # the same verdict as decoding every file on its own in a fresh worker
    every = [p for k in made for p in made[k]]
    alone = {p for p, _ in decode_check(every, num_threads=2, batch_size=1, progress=False)}
    assert listed == alone
    # the loader: the first bad file stops it with the clear error; with the list, an epoch runs over the rest
    # (both views: the training view decodes through the random-crop ROI decoder)
    for train in (False, True):
        kw = dict(train=train, device="cpu", num_threads=1, crop_size=16, resize_size=20)
        with pytest.raises(UndecodableImageError, match="i2e-check"):
            for _ in EventLoader(ImageFolderSource(root), 16, **kw):
                pass
        src = ImageFolderSource(root, exclude=read_exclude_list(listing))
        assert len(src.excluded) == len(listed) and str(listing) in src.exclusion_note
        seen = sum(labels.shape[0] for _, labels in EventLoader(src, 16, **kw))
        usable = len(every) - len(listed)
        assert seen == (usable if not train else usable // 16 * 16) and usable > 16
