"""The learning-rate schedule, stepped once per training step, built from torch's schedulers:

- ``--sched cosine`` (default): cosine from ``--lr`` to ``--lr-min`` over the whole run;
- ``--sched step``: multiply by ``--decay-rate`` every ``--decay-epochs`` epochs;
- ``--warmup-epochs N``: first a linear rise from ``--warmup-lr`` to ``--lr`` over N epochs
  (``LinearLR``), then the schedule above over the remaining epochs (``SequentialLR``), as torchvision's
  reference trainer chains them. (The authors' timm schedulers overlay the warm-up on the first epochs of
  an unshifted schedule and step per epoch; their released runs use no warm-up, so nothing they report
  depends on the difference.)

Without warm-up the cosine is a plain ``CosineAnnealingLR`` (checkpoint state ``T_max`` etc.).
"""
from __future__ import annotations

import logging
import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR, StepLR

from ..errors import CheckpointError
from .checkpoint import saved_setting

__all__ = ["SCHEDULES", "build_scheduler", "check_schedule", "stretch_cosine"]

log = logging.getLogger("i2e_dali.train")

SCHEDULES = ("cosine", "step")
_MIN_START_FACTOR = 1e-8  # LinearLR needs a factor > 0; --warmup-lr 0 starts at lr * 1e-8


def build_scheduler(optimizer: torch.optim.Optimizer, *, sched: str, epochs: int, steps_per_epoch: int,
                    lr: float, lr_min: float, warmup_epochs: int = 0, warmup_lr: float = 0.0,
                    decay_epochs: int = 30, decay_rate: float = 0.1):
    if sched not in SCHEDULES:
        raise ValueError(f"sched must be one of {SCHEDULES}, got {sched!r}")
    total = epochs * steps_per_epoch
    warm = min(warmup_epochs, epochs) * steps_per_epoch
    rest = max(total - warm, 1)
    if sched == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=rest, eta_min=lr_min)
    else:
        main = StepLR(optimizer, step_size=max(decay_epochs * steps_per_epoch, 1), gamma=decay_rate)
    if warm == 0:
        return main
    start = max(warmup_lr / lr, _MIN_START_FACTOR)
    warmup = LinearLR(optimizer, start_factor=min(start, 1.0), end_factor=1.0, total_iters=warm)
    return SequentialLR(optimizer, [warmup, main], milestones=[warm])


def check_schedule(saved_config: dict, *, sched: str, warmup_epochs: int, source: str) -> None:
    """A resumed run must share the schedule's kind and warm-up with its checkpoint (``saved_config``: the
    checkpoint's stored config, nested or, before TrainConfig, flat) for the stored scheduler state to mean
    the same."""
    saved = {"sched": saved_setting(saved_config, "sched", "cosine"),
             "warmup_epochs": saved_setting(saved_config, "warmup_epochs", 0)}
    mine = {"sched": sched, "warmup_epochs": warmup_epochs}
    if saved != mine:
        raise CheckpointError(
            f"{source} was trained with --sched {saved['sched']} --warmup-epochs {saved['warmup_epochs']}, this run "
            f"asks for --sched {mine['sched']} --warmup-epochs {mine['warmup_epochs']}; the stored schedule cannot "
            "continue as another one. Resume with the same schedule flags, or start from the weights (--pretrained)."
        )


def stretch_cosine(scheduler, optimizer, *, epochs: int, steps_per_epoch: int, lr_min: float) -> bool:
    """A resumed run with another ``--epochs``: continue on the cosine of an ``--epochs`` run, as if planned so
    from the start (the lr may rise again after a finished run). Returns False when there is no cosine."""
    cos, offset = scheduler, 0
    if isinstance(scheduler, SequentialLR):
        cos, offset = scheduler._schedulers[-1], scheduler._milestones[-1]
    if not isinstance(cos, CosineAnnealingLR):
        return False
    cos.T_max = max(epochs * steps_per_epoch - offset, 1)
    if scheduler.last_epoch < offset:
        return True  # still warming up: the cosine starts later, with the new length
    t = min(cos.last_epoch, cos.T_max)
    for group, base in zip(optimizer.param_groups, cos.base_lrs):
        group["lr"] = lr_min + (base - lr_min) * (1 + math.cos(math.pi * t / cos.T_max)) / 2
    cos._last_lr = [g["lr"] for g in optimizer.param_groups]
    scheduler._last_lr = cos._last_lr
    return True
