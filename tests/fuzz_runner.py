"""Run the project's readers on fuzzed inputs, in a process of its own (a crash or hang kills only it).

    python tests/fuzz_runner.py JOBS.json START LIMIT_S

JOBS.json: a list of {"reader": name, "path": input}. For job i from START on, prints ``S i`` before and
``E i <outcome> <detail>`` after; outcome is ``ok`` (parsed), ``project`` (an I2EError naming the input),
``unnamed`` (an I2EError that does not name it) or ``foreign`` (any other exception). SIGALRM's default
action ends the process after LIMIT_S seconds on one input, so the parent reads a hang like a crash.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path


def _readers():
    from i2e_dali.data.dvs import FrameCache, events_to_frames, read_aedat
    from i2e_dali.data.idx import read_idx
    from i2e_dali.data.npz import NpzEventDataset, load_events, read_npz_info
    from i2e_dali.data.sources import CifarSource
    from i2e_dali.tools.viz import gif_to_events
    from i2e_dali.training.checkpoint import load_checkpoint

    def npz(path):
        read_npz_info(path)
        return load_events(path)

    def npz_authors(path):
        read_npz_info(path)
        return load_events(path, (8, 16, 16))

    def meta(folder):  # a split folder: <class>/a.npz (matrix only) + i2e_meta.json
        ds = NpzEventDataset(folder)
        return ds[0]

    def aedat(path):
        return events_to_frames(read_aedat(path), 8)

    def dvs_cache(path):
        return FrameCache(Path(path).parent, 8).load(Path(path))

    def cifar(folder):
        return CifarSource(folder, train=False)

    def checkpoint(path):  # what a resume reads: the file, then every field it restores
        from i2e_dali.training.checkpoint import _fields_ok

        ckpt = load_checkpoint(path)
        _fields_ok(ckpt, path, required=True)
        return ckpt

    def tar(path):  # a shard without an index: scanned, its labels read
        from i2e_dali.data.shards import ShardSource

        return ShardSource([path], scan_missing=True)

    def wds_index(folder):  # a shard with its DALI index file
        from i2e_dali.data.shards import ShardSource

        return ShardSource([str(Path(folder) / "a.tar")])

    def shard_manifest(folder):  # an i2e-shard folder: manifest checked against the shards
        from i2e_dali.data.shards import ShardSource

        return ShardSource(folder)

    def folder_index(path):
        from i2e_dali.data.folder_index import load_index

        return load_index(path)

    def config(path):  # --config FILE: read, every key, type and range checked (training/config_file.py)
        from i2e_dali.training.config_file import load_config

        return load_config(path)

    return {"config": config,
            "tar": tar, "wds_index": wds_index, "shard_manifest": shard_manifest, "folder_index": folder_index,
            "npz_dense": npz, "npz_sparse": npz, "npz_authors": npz_authors, "meta": meta, "aedat": aedat,
            "dvs_cache": dvs_cache, "gif": gif_to_events, "cifar": cifar, "checkpoint": checkpoint,
            "idx": read_idx}


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    start, limit = int(sys.argv[2]), int(sys.argv[3])
    from i2e_dali.errors import I2EError

    readers = _readers()
    for i in range(start, len(jobs)):
        job = jobs[i]
        print(f"S {i}", flush=True)
        signal.alarm(limit)
        try:
            readers[job["reader"]](job["path"])
            outcome, detail = "ok", ""
        except I2EError as exc:
            msg = str(exc)
            named = job["path"] in msg  # the file, or for folder inputs (meta, cifar) a file inside it
            outcome, detail = ("project" if named else "unnamed"), f"{type(exc).__name__}: {msg}"
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz test is looking for
            outcome, detail = "foreign", f"{type(exc).__name__}: {exc}"
        signal.alarm(0)
        print(f"E {i} {outcome} {json.dumps(detail[:300])}", flush=True)


if __name__ == "__main__":
    main()
