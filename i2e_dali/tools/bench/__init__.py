"""Throughput benchmark: ``python -m i2e_dali.bench {convert,loader,train,corpus}`` (console: i2e-bench).

Each mode prints one table and writes a JSON record (device, library versions, date, settings, every
measured number) to ``--json`` (default ``benchmarks/results/<device>-<date>-<mode>.json``).

- ``convert``: images/s and GB/s of each conversion implementation on the same input - the fused
  Triton kernel (CUDA only), the torch path (``i2e_convert(impl="torch")``) and the conv-based
  baseline (``i2e_dali.baseline.conv_i2e``, the authors' approach) - over image sizes, batch sizes,
  output dtypes and motion modes, with the fraction of the memory roofline (bytes read + written per
  batch over the measured device-to-device copy bandwidth). All implementations are checked to give
  identical events before they are timed.
- ``loader``: images/s delivered as events on the device by DALI + I2E (``EventLoader``, GPU and CPU
  pipelines) and by the reference recipe (torchvision ImageFolder + PIL decode + RandomResizedCrop/flip
  in DataLoader worker processes over all cores, pinned memory, conversion with ``i2e_convert`` on the
  device), same files, same output shapes, one run.
- ``train``: images/s of MS-ResNet18 (T=8) training steps (``make_train_step``) fed by synthetic
  batches already on the device (the ceiling), by ``EventLoader`` and by the reference recipe, with the
  fraction of wall time the training loop spent waiting for data.
- ``corpus``: write an ImageNet-like JPEG corpus from real photographs (``i2e_dali.corpus``).

Timing: warm-up runs first, then repeated measurements; medians are reported (convert also keeps the
minimum and every sample; its contenders take turns, so a noisy shared machine slows them alike). On CUDA, kernels are
timed with CUDA events and loops end with a device synchronisation; on the CPU with perf_counter.
Defaults are small on the CPU so every mode runs in seconds there (``--quick`` for smoke tests).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .fsio import atomic_write_text
from . import placement
from .i2e import DEFAULT_ORDER, draw_motions, i2e_convert

__all__ = ["main", "build_parser", "run_convert", "run_loader", "run_train", "run_corpus", "copy_bandwidth"]

_DTYPES = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


class BenchError(ValueError):
    """Bad benchmark settings (printed in one line by the CLI)."""


# --------------------------------------------------------------------------------------------------
# environment, timing, output
# --------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    try:
        return placement.resolve_device(name)
    except ValueError as exc:
        raise BenchError(f"--device: {exc}") from None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed: the record says so
        return None


def environment(device: torch.device) -> dict:
    """What ran: device name, core count, library versions, date (UTC)."""
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_type": device.type,
        "cpu": _cpu_name(),
        "cpu_cores": placement.usable_cores(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "torchvision": _version("torchvision"),
            "nvidia-dali": _version("nvidia-dali-cuda120") or _version("nvidia-dali-cuda130"),
            "triton": _version("triton"),
            "spikingjelly": _version("spikingjelly"),
            "i2e-dali": _version("i2e-dali"),
        },
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_sms"] = props.multi_processor_count
    return env


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "device"


def default_json_path(env: dict, mode: str) -> Path:
    day = env["date"][:10]
    return Path("benchmarks") / "results" / f"{_slug(env['device'])}-{day}-{mode}.json"


def write_json(record: dict, path: Path) -> Path:
    """Atomic: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def format_table(title: str, columns: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    out = [title, line, "-" * len(line)]
    out += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Seconds per call, ``repeats`` samples after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Like :func:`time_calls` for several contenders, taking turns (rotating who goes first) so that
    interference from other work on a shared machine spreads over all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    names = list(fns)
    samples = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            samples[name].extend(time_calls(fns[name], device, warmup=0, repeats=1))
    return samples


def copy_bandwidth(device: torch.device, nbytes: int, *, warmup: int = 2, repeats: int = 5) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the read and the write (2 x nbytes)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = statistics.median(time_calls(lambda: dst.copy_(src), device, warmup=warmup, repeats=repeats))
    return 2 * nbytes / seconds


def _finish(record: dict, table: str, args) -> dict:
    print(table)
    path = Path(args.json) if args.json else default_json_path(record["environment"], record["mode"])
    write_json(record, path)
    print(f"\nwrote {path}")
    record["json_path"] = str(path)
    return record


def _parse_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise BenchError(f"dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


# --------------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------------
def _conv_baseline():
    try:
        from .baseline import conv_i2e
    except ImportError as exc:  # the lead's module; named in the error rather than skipped silently
        raise BenchError(f"the conv baseline (i2e_dali.baseline.conv_i2e) is not importable: {exc}") from exc
    return conv_i2e


def _fused_usable(device: torch.device) -> str | None:
    """None if the fused kernel can run here, else why not."""
    if device.type != "cuda":
        return "the fused Triton kernel runs on CUDA tensors only"
    try:
        from . import i2e_triton  # noqa: F401
    except ImportError as exc:
        return f"triton not importable: {exc}"
    return None


def run_convert(args) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    sizes = args.sizes or ([32] if args.quick else [128, 224])
    batches = args.batch_sizes or ([2] if args.quick else ([64, 256] if cuda else [16]))
    dtypes = [_parse_dtype(d) for d in (args.dtypes or (["bool", "float16", "float32"] if cuda else ["float32"]))]
    modes = args.modes or ["eval", "train"]
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 1))
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else (30 if cuda else 5))
    impls = args.impls or ["fused", "torch", "conv"]
    skipped = {}
    if "fused" in impls and (why := _fused_usable(device)):
        impls = [i for i in impls if i != "fused"]
        skipped["fused"] = why
    fused_configs = {}
    if args.fused_configs and "fused" in impls:
        from .i2e_triton import FusedConfig

        for spec in args.fused_configs:
            try:
                tile, warps, nreg = spec.split(":")
                config = FusedConfig(int(tile), int(warps), None if nreg.lower() in ("none", "0") else int(nreg))
            except ValueError as exc:
                raise BenchError(f"--fused-configs {spec!r}: expected TILE_PIXELS:NUM_WARPS:MAXNREG "
                                 f"(e.g. 1024:8:128, 512:4:none): {exc}") from exc
            fused_configs[f"fused[{tile}/{warps}/{nreg}]"] = config
        impls = impls + list(fused_configs)
    conv_i2e = _conv_baseline() if "conv" in impls else None
    env = environment(device)
    copy_bytes = args.copy_mib * 2**20 if args.copy_mib else ((1 << 30) if cuda else (64 << 20 if not args.quick else 8 << 20))
    bandwidth = copy_bandwidth(device, copy_bytes, warmup=1 if args.quick else 3, repeats=3 if args.quick else 7)
    timesteps = args.timesteps
    order = DEFAULT_ORDER[:timesteps]

    rows, table_rows = [], []
    gen = torch.Generator(device=device)
    for size in sizes:
        for batch in batches:
            gen.manual_seed(args.seed)
            images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device, generator=gen)
            for mode in modes:
                train = mode == "train"
                for dtype in dtypes:
                    # Same draws for every implementation in the correctness check.
                    check_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
                    motions = draw_motions(batch, train=train, generator=check_gen)
                    # The conv baseline runs the authors' batch-wide draw in training (one kernel set per
                    # batch); per-sample draws would cost it one convolution per sample.
                    conv_motions = motions[:1].expand(batch, -1) if train else None
                    calls, outputs = {}, {}
                    run_gen = torch.Generator(device=device).manual_seed(args.seed + 2)
                    for impl in impls:
                        if impl == "conv":
                            row = (draw_motions(1, train=True, generator=run_gen) if train else None)
                            calls[impl] = (lambda row=row: conv_i2e(images, timesteps=timesteps, order=order,
                                                                    motions=row, dtype=dtype))
                            outputs[impl] = conv_i2e(images, timesteps=timesteps, order=order,
                                                     motions=conv_motions, dtype=dtype)
                        elif impl.startswith("fused["):
                            from .i2e_triton import convert_fused

                            config = fused_configs[impl]
                            calls[impl] = (lambda config=config: convert_fused(
                                images, ratio=0.12, order=order, dtype=dtype, config=config,
                                motions=draw_motions(batch, train=train, generator=run_gen)))
                            outputs[impl] = convert_fused(images, ratio=0.12, order=order, motions=motions,
                                                          dtype=dtype, config=config)
                        else:
                            kind = "triton" if impl == "fused" else "torch"
                            # --reuse-output: one preallocated events buffer (out=), as an exporter
                            # would keep; otherwise a fresh tensor per call, as the loader hands out.
                            buf = (torch.empty((timesteps, batch, 2, size, size), dtype=dtype, device=device)
                                   if args.reuse_output else None)
                            # As the loader calls it: draws inside (no host sync), no value check.
                            calls[impl] = (lambda kind=kind, buf=buf: i2e_convert(
                                images, timesteps=timesteps, order=order, train=train, generator=run_gen,
                                dtype=dtype, impl=kind, validate=False, out=buf))
                            outputs[impl] = i2e_convert(images, timesteps=timesteps, order=order, motions=motions,
                                                        dtype=dtype, impl=kind, validate=False)
                    reference = outputs.get("torch", next(iter(outputs.values())))
                    identical = {impl: bool(torch.equal(out, reference)) for impl, out in outputs.items()
                                 if not (impl == "conv" and train)}
                    if train and "conv" in outputs and "torch" in outputs:
                        # compare the conv baseline with the torch path on the batch-wide draw it used
                        torch_same = i2e_convert(images, timesteps=timesteps, order=order, motions=conv_motions,
                                                 dtype=dtype, impl="torch", validate=False)
                        identical["conv"] = bool(torch.equal(outputs["conv"], torch_same))
                    del outputs
                    if not all(identical.values()):
                        bad = [k for k, v in identical.items() if not v]
                        raise BenchError(f"implementations disagree ({bad}) at {size}x{size} batch {batch} {dtype} "
                                         f"{mode}: a correctness bug, not a benchmark result")
                    bytes_in = images.numel() * images.element_size()
                    bytes_out = timesteps * batch * 2 * size * size * torch.empty((), dtype=dtype).element_size()
                    config_rows = []
                    timings = time_interleaved(calls, device, warmup=warmup, repeats=repeats)
                    for impl, samples in timings.items():
                        sec = statistics.median(samples)
                        gbs = (bytes_in + bytes_out) / sec / 1e9
                        config_rows.append({
                            "impl": impl, "size": size, "batch": batch, "dtype": str(dtype).replace("torch.", ""),
                            "mode": mode, "motions": ("batch-wide" if impl == "conv" else "per-sample") if train else "canonical",
                            "median_ms": sec * 1e3, "min_ms": min(samples) * 1e3, "samples_ms": [s * 1e3 for s in samples],
                            "images_per_s": batch / sec, "gb_per_s": gbs, "bytes_in": bytes_in, "bytes_out": bytes_out,
                            "roofline_fraction": gbs * 1e9 / bandwidth, "identical_to_torch_path": identical.get(impl),
                            "reused_output": bool(args.reuse_output) and impl != "conv",
                        })
                    conv_ms = next((r["median_ms"] for r in config_rows if r["impl"] == "conv"), None)
                    torch_ms = next((r["median_ms"] for r in config_rows if r["impl"] == "torch"), None)
                    for r in config_rows:
                        r["speedup_vs_conv"] = conv_ms / r["median_ms"] if conv_ms else None
                        r["speedup_vs_torch"] = torch_ms / r["median_ms"] if torch_ms else None
                        rows.append(r)
                        table_rows.append([r["impl"], f"{size}x{size}", batch, r["dtype"], mode, r["median_ms"],
                                           r["images_per_s"], r["gb_per_s"], r["roofline_fraction"],
                                           r["speedup_vs_conv"]])
            del images
    summary = {}
    for r in rows:
        if r["impl"] != "conv" and r["speedup_vs_conv"]:
            key = f"{r['impl']}_vs_conv"
            summary.setdefault(key, {})[f"{r['size']}x{r['size']} b{r['batch']} {r['dtype']} {r['mode']}"] = r["speedup_vs_conv"]
    record = {
        "mode": "convert",
        "environment": env,
        "settings": {"sizes": sizes, "batch_sizes": batches, "dtypes": [str(d).replace("torch.", "") for d in dtypes],
                     "modes": modes, "timesteps": timesteps, "order": list(order), "impls": impls,
                     "skipped": skipped, "warmup": warmup, "repeats": repeats, "seed": args.seed,
                     "input": "uint8 [B, 3, S, S] on the device", "copy_bytes": copy_bytes},
        "copy_bandwidth_gb_per_s": bandwidth / 1e9,
        "results": rows,
        "summary": summary,
    }
    title = (f"I2E conversion on {env['device']} (T={timesteps}, median of {repeats}; roofline = GB/s over "
             f"copy bandwidth {bandwidth / 1e9:.1f} GB/s)")
    if skipped:
        title += "\n" + "; ".join(f"{k} skipped: {v}" for k, v in skipped.items())
    columns = ["impl", "size", "batch", "dtype", "mode", "ms/batch", "img/s", "GB/s", "roofline", "x conv"]
    return _finish(record, format_table(title, columns, table_rows), args)


