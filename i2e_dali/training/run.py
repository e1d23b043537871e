"""A whole run from a :class:`TrainConfig`: ``train(config) -> TrainResult`` and ``evaluate_run(config)``;
``main`` (``train_dali.py``, ``i2e-train``) only parses the command line into a config (training/cli.py)
and calls them.

Assembly: runtime (device, DDP), loaders, model, resume or pretrained weights, optimiser, schedule, Trainer.
``TrainConfig.from_dict({})`` is the embedded demo; ``{"data": {"root": "/imagenet"}}`` the paper's
MS-ResNet on ImageNet through the DALI event loader; see training/config.py for every setting.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from ..convert.static import input_channels
from ..energy import format_report, measure_energy, write_report
from ..errors import CheckpointError, ConfigError, I2EError, TrainError
from ..zoo import build_any
from .checkpoint import (check_compatible, clean_stale_temps, load_checkpoint, load_pretrained, load_state_into,
                         saved_setting)
from .config import TrainConfig
from .config_file import describe, write_config
from .data import build_loaders
from .engine import Trainer, build_optimizer, evaluate
from .runtime import configure_cpu_threads, init_runtime, resolve_amp, seed_everything, setup_logging
from .schedule import build_scheduler, check_schedule, stretch_cosine

__all__ = ["TrainResult", "train", "evaluate_run", "model_for", "main"]

log = logging.getLogger("i2e_dali.train")


@dataclass
class TrainResult:
    """What a finished ``train(config)`` call leaves (on every rank; rank 0 wrote the files)."""
    config: TrainConfig
    output_dir: Path
    epochs_done: int  # epochs of the run done in total (a resumed run counts the earlier ones)
    best_top1: float | None  # best validation top-1 (%) of the whole run, None before its first epoch
    last_top1: float | None  # validation top-1 (%) after this call's last epoch (None: nothing left to do)
    history: list[dict] = field(default_factory=list)  # this call's epochs: the rows metrics.jsonl got
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    config_file: Path | None = None  # <output_dir>/config.yaml
    metrics_file: Path | None = None  # <output_dir>/metrics.jsonl (all the run's epochs)

    @property
    def last(self) -> dict | None:
        """The last epoch's metrics row (None when there was nothing left to train)."""
        return self.history[-1] if self.history else None


def model_for(config: TrainConfig, num_classes: int) -> nn.Module:
    """The network a config describes (arch, width, input rgb|v: a 3|1-channel stem); also what
    ``i2e-report`` rebuilds from a checkpoint's stored config."""
    m, d = config.model, config.data
    return build_any(m.arch, num_classes, width=m.width, zero_init_residual=m.zero_init_residual, size=d.size,
                     timesteps=d.timesteps, in_channels=input_channels(d.input))


def _open_writer(output_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        log.warning("TensorBoard is not importable; scalars go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(output_dir / "tb"))


def _require_config(config) -> None:
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() and evaluate_run() take a TrainConfig (e.g. TrainConfig.from_dict(mapping)), "
                          f"got {type(config).__name__}")


@contextlib.contextmanager
def _session(config: TrainConfig, *, training: bool):
    """Runtime, output folder, logging, CPU threads, seeds, loaders and model; torn down on exit."""
    rt = init_runtime(config.run.device)
    output_dir = Path(config.run.output_dir).expanduser()
    handlers: list[logging.Handler] = []
    try:
        if rt.is_main and training:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrainError(f"--output-dir {output_dir} cannot be created: {e}") from e
        handlers = setup_logging(rt, output_dir if training else None)
        if rt.is_main and output_dir.is_dir():
            clean_stale_temps(output_dir)
        workers = configure_cpu_threads(config.data.workers, config.data.threads, rt)
        # the loaders get the thread count picked for this machine; config.yaml and checkpoints keep the
        # config as resolved (a repeat on another machine picks its own)
        loader_config = config.replace(workers=workers) if workers != config.data.workers else config
        torch.manual_seed(config.optim.seed)  # same initial weights on every rank (DDP also broadcasts them)
        train_loader, val_loader = build_loaders(loader_config, rt, need_train=training)
        num_classes = val_loader.num_classes
        if train_loader is not None and train_loader.num_classes != num_classes:
            raise TrainError(f"train has {train_loader.num_classes} classes but val has {num_classes}")
        model = model_for(config, num_classes)
        seed_everything(config.optim.seed + rt.rank)  # per-rank streams from here on
        yield SimpleNamespace(config=config, rt=rt, output_dir=output_dir, train_loader=train_loader,
                              val_loader=val_loader, num_classes=num_classes, model=model,
                              class_names=list(getattr(val_loader, "class_names", []) or []))
    except torch.OutOfMemoryError as e:
        o = config.optim
        raise TrainError(
            f"out of GPU memory with --batch-size {o.batch_size} per GPU (T={config.data.timesteps}, size "
            f"{config.data.size}): lower --batch-size (e.g. {max(1, o.batch_size // 2)}), or --timesteps/--size; "
            f"keep --amp on ({str(e).splitlines()[0] if str(e) else 'CUDA OOM'})"
        ) from None
    finally:
        for h in handlers:
            logging.getLogger("i2e_dali").removeHandler(h)
            h.close()
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _resume_source(config: TrainConfig, output_dir: Path) -> Path | None:
    resume = config.run.resume
    if resume == "auto":
        cand = output_dir / "last.pt"
        if not cand.is_file():
            log.info("--resume auto: no %s yet, starting a new run", cand)
            return None
        return cand
    return Path(resume).expanduser() if resume else None


def _initial_weights(s, *, evaluating: bool) -> tuple[dict | None, Path | None]:
    """The checkpoint to resume (checked against this run) or --pretrained weights loaded into the model."""
    cfg = s.config
    resume_path = _resume_source(cfg, s.output_dir)
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path)
        check_compatible(ckpt, arch=cfg.model.arch, width=cfg.model.width, dataset=cfg.data.dataset,
                         num_classes=s.num_classes, class_names=s.class_names, source=str(resume_path))
        if cfg.model.pretrained:
            log.info("--pretrained %s ignored: resuming %s", cfg.model.pretrained, resume_path)
        return ckpt, resume_path
    if cfg.model.pretrained:
        notes = load_pretrained(s.model, cfg.model.pretrained, num_classes=s.num_classes)
        if evaluating and notes:
            raise CheckpointError(f"--pretrained {cfg.model.pretrained} cannot be evaluated on this data set: "
                                  + "; ".join(notes))
        for note in notes:
            log.info("--pretrained: %s", note)
        log.info("loaded weights from %s", cfg.model.pretrained)
    return None, None


