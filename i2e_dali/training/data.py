"""The trainer's data: ``config.data.dataset`` kind -> (train loader, val loader).

The one place where a run's TrainConfig becomes the loaders' explicit keyword arguments; everything in
``i2e_dali.data`` below takes keywords only and never sees the trainer's config.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import ConfigError, TrainError
from .config import DataConfig, TrainConfig
from .runtime import Runtime, resolve_amp

__all__ = ["build_loaders", "events_dtype"]
log = logging.getLogger("i2e_dali.train")


def events_dtype(amp: str, device: torch.device) -> torch.dtype:
    """The dtype the event loaders emit: the step's autocast dtype (events are 0/1, exact in bf16 and
    fp16; a float32 batch would be twice the size and be cast again by the first conv), float32 without
    AMP. Follows the trainer's AMP rule, :func:`i2e_dali.training.runtime.resolve_amp`."""
    amp_dtype, _ = resolve_amp(amp, device, quiet=True)  # the trainer itself logs the AMP decision
    return amp_dtype or torch.float32


def build_loaders(config: TrainConfig, rt: Runtime, *, need_train: bool = True):
    """(train_loader or None, val_loader) for ``config.data.dataset``, built by ``i2e_dali.make_loader``;
    errors name the flag and the folder. ``config.data.workers`` as given (the run passes the thread count
    it picked for a CPU, training/runtime.configure_cpu_threads)."""
    from ..convert import Conversion
    from ..data.factory import FRAME_KINDS, make_loader, open_event_splits

    d, o = config.data, config.optim
    kind = d.dataset
    dtype = events_dtype(o.amp, rt.device)
    progress = rt.is_main and config.run.progress
    common = dict(dataset=kind, device=str(rt.device), seed=o.seed, workers=d.workers, size=d.size,
                  progress=progress)
    if kind in FRAME_KINDS:
        _check_data_dir(d.root)
        common.update(conversion=Conversion(dtype=dtype), timesteps=d.timesteps)
        if kind == "cifar10-dvs":
            common.update(flip=d.dvs_flip, source_options=dict(
                cache_dir=d.cache_dir, val_fraction=d.val_fraction, split=d.dvs_split,
                polarity=d.dvs_polarity, binarize=d.dvs_binarize))
        else:
            common["size"] = d.size  # npz: the frame size of sparse files without a stored shape
        # opened once for both loaders (CIFAR10-DVS parses and caches its recordings here)
        data = open_event_splits(d.root, kind, timesteps=d.timesteps, size=d.size, seed=o.seed, workers=d.workers,
                                 progress=progress, **common.pop("source_options", {}))
    else:
        if kind == "demo":
            data = d.demo_dir
        else:
            _check_data_dir(d.root)
            data = d.root
        fixed = d.fixed_threshold
        common.update(
            conversion=Conversion(ratio=d.ratio, timesteps=d.timesteps, order=d.order,
                                  per_sample=not d.batch_motions, dtype=dtype, random_motion=d.random_motion,
                                  threshold="adaptive" if fixed is None else "fixed", threshold_value=fixed,
                                  output=d.input),
            aug=d.aug, source_options={**_exclusions(d, data, rt, progress=progress), **_index(d)})
    val = make_loader(data, "val", o.batch_size, **common)
    if not need_train:
        return None, val
    if o.mixup and kind not in FRAME_KINDS:
        # CutMix/MixUp on the images before conversion (training/mixing.py); a loader's batch type (with the
        # soft targets) is fixed when it is built, so the mixer comes with it. Event kinds: the Trainer mixes
        # the frames.
        from .mixing import BatchMixer

        common["mix"] = BatchMixer(val.num_classes)
    return make_loader(data, "train", o.batch_size, **common), val


def _exclusions(d: DataConfig, root, rt: Runtime, *, progress: bool) -> dict:
    """``exclude=`` for the folder sources from --exclude-list and --skip-bad (the decode check, cached)."""
    listed, skip, kind = d.exclude_list, d.skip_bad, d.dataset
    if not listed and not skip:
        return {}
    if kind not in ("imagenet", "folder", "demo"):
        flag = "--exclude-list" if listed else "--skip-bad"
        raise ConfigError(f"{flag} applies to image-folder data sets (ImageNet layout), not --dataset {kind}")
    from ..data.decode_check import skip_bad_check
    from ..data.exclude import ExcludeList, read_exclude_list

    excl = read_exclude_list(listed) if listed else ExcludeList([], "")
    if skip:
        # every rank checks its share and the shares are merged, in a process group of the check's own
        # whose timeout no large data set reaches (data/decode_check.skip_bad_check)
        found = skip_bad_check(root, progress=progress, log=log.info if rt.is_main else None)
        checked = ExcludeList(found, "the --skip-bad check")
        excl = excl + checked if listed else checked
    return dict(exclude=excl)


def _index(d: DataConfig) -> dict:
    """``index=`` for the folder sources from --folder-index (data/folder_index.py: the scan done once)."""
    if d.folder_index is None:
        return {}
    if d.dataset not in ("imagenet", "folder"):
        raise ConfigError(f"--folder-index applies to image-folder data sets with train/ and val/ (imagenet, "
                          f"folder), not --dataset {d.dataset}")
    return dict(index=d.folder_index)


def _check_data_dir(path) -> None:
    if str(path).startswith("s3://"):  # the source checks the bucket
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise TrainError(f"--data {p} does not exist")
    if p.is_dir() and not any(p.iterdir()):
        raise TrainError(f"--data {p} is an empty folder")
