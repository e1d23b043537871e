"""``make_loader``: the one front door to every data set kind, with the paper's defaults for that kind.

    loader = make_loader("/imagenet", "train", 128)            # EventLoader, RandomResizedCrop 224, ratio .12
    val = make_loader("/cifar", "val", 128, dataset="cifar10")  # resize 128, ratio .07, every image once
    ev = make_loader("/exported", "val", 64, dataset="i2e-npz")  # FrameLoader over precomputed frames

Image kinds (folders, CIFAR, MNIST, Caltech, Mini-ImageNet, the demo set) give an ``EventLoader``; event
kinds (exported npz / Parquet sets, CIFAR10-DVS recordings) a ``FrameLoader``; both keep the loader
contract of data/base.py. The split decides train/eval behaviour; ``train=False`` on the train split is
allowed (the evaluation view over training images, as the exporter uses), ``train=True`` on "val" is not.
Kinds are a registry (:func:`register_kind`), so a new source kind is one function.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, MissingDataError
from ..placement import DEFAULT_SEED

__all__ = ["make_loader", "open_event_splits", "register_kind", "KINDS", "IMAGE_KINDS", "FRAME_KINDS"]
log = logging.getLogger("i2e_dali.data")

# Options the image (EventLoader) kinds take besides the common ones; the frame kinds' options.
_VIEW_OPTIONS = ("aug", "eval_view", "crop_size", "resize_size", "out_size")
_FRAME_OPTIONS = ("flip", "prefetch_factor", "timesteps")
IMAGE_KINDS = ("imagenet", "folder", "cifar10", "cifar100", "mnist", "fashionmnist", "caltech101", "caltech256",
               "mini-imagenet", "demo", "wds")
FRAME_KINDS = ("i2e-npz", "i2e-parquet", "cifar10-dvs")
KINDS: dict[str, Callable] = {}


def register_kind(name: str, build: Callable) -> None:
    """Serve ``dataset=name`` with ``build(data, split, batch_size, *, train, options) -> loader``, where
    ``options`` is the dict of :func:`make_loader`'s keyword arguments."""
    KINDS[name] = build


def make_loader(data, split: str, batch_size: int, *, dataset: str | None = None, train: bool | None = None,
                conversion=None, dali=None, device="auto", seed: int = DEFAULT_SEED,
                shard_id: int | None = None, num_shards: int | None = None, with_index: bool = False, mix=None,
                workers: int | None = None, size: int | None = None, source_options: dict | None = None,
                progress: bool = False, **options):
    """The loader of ``split`` ("train" or "val") of the data set at ``data``.

    Args:
        data: the data set's folder (the demo set: its cache folder, or None for the default one); for
            event kinds also a ``(train_set, val_set)`` pair from :func:`open_event_splits` (open once,
            build both loaders) or any map-style data sets of ``(frames [T, 2, H, W], label)`` with ``classes``.
        split: "train" or "val" (for CIFAR/MNIST/DVS "val" is the official test split).
        batch_size: samples per batch on this rank.
        dataset: one of ``KINDS`` (None: "imagenet", or what the folder's content says: CIFAR batches,
            exported npz / Parquet sets).
        train: None = ``split == "train"``; False on "train" reads the training images with the evaluation
            view (no shuffling, no random motions).
        conversion: ``Conversion`` / ``I2E`` (image kinds; ``ratio=None`` is the kind's paper default). Event
            kinds take only its ``dtype``; their ``timesteps=`` option picks the stored frames (None: all).
        dali: ``DaliOptions`` (image kinds). workers: DALI threads (image kinds) or DataLoader worker
            processes (event kinds); None = this rank's share of the cores.
        device, seed, shard_id, num_shards, with_index, mix: as for ``EventLoader`` (``mix``: image kinds).
        size: the trainer's ``--size``: ImageNet-style crop (eval: resize size*256/224, then centre crop),
            CIFAR/MNIST output size; None = the paper's view.
        source_options: passed to the source (``exclude=``, ``skip_invalid=``, ``val_fraction=``, DVS's
            ``cache_dir`` / ``split`` / ``polarity`` / ``binarize`` ...).
        progress: progress bars while a source is scanned or cached.
        **options: view options of image kinds (aug, eval_view, crop_size, resize_size, out_size) or
            FrameLoader options of event kinds (flip, prefetch_factor, timesteps).
    """
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    if train is None:
        train = split == "train"
    if not isinstance(train, bool):
        raise ConfigError(f"train must be True, False or None (from the split), got {train!r}")
    if train and split != "train":
        raise ConfigError(f"train=True with split={split!r}: training views and shuffling are for the train "
                          "split; evaluate with train=False (or leave train=None)")
    if dataset is None:
        dataset = _infer_kind(data)
    if dataset not in KINDS:
        raise ConfigError(f"dataset must be one of {sorted(KINDS)}, got {dataset!r}")
    if source_options is not None and not isinstance(source_options, dict):
        raise ConfigError(f"source_options must be a dict, got {type(source_options).__name__}")
    opts = dict(conversion=conversion, dali=dali, device=device, seed=seed, shard_id=shard_id,
                num_shards=num_shards, with_index=with_index, mix=mix, workers=workers, size=size,
                source_options=dict(source_options or {}), progress=progress, dataset=dataset, **options)
    return KINDS[dataset](data, split, batch_size, train=train, options=opts)