def _place_model(s) -> tuple[torch.dtype | None, bool]:
    cfg, model = s.config, s.model
    model.to(s.rt.device)
    if cfg.optim.channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype, use_scaler = resolve_amp(cfg.optim.amp, s.rt.device)
    log.info("%s (width %d, %d classes, %.1fM parameters) on %s, T=%d, amp=%s, %d process(es)", cfg.model.arch,
             cfg.model.width, s.num_classes, sum(p.numel() for p in model.parameters()) / 1e6, s.rt.device,
             cfg.data.timesteps, amp_dtype or "off", s.rt.world_size)
    return amp_dtype, use_scaler


def evaluate_run(config: TrainConfig) -> dict:
    """Evaluate the weights of ``model.pretrained`` or ``run.resume`` on the validation set (top-1/top-5,
    loss, count; with ``run.report`` also the energy report). Writes nothing but the report."""
    _require_config(config)
    with _session(config, training=False) as s:
        cfg, rt = s.config, s.rt
        ckpt, resume_path = _initial_weights(s, evaluating=True)
        amp_dtype, _ = _place_model(s)
        if ckpt is not None:
            load_state_into(s.model, ckpt["model"], source=str(resume_path))
        elif not cfg.model.pretrained:
            log.warning("--evaluate without --pretrained or --resume: evaluating random weights")
        res = evaluate(s.model, s.val_loader, amp_dtype=amp_dtype, channels_last=cfg.optim.channels_last,
                       progress=rt.is_main and cfg.run.progress)
        log.info("evaluation: top-1 %.2f%% top-5 %.2f%% loss %.4f over %d images%s", res["top1"], res["top5"],
                 res["loss"], res["count"],
                 f" ({res['excluded']} excluded, listed in {res['excluded_from']})" if "excluded" in res else "")
        if rt.is_main:
            print(json.dumps(res))
        if cfg.run.report is not None and rt.is_main:  # this rank's shard (all of it without DDP)
            report = measure_energy(s.model, s.val_loader, max_batches=cfg.run.report_batches,
                                    encoding=cfg.data.dataset != "cifar10-dvs")
            out = s.output_dir / "report" if cfg.run.report == "auto" else Path(cfg.run.report).expanduser()
            res["report"] = write_report(report, out)
            print(format_report(report))
            log.info("report written to %s", out)
        return res


