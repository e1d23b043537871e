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
    """(train_loader or None, val_loader) for ``args.dataset``, built by ``i2e_dali.make_loader``; errors
    name the flag and the folder."""
    from ..convert import Conversion
    from ..data.factory import FRAME_KINDS, make_loader

    kind = args.dataset
    dtype = events_dtype(args.amp, rt.device)
    common = dict(dataset=kind, device=str(rt.device), seed=args.seed, workers=args.workers, size=args.size,
                  progress=rt.is_main and args.progress)
    if kind in FRAME_KINDS:
        _check_data_dir(args.data)
        common.update(conversion=Conversion(dtype=dtype), timesteps=args.timesteps)
        if kind == "cifar10-dvs":
            common.update(flip=args.dvs_flip, source_options=dict(
                cache_dir=args.cache_dir, val_fraction=args.val_fraction, split=args.dvs_split,
                polarity=args.dvs_polarity, binarize=args.dvs_binarize))
        else:
            common["size"] = args.size  # npz: the frame size of sparse files without a stored shape
        data = args.data
    else:
        if kind == "demo":
            data = args.demo_dir
        else:
            _check_data_dir(args.data)
            data = args.data
        fixed = args.fixed_threshold
        common.update(
            conversion=Conversion(ratio=args.ratio, timesteps=args.timesteps, order=args.order,
                                  per_sample=not args.batch_motions, dtype=dtype, random_motion=args.random_motion,
                                  threshold="adaptive" if fixed is None else "fixed", threshold_value=fixed,
                                  output=args.input),
            aug=args.aug, source_options=_exclusions(args, data, kind, rt))
    val = make_loader(data, "val", args.batch_size, **common)
    train = make_loader(data, "train", args.batch_size, **common) if need_train else None
    return train, val


def _exclusions(args, root, kind: str, rt: Runtime) -> dict:
    """``exclude=`` for the folder sources from --exclude-list and --skip-bad (the decode check, cached)."""
    listed, skip = args.exclude_list, args.skip_bad
    if not listed and not skip:
        return {}
    if kind not in ("imagenet", "folder", "demo"):
        flag = "--exclude-list" if listed else "--skip-bad"
        raise TrainError(f"{flag} applies to image-folder data sets (ImageNet layout), not --dataset {args.dataset}")
    from ..data.decode_check import skip_bad_check
    from ..data.exclude import ExcludeList, read_exclude_list

    excl = read_exclude_list(listed) if listed else ExcludeList([], "")
    if skip:
        # every rank checks its share and the shares are merged, in a process group of the check's own
        # whose timeout no large data set reaches (data/decode_check.skip_bad_check)
        found = skip_bad_check(root, progress=rt.is_main and args.progress, log=log.info if rt.is_main else None)
        checked = ExcludeList(found, "the --skip-bad check")
        excl = excl + checked if listed else checked
    return dict(exclude=excl)


def _check_data_dir(path) -> None:
    if str(path).startswith("s3://"):  # the source checks the bucket
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise TrainError(f"--data {p} does not exist")
    if p.is_dir() and not any(p.iterdir()):
        raise TrainError(f"--data {p} is an empty folder")
