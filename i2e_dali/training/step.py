"""The one training step, evaluation and the optimiser: what every epoch of the Trainer (training/engine.py)
repeats, usable on their own (``i2e-bench train`` times the step)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn
from tqdm import tqdm

from ..energy import SpikeRateMeter
from ..errors import TrainError
from ..models import unwrap

__all__ = ["make_train_step", "evaluate", "build_optimizer", "param_groups"]


def _to_channels_last(events: torch.Tensor) -> torch.Tensor:
    """[T,B,C,H,W] with NHWC strides, so the flattened [T*B,C,H,W] view the convs see is channels_last."""
    return events.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.1,
    channels_last: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The one training step: ``step(events [T,B,2,H,W], labels [B], soft=None) -> loss`` (detached, on the
    device). ``soft`` ([B, classes], CutMix/MixUp targets) replaces the labels in the loss when given; the
    labels stay the true ones and ``step.hits`` (a device counter, no sync) adds the batch's top-1 hits
    against them, which the trainer reports as the training accuracy.

    Forward under autocast (``amp_dtype`` None = full precision), label-smoothed cross-entropy,
    backward (through ``scaler`` for fp16), optimiser step, then the SNN state reset — also when the
    step fails, so the next batch never sees stale membrane potentials. No host sync inside.
    """

    def step(events: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        if channels_last:
            events = _to_channels_last(events)
        optimizer.zero_grad(set_to_none=True)
        try:
            with torch.autocast(events.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(events)
            # the authors' criterion: label smoothing applies to mixed soft targets as well
            loss = F.cross_entropy(logits.float(), labels if soft is None else soft, label_smoothing=label_smoothing)
            with torch.no_grad():
                if step.hits is None or step.hits.device != logits.device:
                    step.hits = torch.zeros((), dtype=torch.int64, device=logits.device)
                step.hits += logits.argmax(dim=1).eq(labels).sum()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        finally:
            functional.reset_net(model)
        return loss.detach()

    step.hits = None
    return step


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "val",
    firing_rates: bool = False,
    should_stop: Callable[[int], bool] | None = None,
) -> dict[str, float] | None:
    """Top-1/top-5 (%) and mean loss over every validation sample, each counted exactly once.

    Under DDP each rank evaluates its shard (the loader keeps and trims the last batch, no padding) and
    the sums of correct predictions, loss and count are all-reduced; every rank returns the same numbers.
    Runs on the unwrapped module: ranks may hold different numbers of batches, and a DDP forward would
    wait for the others.

    ``firing_rates``: also return ``firing_rates`` = {stage: mean firing rate} (this rank's shard), from
    spikingjelly monitors on the neurons: one reduction per neuron layer per batch, no extra host sync.

    ``should_stop(i)``: asked before batch ``i`` (a stop signal, training/preempt.py); True ends the
    evaluation there and returns None.
    """
    net = unwrap(model)
    meter = SpikeRateMeter(net).__enter__() if firing_rates else None
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct1, correct5, loss
    count = 0  # counted on the host: no host->device copy per validation step
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        for i, (events, labels) in enumerate(tqdm(loader, total=total, desc=desc, disable=not progress, leave=False,
                                                  dynamic_ncols=True)):
            if should_stop is not None and should_stop(i):
                return None
            if channels_last:
                events = _to_channels_last(events)
            try:
                with torch.autocast(events.device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    logits = net(events)
            finally:
                functional.reset_net(net)
            logits = logits.float()
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices.eq(labels[:, None])
            sums += torch.stack([
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                F.cross_entropy(logits, labels, reduction="sum").double(),
            ]).to(device)
            count += labels.numel()
            if meter is not None:
                meter.fold()
    finally:
        if meter is not None:
            meter.__exit__(None, None, None)
        net.train(was_training)
    sums = torch.cat([sums, sums.new_full((1,), float(count))])  # one fill kernel, once
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    c1, c5, loss, n = sums.tolist()
    if n == 0:
        raise TrainError("the validation set yielded no samples")
    res = {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "count": int(round(n))}
    source = getattr(loader, "source", None)
    if getattr(source, "exclude_origin", None) is not None:  # honest counts: images left out by request
        res["excluded"] = len(source.excluded)
        res["excluded_from"] = source.exclude_origin
    if meter is not None:
        res["firing_rates"] = meter.stage_rates()
    return res


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                    device: torch.device) -> torch.optim.SGD:
    """SGD as the paper trains (no weight decay on BN and bias). On CUDA the fused implementation: one
    kernel for the update, and GradScaler (fp16) then checks for inf on the device instead of an
    ``.item()`` sync every step."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum,
                           fused=device.type == "cuda")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only, not on BN or biases (as timm's optimiser factory)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
