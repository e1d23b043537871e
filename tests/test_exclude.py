"""Training past bad files on request: --exclude-list (i2e-check's --list file) and --skip-bad (the cached
decode check) on the trainer and the Python sources; without either, the first bad file still stops the run."""
from __future__ import annotations

import json
import os

import pytest

from i2e_dali.data.decode_check import find_bad_files
from i2e_dali.data.exclude import ExcludeList, read_exclude_list
from i2e_dali.data.sources import ImageFolderSource, MissingDataError, open_source
from i2e_dali.training.run import main

from train_helpers import tiny_args, tiny_data


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A tiny ImageNet-layout set with one truncated JPEG in train/ and one in val/."""
    root = tiny_data(tmp_path_factory.mktemp("broken"), classes=2)
    bad = []
    for split in ("train", "val"):
        path = sorted((root / split).rglob("*.jpg"))[1]
        path.write_bytes(path.read_bytes()[:200])
        bad.append(str(path))
    return root, bad


def test_exclude_list_file_format(tmp_path):
    lst = tmp_path / "lists" / "bad.txt"
    lst.parent.mkdir()
    lst.write_text("# written by i2e-check\n/data/x/a.JPEG\n\n  rel/b.JPEG  \n")
    excl = read_exclude_list(lst)
    assert excl.paths == ["/data/x/a.JPEG", str(lst.parent / "rel" / "b.JPEG")] and excl.origin == str(lst)
    assert "/data/x/a.JPEG" in excl and str(tmp_path / "lists" / "rel" / "b.JPEG") in excl
    with pytest.raises(MissingDataError, match="i2e-check ROOT --list"):
        read_exclude_list(tmp_path / "nope.txt")
    with pytest.raises(TypeError, match="read_exclude_list"):
        ExcludeList.of("bad.txt")  # a str is a list file's name, not a list: say how to read it


def test_sources_take_exclude_and_say_how_many(broken, tmp_path):
    root, bad = broken
    full = open_source(root, "train")
    src = open_source(root, "train", exclude=bad)  # any iterable of paths; entries of other splits ignored
    assert len(src) == len(full) - 1 and src.excluded == [bad[0]]
    assert src.exclusion_note == f"1 image(s) of {root / 'train'} excluded (listed in exclude=)"
    assert full.exclusion_note is None
    # the list matches through a symlinked root too, and a listed zero-byte file no longer stops the source
    link = tmp_path / "link"
    os.symlink(root, link)
    zero = root / "val" / sorted(os.listdir(root / "val"))[0] / "zero.jpg"
    zero.write_bytes(b"")
    try:
        with pytest.raises(Exception, match="zero.jpg"):
            ImageFolderSource(link / "val")
        src = ImageFolderSource(link / "val", exclude=[bad[1], str(zero)])
        assert sorted(src.excluded) == sorted([str(link / "val" / os.path.relpath(bad[1], root / "val")),
                                               str(link / "val" / os.path.relpath(zero, root / "val"))])
    finally:
        zero.unlink()


def test_find_bad_files_is_cached_by_file_list_sizes_and_mtimes(broken, tmp_path):
    root, bad = broken
    cache = tmp_path / "cache"
    found, cached = find_bad_files(root / "train", cache_dir=cache, num_workers=1, progress=False)
    assert [p for p, _ in found] == [bad[0]] and not cached
    found2, cached = find_bad_files(root / "train", cache_dir=cache, num_workers=1, progress=False)
    assert found2 == found and cached
    # touching a file (new mtime) invalidates the cached answer
    some = sorted((root / "train").rglob("*.jpg"))[0]
    st = os.stat(some)
    os.utime(some, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, cached = find_bad_files(root / "train", cache_dir=cache, num_workers=1, progress=False)
    assert not cached


def test_train_stops_at_the_first_bad_file_unless_told(broken, tmp_path, capsys, monkeypatch):
    root, bad = broken
    monkeypatch.setenv("I2E_DALI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit):
        main(tiny_args(root, tmp_path / "plain", epochs=1))
    err = capsys.readouterr().err
    assert "i2e-check" in err and any(os.path.basename(b) in err for b in bad)

    lst = tmp_path / "bad.txt"
    lst.write_text("".join(f"{b}\n" for b in bad))
    out = tmp_path / "listed"
    res = main(tiny_args(root, out, "--exclude-list", str(lst), epochs=1))
    log = (out / "train.log").read_text()
    assert f"1 image(s) of {root / 'train'} excluded (listed in {lst})" in log
    assert f"1 image(s) of {root / 'val'} excluded (listed in {lst})" in log
    assert res["val_excluded"] == 1 and res["val_count"] == 2 * 3 - 1
    assert "1 excluded" in log
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["val_excluded"] == 1 and line["val_excluded_from"] == str(lst)

    out = tmp_path / "skip"
    res = main(tiny_args(root, out, "--skip-bad", epochs=1))
    log = (out / "train.log").read_text()
    assert "--skip-bad: 1 unusable file(s)" in log and "excluded (listed in the --skip-bad check)" in log
    assert res["val_excluded"] == 1
    ev = main(tiny_args(root, tmp_path / "ev", "--skip-bad", "--evaluate", "--resume", str(out / "last.pt")))
    assert ev["excluded"] == 1 and ev["count"] == 5

    with pytest.raises(SystemExit):
        main(tiny_args(root, tmp_path / "c", "--dataset", "cifar10", "--exclude-list", str(lst)))
    assert "applies to image-folder data sets" in capsys.readouterr().err


def test_export_one_split_and_exclude_list(broken, tmp_path, capsys):
    """i2e-export: a root with only val/ (or only train/) and no --split exports what exists and says so;
    --split both with one missing stays a clear error; --exclude-list leaves the listed files out."""
    import shutil

    from i2e_dali.tools.export import main as export_main

    root, bad = broken
    only_val = tmp_path / "only_val"
    shutil.copytree(root / "val", only_val / "val")
    common = ["--format", "sparse", "--batch-size", "4", "--workers", "1", "--dali-threads", "1", "--device", "cpu",
              "--no-progress", "--size", "16"]
    lst = tmp_path / "bad.txt"
    lst.write_text(str(only_val / "val" / os.path.relpath(bad[1], root / "val")) + "\n")
    assert export_main(["--data", str(only_val), "--out", str(tmp_path / "o1"), "--exclude-list", str(lst)]
                       + common) == 0
    out = capsys.readouterr().out
    assert "has val/ but no train/: exporting only val" in out
    assert f"1 image(s) of val excluded (listed in {lst})" in out
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["val"]
    assert len(list((tmp_path / "o1" / "val").rglob("*.npz"))) == 2 * 3 - 1

    only_train = tmp_path / "only_train"
    shutil.copytree(root / "train", only_train / "train")
    (only_train / "train" / os.path.relpath(bad[0], root / "train")).unlink()
    assert export_main(["--data", str(only_train), "--out", str(tmp_path / "o2")] + common) == 0
    assert "has train/ but no val/: exporting only train" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["train"]

    assert export_main(["--data", str(only_val), "--out", str(tmp_path / "o3"), "--split", "both"] + common) == 1
    assert "train does not exist" in capsys.readouterr().err


def test_skip_bad_under_two_process_ddp(broken, tmp_path):
    """torchrun, 2 gloo ranks: the check is spread over both ranks (each decodes its share, the shares are
    merged), both ranks leave the same files out, and the all-reduced validation counts every usable image
    once."""
    import subprocess
    import sys

    from train_helpers import REPO, free_port, metrics, subprocess_env

    root, _ = broken
    out = tmp_path / "ddp"
    env = {**subprocess_env(), "I2E_DALI_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "train_dali.py"), *tiny_args(root, out, "--skip-bad", epochs=1, batch=2)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert log.count("--skip-bad: 1 unusable file(s)") == 2  # train/ and val/, logged by rank 0 only
    assert log.count("spread over 2 ranks") == 2
    m = metrics(out)
    assert len(m) == 1 and m[0]["val_count"] == 2 * 3 - 1 and m[0]["val_excluded"] == 1
    assert len(list((tmp_path / "cache" / "checks").iterdir())) == 2  # one cached answer per folder
