"""The engine: the Trainer with its epoch loop, checkpoints and resume. The one training step, evaluation
and the optimiser live in training/step.py and are re-exported here.

Any loader obeying the contract (``i2e_dali.data.base.BatchLoader``) works: iterating yields
``(events [T,B,2,H,W], labels [B])`` on the device, ``len()`` is batches per epoch on this rank, plus
``num_classes``/``class_names`` and ``state_dict()``/``load_state_dict()`` for exact resume (optional:
without them a mid-epoch resume replays and skips the consumed batches).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..errors import TrainError
from ..models import unwrap
from .checkpoint import CKPT_FORMAT, load_state_into, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .epoch_pass import EpochPass as _EpochPass
from .preempt import StopGuard
from .runtime import gather
from .step import build_optimizer, evaluate, make_train_step, param_groups  # noqa: F401 - the engine's API

__all__ = ["make_train_step", "evaluate", "build_optimizer", "param_groups", "TrainState", "Trainer"]

log = logging.getLogger("i2e_dali.train")


def _excluded_note(n) -> str:
    return "" if n is None else f", {n} excluded"


@dataclass
class TrainState:
    epoch: int = 0  # epochs fully done
    step_in_epoch: int = 0  # steps of the current epoch done (0 at an epoch boundary)
    global_step: int = 0
    best_top1: float = -1.0


class Trainer:
    """Holds the pieces of one run; ``fit()`` runs epochs, ``save()`` writes the one checkpoint format."""

    def __init__(self, config: TrainConfig, rt, model, optimizer, scheduler, scaler, amp_dtype, train_loader,
                 val_loader, steps_per_epoch, output_dir: Path, writer=None):
        self.config, self.rt = config, rt
        optim = config.optim
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.amp_dtype = amp_dtype
        self.train_loader, self.val_loader = train_loader, val_loader
        self.steps_per_epoch = steps_per_epoch
        self.output_dir = output_dir
        self.writer = writer
        self.state = TrainState()
        self.step_fn = make_train_step(model, optimizer, scaler=scaler, amp_dtype=amp_dtype,
                                       label_smoothing=optim.label_smoothing, channels_last=optim.channels_last)
        self._replay = 0  # batches to skip at the next epoch start (resume with a stateless loader)
        self._loader_restored = False  # the loader's own state was restored (it continues mid-epoch)
        self._epoch_loss_sum = 0.0  # this rank's loss sum / steps of the current epoch, kept across a resume
        self._epoch_steps = 0
        self._epoch_hits = 0  # this rank's top-1 hits on the true labels, same life as the loss sum
        self.stop = None  # the StopGuard while fit() runs (stop signals: training/preempt.py)
        self._pending_stats = None  # an epoch trained, not yet evaluated, when a stop came (saved; resumed)
        self._saved_step = -1  # global step of the last mid-epoch checkpoint
        # --mixup: on the images before conversion where the loader converts (EventLoader.mix), else on the
        # frames here; --t-train K: K random timesteps per batch (training/mixing.py)
        self.t_train = int(optim.t_train or 0)
        self.mixer = None
        self._mix_frames = False
        self._temporal_subset = None
        if self.t_train or optim.mixup:  # torchvision's v2 transforms load only when these options are on
            from .mixing import BatchMixer, mixing_active, temporal_subset

            self._temporal_subset, self._mixing_active = temporal_subset, mixing_active
        if optim.mixup:
            # the live loader mixes the images before conversion: it is built with its mixer (a loader's batch
            # type is fixed when it is built; training/data.build_loaders); event data sets have no images:
            # their frames are mixed here
            self.mixer = getattr(train_loader, "mix", None)
            if self.mixer is None:
                self.mixer = BatchMixer(train_loader.num_classes)
                self._mix_frames = True

    # ---------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict | None:
        """The checkpoint dict on rank 0 (None elsewhere). Collective under DDP."""
        per_rank = {"rng": rng_state(self.rt.device), "epoch_loss_sum": float(self._epoch_loss_sum),
                    "epoch_steps": int(self._epoch_steps), "epoch_hits": int(self._epoch_hits)}
        if hasattr(self.train_loader, "state_dict"):
            per_rank["loader"] = self.train_loader.state_dict()
        ranks = gather(per_rank, self.rt)
        if not self.rt.is_main:
            return None
        net = unwrap(self.model)
        s = self.state
        return {
            "format": CKPT_FORMAT,
            "arch": net.arch,
            "width": net.width,
            "num_classes": net.num_classes,
            "class_names": list(getattr(self.train_loader, "class_names", []) or []),
            "dataset": self.config.data.dataset,
            "timesteps": self.config.data.timesteps,
            "model": net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": s.epoch,
            "step_in_epoch": s.step_in_epoch,
            "global_step": s.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "best_top1": s.best_top1,
            "world_size": self.rt.world_size,
            "ranks": ranks,
            "train_stats": self._pending_stats,
            "config": self.config.to_dict(),  # plain values: loadable with weights_only=True
            "saved_at": time.time(),
        }

    def save(self, *names: str) -> None:
        state = self.checkpoint_state()
        if state is None:
            return
        for name in names:
            save_checkpoint(state, self.output_dir / name)

    def restore(self, ckpt: dict, source: str) -> None:
        """Continue the run stored in ``ckpt`` (already checked by check_compatible)."""
        net = unwrap(self.model)
        load_state_into(net, ckpt["model"], source=source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], ckpt["best_top1"])
        if self.state.step_in_epoch >= self.steps_per_epoch:  # stopped after training, before evaluation
            self._pending_stats = ckpt.get("train_stats")
        ranks = ckpt.get("ranks") or []
        if ckpt.get("world_size") == self.rt.world_size and len(ranks) == self.rt.world_size:
            mine = ranks[self.rt.rank]
            set_rng_state(mine["rng"], self.rt.device)
            if self.state.step_in_epoch:
                self._epoch_loss_sum = float(mine.get("epoch_loss_sum", 0.0))
                self._epoch_steps = int(mine.get("epoch_steps", 0))
                self._epoch_hits = int(mine.get("epoch_hits", 0))
            if "loader" in mine and hasattr(self.train_loader, "load_state_dict"):
                self.train_loader.load_state_dict(mine["loader"])
                self._loader_restored = True
            elif self.state.step_in_epoch:
                self._replay = self.state.step_in_epoch
        else:
            # shards and RNG streams cannot be mapped onto another process count: the schedule continues,
            # the data order of the current epoch starts afresh (its remaining steps see a new shuffle)
            log.warning("%s was written by %s process(es), this run has %d: model, optimiser and schedule "
                        "continue exactly, data order and RNG streams restart", source, ckpt.get("world_size"),
                        self.rt.world_size)
        log.info("resumed from %s: epoch %d, step %d of %d (global step %d), best top-1 %.2f%%", source,
                 self.state.epoch + 1, self.state.step_in_epoch, self.steps_per_epoch, self.state.global_step,
                 max(self.state.best_top1, 0.0))

    # ---------------------------------------------------------------------------------------------
    # One epoch, in parts: start the pass (with the replay after a resume), then per step: prepare the
    # batch (mixing, temporal subset), step, count, time, maybe checkpoint, and the step boundary; then
    # close the pass and reduce the epoch's numbers.
    def train_one_epoch(self) -> dict:
        """One pass over the training loader (from the resumed position), with timing and checkpoints."""
        if self._pending_stats is not None:  # trained before a stop (see restore): its evaluation comes next
            stats, self._pending_stats = self._pending_stats, None
            return stats
        ep = self._begin_epoch()
        n, s = self.steps_per_epoch, self.state
        try:
            for i in range(ep.start, n):
                batch = self._next_batch(ep, i)
                ep.timer.data_ready()
                events, labels, soft = self._prepare_batch(batch)
                loss = self._train_step(ep, events, labels, soft)
                s.step_in_epoch = i + 1
                ep.timer.step_done()
                if ep.timer.window_full(self.config.run.log_every) or i + 1 == n:
                    self._log_window(ep, loss)
                self._maybe_checkpoint(ep, i)
                self._at_step_boundary(ep, i)
        finally:
            ep.bar.close()
        self._close_pass(ep)
        return self._epoch_stats(ep)

    def _begin_epoch(self) -> _EpochPass:
        """Train mode, the mixing switch of this epoch, the loader's iterator (past the batches a resume
        replays), and this epoch's running sums (carried over from a mid-epoch checkpoint)."""
        cfg, rt, s = self.config, self.rt, self.state
        self.model.train()
        if self.mixer is not None:
            self.mixer.active = self._mixing_active(s.epoch, cfg.optim.epochs)
        start = s.step_in_epoch
        # batches this pass of the loader will yield: a loader restored mid-epoch yields the rest of that
        # epoch; otherwise a full epoch, whose first `start` batches are skipped when replaying
        restored_mid_epoch = start > 0 and not self._replay and self._loader_restored
        pass_len = len(self.train_loader) - start if restored_mid_epoch else len(self.train_loader)
        it = iter(self.train_loader)
        consumed = self._replay_consumed(it)
        self._loader_restored = False
        bar = tqdm(total=self.steps_per_epoch, initial=start, desc=f"epoch {s.epoch + 1}/{cfg.optim.epochs}",
                   unit="batch", disable=not (rt.is_main and cfg.run.progress), dynamic_ncols=True, leave=False)
        loss_sum = torch.full((), self._epoch_loss_sum, dtype=torch.float64, device=rt.device)
        hits = getattr(self.step_fn, "hits", None)
        if hasattr(self.step_fn, "hits"):
            self.step_fn.hits = hits = torch.full((), self._epoch_hits, dtype=torch.int64, device=rt.device)
        return _EpochPass(it=it, start=start, pass_len=pass_len, consumed=consumed, bar=bar, loss_sum=loss_sum,
                          hits=hits, prior_steps=self._epoch_steps)

    def _replay_consumed(self, it) -> int:
        """A stateless loader resumed mid-epoch: skip the batches already trained on. Returns how many."""
        for skipped in range(self._replay):
            if next(it, None) is None:
                raise TrainError(f"cannot resume mid-epoch: the training loader ended after {skipped} of the "
                                 f"{self._replay} batches already trained on (was the data set changed?)")
        consumed, self._replay = self._replay, 0
        return consumed

    def _next_batch(self, ep: _EpochPass, i: int):
        try:
            batch = next(ep.it)
        except StopIteration:
            raise TrainError(
                f"the training loader ended after {i} of {self.steps_per_epoch} batches; its len() does not match "
                "what it yields"
            ) from None
        ep.consumed += 1
        return batch

    def _prepare_batch(self, batch):
        """(events, labels, soft targets or None): CutMix/MixUp on the frames where the loader did not mix
        the images, then the --t-train temporal subset."""
        events, labels = batch[0], batch[1]
        soft = batch[2] if self.mixer is not None and not self._mix_frames else None
        if self._mix_frames:
            events, soft = self.mixer.mix_frames(events, labels)
        if self.t_train:
            events = self._temporal_subset(events, self.t_train)
        return events, labels, soft

    def _train_step(self, ep: _EpochPass, events, labels, soft) -> torch.Tensor:
        """The step, the schedule's step, and the counters (on the device: no host sync)."""
        loss = self.step_fn(events, labels) if soft is None else self.step_fn(events, labels, soft)
        self.scheduler.step()
        ep.loss_sum += loss.double()
        ep.steps += 1
        self.state.global_step += 1
        return loss

    def _log_window(self, ep: _EpochPass, loss: torch.Tensor) -> None:
        """Progress bar and TensorBoard for the last --log-every steps (the one host sync of the window)."""
        rt, win = self.rt, ep.timer
        lr = self.optimizer.param_groups[0]["lr"]
        if rt.is_main:
            loss_now = loss.item()
            busy = max(win.win_wait + win.win_compute, 1e-9)
            ips = win.win_steps * self.config.optim.batch_size * rt.world_size / busy
            ep.bar.set_postfix(loss=f"{loss_now:.3f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}",
                               wait=f"{100 * win.win_wait / busy:.0f}%")
            if self.writer is not None:
                g = self.state.global_step
                self.writer.add_scalar("train/loss", loss_now, g)
                self.writer.add_scalar("train/lr", lr, g)
                self.writer.add_scalar("train/img_per_s", ips, g)
                self.writer.add_scalar("train/data_wait_ms_per_step", 1000 * win.win_wait / win.win_steps, g)
                self.writer.add_scalar("train/compute_ms_per_step", 1000 * win.win_compute / win.win_steps, g)
        ep.bar.update(win.win_steps)
        win.new_window()

    def _maybe_checkpoint(self, ep: _EpochPass, i: int) -> None:
        """last.pt every --ckpt-every steps (not on an epoch's last step: the epoch end saves it)."""
        every = self.config.run.ckpt_every
        if every and self.state.global_step % every == 0 and i + 1 < self.steps_per_epoch:
            self._save_mid_epoch(ep)
            ep.timer.skip()  # checkpoint time is neither data wait nor compute

    def _save_mid_epoch(self, ep: _EpochPass) -> None:
        """last.pt at this step, with this rank's running sums of the epoch (once per step)."""
        if self._saved_step == self.state.global_step:
            return
        self._epoch_loss_sum, self._epoch_steps = ep.loss_sum.item(), ep.prior_steps + ep.steps
        self._epoch_hits = int(self.step_fn.hits.item()) if ep.hits is not None else 0
        self.save("last.pt")
        self._saved_step = self.state.global_step

    def _at_step_boundary(self, ep: _EpochPass, i: int) -> None:
        """Called after every training step, once its checkpoint (if due) is written: the one place where a
        run may decide to stop between steps (stop signals / preemption: training/preempt.py)."""
        if self.stop is not None:
            self.stop.at_step(self, ep, i)

    def _close_pass(self, ep: _EpochPass) -> None:
        loader = self.train_loader
        if ep.consumed < ep.pass_len:
            # the pass was cut short (ranks cut to a common step count, or a resume that could not restore the
            # loader's position): drop the rest so the next epoch starts at a fresh shuffle
            if hasattr(loader, "reset"):
                loader.reset()
        else:
            # run the pass to its end so the loader closes the epoch itself (DALI resets its iterator and
            # starts prefetching the next epoch); the epoch-end checkpoint then holds a next-epoch state
            for _ in ep.it:
                raise TrainError(f"the training loader yields more batches than its len() ({len(loader)})")

    def _epoch_stats(self, ep: _EpochPass) -> dict:
        """The epoch's loss and training top-1 over all ranks (resumed steps included), its speed and data wait."""
        rt, timer = self.rt, ep.timer
        elapsed = time.perf_counter() - timer.t_start
        hits = getattr(self.step_fn, "hits", None)
        if rt.distributed:
            dist.all_reduce(ep.loss_sum)
            if hits is not None:
                dist.all_reduce(hits)
        done = ep.prior_steps + ep.steps
        mean_loss = ep.loss_sum.item() / max(done * rt.world_size, 1)
        seen = max(done * rt.world_size * self.config.optim.batch_size, 1)
        train_top1 = 100.0 * hits.item() / seen if hits is not None else float("nan")
        self._epoch_loss_sum, self._epoch_steps, self._epoch_hits = 0.0, 0, 0
        wait_s, compute_s = timer.wait_s, timer.compute_s
        return {
            "loss": mean_loss,
            "steps": ep.steps,
            "img_per_s": ep.steps * self.config.optim.batch_size * rt.world_size / max(elapsed, 1e-9),
            "data_wait_s": wait_s,
            "compute_s": compute_s,
            "data_wait_fraction": wait_s / max(wait_s + compute_s, 1e-9),
            "lr": self.optimizer.param_groups[0]["lr"],
            "top1": train_top1,  # on the true labels (also while CutMix/MixUp mix the loss's targets)
            "mixing": bool(self.mixer is not None and self.mixer.active),
        }

    def fit(self) -> list[dict]:
        """Epochs until --stop-after-epoch or --epochs are done; returns this call's per-epoch metrics rows
        (what metrics.jsonl gets), empty when the checkpoint had already finished them."""
        cfg, s = self.config, self.state
        last_epoch = cfg.run.stop_after_epoch or cfg.optim.epochs
        history: list[dict] = []
        with StopGuard(cfg.run.stop_signals, self.rt, requeue=cfg.run.requeue_on_signal) as self.stop:
            while s.epoch < last_epoch:
                t0 = time.perf_counter()
                train_stats = self.train_one_epoch()
                # a stop here or during the evaluation saves the trained epoch; the resumed run evaluates it
                self.stop.after_training(self, train_stats)
                val = evaluate(self.model, self.val_loader, amp_dtype=self.amp_dtype,
                               channels_last=cfg.optim.channels_last, progress=self.rt.is_main and cfg.run.progress,
                               desc=f"val {s.epoch + 1}", firing_rates=self.rt.is_main,
                               should_stop=self.stop.eval_guard(self.val_loader))
                self.stop.after_evaluation(self, train_stats, val)
                s.epoch += 1
                s.step_in_epoch = 0
                is_best = val["top1"] > s.best_top1
                s.best_top1 = max(s.best_top1, val["top1"])
                self.save(*(("last.pt", "best.pt") if is_best else ("last.pt",)))
                result = {
                    "epoch": s.epoch,
                    "global_step": s.global_step,
                    **{f"train_{k}": v for k, v in train_stats.items()},
                    **{f"val_{k}": v for k, v in val.items()},
                    "best_top1": s.best_top1,
                    "epoch_time_s": time.perf_counter() - t0,
                    "time": time.time(),
                }
                if self.rt.is_main:
                    self._report_epoch(result)
                history.append(result)
                self.stop.after_epoch_save(self)  # a stop during that save: it is the checkpoint to resume
        return history

    def _report_epoch(self, r: dict) -> None:
        log.info(
            "epoch %d/%d: val top-1 %.2f%% top-5 %.2f%% loss %.4f (%d images%s) | train loss %.4f, %.0f img/s, "
            "data wait %.1f%% | best %.2f%%", r["epoch"], self.config.optim.epochs, r["val_top1"], r["val_top5"],
            r["val_loss"], r["val_count"], _excluded_note(r.get("val_excluded")), r["train_loss"],
            r["train_img_per_s"], 100 * r["train_data_wait_fraction"], r["best_top1"],
        )
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")
        if self.writer is not None:
            for k in ("val_top1", "val_top5", "val_loss", "train_loss", "train_img_per_s", "train_data_wait_fraction",
                      "best_top1"):
                self.writer.add_scalar("epoch/" + k, r[k], r["epoch"])
            for stage, rate in (r.get("val_firing_rates") or {}).items():  # a dying or saturating network shows
                self.writer.add_scalar("firing_rate/" + stage, rate, r["epoch"])
            self.writer.flush()
