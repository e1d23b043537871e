"""``i2e-bench loader``: DALI + I2E (EventLoader, GPU and CPU pipelines) vs the reference recipe
(torchvision ImageFolder + PIL in DataLoader workers), same files, same output, one run."""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ... import placement
from ...convert import i2e_convert
from ...errors import BenchError
from .common import environment, finish, format_table, parse_dtype, resolve_device, sync

@contextlib.contextmanager
def dataset_root(args) -> Iterator[Path]:
    """``--data`` (a folder with train/<class>/...), or a small corpus built in a temporary folder."""
    if args.data:
        root = Path(args.data).expanduser()
        if not (root / "train").is_dir():
            raise BenchError(f"--data {root}: expected {root}/train/<class>/<image> (make one with "
                             f"`i2e-bench corpus --out {root}`)")
        yield root
        return
    from .corpus import CorpusConfig, generate_corpus

    images = args.corpus_images or (16 if args.quick else 64)
    with tempfile.TemporaryDirectory(prefix="i2e-bench-corpus-") as tmp:
        cfg = CorpusConfig(out=Path(tmp) / "corpus", images=images, val_images=0, classes=min(4, images),
                           workers=min(placement.usable_cores(), 4), progress=not args.quick,
                           **({"samples": args.samples} if args.samples else {}))
        generate_corpus(cfg)
        yield cfg.out

def shard_folder(args, root: Path) -> Path:
    """The train shards of the same images: ``--shards DIR`` (``DIR/train``), else packed now with
    i2e-shard into ``<root>-wds`` (kept, reused by later runs: a shard is skipped when complete)."""
    from ..shard import main as shard_main

    out = Path(args.shards).expanduser() if getattr(args, "shards", None) else Path(f"{root}-wds")
    if not (out / "train" / "shards.npz").exists():
        if getattr(args, "shards", None):
            raise BenchError(f"--shards {out}: no shards there (make them with `i2e-shard {root} {out}`)")
        if shard_main([str(root), str(out), "--splits", "train", "--shard-size", "64MB"]) != 0:
            raise BenchError(f"could not pack {root} into shards")
    return out / "train"


def cycle(make_iter: Callable[[], Iterable]) -> Iterator:
    """Endless batches across epochs."""
    while True:
        empty = True
        for item in make_iter():
            empty = False
            yield item
        if empty:
            raise BenchError("the data set yields no batches: lower --batch-size or add images")

class ReferenceLoader:
    """The recipe users run today: torchvision ImageFolder + PIL decode + RandomResizedCrop + flip in
    DataLoader worker processes over all cores, pinned memory, conversion with ``i2e_convert`` on the
    device. Yields ``(events [T,B,2,S,S], labels [B])`` on the device like EventLoader."""

    def __init__(self, root: Path, batch_size: int, *, crop: int, timesteps: int, dtype: torch.dtype,
                 device: torch.device, workers: int, seed: int, ratio: float = 0.12):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        transform = transforms.Compose([
            transforms.RandomResizedCrop(crop, antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),  # uint8 CHW: the conversion scales on the device
        ])
        self.dataset = datasets.ImageFolder(str(root), transform=transform)
        if len(self.dataset) < batch_size:
            raise BenchError(f"{root} holds {len(self.dataset)} images, fewer than --batch-size {batch_size}")
        gen = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None,
                                 generator=gen)
        self.device, self.timesteps, self.dtype, self.ratio = device, timesteps, dtype, ratio
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            events = i2e_convert(images, ratio=self.ratio, timesteps=self.timesteps, train=True,
                                 generator=self.generator, dtype=self.dtype, validate=False)
            yield events, labels

@dataclass
class Feed:
    name: str
    make_iter: Callable[[], Iterable]
    description: str
    close: Callable[[], None] = lambda: None

