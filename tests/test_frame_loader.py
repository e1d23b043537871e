"""FrameLoader: yield contract, epoch order, sharding (incl. two gloo processes), flips, exact resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from i2e_dali.data.frame_loader import FrameLoader, ShardedSequentialSampler

T, H, W = 3, 5, 7


class ToyFrames(torch.utils.data.Dataset):
    """Sample i: random bool frames from seed i (so content identifies the sample), label i % 4."""

    classes = ["a", "b", "c", "d"]

    def __init__(self, n: int, as_numpy: bool = False):
        self.n = n
        self.as_numpy = as_numpy

    def __len__(self):
        return self.n

    def frames(self, i: int) -> np.ndarray:
        return np.random.default_rng(i).random((T, 2, H, W)) < 0.3

    def __getitem__(self, i):
        f = self.frames(i)
        return (f if self.as_numpy else torch.from_numpy(f)), i % 4


def _collect(loader, n_batches=None):
    out = []
    for i, (ev, lab, idx) in enumerate(loader):
        out.append((ev.clone(), lab.clone(), idx.clone()))
        if n_batches is not None and i + 1 == n_batches:
            break
    return out


def test_eval_yields_every_sample_once_in_order_with_contract():
    ds = ToyFrames(11, as_numpy=True)
    loader = FrameLoader(ds, 4, train=False, num_workers=0, with_index=True, dtype=torch.float16, device="cpu")
    assert len(loader) == 3 and loader.num_samples == 11 and loader.total_samples == 11
    assert loader.num_classes == 4 and loader.class_names == ["a", "b", "c", "d"]
    assert loader.image_size == (H, W) and loader.timesteps == T
    batches = _collect(loader)
    assert [b[0].shape[1] for b in batches] == [4, 4, 3]  # last batch kept, trimmed
    idx = torch.cat([b[2] for b in batches])
    assert idx.tolist() == list(range(11))
    for ev, lab, ids in batches:
        assert ev.dtype == torch.float16 and ev.shape[0] == T and ev.shape[2:] == (2, H, W)
        assert lab.dtype == torch.int64 and lab.tolist() == [i % 4 for i in ids.tolist()]
        for b, i in enumerate(ids.tolist()):  # [T, B, ...] layout, no flip in evaluation
            assert torch.equal(ev[:, b].bool(), torch.from_numpy(ds.frames(i)))
    # Next pass = next epoch, same order in evaluation.
    again = torch.cat([b[2] for b in _collect(loader)])
    assert again.tolist() == list(range(11))


def test_train_shuffles_per_epoch_reproducibly_and_drops_last():
    ds = ToyFrames(10)
    a = FrameLoader(ds, 3, train=True, num_workers=0, with_index=True, flip=False, seed=7)
    assert len(a) == 3 and a.num_samples == 10
    e0 = [b[2].tolist() for b in _collect(a)]
    e1 = [b[2].tolist() for b in _collect(a)]
    assert all(len(b) == 3 for b in e0) and len(e0) == 3
    assert len(set(sum(e0, []))) == 9  # a permutation, last sample dropped
    assert e0 != e1  # reshuffled
    # DistributedSampler's scheme: permutation seeded by seed + epoch
    expect = torch.randperm(10, generator=torch.Generator().manual_seed(7 + 1)).tolist()[:9]
    assert sum(e1, []) == expect
    b = FrameLoader(ds, 3, train=True, num_workers=0, with_index=True, flip=False, seed=7)
    assert [x[2].tolist() for x in _collect(b)] == e0


def test_workers_give_the_same_batches_as_in_process():
    ds = ToyFrames(9)
    ref = _collect(FrameLoader(ds, 4, train=True, num_workers=0, with_index=True, seed=3))
    got = _collect(FrameLoader(ds, 4, train=True, num_workers=2, with_index=True, seed=3))
    assert len(ref) == len(got) == 2
    for (e1, l1, i1), (e2, l2, i2) in zip(ref, got):
        assert torch.equal(e1, e2) and torch.equal(l1, l2) and torch.equal(i1, i2)


@pytest.mark.gpu
def test_cuda_device_gives_the_cpu_batches_on_the_gpu():
    ds = ToyFrames(12)
    cpu = _collect(FrameLoader(ds, 4, train=True, num_workers=0, with_index=True, seed=2, device="cpu"))
    gpu = _collect(FrameLoader(ds, 4, train=True, num_workers=2, with_index=True, seed=2, device="cuda"))
    for (e1, l1, i1), (e2, l2, i2) in zip(cpu, gpu):
        assert e2.is_cuda and l2.is_cuda and e2.dtype == torch.float32
        assert torch.equal(e1, e2.cpu()) and torch.equal(l1, l2.cpu()) and torch.equal(i1, i2)


def test_training_flip_is_a_horizontal_mirror_drawn_per_sample():
    ds = ToyFrames(64)
    loader = FrameLoader(ds, 16, train=True, num_workers=0, with_index=True, seed=1, dtype=torch.bool)
    flipped = kept = 0
    for ev, _, ids in loader:
        for b, i in enumerate(ids.tolist()):
            src = torch.from_numpy(ds.frames(i))
            if torch.equal(ev[:, b], src):
                kept += 1
            else:
                assert torch.equal(ev[:, b], src.flip(-1))
                flipped += 1
    assert flipped + kept == 64 and 16 <= flipped <= 48
    with pytest.raises(ValueError, match="flip=True"):
        FrameLoader(ds, 4, train=False, flip=True, num_workers=0)


def test_explicit_shards_are_disjoint_and_complete():
    ds = ToyFrames(10)
    seen = []
    for r in range(3):
        ld = FrameLoader(ds, 4, train=False, shard_id=r, num_shards=3, num_workers=0, with_index=True)
        ids = torch.cat([b[2] for b in _collect(ld)]).tolist()
        assert len(ids) == ld.num_samples
        seen += ids
    assert sorted(seen) == list(range(10))
    tr = [sum((b[2].tolist() for b in _collect(
        FrameLoader(ds, 2, train=True, shard_id=r, num_shards=3, num_workers=0, with_index=True, seed=5))), [])
        for r in range(3)]
    assert all(len(t) == 2 for t in tr) and len(set(sum(tr, []))) == 6  # 3 per rank, one batch of 2


def test_sharded_sequential_sampler_never_pads():
    for n in (0, 1, 5, 7, 100):
        for s in (1, 2, 3, 8):
            parts = [list(ShardedSequentialSampler(n, r, s)) for r in range(s)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_resume_mid_epoch_and_across_epochs_is_exact():
    ds = ToyFrames(20)
    kw = dict(train=True, num_workers=0, with_index=True, seed=11)
    ref = FrameLoader(ds, 3, **kw)
    full = _collect(ref) + _collect(ref)  # two epochs, 6 batches each
    run = FrameLoader(ds, 3, **kw)
    first = _collect(run) + _collect(run, n_batches=2)  # epoch 0, then 2 batches of epoch 1
    state = json.loads(json.dumps(run.state_dict()))  # survives a checkpoint's serialisation
    assert state["epoch"] == 1 and state["position"] == 2
    resumed = FrameLoader(ds, 3, **kw)
    resumed.load_state_dict(state)
    rest = _collect(resumed)
    got = first + rest
    assert len(got) == len(full) == 12
    for (e1, l1, i1), (e2, l2, i2) in zip(full, got):
        assert torch.equal(i1, i2) and torch.equal(e1, e2) and torch.equal(l1, l2)
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["position"] == 0


def test_every_iter_starts_a_new_epoch_and_reset_abandons():
    # (was: a second iter() continued the unfinished epoch; the loader contract now follows DataLoader)
    ds = ToyFrames(12)
    ld = FrameLoader(ds, 3, train=False, num_workers=0, with_index=True)
    _collect(ld, n_batches=1)
    full = _collect(ld)
    assert torch.cat([b[2] for b in full]).tolist() == list(range(12))
    assert ld.epoch == 1
    _collect(ld, n_batches=2)
    ld.reset()
    assert torch.cat([b[2] for b in _collect(ld)]).tolist() == list(range(12))
    tr, ref = (FrameLoader(ds, 3, train=True, num_workers=0, with_index=True, seed=4) for _ in range(2))
    _collect(tr, n_batches=1)  # epoch 0 cut short
    _collect(ref)  # epoch 0 in full
    assert [b[2].tolist() for b in _collect(tr)] == [b[2].tolist() for b in _collect(ref)]  # same epoch 1


def test_bad_arguments_are_refused_clearly():
    ds = ToyFrames(5)
    with pytest.raises(ValueError, match="batch_size"):
        FrameLoader(ds, 0, train=True)
    with pytest.raises(ValueError, match="empty"):
        FrameLoader(ToyFrames(0), 2, train=False)
    with pytest.raises(ValueError, match="lower the batch size"):
        FrameLoader(ds, 8, train=True, num_workers=0)
    with pytest.raises(ValueError, match="dtype"):
        FrameLoader(ds, 2, train=False, dtype=torch.int32)
    with pytest.raises(ValueError, match="shard_id"):
        FrameLoader(ds, 2, train=False, shard_id=2, num_shards=2)
    ld = FrameLoader(ds, 2, train=True, num_workers=0)
    with pytest.raises(ValueError, match="batch_size=2"):
        ld.load_state_dict({"epoch": 0, "position": 1, "batch_size": 4})
    with pytest.raises(ValueError, match="not a FrameLoader state"):
        ld.load_state_dict({"epoch": 1})


_WORKER = textwrap.dedent(
    """
    import json, sys, torch, numpy as np
    import torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_frame_loader import ToyFrames
    from i2e_dali.data.frame_loader import FrameLoader
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method={init!r}, rank=rank, world_size=2)
    ds = ToyFrames(23)
    out = {{}}
    for train in (False, True):
        ld = FrameLoader(ds, 4, train=train, num_workers=0, with_index=True, seed=9)
        assert (ld.shard_id, ld.num_shards) == (rank, 2)
        ids = [i for _, _, idx in ld for i in idx.tolist()]
        out["train" if train else "eval"] = ids
        out["len_" + str(train)] = len(ld)
    json.dump(out, open({outdir!r} + f"/rank{{rank}}.json", "w"))
    dist.destroy_process_group()
    """
)


def test_two_gloo_processes_shard_disjointly_and_eval_covers_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(
        tests=str(Path(__file__).parent), init=f"file://{tmp_path / 'store'}", outdir=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r)], env=env) for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert sorted(r0["eval"] + r1["eval"]) == list(range(23))  # exactly once, no padding
    assert not set(r0["train"]) & set(r1["train"])
    assert len(r0["train"]) == len(r1["train"]) == 8  # 11 per rank -> 2 full batches of 4
    assert r0["len_True"] == r1["len_True"] == 2


def test_abandoned_passes_with_worker_processes_leave_whole_epochs():
    # persistent DataLoader workers still hold batches of the abandoned pass: none of them may leak
    ds = ToyFrames(24)
    for train in (True, False):
        kw = dict(train=train, with_index=True, seed=6, device="cpu")
        ref = FrameLoader(ds, 4, num_workers=0, **kw)
        epochs = [[b[2].tolist() for b in _collect(ref)] for _ in range(3)]
        ld = FrameLoader(ds, 4, num_workers=2, **kw)
        _collect(ld, n_batches=1)
        _collect(ld, n_batches=2)
        third = [b[2].tolist() for b in _collect(ld)]
        assert third == (epochs[2] if train else epochs[0])
