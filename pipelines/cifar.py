"""DALI graph for CIFAR-10/100 held in memory (no torch; numpy only).

The python batches are read by ``i2e_dali.data.sources.CifarSource``; their uint8 HWC arrays enter DALI
through ``fn.external_source`` fed by :class:`CifarFeed`, which owns the epoch order (a fresh seeded
permutation per epoch when training), the sharding and the last-batch rule. The feed is a pure
function of DALI's ``BatchInfo`` (epoch, iteration), so a pipeline restored from a DALI checkpoint
asks for exactly the batches the saved one would have produced next.

Views (the paper's): train = edge-pad 4, random 32x32 crop, resize to ``out_size`` (128), random
horizontal flip; eval = resize to ``out_size``. The pad-and-crop is one integer translation with
clamped borders (``warp_affine`` without a fill value repeats the border pixel), which is exactly
"replicate-pad by 4, then crop 32 at a random offset in 0..8".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from . import DEFAULT_SEED, interp_type, pipeline_options, shard_bounds

__all__ = ["CifarPipelineConfig", "CifarFeed", "build_cifar_pipeline", "shard_bounds"]



@dataclass
class CifarPipelineConfig:
    train: bool
    batch_size: int
    out_size: int = 128
    pad: int = 4
    device_id: int | None = None
    num_threads: int = 2
    seed: int = DEFAULT_SEED
    shard_id: int = 0
    num_shards: int = 1
    prefetch_queue_depth: int = 2
    enable_checkpointing: bool = True
    # Interpolation of the resize to out_size (INTERPOLATIONS; the exporter's presets use "cubic").
    interp: str = "linear"
    # With a device_id: True augments on the CPU and moves only the finished batch to the GPU (``.gpu()``).
    cpu_ops: bool = False

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.out_size < 1 or self.pad < 0:
            raise ValueError(f"out_size must be >= 1 and pad >= 0, got {self.out_size}, {self.pad}")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={self.num_shards}), got {self.shard_id}")
        if self.num_threads < 1 or self.prefetch_queue_depth < 1:
            raise ValueError("num_threads and prefetch_queue_depth must be >= 1")


class CifarFeed:
    """Batch source for ``fn.external_source(batch_info=True)``: returns (images [b,H,W,3] uint8,
    sample ids [b] int64), raising StopIteration at the end of the shard's epoch.

    Training: epoch e (``epoch`` + DALI's epoch counter) uses ``default_rng([seed, e]).permutation(N)`` (the same on every shard),
    trimmed to a multiple of ``num_shards``; shard r takes the r-th contiguous part; the last partial
    batch is dropped, so every shard yields the same number of batches. Evaluation: shard r takes
    the r-th contiguous range in file order and keeps its last, smaller batch: across shards every
    sample comes exactly once.
    """

    def __init__(self, images: np.ndarray, batch_size: int, *, train: bool, shard_id: int = 0,
                 num_shards: int = 1, seed: int = DEFAULT_SEED, epoch: int = 0):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        self.images = images
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.shard_id, self.num_shards = int(shard_id), int(num_shards)
        self.seed = int(seed)
        # The first epoch this feed serves (the loader builds one pipeline per epoch, each with its own
        # feed); DALI's epoch counter adds to it.
        self.epoch = int(epoch)
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, shard indices): one permutation per epoch
        n = len(images)
        if self.train:
            self.shard_size = n // self.num_shards
            self.num_batches = self.shard_size // self.batch_size
        else:
            lo, hi = shard_bounds(n, self.shard_id, self.num_shards)
            self.shard_size = hi - lo
            self.num_batches = math.ceil(self.shard_size / self.batch_size)

    def shard_indices(self, epoch: int) -> np.ndarray:
        n = len(self.images)
        if not self.train:
            lo, hi = shard_bounds(n, self.shard_id, self.num_shards)
            return np.arange(lo, hi, dtype=np.int64)
        perm = np.random.default_rng([self.seed, epoch]).permutation(n)
        start = self.shard_id * self.shard_size
        return perm[start : start + self.shard_size].astype(np.int64)

    def __call__(self, info):
        if info.iteration >= self.num_batches:
            raise StopIteration
        epoch = self.epoch + info.epoch_idx
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.shard_indices(epoch))
        idx = self._order[1][info.iteration * self.batch_size : (info.iteration + 1) * self.batch_size]
        return self.images[idx], idx


@pipeline_def
def _cifar_graph(feed: CifarFeed, cfg: CifarPipelineConfig):
    gpu = cfg.device_id is not None and not cfg.cpu_ops
    images, ids = fn.external_source(
        source=feed, num_outputs=2, batch=True, batch_info=True, layout=["HWC", ""],
        dtype=[types.UINT8, types.INT64],
    )
    if gpu:
        images, ids = images.gpu(), ids.gpu()
    size = cfg.out_size
    if cfg.train:
        if cfg.pad > 0:
            # Integer shift in [-pad, pad] with clamped borders == edge-pad + random crop.
            shift = fn.random.uniform(values=[float(v) for v in range(-cfg.pad, cfg.pad + 1)], shape=[2])
            mtx = fn.transforms.translation(offset=shift)
            images = fn.warp_affine(images, mtx, interp_type=types.INTERP_NN, inverse_map=True)
        mirror = fn.random.coin_flip(probability=0.5)
    else:
        mirror = None
    if size != feed.images.shape[1] or size != feed.images.shape[2]:
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=interp_type(cfg.interp),
                           antialias=True)
    cmn_kw = {"mirror": mirror} if mirror is not None else {}
    images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW", **cmn_kw)
    if cfg.device_id is not None and not gpu:
        images, ids = images.gpu(), ids.gpu()  # CPU ops for a GPU consumer: DALI moves the batch
    return images, ids


def build_cifar_pipeline(feed: CifarFeed, cfg: CifarPipelineConfig, checkpoint: str | None = None):
    """An (unbuilt) DALI pipeline with outputs ``images`` uint8 [b,3,S,S] and ``ids`` int64 [b]."""
    cfg.validate()
    return _cifar_graph(feed, cfg, **pipeline_options(cfg, checkpoint))
