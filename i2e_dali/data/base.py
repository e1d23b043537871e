"""The loader contract every batch source of the package obeys (EventLoader, FrameLoader, and any
loader the trainer is given), and the shared base that implements its bookkeeping.

Contract (``BatchLoader``):
- iterating yields ``(events [T, B, 2, H, W], labels [B])`` on ``device`` (plus indices with
  ``with_index=True``); one full pass is one epoch;
- ``len()`` is the number of batches per epoch on this rank;
- ``num_classes`` / ``class_names`` describe the labels;
- ``reset()`` abandons the rest of the current epoch;
- ``state_dict()`` / ``load_state_dict()`` continue exactly where a loader stood (same data, batch
  size, shard and seed), checked through a fingerprint so a mismatched resume fails loudly.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

__all__ = ["BatchLoader", "LoaderBase", "InMemorySource"]


@runtime_checkable
class BatchLoader(Protocol):
    num_classes: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...

    def reset(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class LoaderBase:
    """Shared bookkeeping: the epoch counter, ``len()``, and the fingerprint check of a saved state."""

    epoch: int = 0
    _batches_per_epoch: int = 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._batches_per_epoch

    def _fingerprint(self) -> dict:
        """What must be equal for a saved position to continue the same run."""
        raise NotImplementedError

    def _check_fingerprint(self, state: dict) -> None:
        mine = self._fingerprint()
        diff = {k: (state.get(k), v) for k, v in mine.items() if k in state and state[k] != v}
        if diff:
            raise ValueError(
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
