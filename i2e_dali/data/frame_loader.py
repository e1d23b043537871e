"""FrameLoader: batches of precomputed event frames, with the same contract as the live EventLoader.

Used for exported / published I2E datasets (``i2e_dali.data.npz``) and for CIFAR10-DVS frames
(``i2e_dali.data.dvs``). Items of the wrapped map-style dataset are ``(frames [T, 2, H, W], label)``;
iterating yields ``(events [T, B, 2, H, W] in ``dtype`` on ``device``, labels int64 [B] on ``device``)``.

Reading and collation run in torch ``DataLoader`` worker processes (with pinned memory when the
target is CUDA); the order of samples is decided here, in the main process, so that it is exactly
reproducible and resumable:

* training: one permutation per epoch, seeded by ``seed + epoch`` (``DistributedSampler``'s scheme),
  split across ranks, tail dropped so every rank has the same number of full batches;
* evaluation: every sample exactly once across all ranks, in file order, the last batch kept short.
  ``DistributedSampler`` does not fit here: without ``drop_last`` it pads the shards to equal length by
  repeating samples, so a sharded evaluation would count some samples twice.

Epochs follow the loader contract (data/base.py, like torch's DataLoader): every ``iter()`` starts a new
epoch (the samplers are seeded by the epoch number), except the first ``iter()`` after
``load_state_dict()``, which continues the saved position. ``state_dict()`` holds the epoch and the number
of batches consumed, so a resumed run yields exactly the batches that were still due.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from pipelines import shard_bounds

from ..convert import OUT_DTYPES
from ..errors import ConfigError, DatasetError
from .base import LoaderBase, batch_type
from ..placement import DEFAULT_SEED, cores_per_rank, default_shard, resolve_device

__all__ = ["FrameLoader", "ShardedSequentialSampler"]

# Salt so the flip draws are independent of DistributedSampler's permutation (both seed from seed+epoch).
_FLIP_SALT = 0x5EED_F11B


class ShardedSequentialSampler(Sampler[int]):
    """Shard ``shard_id`` of ``num_shards`` contiguous blocks of ``range(n)``: every index exactly once.

    Block i is ``[floor(i*n/S), floor((i+1)*n/S))`` (the split DALI's readers use), so shard sizes differ
    by at most one and nothing is padded or dropped.
    """

    def __init__(self, n: int, shard_id: int, num_shards: int):
        self.start, self.stop = shard_bounds(n, shard_id, num_shards)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class _ResumableBatchSampler(Sampler[list]):
    """Batches of one epoch, starting after ``start`` batches (set by FrameLoader before each pass)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool):
        self.sampler = sampler
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.epoch = 0
        self.start = 0

    def __iter__(self):
        if hasattr(self.sampler, "set_epoch"):  # DistributedSampler, or a dataset's own train_sampler
            self.sampler.set_epoch(self.epoch)
        return itertools.islice(iter(self.batches), self.start, None)

    def __len__(self) -> int:
        return max(len(self.batches) - self.start, 0)