# --------------------------------------------------------------------------------------------------
# data for the loader and train modes
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _dataset(args) -> Iterator[Path]:
    """``--data`` (a folder with train/<class>/...), or a small corpus built in a temporary folder."""
    if args.data:
        root = Path(args.data).expanduser()
        if not (root / "train").is_dir():
            raise BenchError(f"--data {root}: expected {root}/train/<class>/<image> (make one with "
                             f"`python -m i2e_dali.bench corpus --out {root}`)")
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


def _cycle(make_iter: Callable[[], Iterable]) -> Iterator:
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


def _feeds(args, root: Path, device: torch.device, *, crop: int, dtype: torch.dtype, batch: int) -> list[Feed]:
    from .datasets import ImageFolderSource
    from .loader import EventLoader

    cuda = device.type == "cuda"
    wanted = args.pipelines or (["dali-gpu", "dali-cpu", "reference"] if cuda else ["dali-cpu", "reference"])
    feeds = []
    source = ImageFolderSource(root / "train", progress=False)
    for name in wanted:
        if name in ("dali-gpu", "dali-cpu"):
            decode = name.split("-")[1]
            if decode == "gpu" and not cuda:
                raise BenchError("pipeline dali-gpu needs a CUDA device")
            loader = EventLoader(source, batch, train=True, timesteps=args.timesteps, dtype=dtype, device=device,
                                 decode=decode, crop_size=crop, seed=args.seed,
                                 num_threads=args.threads or None)
            feeds.append(Feed(name, lambda loader=loader: loader,
                              f"EventLoader decode={decode} threads={loader.num_threads}"))
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


