"""The check agrees with training: a JPEG whose header declares an absurd size (6081 x 43406, as a damaged
real photo did) decodes whole but breaks the training view's random-crop window. i2e-check lists it (the
pixel limit, and without the limit the crop decode); the loader names it whatever DALI's message says;
the trainer stops naming it, or runs past it with --skip-bad. Errors that are not a file's pass through."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from damage import jpeg_declare_size
from i2e_dali.data.decode_check import (DEFAULT_MAX_PIXELS, decode_check, default_max_pixels, find_culprits,
                                        is_infrastructure_error)
from i2e_dali.data.decode_pool import declared_pixels
from i2e_dali.data.event_loader import DaliOptions, EventLoader
from i2e_dali.data.sources import ImageFolderSource, UndecodableImageError
from i2e_dali.errors import ConfigError
from i2e_dali.tools.check import main as check_main
from loader_data import make_folder
from train_helpers import tiny_args, tiny_data

W, H = 6081, 43406


def _loader(source, *, train: bool, max_pixels=None, **kw) -> EventLoader:
    """A one-thread CPU loader; ``max_pixels`` sets its pipeline's declared-size guard (None: the default)."""
    extra = {} if max_pixels is None else {"max_pixels": max_pixels}
    return EventLoader(source, 2, train=train, device="cpu", dali=DaliOptions(num_threads=1, extra=extra), **kw)


@pytest.fixture
def absurd(tmp_path):
    """A class folder of clean JPEGs plus one whose SOF declares 6081 x 43406."""
    root = make_folder(tmp_path / "set", {"a": 3, "b": 3}, seed=5)
    victim = root / "b" / "b_001.JPEG"
    victim.write_bytes(jpeg_declare_size(victim.read_bytes(), W, H))
    return root, str(victim)


def test_declared_size_is_read_from_the_header(absurd):
    _, victim = absurd
    data = open(victim, "rb").read()
    assert declared_pixels(data) == (W, H)
    assert declared_pixels(b"\xff\xd8\xff\xe0 not really") is None  # unparsable: the decoder decides


