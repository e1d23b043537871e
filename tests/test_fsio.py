"""The one atomic-write helper: complete files only, ordinary permissions, nothing left on failure."""
from __future__ import annotations

import os
import stat

import pytest

from i2e_dali.fsio import _umask, atomic_write, atomic_write_text


def test_writes_complete_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "data.bin"
    size = atomic_write(target, lambda f: f.write(b"x" * 1000), durable=True)
    assert size == 1000 and target.read_bytes() == b"x" * 1000
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "meta.json"
    atomic_write_text(target, "old")

    def boom(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, boom, suffix=".partial")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_opener_hook_is_used(tmp_path):
    opened = []

    def opener(path, mode):
        opened.append((os.path.basename(path), mode))
        return open(path, mode)

    atomic_write(tmp_path / "a.npz", lambda f: f.write(b"1"), suffix=".partial", opener=opener)
    assert len(opened) == 1 and opened[0][0].startswith(".a.npz.") and opened[0][0].endswith(".partial")
