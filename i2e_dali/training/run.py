"""Assembling a run from the resolved flags: runtime, loaders, model, optimiser, schedule, resume; and
``main``, the entry point of ``train_dali.py`` / ``i2e-train``.

``python train_dali.py`` (no ``--data``) trains on the embedded demo set; ``--data /imagenet`` trains
the paper's MS-ResNet on ImageNet through the DALI event loader; ``--dataset cifar10|cifar100`` uses the
CIFAR batches; ``--dataset i2e-npz`` reads exported I2E sets and ``--dataset cifar10-dvs`` the real
CIFAR10-DVS recordings (both through FrameLoader). Multi-GPU / multi-node with ``torchrun``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CheckpointError, I2EError, TrainError
from ..energy import format_report, measure_energy, write_report
from ..fsio import atomic_write_text
from ..convert.static import input_channels
from ..zoo import build_any
from .checkpoint import check_compatible, clean_stale_temps, load_checkpoint, load_pretrained, load_state_into, plain_config
from .config import build_parser, resolve_config
from .data import build_loaders
from .engine import Trainer, build_optimizer, evaluate
from .schedule import build_scheduler, check_schedule, stretch_cosine
from .runtime import configure_cpu_threads, init_runtime, resolve_amp, seed_everything, setup_logging

__all__ = ["model_for", "run", "main"]

log = logging.getLogger("i2e_dali.train")


def _open_writer(output_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        log.warning("TensorBoard is not importable; scalars go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(output_dir / "tb"))


def model_for(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The network a run's settings describe (``--arch``, ``--width``, ``--input`` rgb|v: a 3|1-channel stem);
    also what ``i2e-report`` rebuilds from a checkpoint's stored settings."""
    return build_any(args.arch, num_classes, width=args.width, zero_init_residual=args.zero_init_residual,
                     size=args.size, timesteps=args.timesteps, in_channels=input_channels(args.input))


