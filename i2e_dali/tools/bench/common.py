"""What every benchmark mode shares: the environment record, timing (CUDA events / perf_counter,
interleaved contenders), the memory-copy roofline, JSON records and tables."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ...fsio import atomic_write_text
from ... import placement
from ...errors import BenchError

DTYPES = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}

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

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Seconds per call, ``repeats`` samples after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
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
    sync(device)
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

def finish(record: dict, table: str, args) -> dict:
    print(table)
    path = Path(args.json) if args.json else default_json_path(record["environment"], record["mode"])
    write_json(record, path)
    print(f"\nwrote {path}")
    record["json_path"] = str(path)
    return record

def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise BenchError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]
