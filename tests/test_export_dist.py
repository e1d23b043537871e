"""i2e-export under torchrun (two CPU processes, gloo): files split across ranks, one summary with each
rank's share, every rank resumes on its own, and the output equals a single-process export file for file
(Parquet shards byte for byte; npz files by content, since zip members carry a timestamp)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from i2e_dali.data.npz import load_events
from i2e_dali.tools.export import ExportConfig, export

from test_export import make_images

REPO = Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch.distributed as dist
    from i2e_dali.tools.export import main

    data, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    common = ["--data", data, "--batch-size", "2", "--dali-threads", "1", "--device", "cpu", "--no-progress",
              "--size", "32"]
    npz = ["--out", str(out / "npz"), "--format", "dense", "--view", "resize", *common]
    par = ["--out", str(out / "parquet"), "--format", "parquet", "--rows-per-shard", "3", "--row-group-rows", "2",
           *common]
    for args in (npz, par):
        print(f"== first {args[3]}", flush=True) if rank == 0 else None
        assert main(args) == 0
    dist.barrier()
    if rank == 0:  # lose one file of each rank's share
        (out / "npz" / "train" / "dog" / "dog_04.npz").unlink()  # the last file: rank 1's
        (out / "parquet" / "train-00000-of-00004.parquet").unlink()  # the first shard: rank 0's
    dist.barrier()
    for args in (npz, par):
        print(f"== again {args[3]}", flush=True) if rank == 0 else None
        assert main(args) == 0
    dist.destroy_process_group()
""")


def test_two_ranks_split_the_files_resume_and_match_a_single_process_export(tmp_path):
    data = make_images(tmp_path / "data", {"train": 5, "val": 3})
    single = tmp_path / "single"
    common = dict(batch_size=2, dali_threads=1, device="cpu", progress=False, size=32)
    export(ExportConfig(data=data, out=single / "npz", format="dense", view="resize", workers=1, **common))
    export(ExportConfig(data=data, out=single / "parquet", format="parquet", rows_per_shard=3, row_group_rows=2,
                        **common))
    multi = tmp_path / "multi"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(data), str(multi)], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    first, again = out.split("== again")[0], "== again" + out.split("== again", 1)[1]
    # one summary per split with each rank's share: npz train 10 files -> 5 + 5; parquet 4 shards -> 2 + 2
    assert "rank 0: 5 files written (0 skipped)" in first and "rank 1: 5 files written (0 skipped)" in first
    assert "rank 0: 2 shards (6 rows) written" in first and "rank 1: 2 shards (4 rows) written" in first
    # the rerun: each rank redid only its own lost file, and skipped the rest of its share
    assert "rank 1: 1 files written (4 skipped)" in again and "rank 0: 0 files written (5 skipped)" in again
    assert "rank 0: 1 shards (3 rows) written (3 skipped)" in again and "rank 1: 0 shards (0 rows) written (4 skipped)" in again

    for fmt in ("npz", "parquet"):
        a = sorted(p.relative_to(single / fmt) for p in (single / fmt).rglob("*") if p.is_file())
        b = sorted(p.relative_to(multi / fmt) for p in (multi / fmt).rglob("*") if p.is_file())
        assert a == b, fmt
        for rel in a:
            if rel.suffix == ".parquet":
                assert (single / fmt / rel).read_bytes() == (multi / fmt / rel).read_bytes(), rel
            elif rel.suffix == ".npz":
                np.testing.assert_array_equal(load_events(single / fmt / rel), load_events(multi / fmt / rel))
