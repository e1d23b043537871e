"""The trainer's data: ``--dataset`` kind -> (train loader, val loader).

The one place where the trainer's flags become the loaders' explicit keyword arguments; everything in
``i2e_dali.data`` below takes keywords only and never sees an argparse namespace.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..errors import TrainError
from .runtime import Runtime, resolve_amp

__all__ = ["build_loaders", "events_dtype"]
log = logging.getLogger("i2e_dali.train")


def events_dtype(amp: str, device: torch.device) -> torch.dtype:
    """The dtype the event loaders emit: the step's autocast dtype (events are 0/1, exact in bf16 and
    fp16; a float32 batch would be twice the size and be cast again by the first conv), float32 without
    AMP. Follows the trainer's AMP rule, :func:`i2e_dali.training.runtime.resolve_amp`."""
    amp_dtype, _ = resolve_amp(amp, device, quiet=True)  # the trainer itself logs the AMP decision
    return amp_dtype or torch.float32


def build_loaders(args: argparse.Namespace, rt: Runtime, *, need_train: bool = True):
    """(train_loader or None, val_loader) for ``args.dataset``; errors name the flag and the folder."""
    device = str(rt.device)
    if args.dataset == "i2e-npz":
        from ..data.npz import open_npz_splits

        _check_data_dir(args.data)
        return _frame_loaders(open_npz_splits(args.data, timesteps=args.timesteps, size=args.size), args, rt,
                              need_train)
    if args.dataset == "i2e-parquet":
        from ..data.parquet import open_parquet_splits

        _check_data_dir(args.data)
        return _frame_loaders(open_parquet_splits(args.data, timesteps=args.timesteps), args, rt, need_train)
    if args.dataset == "cifar10-dvs":
        from ..data.dvs import open_dvs_splits

        _check_data_dir(args.data)
        train_set, val_set = open_dvs_splits(
            args.data, timesteps=args.timesteps, cache_dir=args.cache_dir, val_fraction=args.val_fraction,
            seed=args.seed, split=args.dvs_split, polarity=args.dvs_polarity, binarize=args.dvs_binarize,
            workers=args.workers, progress=args.progress)
        return _frame_loaders((train_set, val_set), args, rt, need_train, flip=args.dvs_flip)

    from ..data.event_loader import EventLoader
    from ..data.sources import open_source

    if args.dataset == "demo":
        from ..data.demo import ensure_demo_dataset

        root, kind = str(ensure_demo_dataset(args.demo_dir, progress=rt.is_main and args.progress)), "imagenet"
    else:
        _check_data_dir(args.data)
        root, kind = args.data, args.dataset
    common = dict(
        ratio=args.ratio,
        timesteps=args.timesteps,
        order=args.order,
        per_sample=not args.batch_motions,
        dtype=events_dtype(args.amp, rt.device),
        device=device,
        seed=args.seed,
        num_threads=args.workers,
        **_size_kwargs(args.size, kind),
        **_experiment_kwargs(args),
    )
    excl = _exclusions(args, root, kind, rt)
    val = EventLoader(open_source(root, "val", kind, **excl), args.batch_size, train=False, **common)
    train = (EventLoader(open_source(root, "train", kind, **excl), args.batch_size, train=True, **common)
             if need_train else None)
    for loader in (train, val):
        note = getattr(loader.source, "exclusion_note", None) if loader is not None else None
        if note and rt.is_main:
            log.info("%s", note)
    return train, val


def _frame_loaders(splits, args, rt: Runtime, need_train: bool, *, flip: bool | None = None):
    """FrameLoaders over (train_set, val_set) of an event data set, events in the step's dtype like the
    live loader's; ``flip`` = training flips (None: the loader's default, on)."""
    from ..data.frame_loader import FrameLoader

    train_set, val_set = splits
    common = dict(device=str(rt.device), seed=args.seed, num_workers=args.workers,
                  dtype=events_dtype(args.amp, rt.device))
    train = FrameLoader(train_set, args.batch_size, train=True, flip=flip, **common) if need_train else None
    return train, FrameLoader(val_set, args.batch_size, train=False, flip=False, **common)


def _exclusions(args, root, kind: str, rt: Runtime) -> dict:
    """``exclude=`` for the folder sources from --exclude-list and --skip-bad (the decode check, cached)."""
    listed, skip = args.exclude_list, args.skip_bad
    if not listed and not skip:
        return {}
    if kind not in ("imagenet", "folder"):
        flag = "--exclude-list" if listed else "--skip-bad"
        raise TrainError(f"{flag} applies to image-folder data sets (ImageNet layout), not --dataset {args.dataset}")
    from ..data.decode_check import find_bad_files
    from ..data.exclude import ExcludeList, read_exclude_list

    excl = read_exclude_list(listed) if listed else ExcludeList([], "")
    if skip:
        # rank 0 checks (and caches); the other ranks wait, then read the cached answer. Rank 0 reaches the
        # barrier even when its check fails, so the others do not hang (they then check, and fail, alike).
        # The wait is bounded by the process group's timeout: on a huge folder run `i2e-check ROOT --list
        # FILE` once beforehand and pass --exclude-list FILE (README, "Damaged data").
        ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
        if ddp and not rt.is_main:
            torch.distributed.barrier()
        found = []
        try:
            for split in ("train", "val"):
                folder = Path(root).expanduser() / split
                if folder.is_dir():
                    bad, cached = find_bad_files(folder, progress=rt.is_main and args.progress,
                                                 log=log.info if rt.is_main else None)
                    if rt.is_main:
                        log.info("--skip-bad: %d unusable file(s) in %s%s", len(bad), folder,
                                 " (cached check)" if cached else "")
                    found += [p for p, _ in bad]
        finally:
            if ddp and rt.is_main:
                torch.distributed.barrier()
        checked = ExcludeList(found, "the --skip-bad check")
        excl = excl + checked if listed else checked
    return dict(exclude=excl)


def _experiment_kwargs(args) -> dict:
    """The paper's experiment options the live loader takes (training/options.py defines the flags)."""
    fixed = args.fixed_threshold
    return dict(aug=args.aug, random_motion=args.random_motion, threshold="adaptive" if fixed is None else "fixed",
                threshold_value=fixed, output=args.input)


def _size_kwargs(size: int | None, kind: str) -> dict:
    # ImageNet view: train crop = size, eval = resize to size*256/224 then centre crop size (the
    # paper's 256/224); CIFAR: size is the resize target of the 32x32 images.
    if size is None:
        return {}
    if kind == "imagenet":
        return dict(crop_size=size, resize_size=max(size, round(size * 256 / 224)))
    return dict(out_size=size)


def _check_data_dir(path) -> None:
    p = Path(path).expanduser()
    if not p.exists():
        raise TrainError(f"--data {p} does not exist")
    if p.is_dir() and not any(p.iterdir()):
        raise TrainError(f"--data {p} is an empty folder")