def run(args: argparse.Namespace) -> dict | None:
    rt = init_runtime(args.device)
    output_dir = Path(args.output_dir).expanduser()
    handlers: list[logging.Handler] = []
    writer = None
    try:
        if rt.is_main and not args.evaluate:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrainError(f"--output-dir {output_dir} cannot be created: {e}") from e
        handlers = setup_logging(rt, output_dir if not args.evaluate else None)
        if rt.is_main and output_dir.is_dir():
            clean_stale_temps(output_dir)
        configure_cpu_threads(args, rt)
        torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts them)

        train_loader, val_loader = build_loaders(args, rt, need_train=not args.evaluate)
        num_classes = val_loader.num_classes
        class_names = list(getattr(val_loader, "class_names", []) or [])
        if train_loader is not None and train_loader.num_classes != num_classes:
            raise TrainError(f"train has {train_loader.num_classes} classes but val has {num_classes}")

        model = model_for(args, num_classes)
        seed_everything(args.seed + rt.rank)  # per-rank streams from here on

        resume_path = None
        if args.resume == "auto":
            cand = output_dir / "last.pt"
            resume_path = cand if cand.is_file() else None
            if resume_path is None:
                log.info("--resume auto: no %s yet, starting a new run", cand)
        elif args.resume:
            resume_path = Path(args.resume).expanduser()
        ckpt = None
        if resume_path is not None:
            ckpt = load_checkpoint(resume_path)
            check_compatible(ckpt, args, num_classes, class_names, str(resume_path))
            if args.pretrained:
                log.info("--pretrained %s ignored: resuming %s", args.pretrained, resume_path)
        elif args.pretrained:
            notes = load_pretrained(model, args.pretrained, num_classes=num_classes)
            if args.evaluate and notes:
                raise CheckpointError(f"--pretrained {args.pretrained} cannot be evaluated on this data set: "
                                      + "; ".join(notes))
            for note in notes:
                log.info("--pretrained: %s", note)
            log.info("loaded weights from %s", args.pretrained)

        model.to(rt.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        amp_dtype, use_scaler = resolve_amp(args.amp, rt.device)
        log.info("%s (width %d, %d classes, %.1fM parameters) on %s, T=%d, amp=%s, %d process(es)", args.arch,
                 args.width, num_classes, sum(p.numel() for p in model.parameters()) / 1e6, rt.device,
                 args.timesteps, amp_dtype or "off", rt.world_size)

        if args.evaluate:
            if ckpt is not None:
                load_state_into(model, ckpt["model"], source=str(resume_path))
            elif not args.pretrained:
                log.warning("--evaluate without --pretrained or --resume: evaluating random weights")
            res = evaluate(model, val_loader, amp_dtype=amp_dtype, channels_last=args.channels_last,
                           progress=rt.is_main and args.progress)
            log.info("evaluation: top-1 %.2f%% top-5 %.2f%% loss %.4f over %d images%s", res["top1"], res["top5"],
                     res["loss"], res["count"],
                     f" ({res['excluded']} excluded, listed in {res['excluded_from']})" if "excluded" in res else "")
            if rt.is_main:
                print(json.dumps(res))
            if args.report is not None and rt.is_main:  # this rank's shard (all of it without DDP)
                report = measure_energy(model, val_loader, max_batches=args.report_batches,
                                        encoding=args.dataset != "cifar10-dvs")
                out = output_dir / "report" if args.report == "auto" else Path(args.report).expanduser()
                res["report"] = write_report(report, out)
                print(format_report(report))
                log.info("report written to %s", out)
            return res

        steps_per_epoch = len(train_loader)
        if rt.distributed:  # every rank must take the same number of steps (DDP all-reduces each one)
            t = torch.tensor([steps_per_epoch], device=rt.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            steps_per_epoch = int(t.item())
        if steps_per_epoch < 1:
            raise TrainError("the training set gives no full batch: lower --batch-size")
        optimizer = build_optimizer(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                    device=rt.device)
        # stepped every step (smooth also for short runs): --sched cosine to --lr-min, or step decay; an
        # optional linear warm-up first (training/schedule.py)
        scheduler = build_scheduler(
            optimizer, sched=args.sched, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
            lr=args.lr, lr_min=args.lr_min, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
            decay_epochs=args.decay_epochs, decay_rate=args.decay_rate)
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None

        ddp_model: nn.Module = model
        if rt.distributed:
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        if args.compile:
            ddp_model = torch.compile(ddp_model)
        writer = _open_writer(output_dir, args.tensorboard) if rt.is_main else None
        trainer = Trainer(args, rt, ddp_model, optimizer, scheduler, scaler, amp_dtype, train_loader, val_loader,
                          steps_per_epoch, output_dir, writer)
        if ckpt is not None:
            if ckpt.get("steps_per_epoch") != steps_per_epoch:
                raise CheckpointError(
                    f"{resume_path} was saved with {ckpt.get('steps_per_epoch')} steps per epoch, this run has "
                    f"{steps_per_epoch} (different --batch-size, data or process count); the schedule would not "
                    "continue. Resume with the same settings, or use --pretrained."
                )
            check_schedule(ckpt.get("config") or {}, args, str(resume_path))
            trainer.restore(ckpt, str(resume_path))
            saved_epochs = (ckpt.get("config") or {}).get("epochs")
            if saved_epochs != args.epochs and stretch_cosine(scheduler, optimizer, epochs=args.epochs,
                                                              steps_per_epoch=steps_per_epoch, lr_min=args.lr_min):
                # a longer (or shorter) run than planned: continue on the cosine of an --epochs run, as if it
                # had been planned so from the start (the lr may rise again after a finished run)
                log.warning("--epochs %d differs from the checkpoint's %s: the cosine schedule now spans %d epochs "
                            "(lr %.3g at this point)", args.epochs, saved_epochs, args.epochs,
                            optimizer.param_groups[0]["lr"])
            del ckpt
        if rt.is_main:
            atomic_write_text(output_dir / "config.json",
                              json.dumps({k: plain_config(v) for k, v in vars(args).items()}, indent=1))
        log.info("training %d epochs x %d steps, batch %d x %d process(es), lr %g -> %g, wd %g; output %s",
                 args.epochs, steps_per_epoch, args.batch_size, rt.world_size, args.lr, args.lr_min,
                 args.weight_decay, output_dir)
        result = trainer.fit()
        if result is None:
            log.info("nothing to do: the checkpoint already finished %d epochs", trainer.state.epoch)
        else:
            log.info("done: %d/%d epochs, last top-1 %.2f%%, best %.2f%%; checkpoints %s/{last,best}.pt",
                     trainer.state.epoch, args.epochs, result["val_top1"], trainer.state.best_top1, output_dir)
        return result
    except torch.OutOfMemoryError as e:
        raise TrainError(
            f"out of GPU memory with --batch-size {args.batch_size} per GPU (T={args.timesteps}, size {args.size}): "
            f"lower --batch-size (e.g. {max(1, args.batch_size // 2)}), or --timesteps/--size; keep --amp on "
            f"({str(e).splitlines()[0] if str(e) else 'CUDA OOM'})"
        ) from None
    finally:
        if writer is not None:
            writer.close()
        for h in handlers:
            logging.getLogger("i2e_dali").removeHandler(h)
            h.close()
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_config(args)
        return run(args)
    except (I2EError, FileNotFoundError, ValueError) as e:
        # user-fixable problems: one clear line, no traceback (ValueError/FileNotFoundError come from the
        # loaders' and data sets' own checks, which name the file and what to do)
        if os.environ.get("I2E_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; continue with --resume auto", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
