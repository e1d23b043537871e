"""Export an image data set as an I2E event data set (the authors' npz formats, docs/concepts/i2e.md).

``python -m i2e_dali.tools.export --data ROOT --out OUT --format dense|sparse`` (console script ``i2e-export``).

Images go through the DALI pipeline (GPU when present) and the one conversion, in evaluation mode
(canonical motions), with the authors' views: ImageNet val = resize 256 + centre crop 224, ImageNet
train = resize straight to 224x224 (how their train set was exported), CIFAR = resize to 128.
Output: ``OUT/<split>/<class>/<stem>.npz`` mirroring the source's folders and file stems (CIFAR, which
has no files: ``OUT/<train|val>/<class>/<index in the split, 5 digits>.npz``), plus ``i2e_meta.json``
per split recording the settings.

Writing: a thread pool compresses and writes (``np.savez_compressed`` spends its time in zlib, which
releases the GIL), so several files are in flight while the next batch converts. Every file is
written to a hidden temp name in its final folder and renamed into place, so a file with the final
name is always complete. A rerun skips files that are complete, redoes the rest and deletes temp
files left by a killed run.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..fsio import atomic_write, atomic_write_text
from ..placement import default_shard, usable_cores
from ..data.npz import META_NAME, NpzFormatError, read_npz_info, write_npz
from ..errors import ExportError
from . import export_dist
from .export_presets import (PRESETS, SOURCE_KINDS, add_catalog_arguments, print_shares, rate_check,
                             resolve_catalog_arguments)

__all__ = ["ExportConfig", "ExportError", "ExportSummary", "export", "export_split", "plan_split", "main"]

PARTIAL_SUFFIX = ".partial"  # temp files: ".<name>.npz.<random>.partial" (never match *.npz)
DEFAULT_VIEWS = {"train": "resize", "val": "crop"}


@dataclass
class ExportConfig:
    data: Path
    out: Path
    format: str = "dense"
    dataset: str = "imagenet"
    splits: tuple[str, ...] | None = None  # None: train and val, or the one of them the folder has (said in split_note)
    exclude: Path | None = None  # a list of files to leave out (i2e-check --list's file)
    ratio: float | None = None  # None: the source's default (0.12 ImageNet, 0.07 CIFAR)
    fixed_threshold: float | None = None  # the paper's Table 4 ablation: one absolute threshold (ratio unused)
    timesteps: int = 8
    order: str | None = None
    view: str = "auto"  # ImageNet: auto = the authors' (train: resize, val: crop)
    batch_size: int = 64
    workers: int | None = None  # writer threads; None: min(8, CPU count)
    dali_threads: int | None = None
    device: str = "auto"
    verify: bool = False  # fully decompress existing files on resume instead of checking headers
    level: int | None = None  # zlib level; None = np.savez_compressed's (6)
    progress: bool | None = None
    # the authors' Parquet layout and their catalog's protocol (tools/export_parquet.py, export_presets.py)
    preset: str | None = None  # sets dataset, size, ratio (if None), view (if auto), interp (if None)
    size: int | None = None  # frame side; None: the source's (224 folders, 128 CIFAR, 32 MNIST)
    interp: str | None = None  # resize interpolation; None: linear, or cubic (their BICUBIC) under a preset
    rows_per_shard: int | None = None  # parquet; None: ~512 MB shards
    row_group_rows: int | None = None  # parquet; None: ~32 MB row groups


@dataclass
class ExportSummary:
    split: str
    written: int = 0
    skipped: int = 0
    removed_partials: int = 0
    events: int = 0  # total events in written files
    cells: int = 0  # T * 2 * H * W * written
    bytes_written: int = 0
    source_bytes: int = 0  # of the written samples
    seconds: float = 0.0
    frame_shape: tuple[int, int, int] | None = None
    per_timestep_rate: list[float] = field(default_factory=list)
    shards_written: int = 0  # parquet shards
    shards_skipped: int = 0
    excluded: int = 0  # source images left out by --exclude-list
    shares: list[dict] = field(default_factory=list)  # each rank's part: rank, files, bytes, seconds
    rate_note: str = ""  # with a preset: the event rate against the catalog's

    @property
    def event_rate(self) -> float:
        return self.events / self.cells if self.cells else 0.0

    def line(self) -> str:
        ratio = self.bytes_written / self.source_bytes if self.source_bytes else float("nan")
        speed = self.written / self.seconds if self.seconds else 0.0
        if self.shards_written or self.shards_skipped:  # parquet: rows in shards
            return (
                f"{self.split}: wrote {self.written} rows in {self.shards_written} shard(s) "
                f"({_fmt_bytes(self.bytes_written)}, {ratio:.2f}x the {_fmt_bytes(self.source_bytes)} source), "
                f"skipped {self.shards_skipped} finished shard(s) ({self.skipped} rows), removed "
                f"{self.removed_partials} partial; mean event rate {self.event_rate:.4f}; {self.seconds:.1f} s"
            )
        return (
            f"{self.split}: wrote {self.written} files ({_fmt_bytes(self.bytes_written)}, {ratio:.2f}x the "
            f"{_fmt_bytes(self.source_bytes)} source), skipped {self.skipped} finished, removed "
            f"{self.removed_partials} partial; mean event rate {self.event_rate:.4f}; "
            f"{self.seconds:.1f} s ({speed:.0f} files/s)"
        )


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# --------------------------------------------------------------------------------------------------
# checks before anything is written
# --------------------------------------------------------------------------------------------------
def _check_paths(data: Path, out: Path) -> None:
    data_r, out_r = data.resolve(), out.resolve()
    if out_r == data_r or data_r in out_r.parents:
        raise ExportError(
            f"--out {out} is inside the input folder {data}; the export would mix event files into the "
            "image data set (and a later scan would see them). Choose a folder outside it."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output folder {out}: {exc.strerror or exc}; choose a writable place") from exc
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-probe.", suffix=PARTIAL_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ExportError(
            f"the output folder {out} is not writable ({exc.strerror or exc}); fix its permissions or choose another"
        ) from exc


def _source_for(cfg: ExportConfig, split: str):
    from ..data.sources import open_source

    if cfg.exclude is None:
        return open_source(cfg.data, split, cfg.dataset)
    if cfg.dataset not in ("imagenet", "folder"):
        raise ExportError(f"--exclude-list applies to image-folder data sets, not --dataset {cfg.dataset}")
    from ..data.exclude import read_exclude_list

    return open_source(cfg.data, split, cfg.dataset, exclude=read_exclude_list(cfg.exclude))


def resolve_splits(cfg: ExportConfig) -> str | None:
    """Fill ``cfg.splits`` when it was not given: both splits, or the only one an image-folder root has.
    Returns a note saying so in that case (None otherwise). A given ``splits`` is kept as it is: an
    explicit --split both with one of them missing stays the clear error of the source."""
    if cfg.splits is not None:
        return None
    cfg.splits = ("train", "val")
    if cfg.dataset not in ("imagenet", "folder"):
        return None
    data = Path(cfg.data).expanduser()
    present = tuple(s for s in ("train", "val") if (data / s).is_dir())
    if len(present) == 1:
        cfg.splits = present
        missing = "val" if present == ("train",) else "train"
        return (f"{data} has {present[0]}/ but no {missing}/: exporting only {present[0]} "
                f"(--split {present[0]}); pass --split both to require both")
    return None


def _is_cifar(source) -> bool:
    return getattr(source, "kind", "") == "cifar"


def plan_split(source, out_split: Path) -> list[Path]:
    """Output path of every sample of ``source``, index-aligned with ``source.samples``."""
    if _is_cifar(source):
        classes = source.classes
        return [out_split / classes[label] / f"{i:05d}.npz" for i, (_, label) in enumerate(source.samples)]
    root = Path(source.root)
    paths = []
    seen: dict[Path, str] = {}
    clashes = []
    for path, _ in source.samples:
        rel = Path(path).relative_to(root)
        target = out_split / rel.with_suffix(".npz")
        if target in seen:
            clashes.append(f"{seen[target]} and {path}")
        seen[target] = path
        paths.append(target)
    if clashes:
        raise ExportError(
            f"{len(clashes)} pair(s) of images in {root} share a file stem and would both become one .npz:\n  "
            + "\n  ".join(clashes[:10]) + "\nRename one of each pair."
        )
    return paths


def _complete(path: Path, fmt: str, frame_shape: tuple[int, int, int] | None, verify: bool) -> bool:
    """True when ``path`` is a finished export file of this format (and frame shape, when known)."""
    try:
        info = read_npz_info(path)
        if info.format != fmt or (frame_shape is not None and info.frame_shape != tuple(frame_shape)):
            return False
        if verify:
            from ..data.npz import load_events

            load_events(path)
    except NpzFormatError:
        return False
    return True


def _remove_partials(folder: Path) -> int:
    removed = 0
    if not folder.is_dir():
        return 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                os.unlink(os.path.join(dirpath, name))
                removed += 1
    return removed


def _write_meta(out_split: Path, meta: dict) -> None:
    path = out_split / META_NAME
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None:
            keys = ("format", "ratio", "timesteps", "order", "view", "height", "width", "dataset", "fixed_threshold")
            diff = {k: (old.get(k), meta.get(k)) for k in keys if old.get(k) != meta.get(k)}
            if diff:
                raise ExportError(
                    f"{out_split} holds an export made with other settings "
                    + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                    + "; resume with the same settings or export to a new --out folder"
                )
    atomic_write_text(path, json.dumps(meta, indent=1), suffix=PARTIAL_SUFFIX)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def _write_one(path: Path, events: np.ndarray, fmt: str, opener: Callable, level: int | None = None) -> int:
    """Temp file in the final folder -> rename. Returns the bytes written. Never leaves a partial file."""
    return atomic_write(path, lambda f: write_npz(f, events, fmt, level=level), suffix=PARTIAL_SUFFIX,
                        opener=opener)


def _view_for(cfg: ExportConfig, split: str) -> str:
    if cfg.view == "auto":
        return DEFAULT_VIEWS[split]
    return cfg.view


def export_split(cfg: ExportConfig, split: str, *, opener: Callable = open) -> ExportSummary:
    """Export one split (this rank's share of it under torchrun); ``opener`` is the npz writer's file hook."""
    started = time.perf_counter()
    source = _source_for(cfg, split)
    rank, world = default_shard(None, None)  # torchrun's rank and world size, (0, 1) alone
    parquet = cfg.format == "parquet"
    out_split = cfg.out if parquet else cfg.out / split
    out_split.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(split=split, excluded=len(getattr(source, "excluded", ())))
    # Every rank has finished what it wrote before (its write probe, and the previous split: Parquet splits
    # share one folder) before rank 0 sweeps; no rank writes this split before the barrier below either,
    # so a temp file now is a killed run's.
    export_dist.barrier()
    if rank == 0:
        summary.removed_partials = _remove_partials(out_split)
    view = _view_for(cfg, split)
    ratio = cfg.ratio if cfg.ratio is not None else source.default_ratio
    size = _frame_size(cfg, source)
    frame_shape = (cfg.timesteps, *size)
    summary.frame_shape = frame_shape
    if parquet:
        from .export_parquet import write_split

        export_dist.barrier()
        settings = {"format": "parquet", "dataset": cfg.dataset, "ratio": ratio, "timesteps": cfg.timesteps,
                    "order": cfg.order, "view": "resize" if _is_cifar(source) else view, "interp": cfg.interp or "linear",
                    "height": size[0], "width": size[1], "split": split, "samples": len(source.samples),
                    "fixed_threshold": cfg.fixed_threshold}
        return write_split(cfg, split, source, settings=settings, frame_shape=frame_shape, summary=summary,
                           make_loader=lambda sub, batch: _loader(cfg, sub, batch, view, ratio, size),
                           source_bytes=_source_bytes, rank=rank, world=world)
    targets = plan_split(source, out_split)
    if rank == 0:
        _write_meta(out_split, {
        "format": cfg.format, "dataset": cfg.dataset, "ratio": ratio, "timesteps": cfg.timesteps,
        "order": cfg.order, "view": "resize" if _is_cifar(source) else view, "height": size[0], "width": size[1],
        "classes": list(source.classes), "samples": len(source.samples), "source": str(Path(cfg.data).resolve()),
        "columns": "t,p,x,y (p=1 ON, 0 OFF)" if cfg.format == "sparse" else "arr_0 bool [T,2,H,W], channel 0 ON",
        "interp": cfg.interp or "linear", "fixed_threshold": cfg.fixed_threshold,
        })
    for c in {t.parent for t in targets}:
        c.mkdir(parents=True, exist_ok=True)
    export_dist.barrier()
    from pipelines import shard_bounds

    lo, hi = shard_bounds(len(targets), rank, world)  # this rank's contiguous share of the files

    workers = cfg.workers or min(8, usable_cores())
    # Checking finished files is I/O (zip directory + npy header each): overlap it on a thread pool.
    with ThreadPoolExecutor(max_workers=2 * workers) as checker:
        done = list(checker.map(lambda t: t.exists() and _complete(t, cfg.format, frame_shape, cfg.verify),
                                targets[lo:hi]))
    todo = [lo + i for i, finished in enumerate(done) if not finished]
    summary.skipped = (hi - lo) - len(todo)
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary

    sub = source if len(todo) == len(source.samples) else source.subset(todo)
    batch = min(cfg.batch_size, len(todo))
    loader = _loader(cfg, sub, batch, view, ratio, size)
    per_t = np.zeros(cfg.timesteps, dtype=np.int64)
    pending: deque[tuple[Future, int]] = deque()
    bar = tqdm(total=len(todo), desc=f"export {split}", unit="file", disable=True if cfg.progress is False else None)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="i2e-export")

    def settle(block_until: int) -> None:
        # Backpressure: at most ``block_until`` files in flight, so memory stays bounded.
        while len(pending) > block_until:
            fut, src_index = pending.popleft()
            summary.bytes_written += fut.result()  # re-raises a writer's error here
            summary.written += 1
            summary.source_bytes += _source_bytes(source, src_index)
            bar.update(1)

    try:
        for events, _labels, idx in loader:
            ev = events.cpu().numpy()  # [T, B, 2, H, W] bool
            counts = ev.sum(axis=(2, 3, 4))  # [T, B]
            per_t += counts.sum(axis=1)
            summary.events += int(counts.sum())
            summary.cells += int(ev.size)
            for b, j in enumerate(idx.tolist()):
                src_index = todo[j]
                sample = np.ascontiguousarray(ev[:, b])
                pending.append((pool.submit(_write_one, targets[src_index], sample, cfg.format, opener, cfg.level), src_index))
            settle(2 * workers)
            bar.set_postfix(rate=f"{summary.event_rate:.4f}")
        settle(0)
    except BaseException as exc:
        # Stop quickly: drop queued writes, let running ones finish (each cleans up its own temp file).
        for fut, _ in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        _remove_partials(out_split)
        if isinstance(exc, OSError):
            raise _write_error(exc, out_split, summary) from exc
        raise
    pool.shutdown(wait=True)
    bar.close()
    summary.seconds = time.perf_counter() - started
    if summary.written:
        cells_t = summary.cells / cfg.timesteps
        summary.per_timestep_rate = [float(c) / cells_t for c in per_t]
    return summary


def _frame_size(cfg: ExportConfig, source) -> tuple[int, int]:
    side = cfg.size or (source.default_out_size if _is_cifar(source) else source.default_crop_size)
    return side, side


def _loader(cfg: ExportConfig, sub, batch: int, view: str, ratio: float, size: tuple[int, int]):
    """The one loader of both formats: DALI (GPU if present) + the conversion in evaluation mode."""
    from ..convert import Conversion
    from ..data.event_loader import DaliOptions, EventLoader

    sizes = (dict(out_size=size[0]) if _is_cifar(sub)
             else dict(crop_size=size[0], resize_size=max(size[0], round(size[0] * 256 / 224))))
    conversion = Conversion(ratio=ratio, timesteps=cfg.timesteps, order=cfg.order, dtype=torch.bool,
                            threshold="adaptive" if cfg.fixed_threshold is None else "fixed",
                            threshold_value=cfg.fixed_threshold)
    return EventLoader(
        sub, batch, train=False, with_index=True, eval_view=view, conversion=conversion, device=cfg.device,
        dali=DaliOptions(num_threads=cfg.dali_threads, extra={"interp": cfg.interp or "linear"}),
        shard_id=0, num_shards=1, **sizes,
    )


def _source_bytes(source, index: int) -> int:
    if _is_cifar(source):
        return int(np.prod(source.images.shape[1:]))  # raw 32x32x3 pixels
    try:
        return os.path.getsize(source.samples[index][0])
    except OSError:
        return 0


def _write_error(exc: OSError, out_split: Path, summary: ExportSummary) -> ExportError:
    where = exc.filename or out_split
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                errno.EFBIG: "a file size limit was hit"}[exc.errno]
        return ExportError(
            f"{what} while writing into {out_split} ({where}): {summary.written} files were finished and are "
            "kept, nothing partial was left. Free space (or choose another --out) and rerun the same command "
            "to resume."
        )
    return ExportError(
        f"writing into {out_split} failed ({exc.strerror or exc}, {where}); finished files are kept and "
        "nothing partial was left. Fix the cause and rerun the same command to resume."
    )


def export(cfg: ExportConfig, *, opener: Callable = open) -> list[ExportSummary]:
    if cfg.preset is not None:
        _apply_preset(cfg)
    if cfg.format not in ("dense", "sparse", "parquet"):
        raise ExportError(f"--format must be dense, sparse or parquet, got {cfg.format!r}")
    from pipelines import INTERPOLATIONS

    if cfg.interp is not None and cfg.interp not in INTERPOLATIONS:
        raise ExportError(f"--interp must be one of {', '.join(INTERPOLATIONS)}, got {cfg.interp!r}")
    if cfg.view not in ("auto", "crop", "resize"):
        raise ExportError(f"--view must be auto, crop or resize, got {cfg.view!r}")
    data, out = Path(cfg.data).expanduser(), Path(cfg.out).expanduser()
    if not data.exists():
        raise ExportError(f"--data {data} does not exist")
    cfg.data, cfg.out = data, out
    _check_paths(data, out)
    resolve_splits(cfg)
    summaries = [export_split(cfg, split, opener=opener) for split in cfg.splits]
    merged = export_dist.merge(export_dist.gather(summaries), ExportSummary)  # every rank's share
    for m, mine in zip(merged, summaries):  # every rank read the whole split: its count, not a sum
        m.excluded = mine.excluded
    for s in merged:
        if cfg.preset is not None and s.cells:
            s.rate_note = rate_check(cfg.preset, s.events / s.cells)[1]
    return merged


def _apply_preset(cfg: ExportConfig) -> None:
    """The catalog entry's source kind, size, ratio, plain resize view and bicubic; set values win."""
    if cfg.preset not in PRESETS:
        raise ExportError(f"--preset must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    p = PRESETS[cfg.preset]
    cfg.dataset = p.dataset
    cfg.size = cfg.size or p.size
    cfg.ratio = p.ratio if cfg.ratio is None else cfg.ratio
    cfg.view = "resize" if cfg.view == "auto" else cfg.view
    cfg.interp = cfg.interp or "cubic"


# --------------------------------------------------------------------------------------------------
def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="i2e-export",
        description="Convert an image data set (ImageNet-style folders or CIFAR batches) into an I2E event "
        "data set of .npz files, resumably.",
    )
    p.add_argument("--data", required=True, type=Path, help="ImageNet-style root (train/, val/) or CIFAR folder")
    p.add_argument("--out", required=True, type=Path, help="output root (must not be inside --data)")
    p.add_argument("--format", choices=("dense", "sparse", "parquet"), default=None,
                   help="dense: arr_0 bool [T,2,H,W]; sparse: [N,4] rows (t,p,x,y), p=1 ON; parquet: the authors' "
                        "hub layout (default: parquet with --preset, else dense)")
    p.add_argument("--dataset", choices=SOURCE_KINDS, default=None, help="source kind (default imagenet, or the preset's)")
    p.add_argument("--split", choices=("train", "val", "both"), default=None,
                   help="default: both, or the only one of train/ and val/ the folder has (said in the output)")
    p.add_argument("--exclude-list", type=Path, default=None, metavar="FILE",
                   help="leave out the image files listed in FILE, one path per line (`i2e-check ROOT --list FILE`)")
    p.add_argument("--ratio", type=float, default=None, help="threshold ratio (default 0.12 ImageNet, 0.07 CIFAR)")
    p.add_argument("--fixed-threshold", type=float, default=None, metavar="X",
                   help="ablation: one absolute threshold X on V in (0, 1] for every image instead of ratio x range")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--order", default=None, help="group order (default efghabcd)")
    p.add_argument("--view", choices=("auto", "crop", "resize"), default="auto",
                   help="ImageNet view: crop = resize 256 + centre crop 224, resize = 224x224; auto = the "
                        "authors' (train: resize, val: crop)")
    p.add_argument("--batch-size", type=int, default=64, help="images converted per batch")
    p.add_argument("--workers", type=int, default=None, help="writer threads (default min(8, CPUs))")
    p.add_argument("--dali-threads", type=int, default=None, help="DALI CPU threads")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda:N")
    p.add_argument("--compression-level", type=int, default=None, choices=range(0, 10), metavar="0-9",
                   help="zlib level (default 6, np.savez_compressed's; 1 is ~4x faster, dense files ~1.6x larger)")
    p.add_argument("--verify", action="store_true",
                   help="on resume, fully read existing files instead of checking their headers")
    p.add_argument("--no-progress", action="store_true")
    add_catalog_arguments(p)
    return resolve_catalog_arguments(p, p.parse_args(argv))


def main(argv=None) -> int:
    args = _parse_args(argv)
    cfg = ExportConfig(
        data=args.data, out=args.out, format=args.format, dataset=args.dataset,
        splits=None if args.split is None else ("train", "val") if args.split == "both" else (args.split,),
        exclude=args.exclude_list,
        ratio=args.ratio, fixed_threshold=args.fixed_threshold, timesteps=args.timesteps, order=args.order,
        view=args.view,
        batch_size=args.batch_size, workers=args.workers, dali_threads=args.dali_threads,
        device=args.device, verify=args.verify, level=args.compression_level, progress=False if args.no_progress else None,
        preset=args.preset, size=args.size, interp=args.interp, rows_per_shard=args.rows_per_shard,
        row_group_rows=args.row_group_rows,
    )
    rank, _, started = export_dist.init_ranks()  # under torchrun: one process per GPU, files split
    try:
        note = resolve_splits(cfg) if cfg.preset is None else None  # (a preset picks the kind in export())
        if note and rank == 0:
            print(note)
        summaries = export(cfg)
    except (ExportError, ValueError, OSError) as exc:
        print(f"i2e-export: error{f' (rank {rank})' if started else ''}: {exc}", file=sys.stderr)
        return 1
    finally:
        export_dist.finish(started)
    if rank != 0:
        return 0
    for s in summaries:
        print(s.line())
        if cfg.exclude is not None:
            print(f"  {s.excluded} image(s) of {s.split} excluded (listed in {cfg.exclude})")
        if s.per_timestep_rate:
            print("  event rate per timestep: " + " ".join(f"{r:.4f}" for r in s.per_timestep_rate))
        print_shares(s)
    total = sum(s.bytes_written for s in summaries)
    unit = "rows" if cfg.format == "parquet" else "files"
    print(f"total: {sum(s.written for s in summaries)} {unit}, {_fmt_bytes(total)} in {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
