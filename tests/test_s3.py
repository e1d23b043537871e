"""Object storage round trip against a real S3-compatible server (moto's server mode, a separate process on
127.0.0.1, started and stopped here): a folder data set and its shards read from s3:// through DALI's own
S3 support give the same batches as the local copies; a missing object, a missing bucket and denied
credentials give the project's error naming the URL, never the credentials."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from i2e_dali.data.event_loader import EventLoader
from i2e_dali.data.shards import ShardSource
from i2e_dali.data.sources import ImageFolderSource, open_source
from i2e_dali.errors import DatasetError, MissingDataError
from i2e_dali.tools.shard import main as shard_main
from loader_data import make_folder

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

SECRET = "not-a-real-secret-9f3a"
VIEW = dict(device="cpu", crop_size=24, resize_size=28, with_index=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(extra_env: dict | None = None):
    port = _port()
    env = dict(os.environ, **(extra_env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto server with bucket "data" holding ds/{train,val} (a class-folder set) and wds/ (its shards)."""
    root = tmp_path_factory.mktemp("s3")
    make_folder(root / "ds" / "train", {"a": 4, "b": 4}, size=(30, 34))
    make_folder(root / "ds" / "val", {"a": 3, "b": 2}, size=(30, 34), seed=1)
    assert shard_main([str(root / "ds"), str(root / "wds"), "--shard-size", "6k", "--workers", "1"]) == 0
    proc, url = _server()
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="data")
        for local, prefix in ((root / "ds", "ds"), (root / "wds", "wds")):
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    client.upload_file(str(p), "data", f"{prefix}/{p.relative_to(local)}")
        yield {"root": root, "url": url, "client": client}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=10)


def _same(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])


def test_folder_from_s3_equals_local(s3, tmp_path):
    remote = open_source("s3://data/ds", "val")
    local = open_source(s3["root"] / "ds", "val")
    assert remote.root == "s3://data/ds/val" and remote.classes == local.classes
    assert remote.label_array.tolist() == local.label_array.tolist()
    assert [Path(f).name for f in remote.files] == [Path(f).name for f in local.files]
    _same(list(EventLoader(remote, 2, train=False, **VIEW)), list(EventLoader(local, 2, train=False, **VIEW)))
    # the listing saved as an index file: a second start does not list the bucket
    idx = tmp_path / "val.npz"
    first = ImageFolderSource("s3://data/ds/val", index=idx)
    assert ImageFolderSource("s3://data/ds/val", index=idx).samples == first.samples == remote.samples
    train = EventLoader(open_source("s3://data/ds", "train"), 2, train=True, **VIEW)
    assert sorted(int(i) for b in train for i in b[2].tolist()) == list(range(8))


def test_shards_from_s3_equal_local(s3):
    remote = ShardSource("s3://data/wds/val")
    local = ShardSource(str(s3["root"] / "wds" / "val"))
    assert remote.classes == local.classes == ["a", "b"] and remote.shards[0].startswith("s3://data/wds/val/")
    _same(list(EventLoader(remote, 2, train=False, **VIEW)), list(EventLoader(local, 2, train=False, **VIEW)))
    train = EventLoader(ShardSource("s3://data/wds/train"), 2, train=True, **VIEW)
    assert sorted(int(i) for b in train for i in b[2].tolist()) == list(range(8))
    # shards without a manifest, listed by a brace pattern over s3 URLs
    pattern = "s3://data/wds/val/val-{000000..%06d}.tar" % (len(remote.shards) - 1)
    assert ShardSource(pattern).label_array.tolist() == local.label_array.tolist()


def test_missing_objects_and_buckets_are_named(s3):
    with pytest.raises(MissingDataError, match="s3://nobucket/ds/val"):
        open_source("s3://nobucket/ds", "val")
    with pytest.raises(MissingDataError, match="s3://data/nothing/val"):
        open_source("s3://data/nothing", "val")
    client = s3["client"]
    # a shard gone after the manifest was written
    key = "wds/val/val-000001.tar"
    body = client.get_object(Bucket="data", Key=key)["Body"].read()
    client.delete_object(Bucket="data", Key=key)
    try:
        with pytest.raises(MissingDataError, match="s3://data/wds/val/val-000001.tar"):
            ShardSource("s3://data/wds/val")
    finally:
        client.put_object(Bucket="data", Key=key, Body=body)
    # an image deleted after the listing: DALI's read fails, the error names the URL
    src = open_source("s3://data/ds", "val")
    victim = src.files[1]
    body = client.get_object(Bucket="data", Key=victim[len("s3://data/"):])["Body"].read()
    client.delete_object(Bucket="data", Key=victim[len("s3://data/"):])
    try:
        with pytest.raises(DatasetError, match=victim.rsplit("/", 1)[1]):
            list(EventLoader(src, 2, train=False, **VIEW))
    finally:
        client.put_object(Bucket="data", Key=victim[len("s3://data/"):], Body=body)


def test_denied_credentials_are_refused_without_leaking_them(s3, tmp_path, monkeypatch):
    idx = tmp_path / "val.npz"
    ImageFolderSource("s3://data/ds/val", index=idx)  # listed while allowed
    proc, url = _server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # a server that checks credentials
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        for make in (lambda: open_source("s3://data/ds", "val"), lambda: ShardSource("s3://data/wds/val")):
            with pytest.raises(DatasetError, match="access denied") as info:
                make()
            assert "s3://data/" in str(info.value) and SECRET not in str(info.value)
        # no listing (the index file), so DALI itself meets the refusal when it reads. In a fresh process:
        # DALI keeps one S3 client per process, made with the endpoint of its first use.
        from train_helpers import REPO, subprocess_env

        code = ("from i2e_dali.data.sources import ImageFolderSource\n"
                "from i2e_dali.data.event_loader import EventLoader\n"
                "from i2e_dali.errors import I2EError\n"
                f"src = ImageFolderSource('s3://data/ds/val', index={str(idx)!r})\n"
                "try:\n    list(EventLoader(src, 2, train=False, device='cpu', crop_size=24, resize_size=28))\n"
                "except I2EError as exc:\n    print('PROJECT', type(exc).__name__, exc)\n")
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env=dict(subprocess_env(), AWS_ENDPOINT_URL=url))
        assert "PROJECT" in r.stdout and "s3://data/ds/val" in r.stdout, r.stdout + r.stderr[-2000:]
        assert SECRET not in r.stdout + r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
