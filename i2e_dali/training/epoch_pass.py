"""The bookkeeping of one pass over the training loader (``Trainer.train_one_epoch``): where each step's
time goes, and the pass's iterator, position and running sums."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

__all__ = ["StepTimer", "EpochPass"]


class StepTimer:
    """Where a step's time goes: waiting for the loader (``data_ready`` - previous step's end) or computing
    (``step_done`` - ``data_ready``); totals for the epoch and a window for the progress log."""

    def __init__(self):
        self.t_start = self._t_prev = time.perf_counter()
        self._t_data = self.t_start
        self.wait_s = self.compute_s = 0.0
        self.new_window()

    def new_window(self) -> None:
        self.win_wait = self.win_compute = 0.0
        self.win_steps = 0

    def data_ready(self) -> None:
        self._t_data = time.perf_counter()

    def step_done(self) -> None:
        t_done = time.perf_counter()
        wait, compute = self._t_data - self._t_prev, t_done - self._t_data
        self.wait_s += wait
        self.compute_s += compute
        self.win_wait += wait
        self.win_compute += compute
        self.win_steps += 1
        self._t_prev = t_done

    def window_full(self, every: int) -> bool:
        return self.win_steps == every

    def skip(self) -> None:
        """Time since the last step (a checkpoint) counts as neither data wait nor compute."""
        self._t_prev = time.perf_counter()


@dataclass
class EpochPass:
    """One pass over the training loader: its iterator and position, and the epoch's running sums."""
    it: object
    start: int  # step_in_epoch the pass starts at (> 0 after a mid-epoch resume)
    pass_len: int  # batches this pass of the loader yields
    consumed: int  # batches taken from the iterator (replayed ones included)
    bar: object
    loss_sum: torch.Tensor  # this rank's loss sum of the epoch (device), resumed steps included
    hits: torch.Tensor | None  # the step's top-1 hit counter (device)
    prior_steps: int  # steps of this epoch done before a resume
    steps: int = 0  # steps of this pass
    timer: StepTimer = field(default_factory=StepTimer)