class _Indexed(Dataset):
    """Adds the dataset index to every item (the main process needs it for flips and ``with_index``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        try:
            frames, label = item
        except (TypeError, ValueError):
            raise DatasetError(
                f"dataset item {index} must be a pair (frames [T, 2, H, W], label), got {type(item).__name__}"
            ) from None
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 2:
            shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
            raise DatasetError(f"dataset item {index}: frames must be [T, 2, H, W], got {shape}")
        return frames, int(label), index


class FrameLoader(LoaderBase):
    """Iterate ``Batch(events [T, B, 2, H, W], labels [B])`` over a dataset of precomputed event frames
    (``IndexedBatch(events, labels, indices)`` with ``with_index``).

    Args:
        dataset: map-style dataset of ``(frames [T, 2, H, W] tensor/ndarray, label int)`` with a
            ``classes`` list. ``frame_shape`` (T, H, W), when present, saves reading a sample up front.
        batch_size: samples per batch on this rank.
        train: shuffled per epoch, drop last partial batch, optional flips; else exact once, in order.
        dtype: output dtype (bool/uint8 for storage, float16/bfloat16/float32 for a model).
        device: "auto" (CUDA if available), "cpu", "cuda:N".
        shard_id, num_shards: this rank's shard; default (rank, world) under torch.distributed.
        seed: shuffling (seed + epoch) and flip draws.
        num_workers: DataLoader worker processes (None: min(8, CPU count)); 0 reads in this process.
        flip: random horizontal flip with probability 0.5 in training (None: True when training).
        with_index: also yield the dataset indices of the batch (int64 [B], on the CPU).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        train: bool,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "auto",
        shard_id: int | None = None,
        num_shards: int | None = None,
        seed: int = DEFAULT_SEED,
        num_workers: int | None = None,
        flip: bool | None = None,
        with_index: bool = False,
        prefetch_factor: int = 2,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        if dtype not in OUT_DTYPES:
            raise ConfigError(f"dtype must be one of {[str(d) for d in OUT_DTYPES]}, got {dtype!r}")
        if num_workers is None:
            num_workers = min(8, cores_per_rank())
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        if flip and not train:
            raise ConfigError("flip=True is an augmentation for training; evaluation never flips")
        n = len(dataset)
        if n == 0:
            raise ConfigError(f"the dataset is empty ({type(dataset).__name__}); nothing to load")
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = bool(train)
        self.dtype = dtype
        self.device = resolve_device(device)
        self.shard_id, self.num_shards = default_shard(shard_id, num_shards)
        self.seed = seed
        self.flip = self.train if flip is None else bool(flip)
        self.with_index = bool(with_index)
        self.batch_type = batch_type(self.with_index, False)
        self.total_samples = n
        self.class_names: list[str] = list(getattr(dataset, "classes", []))
        if not self.class_names:
            raise ConfigError(f"{type(dataset).__name__} must have a non-empty 'classes' list of class names")
        self.num_classes = len(self.class_names)

        if self.train:
            # A dataset may bring its own training order (Parquet: row-group-local shuffling); it must
            # behave like DistributedSampler(drop_last=True): set_epoch, equal lengths on every rank.
            own = getattr(dataset, "train_sampler", None)
            sampler: Sampler[int] = own(num_replicas=self.num_shards, rank=self.shard_id, seed=seed,
                                        batch_size=batch_size, num_workers=num_workers) if own else (
                DistributedSampler(dataset, num_replicas=self.num_shards, rank=self.shard_id, shuffle=True, seed=seed,
                                   drop_last=True))
            self.num_samples = len(sampler)
            if self.num_samples < batch_size:
                raise ConfigError(
                    f"training needs at least one full batch per rank: {n} samples over {self.num_shards} "
                    f"shard(s) give {self.num_samples} per rank, fewer than batch_size={batch_size}; "
                    "lower the batch size"
                )
        else:
            sampler = ShardedSequentialSampler(n, self.shard_id, self.num_shards)
            self.num_samples = len(sampler)
        self._batches = _ResumableBatchSampler(sampler, batch_size, drop_last=self.train)
        self._batches_per_epoch = len(self._batches.batches)

        shape = getattr(dataset, "frame_shape", None)
        if shape is None:
            frames = _Indexed(dataset)[0][0]
            shape = (frames.shape[0], frames.shape[2], frames.shape[3])
        self.timesteps = int(shape[0])
        self.image_size = (int(shape[1]), int(shape[2]))

        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor)
        self._loader = DataLoader(
            _Indexed(dataset),
            batch_sampler=self._batches,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            **kwargs,
        )
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded
        self._pass = 0  # id of the current pass: an abandoned pass's generator stops
        self._flips: tuple[int, torch.Tensor] | None = None

    # ---------------------------------------------------------------------------------------------
    def _flip_mask(self, indices: torch.Tensor) -> torch.Tensor:
        # One Bernoulli(0.5) per sample and epoch, drawn for the whole dataset: independent of how the
        # data is sharded or batched, and recomputable after a resume.
        if self._flips is None or self._flips[0] != self.epoch:
            g = torch.Generator().manual_seed((self.seed + self.epoch) ^ _FLIP_SALT)
            self._flips = (self.epoch, torch.rand(self.total_samples, generator=g) < 0.5)
        return self._flips[1][indices]

    def _to_events(self, frames: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.device, non_blocking=True)
        if self.flip:
            mask = self._flip_mask(indices).to(self.device, non_blocking=True)
            frames = torch.where(mask.view(-1, 1, 1, 1, 1), frames.flip(-1), frames)
        batch, steps = frames.shape[:2]
        if steps != self.timesteps or tuple(frames.shape[3:]) != self.image_size:
            raise DatasetError(
                f"samples have inconsistent shapes: expected [T={self.timesteps}, 2, {self.image_size[0]}, "
                f"{self.image_size[1]}], got {list(frames.shape[1:])}"
            )
        # [B, T, ...] -> [T, B, ...] and the dtype cast in one copy.
        out = torch.empty((steps, batch, *frames.shape[2:]), dtype=self.dtype, device=self.device)
        out.copy_(frames.transpose(0, 1))
        return out

    def __iter__(self):
        self._new_iterator()
        self._pass += 1
        return self._run(self._pass)

    def _run(self, token: int):
        # The epoch starts at the first batch asked for, not at iter(): an iterator made and dropped
        # unread (Lightning's "is it iterable" check) starts none.
        if token != self._pass:
            return
        resumed = self._next_pass()
        self._batches.epoch = self.epoch
        self._batches.start = self.position if resumed else 0
        for frames, labels, indices in self._loader:
            if token != self._pass:  # a newer iter() started another epoch: this one was abandoned
                return
            events = self._to_events(frames, indices)
            labels = labels.to(self.device, non_blocking=True)
            self.position += 1
            yield self.batch_type(events, labels, indices) if self.with_index else self.batch_type(events, labels)

    def reset(self) -> None:
        """Abandon the rest of the current epoch; the next ``iter()`` starts the next epoch, as it would anyway."""
        self._resume = False
        self._pending = self._started  # a saved state now describes the next epoch's start
        self._pass += 1

    # ---------------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        fp = {"seed": self.seed, "batch_size": self.batch_size, "num_shards": self.num_shards,
              "total_samples": self.total_samples, "train": self.train}
        order = getattr(self._batches.sampler, "fingerprint", None)  # a dataset's own order, if it has one
        if order is not None:
            fp["order"] = order
        return fp

    def state_dict(self) -> dict:
        epoch, position = self._saved_position()
        return {"epoch": epoch, "position": position, **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Make the next ``iter()`` continue where the loader that produced ``state`` stood."""
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"load_state_dict: not a FrameLoader state dict (needs 'epoch' and 'position'): "
                              f"{state!r}") from exc
        self._check_fingerprint(state)
        if not 0 <= position <= self._batches_per_epoch:
            raise ConfigError(f"load_state_dict: position {position} is outside 0..{self._batches_per_epoch}")
        if position == self._batches_per_epoch:  # a finished epoch: continue with the next one
            epoch, position = epoch + 1, 0
        self._pass += 1
        self.epoch, self.position, self._started, self._resume, self._pending = epoch, position, False, position > 0, False

    def __repr__(self) -> str:
        return (
            f"FrameLoader({type(self.dataset).__name__}, samples={self.total_samples}, batch={self.batch_size}, "
            f"train={self.train}, shard={self.shard_id}/{self.num_shards}, T={self.timesteps}, "
            f"size={self.image_size}, dtype={self.dtype}, device={self.device})"
        )