def _infer_kind(data) -> str:
    if data is None:
        return "demo"
    root = Path(data).expanduser()
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return "cifar10"
    if (root / "cifar-100-python").is_dir() or (root / "train").is_file():
        return "cifar100"
    if root.is_dir() and any(root.glob("*.parquet")):
        return "i2e-parquet"
    if (root / "train").is_dir() and _holds_npz(root / "train"):
        return "i2e-npz"
    return "imagenet"


def _holds_npz(split: Path) -> bool:
    """An exported event set: ``<split>/<class>/**/*.npz``. Its first class folder tells (a walk of all of
    ImageNet's train/ would stat a million JPEGs to learn that); hidden names (the folder index) don't count."""
    first = next((d for d in sorted(split.iterdir()) if d.is_dir() and not d.name.startswith(".")), None)
    for dirpath, dirnames, filenames in os.walk(first or split, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(f.endswith(".npz") and not f.startswith(".") for f in filenames):
            return True
        if first is None:
            break
    return False


def _unknown(options: dict, allowed: tuple, kind: str) -> None:
    common = {"conversion", "dali", "device", "seed", "shard_id", "num_shards", "with_index", "mix", "workers",
              "size", "source_options", "progress", "dataset"}
    bad = sorted(k for k in options if k not in common and k not in allowed)
    if bad:
        raise ConfigError(f"make_loader: {', '.join(bad)} {'is not an option' if len(bad) == 1 else 'are not options'} "
                          f"of dataset={kind!r} (its options: {', '.join(allowed)})")


def _image_loader(data, split, batch_size, *, train, options):
    from .event_loader import DaliOptions, EventLoader
    from .sources import open_source

    kind = options["dataset"]
    _unknown(options, _VIEW_OPTIONS, kind)
    if kind == "demo":
        from .demo import ensure_demo_dataset

        root, kind = ensure_demo_dataset(data, progress=options["progress"]), "imagenet"
    else:
        root = _existing(data)
    dali = options["dali"]
    if options["workers"] is not None:
        if dali is not None and dali.num_threads is not None:
            raise ConfigError("give DALI's threads once: workers= or dali=DaliOptions(num_threads=...)")
        dali = dataclasses.replace(dali or DaliOptions(), num_threads=options["workers"])
    view = {k: options[k] for k in _VIEW_OPTIONS if k in options}
    if options["size"] is not None:
        size = int(options["size"])
        if kind in ("imagenet", "folder", "caltech101", "caltech256", "mini-imagenet", "wds"):
            view.setdefault("crop_size", size)
            view.setdefault("resize_size", max(size, round(size * 256 / 224)))  # the paper's 256/224
        else:
            view.setdefault("out_size", size)
    src_kw = dict(options["source_options"])
    if kind in ("imagenet", "folder", "caltech101", "caltech256", "mini-imagenet"):
        src_kw.setdefault("progress", options["progress"])
    if kind == "wds":  # WebDataset tar shards in i2e-shard's layout: DATA/train, DATA/val (local or s3://)
        from .shards import ShardSource

        if src_kw.pop("exclude", None):
            raise ConfigError("exclude lists (--exclude-list, --skip-bad) act on image folders; for tar shards check "
                              "the folder with i2e-check before i2e-shard")
        src_kw.pop("progress", None)
        source = ShardSource(f"{str(root).rstrip('/')}/{split}", **src_kw)
    else:
        source = open_source(root, split, kind, **src_kw)
    note = getattr(source, "exclusion_note", None)
    if note:
        log.info("%s", note)
    return EventLoader(source, batch_size, train=train, conversion=options["conversion"], dali=dali,
                       device=options["device"], shard_id=options["shard_id"], num_shards=options["num_shards"],
                       seed=options["seed"], with_index=options["with_index"], mix=options["mix"], **view)


def _frame_loader(data, split, batch_size, *, train, options):
    from ..convert import Conversion
    from .frame_loader import FrameLoader

    kind = options["dataset"]
    _unknown(options, _FRAME_OPTIONS, kind)
    for name in ("mix", "dali"):
        if options[name] is not None:
            raise ConfigError(f"{name}= applies to image data sets; dataset={kind!r} holds precomputed events")
    conv = Conversion.coerce(options["conversion"])
    if isinstance(data, tuple) and len(data) == 2:  # (train_set, val_set) opened once for both loaders
        sets = data
    else:
        sets = open_event_splits(data, kind, timesteps=options.get("timesteps"), size=options["size"],
                                 seed=options["seed"], workers=options["workers"], progress=options["progress"],
                                 **options["source_options"])
    dataset = sets[0] if split == "train" else sets[1]
    flip = options.get("flip")
    return FrameLoader(dataset, batch_size, train=train, dtype=conv.dtype, device=options["device"],
                       shard_id=options["shard_id"], num_shards=options["num_shards"], seed=options["seed"],
                       num_workers=options["workers"], flip=flip if train else False,
                       with_index=options["with_index"],
                       **({"prefetch_factor": options["prefetch_factor"]} if "prefetch_factor" in options else {}))


def open_event_splits(data, dataset: str, *, timesteps: int | None = None, size: int | None = None,
                      seed: int = DEFAULT_SEED, workers: int | None = None, progress: bool = False,
                      **source_options):
    """(train_set, val_set) of an event data set kind (FRAME_KINDS), opened once: pass the pair to
    ``make_loader`` as ``data`` for both splits (CIFAR10-DVS parses and caches its recordings here, under
    DDP on rank 0 while the others wait)."""
    root = _existing(data)
    if dataset == "i2e-npz":
        from .npz import open_npz_splits

        return open_npz_splits(root, timesteps=timesteps, size=size, **source_options)
    if dataset == "i2e-parquet":
        from .parquet import open_parquet_splits

        return open_parquet_splits(root, timesteps=timesteps, **source_options)
    if dataset == "cifar10-dvs":
        from .dvs import open_dvs_splits

        source_options.setdefault("progress", progress)
        source_options.setdefault("workers", workers)
        return open_dvs_splits(root, timesteps=timesteps or 8, seed=seed, **source_options)
    raise ConfigError(f"dataset must be one of {FRAME_KINDS} to open event splits, got {dataset!r}")


def _existing(data) -> str:
    if data is None:
        raise ConfigError("data: give the data set's folder (only dataset='demo' has a default)")
    if not isinstance(data, (str, os.PathLike)):
        raise ConfigError(f"data must be a folder path, got {type(data).__name__}")
    if str(data).startswith("s3://"):  # the source checks the bucket
        return str(data)
    path = Path(data).expanduser()
    if not path.exists():
        raise MissingDataError(f"data folder {path} does not exist")
    return str(path)


for _kind in IMAGE_KINDS:
    register_kind(_kind, _image_loader)
for _kind in FRAME_KINDS:
    register_kind(_kind, _frame_loader)