def make_feeds(args, root: Path, device: torch.device, *, crop: int, dtype: torch.dtype, batch: int) -> list[Feed]:
    from ...data.sources import ImageFolderSource
    from ...convert import Conversion
    from ...data.event_loader import DaliOptions, EventLoader
    from ...data.shards import ShardSource

    cuda = device.type == "cuda"
    wanted = args.pipelines or (["dali-gpu", "dali-cpu", "reference"] if cuda else ["dali-cpu", "reference"])
    feeds = []
    source = ImageFolderSource(root / "train", progress=False)
    for name in wanted:
        if name in ("dali-gpu", "dali-cpu", "dali-gpu-wds", "dali-cpu-wds"):
            decode = name.split("-")[1]
            if decode == "gpu" and not cuda:
                raise BenchError(f"pipeline {name} needs a CUDA device")
            src = ShardSource(str(shard_folder(args, root))) if name.endswith("-wds") else source
            loader = EventLoader(src, batch, train=True, conversion=Conversion(timesteps=args.timesteps, dtype=dtype),
                                 device=device, dali=DaliOptions(decode=decode, num_threads=args.threads or None),
                                 crop_size=crop, seed=args.seed)
            what = f"tar shards {src.root}" if name.endswith("-wds") else "class folder"
            feeds.append(Feed(name, lambda loader=loader: loader,
                              f"EventLoader decode={decode} threads={loader.num_threads}, {what}"))
        elif name == "reference":
            workers = args.workers if args.workers is not None else placement.usable_cores()
            ref = ReferenceLoader(root / "train", batch, crop=crop, timesteps=args.timesteps, dtype=dtype,
                                  device=device, workers=workers, seed=args.seed)
            feeds.append(Feed(name, lambda ref=ref: ref,
                              f"torchvision ImageFolder+PIL, DataLoader workers={workers}, pin_memory={cuda}",
                              close=lambda ref=ref: ref.loader._iterator._shutdown_workers()
                              if getattr(ref.loader, "_iterator", None) is not None else None))
        else:
            raise BenchError(f"unknown pipeline {name!r}: choose from dali-gpu, dali-cpu, reference")
    return feeds

def run_loader(args) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if not args.pipelines:  # folder and tar shards of the same images side by side, and the reference
        args.pipelines = (["dali-gpu", "dali-gpu-wds", "dali-cpu", "dali-cpu-wds", "reference"] if cuda
                          else ["dali-cpu", "dali-cpu-wds", "reference"])
    batch = args.batch_size or (4 if args.quick else (256 if cuda else 16))
    crop = args.crop or (64 if args.quick else 224)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 3))
    # Both feeds buffer a few batches ahead (DALI prefetch depth 2, DataLoader 2 per worker): the timed
    # window must be long against that, or it measures the buffer.
    batches = args.batches or (2 if args.quick else (200 if cuda else 12))
    dtype = parse_dtype(args.dtype)
    env = environment(device)
    rows, table_rows = [], []
    with dataset_root(args) as root:
        for feed in make_feeds(args, root, device, crop=crop, dtype=dtype, batch=batch):
            stream = cycle(feed.make_iter)
            shape = None
            t_first = time.perf_counter()
            for _ in range(warmup):
                events, labels = next(stream)
            sync(device)
            startup = time.perf_counter() - t_first
            t0 = time.perf_counter()
            for _ in range(batches):
                events, labels = next(stream)
                shape = tuple(events.shape)
            sync(device)  # the last batch's events are complete on the device
            seconds = time.perf_counter() - t0
            if events.device.type != device.type or events.dtype != dtype:
                raise BenchError(f"{feed.name} delivered {events.dtype} on {events.device}, expected {dtype} on {device}")
            del stream
            feed.close()
            ips = batches * batch / seconds
            rows.append({"pipeline": feed.name, "description": feed.description, "batch": batch,
                         "batches": batches, "warmup_batches": warmup, "seconds": seconds, "images_per_s": ips,
                         "warmup_seconds": startup, "events_shape": list(shape), "dtype": str(dtype)})
            table_rows.append([feed.name, batch, batches, seconds, ips, "x".join(map(str, shape))])
    for r in rows:  # tar shards against the class folder, same decode
        folder = next((f["images_per_s"] for f in rows if f["pipeline"] == r["pipeline"].removesuffix("-wds")), None)
        r["shards_vs_folder"] = r["images_per_s"] / folder if r["pipeline"].endswith("-wds") and folder else None
    ref = next((r["images_per_s"] for r in rows if r["pipeline"] == "reference"), None)
    for r, tr in zip(rows, table_rows):
        r["speedup_vs_reference"] = r["images_per_s"] / ref if ref else None
        tr.insert(5, r["speedup_vs_reference"])
        tr.insert(6, r["shards_vs_folder"] if r["shards_vs_folder"] is not None else "")
    record = {
        "mode": "loader",
        "environment": env,
        "settings": {"batch_size": batch, "crop": crop, "timesteps": args.timesteps, "dtype": str(dtype),
                     "warmup_batches": warmup, "batches": batches, "data": str(args.data or "temporary corpus"),
                     "corpus_images": None if args.data else (args.corpus_images or (16 if args.quick else 64)),
                     "seed": args.seed},
        "results": rows,
    }
    title = (f"Events delivered on {device.type} ({env['device']}), train view RandomResizedCrop {crop} + flip, "
             f"T={args.timesteps}, {dtype}")
    columns = ["pipeline", "batch", "batches", "seconds", "img/s", "x reference", "shards x folder", "events"]
    return finish(record, format_table(title, columns, table_rows), args)