def test_check_lists_the_absurd_size_by_limit_and_by_the_crop_decode(absurd, tmp_path, capsys, monkeypatch):
    root, victim = absurd
    listing = tmp_path / "bad.txt"
    assert check_main([str(root), "--quiet", "--threads", "1", "--list", str(listing)]) == 1
    out = capsys.readouterr().out
    assert f"BAD: {victim}: declares {W} x {H} pixels" in out and f"{DEFAULT_MAX_PIXELS:,}" in out
    assert listing.read_text().split() == [victim]
    # a limit above its size lets DALI see it: the whole-image decode accepts it, the training view's
    # random-crop decode does not, and the check reports that
    bad = dict(decode_check([victim], num_threads=1, progress=False, max_pixels=W * H))
    assert "cannot be decoded (DALI: The cropping window" in bad[victim], bad
    whole_only = decode_check([victim], num_threads=1, progress=False, max_pixels=None, crop=None)
    assert whole_only == []  # what the check did before: the verdict the training view disagreed with
    # the CLI's limit and the environment's
    assert check_main([str(root), "--quiet", "--threads", "1", "--max-pixels", str(W * H)]) == 1
    assert "The cropping window" in capsys.readouterr().out
    monkeypatch.setenv("I2E_DALI_MAX_PIXELS", "1000")  # every 40x48 image is over it
    assert default_max_pixels() == 1000
    assert len(decode_check([str(p) for p in sorted(root.rglob("*.JPEG"))], num_threads=1, progress=False)) == 6
    monkeypatch.setenv("I2E_DALI_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="I2E_DALI_MAX_PIXELS"):
        default_max_pixels()
    monkeypatch.setenv("I2E_DALI_MAX_PIXELS", "0")
    assert default_max_pixels() is None


def test_training_loader_names_the_file_whatever_dali_says(absurd):
    """The training view fails with DALI's crop-window message (no file, no known phrase); the loader's
    isolated search names the file. Before: a raw RuntimeError. The pipeline's own guard is off here, so
    DALI sees the file (with it on, test_pixel_guard.py: refused before DALI)."""
    root, victim = absurd
    loader = _loader(ImageFolderSource(root), train=True, crop_size=16, max_pixels=0)
    with pytest.raises(UndecodableImageError) as info:
        for _ in range(3):
            for _ in loader:
                pass
    msg = str(info.value)
    assert victim in msg and "declares 6081 x 43406" in msg and "i2e-check" in msg
    assert isinstance(info.value.__cause__, RuntimeError)  # DALI's own error stays attached


def test_errors_that_are_not_a_files_pass_through_as_themselves(tmp_path):
    root = make_folder(tmp_path / "clean", {"a": 2}, seed=6)
    loader = _loader(ImageFolderSource(root), train=False, crop_size=16, resize_size=20)
    odd = RuntimeError("Critical error in pipeline:\nencountered:\n\nSomething no file caused")

    def fail():
        raise odd

    with pytest.raises(RuntimeError) as info:  # the search ran over the clean files and found nothing
        loader._dali_call(fail)
    assert info.value is odd
    cuda = RuntimeError("Critical error in pipeline:\nencountered:\n\nCUDA error: an illegal memory access in "
                        f"{root}/a/a_000.JPEG")
    assert is_infrastructure_error(str(cuda))

    def fail_cuda():
        raise cuda

    with pytest.raises(RuntimeError) as info:
        loader._dali_call(fail_cuda)
    assert info.value is cuda
    assert find_culprits(loader.source.files, str(odd), num_threads=1) == []
    assert not is_infrastructure_error("Critical error in pipeline:\nencountered:\n\nThe cropping window "
                                       "[0..5, 7..9] is not valid for /data/cuda/x.JPEG")


def test_trainer_stops_naming_it_and_skip_bad_runs_past_it(tmp_path, monkeypatch):
    root = tiny_data(tmp_path / "data", classes=2)
    victim = sorted((root / "train").rglob("*.jpg"))[3]
    victim.write_bytes(jpeg_declare_size(victim.read_bytes(), W, H))
    env = {**os.environ, "I2E_DALI_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("I2E_DEBUG", None)
    cmd = [sys.executable, "-m", "i2e_dali.training.run"]
    plain = subprocess.run(cmd + tiny_args(root, tmp_path / "plain", epochs=1), env=env, capture_output=True,
                           text=True, timeout=300)
    assert plain.returncode == 2, plain.stderr[-3000:]
    assert str(victim) in plain.stderr and "declares 6081 x 43406" in plain.stderr
    assert "Traceback" not in plain.stderr and "RuntimeError" not in plain.stderr
    skip = subprocess.run(cmd + tiny_args(root, tmp_path / "skip", "--skip-bad", epochs=1), env=env,
                          capture_output=True, text=True, timeout=300)
    assert skip.returncode == 0, skip.stderr[-3000:]
    log = (tmp_path / "skip" / "train.log").read_text()
    assert "--skip-bad: 1 unusable file(s)" in log and (tmp_path / "skip" / "last.pt").is_file()


def test_culprit_search_reads_only_the_batches_in_flight(tmp_path, caplog):
    """On a DALI error that names no file, the search decodes the epoch's next batches up to the prefetch
    depth, not the rank's whole share (on ImageNet that would be hours before the user hears the file)."""
    import logging

    root = make_folder(tmp_path / "big", {"a": 30, "b": 30}, seed=7)
    victim = root / "b" / "b_017.JPEG"
    victim.write_bytes(jpeg_declare_size(victim.read_bytes(), W, H))
    loader = _loader(ImageFolderSource(root), train=True, crop_size=16, max_pixels=0)
    with caplog.at_level(logging.WARNING, logger="i2e_dali"), pytest.raises(UndecodableImageError) as info:
        for _ in loader:
            pass
    assert str(victim) in str(info.value)
    searched = [int(r.getMessage().split("searching ")[1].split()[0]) for r in caplog.records
                if "searching" in r.getMessage()]
    window = (loader.dali.prefetch_queue_depth + 2) * loader.batch_size
    assert searched and all(n <= window for n in searched), (searched, window)


def test_a_state_saved_with_another_graph_is_refused_by_name(tmp_path):
    """A DALI state restores only into the same graph: another pixel-guard setting is named by the
    fingerprint, another view (same fingerprint, other operators) by the restore; never a raw DALI error."""
    root = make_folder(tmp_path / "set", {"a": 4, "b": 4}, seed=8)
    saved = _loader(ImageFolderSource(root), train=True, crop_size=16)
    it = iter(saved)
    next(it)
    state = saved.state_dict()
    with pytest.raises(ConfigError, match="pixel_guard"):
        _loader(ImageFolderSource(root), train=True, crop_size=16, max_pixels=0).load_state_dict(state)
    other_view = _loader(ImageFolderSource(root), train=True, crop_size=16, aug="baseline1")
    with pytest.raises(ConfigError, match="does not fit this loader's pipeline"):
        other_view.load_state_dict(state)
