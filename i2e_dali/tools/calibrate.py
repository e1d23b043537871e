"""Find the threshold ratio that gives a target mean event rate on a sample of a data set.

``python -m i2e_dali.tools.calibrate --data ROOT --target-rate 0.05`` (console script ``i2e-calibrate``).

The paper picks its ratios this way (0.12 for ImageNet at 224x224 gives about 5 % of pixels firing).
The event rate is the mean over timesteps, polarities, pixels and images of the evaluation-mode events
(canonical motions), computed with the one conversion, ``i2e_convert``. Since the threshold is
``ratio * range`` and ON/OFF fire when ``|d| >= threshold``, the rate is a non-increasing step
function of the ratio, so bisection on the ratio finds where it crosses the target. Of the two
ratios that bracket the crossing (``tol`` apart) the one whose rate is closer to the target wins.

Images come from the data set's evaluation view through the project's DALI graph (``pipelines/``),
decoded on the CPU: a calibration sample is small and the CPU graph gives the same pixels everywhere.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..convert import i2e_convert, parse_order
from ..placement import DEFAULT_SEED

__all__ = ["Calibration", "event_rate_at", "find_ratio", "load_sample", "main"]

_MIN_RATIO, _MAX_RATIO = 1e-6, 1.0 - 1e-6  # i2e_convert takes ratios in the open interval (0, 1)


@dataclass
class Calibration:
    ratio: float
    rate: float  # mean event rate at ``ratio``
    target: float
    per_timestep: list[list[float]] = field(default_factory=list)  # [T][ON, OFF]
    bracket: tuple[float, float] = (0.0, 1.0)  # ratios whose rates straddle the target
    bracket_rates: tuple[float, float] = (0.0, 0.0)
    evaluations: int = 0
    samples: int = 0
    reachable: bool = True


def event_rate_at(
    images: torch.Tensor,
    ratio: float,
    *,
    timesteps: int = 8,
    order: Sequence[int] | str | None = None,
    chunk: int = 64,
) -> tuple[float, torch.Tensor]:
    """(mean event rate, per-timestep-and-polarity rate ``[T, 2]``) of ``images`` at ``ratio``."""
    counts = None
    n = images.shape[0]
    for lo in range(0, n, chunk):
        ev = i2e_convert(images[lo : lo + chunk], ratio=ratio, timesteps=timesteps, order=order,
                         train=False, dtype=torch.bool)
        c = torch.count_nonzero(ev, dim=(1, 3, 4)).to(torch.float64)  # [T, 2]
        counts = c if counts is None else counts + c
    per = counts / (n * images.shape[2] * images.shape[3])
    return float(per.mean()), per


def find_ratio(
    images: torch.Tensor,
    target: float,
    *,
    timesteps: int = 8,
    order: Sequence[int] | str | None = None,
    tol: float = 1e-4,
    chunk: int = 64,
    progress: bool | None = None,
) -> Calibration:
    """Bisection for the ratio whose mean event rate is closest to ``target`` (to within ``tol`` in ratio)."""
    if not (isinstance(target, (int, float)) and 0.0 < target < 1.0):
        raise ValueError(f"target rate must be a fraction in (0, 1), e.g. 0.05 for 5 % of pixels, got {target!r}")
    if not (isinstance(tol, (int, float)) and 0.0 < tol < 0.5):
        raise ValueError(f"tol must be in (0, 0.5), got {tol!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty [N, 3, H, W] tensor")
    cache: dict[float, tuple[float, torch.Tensor]] = {}

    def rate(r: float) -> float:
        if r not in cache:
            cache[r] = event_rate_at(images, r, timesteps=timesteps, order=order, chunk=chunk)
        return cache[r][0]

    lo, hi = _MIN_RATIO, _MAX_RATIO
    steps = max(1, math.ceil(math.log2((hi - lo) / tol)))
    bar = tqdm(total=steps + 2, desc="calibrating", unit="step", disable=True if progress is False else None, leave=False)
    r_lo, r_hi = rate(lo), rate(hi)
    bar.update(2)
    reachable = r_hi <= target <= r_lo
    if reachable:
        # Invariant: rate(lo) >= target > rate(hi) (the rate does not increase with the ratio).
        if r_hi == target:
            lo = hi
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if rate(mid) >= target:
                lo = mid
            else:
                hi = mid
            bar.update(1)
    bar.close()
    best = lo if abs(rate(lo) - target) <= abs(rate(hi) - target) else hi
    value, per = cache[best]
    return Calibration(
        ratio=best, rate=value, target=float(target), per_timestep=per.tolist(), bracket=(lo, hi),
        bracket_rates=(rate(lo), rate(hi)), evaluations=len(cache), samples=int(images.shape[0]),
        reachable=reachable,
    )


# --------------------------------------------------------------------------------------------------
# the sample: evaluation-view pixels from the project's DALI graphs
# --------------------------------------------------------------------------------------------------
def load_sample(
    source,
    count: int,
    *,
    view: str = "crop",
    seed: int = DEFAULT_SEED,
    batch_size: int = 32,
    num_threads: int = 2,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``count`` randomly chosen samples of ``source`` (seeded) in the evaluation view: uint8 [N,3,H,W].

    Decoded once through the EventLoader (``Conversion(output="images")``), so the bisection converts the same
    pixels many times without decoding again.
    """
    from ..convert import Conversion
    from ..data.event_loader import DaliOptions, EventLoader

    n = len(source.samples)
    if n == 0:
        raise ValueError(f"{source!r} holds no samples")
    count = min(int(count), n)
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    loader = EventLoader(
        source.subset(chosen.tolist()), min(batch_size, count), train=False, conversion=Conversion(output="images"),
        eval_view=view, device=device, dali=DaliOptions(num_threads=num_threads), shard_id=0, num_shards=1,
    )
    return torch.cat([images for images, _ in loader])


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="i2e-calibrate",
        description="Find the I2E threshold ratio giving a target mean event rate on a sample of a data set.",
    )
    p.add_argument("--data", required=True, type=Path, help="ImageNet-style root (with val/ and train/) or CIFAR folder")
    p.add_argument("--target-rate", required=True, type=float, help="mean event rate wanted, e.g. 0.05")
    p.add_argument("--dataset", choices=("imagenet", "cifar10", "cifar100"), default="imagenet")
    p.add_argument("--split", choices=("train", "val"), default="val")
    p.add_argument("--samples", type=int, default=256, help="images in the sample (random, seeded)")
    p.add_argument("--view", choices=("auto", "crop", "resize"), default="auto",
                   help="ImageNet view: crop = resize 256 + centre crop 224, resize = 224x224 "
                        "(auto: crop for val, resize for train, as the export)")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--order", default=None, help="group order (default efghabcd)")
    p.add_argument("--tol", type=float, default=1e-4, help="bisection stops when the ratio is known to this")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--device", default="auto", help="where to run the conversion: auto, cpu, cuda")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    from ..data.sources import open_source
    from ..placement import resolve_device

    try:
        order = parse_order(args.order, args.timesteps)
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
        device = resolve_device(args.device)
        source = open_source(args.data, args.split, args.dataset)
        view = args.view if args.view != "auto" else ("crop" if args.split == "val" else "resize")
        images = load_sample(source, args.samples, view=view, seed=args.seed, device=device)
        result = find_ratio(images, args.target_rate, timesteps=args.timesteps, order=order, tol=args.tol,
                            progress=False if args.no_progress else None)
    except (ValueError, OSError) as exc:
        print(f"i2e-calibrate: error: {exc}", file=sys.stderr)
        return 1
    letters = "abcdefgh"
    print(f"{result.samples} images from {args.data} ({args.split}, {args.dataset}, "
          f"{images.shape[2]}x{images.shape[3]}), target mean event rate {args.target_rate:g}")
    if not result.reachable:
        print(f"warning: the target is outside the reachable rates [{result.bracket_rates[1]:.4f}, "
              f"{result.bracket_rates[0]:.4f}] of ratios in (0, 1); closest ratio given", file=sys.stderr)
    print(f"ratio {result.ratio:.4f} -> mean event rate {result.rate:.4f} "
          f"(bracket {result.bracket[0]:.5f}..{result.bracket[1]:.5f} gives {result.bracket_rates[0]:.4f}.."
          f"{result.bracket_rates[1]:.4f}; {result.evaluations} conversions)")
    print("event rate per timestep:   t  group   ON      OFF     mean")
    for t, (on, off) in enumerate(result.per_timestep):
        print(f"                          {t:2d}  {letters[order[t]]}      {on:.4f}  {off:.4f}  {(on + off) / 2:.4f}")
    if args.json:
        from ..fsio import atomic_write_text

        payload = {**asdict(result), "data": str(args.data), "split": args.split, "dataset": args.dataset,
                   "view": view, "order": list(order)}
        atomic_write_text(args.json, json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