def _common_steps(train_loader, rt) -> int:
    steps = len(train_loader)
    if rt.distributed:  # every rank must take the same number of steps (DDP all-reduces each one)
        t = torch.tensor([steps], device=rt.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        steps = int(t.item())
    if steps < 1:
        raise TrainError("the training set gives no full batch: lower --batch-size")
    return steps


def _continue(trainer: Trainer, ckpt: dict, source: Path, s, scheduler, optimizer, steps_per_epoch: int) -> None:
    """Restore ``ckpt`` into the trainer after checking that its schedule can continue here."""
    o = s.config.optim
    if ckpt.get("steps_per_epoch") != steps_per_epoch:
        raise CheckpointError(
            f"{source} was saved with {ckpt.get('steps_per_epoch')} steps per epoch, this run has "
            f"{steps_per_epoch} (different --batch-size, data or process count); the schedule would not "
            "continue. Resume with the same settings, or use --pretrained."
        )
    saved = ckpt.get("config") or {}
    check_schedule(saved, sched=o.sched, warmup_epochs=o.warmup_epochs, source=str(source))
    trainer.restore(ckpt, str(source))
    saved_epochs = saved_setting(saved, "epochs")
    if saved_epochs != o.epochs and stretch_cosine(scheduler, optimizer, epochs=o.epochs,
                                                   steps_per_epoch=steps_per_epoch, lr_min=o.lr_min):
        # a longer (or shorter) run than planned: continue on the cosine of an --epochs run, as if it
        # had been planned so from the start (the lr may rise again after a finished run)
        log.warning("--epochs %d differs from the checkpoint's %s: the cosine schedule now spans %d epochs "
                    "(lr %.3g at this point)", o.epochs, saved_epochs, o.epochs, optimizer.param_groups[0]["lr"])


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says (resuming per ``run.resume``), writing checkpoints, metrics.jsonl, train.log
    and the resolved ``config.yaml`` to ``run.output_dir``. Under torchrun every process calls it."""
    _require_config(config)
    if config.run.evaluate:
        raise ConfigError("run.evaluate is set: call evaluate_run(config) (train() trains)")
    writer = None
    with _session(config, training=True) as s:
        cfg, rt, o = s.config, s.rt, s.config.optim
        try:
            ckpt, resume_path = _initial_weights(s, evaluating=False)
            amp_dtype, use_scaler = _place_model(s)
            steps_per_epoch = _common_steps(s.train_loader, rt)
            optimizer = build_optimizer(s.model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                        device=rt.device)
            # stepped every step (smooth also for short runs): cosine to lr_min, or step decay; an optional
            # linear warm-up first (training/schedule.py)
            scheduler = build_scheduler(
                optimizer, sched=o.sched, epochs=o.epochs, steps_per_epoch=steps_per_epoch, lr=o.lr,
                lr_min=o.lr_min, warmup_epochs=o.warmup_epochs, warmup_lr=o.warmup_lr,
                decay_epochs=o.decay_epochs, decay_rate=o.decay_rate)
            scaler = torch.amp.GradScaler("cuda") if use_scaler else None
            net: nn.Module = s.model
            if rt.distributed:
                net = nn.parallel.DistributedDataParallel(
                    s.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
            if o.compile:
                net = torch.compile(net)
            writer = _open_writer(s.output_dir, cfg.run.tensorboard) if rt.is_main else None
            trainer = Trainer(cfg, rt, net, optimizer, scheduler, scaler, amp_dtype, s.train_loader, s.val_loader,
                              steps_per_epoch, s.output_dir, writer)
            if ckpt is not None:
                _continue(trainer, ckpt, resume_path, s, scheduler, optimizer, steps_per_epoch)
                del ckpt
            config_file = s.output_dir / "config.yaml"
            if rt.is_main:
                write_config(config, config_file)  # as resolved, before the run's own derived values
            log.info("training %d epochs x %d steps, batch %d x %d process(es), lr %g -> %g, wd %g; output %s",
                     o.epochs, steps_per_epoch, o.batch_size, rt.world_size, o.lr, o.lr_min, o.weight_decay,
                     s.output_dir)
            history = trainer.fit()
            st = trainer.state
            if not history:
                log.info("nothing to do: the checkpoint already finished %d epochs", st.epoch)
            else:
                log.info("done: %d/%d epochs, last top-1 %.2f%%, best %.2f%%; checkpoints %s/{last,best}.pt",
                         st.epoch, o.epochs, history[-1]["val_top1"], st.best_top1, s.output_dir)
        finally:
            if writer is not None:
                writer.close()
        out = s.output_dir
        return TrainResult(
            config=config, output_dir=out, epochs_done=st.epoch,
            best_top1=st.best_top1 if st.best_top1 >= 0 else None,
            last_top1=history[-1]["val_top1"] if history else None, history=history,
            last_checkpoint=out / "last.pt", best_checkpoint=out / "best.pt" if st.best_top1 >= 0 else None,
            config_file=config_file, metrics_file=out / "metrics.jsonl")


def main(argv: list[str] | None = None):
    """The command line (``train_dali.py``, ``i2e-train``): parse into a TrainConfig (training/cli.py), then
    train, or evaluate with --evaluate. Returns the last epoch's metrics row (training) or the evaluation's.
    A user-fixable problem (the I2EError family) is one line and exit status 2 (``I2E_DEBUG=1``: the
    traceback); anything else is a bug and keeps its traceback."""
    from .cli import parse_args

    try:
        cfg, show = parse_args(argv)
        if show:
            print(describe(cfg))
            return None
        if cfg.run.evaluate:
            return evaluate_run(cfg)
        return train(cfg).last
    except I2EError as e:
        if os.environ.get("I2E_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; continue with --resume auto", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