# --------------------------------------------------------------------------------------------------
# loader
# --------------------------------------------------------------------------------------------------
def run_loader(args) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (4 if args.quick else (256 if cuda else 16))
    crop = args.crop or (64 if args.quick else 224)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 3))
    # Both feeds buffer a few batches ahead (DALI prefetch depth 2, DataLoader 2 per worker): the timed
    # window must be long against that, or it measures the buffer.
    batches = args.batches or (2 if args.quick else (200 if cuda else 12))
    dtype = _parse_dtype(args.dtype)
    env = environment(device)
    rows, table_rows = [], []
    with _dataset(args) as root:
        for feed in _feeds(args, root, device, crop=crop, dtype=dtype, batch=batch):
            stream = _cycle(feed.make_iter)
            shape = None
            t_first = time.perf_counter()
            for _ in range(warmup):
                events, labels = next(stream)
            _sync(device)
            startup = time.perf_counter() - t_first
            t0 = time.perf_counter()
            for _ in range(batches):
                events, labels = next(stream)
                shape = tuple(events.shape)
            _sync(device)  # the last batch's events are complete on the device
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
    ref = next((r["images_per_s"] for r in rows if r["pipeline"] == "reference"), None)
    for r, tr in zip(rows, table_rows):
        r["speedup_vs_reference"] = r["images_per_s"] / ref if ref else None
        tr.insert(5, r["speedup_vs_reference"])
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
    columns = ["pipeline", "batch", "batches", "seconds", "img/s", "x reference", "events"]
    return _finish(record, format_table(title, columns, table_rows), args)


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------
def _synthetic_feed(source: Feed, count: int = 2) -> Feed:
    """``count`` real batches taken once from ``source`` and kept on the device: the same steps with no
    data loading at all (the ceiling). Real events, not noise: noise fires far more pixels."""
    stream = iter(source.make_iter())
    batches = [tuple(t.clone() for t in next(stream)) for _ in range(count)]
    del stream
    return Feed("synthetic", lambda: iter(batches), f"{count} batches of real events kept on the device (ceiling)")


