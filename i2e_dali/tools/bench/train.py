"""``i2e-bench train``: MS-ResNet training steps fed by synthetic batches (the ceiling), by EventLoader
and by the reference recipe, with the share of wall time spent waiting for data."""
from __future__ import annotations

import time

import torch

from ...errors import BenchError
from .common import environment, finish, format_table, parse_dtype, resolve_device, sync
from .loader import Feed, cycle, dataset_root, make_feeds

def _synthetic_feed(source: Feed, count: int = 2) -> Feed:
    """``count`` real batches taken once from ``source`` and kept on the device: the same steps with no
    data loading at all (the ceiling). Real events, not noise: noise fires far more pixels."""
    stream = iter(source.make_iter())
    batches = [tuple(t.clone() for t in next(stream)) for _ in range(count)]
    del stream
    return Feed("synthetic", lambda: iter(batches), f"{count} batches of real events kept on the device (ceiling)")

def profile_step(step, stream, device: torch.device, *, top: int = 15) -> dict:
    """One step (``next()`` included: the hand-off and the conversion) under torch.profiler: the ``top``
    most expensive kernels on a GPU (device time), operators on a CPU (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        events, labels = next(stream)
        step(events, labels)
        sync(device)
    averages = prof.key_averages()
    if cuda:
        kernels = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
        time_of = lambda e: e.self_device_time_total  # noqa: E731
    else:
        kernels = [e for e in averages if e.key.startswith("aten::")]
        time_of = lambda e: e.self_cpu_time_total  # noqa: E731
    total = sum(time_of(e) for e in kernels) or 1.0
    rows = [{"name": e.key, "ms": time_of(e) / 1e3, "calls": e.count, "share": time_of(e) / total}
            for e in sorted(kernels, key=time_of, reverse=True)[:top]]
    return {"what": "CUDA kernels by device time" if cuda else "aten operators by self CPU time",
            "total_ms": total / 1e3, "top": rows}


def run_train(args) -> dict:
    from ...models import build_model
    from ...training.engine import build_optimizer, make_train_step
    from ...training.runtime import resolve_amp

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (2 if args.quick else (64 if cuda else 4))
    crop = args.crop or (32 if args.quick else (224 if cuda else 64))
    width = args.width or (8 if args.quick else (64 if cuda else 16))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 1))
    steps = args.steps or (2 if args.quick else (50 if cuda else 3))
    amp_dtype, use_scaler = resolve_amp(args.amp, device)  # the trainer's rule
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[amp_dtype]
    dtype = parse_dtype(args.dtype)
    env = environment(device)
    rows, table_rows = [], []
    with dataset_root(args) as root:
        feeds = make_feeds(args, root, device, crop=crop, dtype=dtype, batch=batch)
        num_classes = len([p for p in (root / "train").iterdir() if p.is_dir()])
        feeds.insert(0, _synthetic_feed(feeds[0]))
        torch.manual_seed(args.seed)
        model = build_model(args.arch, num_classes, width=width).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-5, device=device)
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        step = make_train_step(model, optimizer, scaler=scaler, amp_dtype=amp_dtype, channels_last=cuda)
        profiled = None
        for feed in feeds:
            stream = cycle(feed.make_iter)
            for _ in range(warmup):
                step(*next(stream))
            sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            wait = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                t_wait = time.perf_counter()
                events, labels = next(stream)
                wait += time.perf_counter() - t_wait
                loss = step(events, labels)
            sync(device)
            seconds = time.perf_counter() - t0
            if not torch.isfinite(loss):
                raise BenchError(f"training on {feed.name} produced a non-finite loss; the timing is not meaningful")
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
            if getattr(args, "profile", False) and profiled is None and (feed.name != "synthetic" or len(feeds) == 1):
                profiled = {"feed": feed.name, **profile_step(step, stream, device)}
            del stream
            feed.close()
            ips = steps * batch / seconds
            rows.append({"feed": feed.name, "description": feed.description, "batch": batch, "steps": steps,
                         "warmup_steps": warmup, "seconds": seconds, "images_per_s": ips,
                         "data_wait_seconds": wait, "data_wait_fraction": wait / seconds,
                         "last_loss": float(loss), "peak_memory_gib": peak})
            table_rows.append([feed.name, batch, steps, seconds, ips, wait / seconds, peak])
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
    if profiled is not None:
        record["profile"] = profiled
    title = (f"{args.arch} (width {width}) training steps on {env['device']}, batch {batch}, {crop}x{crop}, "
             f"T={args.timesteps}, amp={amp}")
    columns = ["feed", "batch", "steps", "seconds", "img/s", "of ceiling", "data wait", "peak GiB"]
    table = format_table(title, columns, table_rows)
    if profiled is not None:
        table += "\n\n" + format_table(
            f"One step fed by {profiled['feed']}: {profiled['what']} (total {profiled['total_ms']:.1f} ms)",
            ["name", "ms", "calls", "share"],
            [[r["name"][:70], r["ms"], r["calls"], r["share"]] for r in profiled["top"]])
    return finish(record, table, args)
