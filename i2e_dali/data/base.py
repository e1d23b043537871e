"""The loader contract every batch source of the package obeys (EventLoader, FrameLoader, and any
loader the trainer is given), the batch types they yield, and the shared base that implements the epoch
bookkeeping.

Contract (``BatchLoader``), the one torch's ``DataLoader`` and torchdata's ``StatefulDataLoader`` give a loop:
- every ``iter(loader)`` starts a new epoch at its first batch (an iterator dropped before its first batch
  starts none); an unfinished epoch is abandoned (nothing of it reaches the next one), and so is the pass
  of an older iterator. The one exception is the first ``iter()`` after ``load_state_dict()``, which
  continues from the saved position. Which epoch comes next depends only on the seed and on how many
  epochs were started (``set_epoch(e)`` makes the next ``iter()`` start epoch ``e``);
- iterating yields a :class:`Batch` ``(events [T, B, 2, H, W], labels [B])`` on ``device``; the
  construction arguments ``with_index`` / ``mix`` fix a longer batch type (see :func:`batch_type`);
- ``len()`` is the number of batches per epoch on this rank;
- ``num_classes`` / ``class_names`` describe the labels;
- ``reset()`` abandons the rest of the current epoch now (releasing what it holds);
- ``state_dict()`` / ``load_state_dict()`` continue exactly where a loader stood (same data, batch
  size, shard and seed), checked through a fingerprint so a mismatched resume fails loudly.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError

__all__ = ["BatchLoader", "LoaderBase", "InMemorySource", "Batch", "IndexedBatch", "MixedBatch",
           "MixedIndexedBatch", "batch_type"]


class Batch(NamedTuple):
    """What a loader yields by default; unpacks as ``events, labels``."""
    events: Any  # [T, B, C, H, W]
    labels: Any  # [B] int64


class IndexedBatch(NamedTuple):
    """``with_index=True``: also the index of each sample in the source (which file it came from)."""
    events: Any
    labels: Any
    indices: Any  # [B] int64


class MixedBatch(NamedTuple):
    """``mix=`` given: the mixer's soft targets ``[B, classes]`` (None where it did not mix); labels
    stay the true ones."""
    events: Any
    labels: Any
    soft_targets: Any


class MixedIndexedBatch(NamedTuple):
    """``mix=`` and ``with_index=True``."""
    events: Any
    labels: Any
    soft_targets: Any
    indices: Any


def batch_type(with_index: bool, mix: bool) -> type:
    """The batch type a loader built with these arguments yields (fixed for its lifetime)."""
    return {(False, False): Batch, (True, False): IndexedBatch, (False, True): MixedBatch,
            (True, True): MixedIndexedBatch}[(bool(with_index), bool(mix))]


@runtime_checkable
class BatchLoader(Protocol):
    num_classes: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...

    def reset(self) -> None: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class LoaderBase:
    """Shared bookkeeping: the epoch counter and position, ``len()``, ``set_epoch`` and the fingerprint
    check of a saved state.

    ``epoch`` is the epoch being read (before the first ``iter()``: the one it will read); ``position``
    the batches of it handed out. Subclasses call :meth:`_next_pass` when a pass's first batch is asked for.
    """

    epoch: int = 0
    position: int = 0
    _batches_per_epoch: int = 0
    _started: bool = False  # an iter() has begun `epoch`
    _resume: bool = False  # load_state_dict() set the position: the next iter() continues it
    _pending: bool = False  # an iter() was made after `epoch` started: its first batch starts the next epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._batches_per_epoch

    def _new_iterator(self) -> None:
        """Called by every ``iter()``: from now on a saved state describes the start of the next epoch."""
        if self._started and not self._resume:
            self._pending = True

    def _next_pass(self) -> bool:
        """Move to the epoch this pass reads; True when it continues a restored position."""
        self._pending = False
        if self._resume:
            self._resume = False
            self._started = True
            return True
        if self._started:
            self.epoch += 1
        self.position = 0
        self._started = True
        return False

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` start ``epoch`` from its first batch (for trainers that count epochs
        themselves; also cancels a pending resume)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self.reset()
        self.epoch, self.position, self._started, self._resume, self._pending = int(epoch), 0, False, False, False

    def _saved_position(self) -> tuple[int, int]:
        """(epoch, batches done) the first ``iter()`` after a restore should continue from: a finished
        epoch continues as the start of the next one."""
        if self._resume:  # restored, not yet continued
            return self.epoch, self.position
        if not self._started:
            return self.epoch, 0
        if self._pending or self.position >= self._batches_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.position

    def _fingerprint(self) -> dict:
        """What must be equal for a saved position to continue the same run."""
        raise NotImplementedError

    def _check_fingerprint(self, state: dict) -> None:
        mine = self._fingerprint()
        diff = {k: (state.get(k), v) for k, v in mine.items() if k in state and state[k] != v}
        if diff:
            raise ConfigError(
                f"{type(self).__name__} state does not match this loader: "
                + ", ".join(f"saved with {k}={a!r} but this loader has {k}={b!r}" for k, (a, b) in diff.items())
                + "; the saved position would not continue the same run"
            )


class InMemorySource:
    """What the sources held as one array in memory share (CIFAR batches, IDX files): ``images``
    ``[N, H, W, 3]`` uint8, ``label_array`` ``[N]`` int64 and ``samples`` ``[(name, label)]``."""

    images: np.ndarray
    label_array: np.ndarray
    samples: list

    @property
    def labels(self) -> list[int]:
        return self.label_array.tolist()

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices):
        """The same source holding only ``indices`` (in that order); classes are kept."""
        indices = np.asarray(list(indices), dtype=np.int64)
        sub = copy.copy(self)
        sub.images = np.ascontiguousarray(self.images[indices])
        sub.label_array = self.label_array[indices]
        sub.samples = [self.samples[i] for i in indices.tolist()]
        return sub