def run_train(args) -> dict:
    from .models import build_model
    from .train import build_optimizer, make_train_step, resolve_amp

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (2 if args.quick else (64 if cuda else 4))
    crop = args.crop or (32 if args.quick else (224 if cuda else 64))
    width = args.width or (8 if args.quick else (64 if cuda else 16))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 1))
    steps = args.steps or (2 if args.quick else (50 if cuda else 3))
    amp_dtype, use_scaler = resolve_amp(args.amp, device)  # the trainer's rule
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[amp_dtype]
    dtype = _parse_dtype(args.dtype)
    env = environment(device)
    rows, table_rows = [], []
    with _dataset(args) as root:
        feeds = _feeds(args, root, device, crop=crop, dtype=dtype, batch=batch)
        num_classes = len([p for p in (root / "train").iterdir() if p.is_dir()])
        feeds.insert(0, _synthetic_feed(feeds[0]))
        torch.manual_seed(args.seed)
        model = build_model(args.arch, num_classes, width=width).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-5, device=device)
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        step = make_train_step(model, optimizer, scaler=scaler, amp_dtype=amp_dtype, channels_last=cuda)
        for feed in feeds:
            stream = _cycle(feed.make_iter)
            for _ in range(warmup):
                step(*next(stream))
            _sync(device)
            wait = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                t_wait = time.perf_counter()
                events, labels = next(stream)
                wait += time.perf_counter() - t_wait
                loss = step(events, labels)
            _sync(device)
            seconds = time.perf_counter() - t0
            if not torch.isfinite(loss):
                raise BenchError(f"training on {feed.name} produced a non-finite loss; the timing is not meaningful")
            del stream
            feed.close()
            ips = steps * batch / seconds
            rows.append({"feed": feed.name, "description": feed.description, "batch": batch, "steps": steps,
                         "warmup_steps": warmup, "seconds": seconds, "images_per_s": ips,
                         "data_wait_seconds": wait, "data_wait_fraction": wait / seconds,
                         "last_loss": float(loss)})
            table_rows.append([feed.name, batch, steps, seconds, ips, wait / seconds])
    ceiling = rows[0]["images_per_s"]
    for r, tr in zip(rows, table_rows):
        r["fraction_of_ceiling"] = r["images_per_s"] / ceiling
        tr.insert(5, r["fraction_of_ceiling"])
    record = {
        "mode": "train",
        "environment": env,
        "settings": {"arch": args.arch, "width": width, "batch_size": batch, "crop": crop, "timesteps": args.timesteps,
                     "dtype": str(dtype), "amp": amp, "channels_last": cuda, "warmup_steps": warmup, "steps": steps,
                     "optimizer": "SGD lr=0.1 m=0.9 wd=1e-5", "data": str(args.data or "temporary corpus"),
                     "seed": args.seed},
        "results": rows,
    }
    title = (f"{args.arch} (width {width}) training steps on {env['device']}, batch {batch}, {crop}x{crop}, "
             f"T={args.timesteps}, amp={amp}")
    columns = ["feed", "batch", "steps", "seconds", "img/s", "of ceiling", "data wait"]
    return _finish(record, format_table(title, columns, table_rows), args)


# --------------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------------
def run_corpus(args) -> dict:
    from .corpus import CorpusConfig, generate_corpus

    if not args.out:
        raise BenchError("corpus needs --out DIR (the corpus root; train/ and val/ are made inside)")
    kw = {} if args.samples is None else {"samples": args.samples}
    cfg = CorpusConfig(out=args.out, images=args.images, val_images=args.val_images, classes=args.classes,
                       seed=args.seed, long_side=args.long_side, file_kb=args.file_kb, workers=args.workers,
                       progress=not args.quick, **kw)
    manifest = generate_corpus(cfg)
    kb, w, h = manifest["file_kb"], manifest["width"], manifest["height"]
    rows = [
        ["train images", manifest["train_images"]], ["val images", manifest["val_images"]],
        ["classes", manifest["classes"]], ["total MB", manifest["total_mb"]],
        ["file KB mean", kb["mean"]], ["file KB p10 / p90", f"{kb['p10']:.0f} / {kb['p90']:.0f}"],
        ["mean width x height", f"{w['mean']:.0f} x {h['mean']:.0f}"],
        ["width range", f"{w['min']}-{w['max']}"], ["height range", f"{h['min']}-{h['max']}"],
    ]
    record = {"mode": "corpus", "environment": environment(torch.device("cpu")), "settings": cfg.settings(),
              "out": str(cfg.out), "corpus": manifest}
    if not args.json:  # the manifest in the corpus folder is the record; --json writes a copy elsewhere
        print(format_table(f"Corpus {cfg.out}", ["", "value"], rows))
        print(f"\nmanifest {cfg.out / 'corpus.json'}")
        return record
    return _finish(record, format_table(f"Corpus {cfg.out}", ["", "value"], rows), args)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="i2e-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp, *, device=True):
        sp.add_argument("--json", help="where to write the JSON record (default benchmarks/results/<device>-<date>-<mode>.json)")
        sp.add_argument("--quick", action="store_true", help="tiny settings for smoke tests (seconds on a CPU)")
        sp.add_argument("--seed", type=int, default=2024)
        if device:
            sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:i]")
            sp.add_argument("--warmup", type=int, help="untimed runs first (default: GPU 10, CPU 1-2)")
            sp.add_argument("--timesteps", type=int, default=8)

    c = sub.add_parser("convert", help="conversion throughput: fused kernel vs torch path vs conv baseline")
    common(c)
    c.add_argument("--sizes", type=int, nargs="+", help="square image sizes (default 128 224)")
    c.add_argument("--batch-sizes", type=int, nargs="+", help="default GPU: 64 256, CPU: 16")
    c.add_argument("--dtypes", nargs="+", choices=list(_DTYPES), help="output dtypes (default GPU: bool float16 float32, CPU: float32)")
    c.add_argument("--modes", nargs="+", choices=["eval", "train"], help="canonical or random motions (default both)")
    c.add_argument("--impls", nargs="+", choices=["fused", "torch", "conv"], help="default all (fused on CUDA only)")
    c.add_argument("--repeats", type=int, help="timed runs per configuration (default GPU 30, CPU 5)")
    c.add_argument("--reuse-output", action="store_true",
                   help="fused/torch write into one preallocated buffer (i2e_convert(out=...)); the conv "
                        "baseline allocates as the authors' code does. On CPUs fresh output memory is "
                        "page-faulted on every call and can cost more than the conversion")
    c.add_argument("--fused-configs", nargs="+", metavar="TILE:WARPS:MAXNREG",
                   help="also time the fused kernel at these launch shapes (GPU tuning), e.g. 512:4:none 2048:8:128")
    c.add_argument("--copy-mib", type=int, help="buffer for the copy-bandwidth roofline (default GPU 1024, CPU 64)")

    def data_args(sp):
        sp.add_argument("--data", help="corpus root with train/<class>/*.JPEG (default: a small temporary corpus)")
        sp.add_argument("--corpus-images", type=int, help="size of the temporary corpus (default 64; quick 16)")
        sp.add_argument("--samples", help="official-samples folder for the temporary corpus")
        sp.add_argument("--pipelines", nargs="+", choices=["dali-gpu", "dali-cpu", "reference"],
                        help="default GPU: dali-gpu dali-cpu reference; CPU: dali-cpu reference")
        sp.add_argument("--batch-size", type=int)
        sp.add_argument("--crop", type=int, help="training crop size (default 224; CPU train 64)")
        sp.add_argument("--dtype", default="float32", choices=list(_DTYPES), help="events dtype (default float32)")
        sp.add_argument("--threads", type=int, help="DALI CPU threads (default: EventLoader's choice)")
        sp.add_argument("--workers", type=int, help="reference DataLoader workers (default: all cores)")

    lo = sub.add_parser("loader", help="events/s delivered on the device: DALI+I2E vs the reference recipe")
    common(lo)
    data_args(lo)
    lo.add_argument("--batches", type=int, help="timed batches per pipeline (default GPU 200, CPU 12)")

    tr = sub.add_parser("train", help="MS-ResNet training img/s: synthetic ceiling vs EventLoader vs reference")
    common(tr)
    data_args(tr)
    tr.add_argument("--steps", type=int, help="timed steps per feed (default GPU 50, CPU 3)")
    tr.add_argument("--arch", default="msresnet18")
    tr.add_argument("--width", type=int, help="stage-1 channels (paper 64; CPU default 16)")
    tr.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="auto: bf16 on CUDA, off on CPU")

    co = sub.add_parser("corpus", help="write an ImageNet-like JPEG corpus from real photographs")
    common(co, device=False)
    co.add_argument("--out", required=True, help="corpus root (train/ and val/ are created inside)")
    co.add_argument("--images", type=int, default=1000, help="training images (default 1000)")
    co.add_argument("--val-images", type=int, help="validation images (default a tenth, at least one per class)")
    co.add_argument("--classes", type=int, default=100, help="class folders, up to 1000 (default 100)")
    co.add_argument("--samples", help="folder of source photographs (default ../shared/data/official-samples)")
    co.add_argument("--long-side", type=int, default=500, help="mean long side in pixels (default 500)")
    co.add_argument("--file-kb", type=float, default=110.0, help="mean JPEG size in KB (default 110)")
    co.add_argument("--workers", type=int, help="processes (default all cores)")
    return p


_RUNNERS = {"convert": run_convert, "loader": run_loader, "train": run_train, "corpus": run_corpus}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _RUNNERS[args.mode](args)
    except (BenchError, ValueError, FileNotFoundError) as exc:
        print(f"i2e-bench {args.mode}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
