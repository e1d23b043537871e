"""The authors' I2E data-set catalog and generation protocol as ``i2e-export --preset NAME``.

Protocol (the hub's README, UESTC-BICS/I2E): convert to RGB (grey sources too), resize to (H, W) with
BICUBIC interpolation, scale to float [0, 1], I2E in evaluation mode. Here: DALI decodes to RGB, the
plain resize view resizes straight to size x size with DALI's cubic filter (antialiased when shrinking, as
PIL's resize is), the conversion reads uint8 as ``u * float32(1/255)``, evaluation mode. A preset sets
the source kind, size, ratio, view, interpolation and the Parquet format; flags the user gives still win.
After the export, the summary's event rate is compared with the catalog's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Preset", "PRESETS", "SOURCE_KINDS", "rate_check", "preset_table", "add_catalog_arguments",
           "resolve_catalog_arguments", "print_shares"]

SOURCE_KINDS = ("imagenet", "folder", "cifar10", "cifar100", "mnist", "fashionmnist", "caltech101", "caltech256",
                "mini-imagenet")


@dataclass(frozen=True)
class Preset:
    config: str  # the hub's config name (and a good --out folder name)
    dataset: str  # source kind (i2e_dali.data.sources.open_source)
    size: int
    ratio: float
    rate: float  # the catalog's measured event rate (share of the T x 2 x H x W cells that fire)


PRESETS: dict[str, Preset] = {
    "i2e-cifar10": Preset("I2E-CIFAR10", "cifar10", 128, 0.07, 0.0586),
    "i2e-cifar100": Preset("I2E-CIFAR100", "cifar100", 128, 0.07, 0.0576),
    "i2e-imagenet": Preset("I2E-ImageNet", "imagenet", 224, 0.12, 0.0666),
    "i2e-caltech101": Preset("I2E-Caltech101", "caltech101", 224, 0.12, 0.0625),
    "i2e-caltech256": Preset("I2E-Caltech256", "caltech256", 224, 0.12, 0.0604),
    "i2e-mini-imagenet": Preset("I2E-Mini-ImageNet", "mini-imagenet", 224, 0.12, 0.0665),
    "i2e-mnist": Preset("I2E-MNIST", "mnist", 32, 0.10, 0.0956),
    "i2e-fashionmnist": Preset("I2E-FashionMNIST", "fashionmnist", 32, 0.15, 0.1076),
}
INTERP = "cubic"  # the protocol's BICUBIC
VIEW = "resize"  # straight to size x size, every split
FORMAT = "parquet"
# A rate off the catalog's by more than this factor (either way) is flagged: different source images,
# ratio or resize would show; the sampling spread of a few hundred images does not reach it.
RATE_TOLERANCE = 1.25


def rate_check(preset: str, rate: float) -> tuple[bool, str]:
    """(ok, message) comparing an export's mean event rate with the catalog's figure for ``preset``."""
    p = PRESETS[preset]
    if rate <= 0:
        return False, f"{p.config}: no events were written (catalog: {100 * p.rate:.2f} %)"
    factor = rate / p.rate
    ok = abs(math.log(factor)) <= math.log(RATE_TOLERANCE)
    text = (f"{p.config}: event rate {100 * rate:.2f} % vs the catalog's {100 * p.rate:.2f} % "
            f"({factor:.2f}x)")
    if not ok:
        text = ("WARNING " + text + f" - more than {RATE_TOLERANCE:.2f}x off: check the source images, "
                "--ratio and the resize (a small or unusual subset can also do this)")
    return ok, text


def preset_table() -> str:
    rows = ["| preset | config | source | size | ratio | catalog event rate |", "|---|---|---|---|---|---|"]
    for name, p in PRESETS.items():
        rows.append(f"| `{name}` | {p.config} | {p.dataset} | {p.size}x{p.size} | {p.ratio} | {100 * p.rate:.2f} % |")
    return "\n".join(rows)


def add_catalog_arguments(p) -> None:
    """i2e-export's flags for the authors' Parquet layout, presets and protocol."""
    g = p.add_argument_group("the authors' catalog and Parquet layout")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="the catalog's settings: source kind, size, ratio, plain resize, bicubic, Parquet "
                        "(flags you give still win)")
    g.add_argument("--size", type=int, default=None, help="frame side (default: the source's or the preset's)")
    g.add_argument("--interp", default=None, choices=("linear", "cubic", "lanczos3", "triangular", "nn"),
                   help="resize interpolation (default linear; cubic with --preset = the protocol's BICUBIC)")
    g.add_argument("--rows-per-shard", type=int, default=None, help="parquet: rows per shard (default ~512 MB)")
    g.add_argument("--row-group-rows", type=int, default=None, help="parquet: rows per row group (default ~32 MB)")


def resolve_catalog_arguments(p, args):
    if args.preset is not None:
        kind = PRESETS[args.preset].dataset
        if args.dataset not in (None, kind):
            p.error(f"--preset {args.preset} reads a {kind} source; drop --dataset {args.dataset}")
        args.dataset = kind
    args.dataset = args.dataset or "imagenet"
    args.format = args.format or ("parquet" if args.preset else "dense")
    for flag in ("size", "rows_per_shard", "row_group_rows"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


def print_shares(summary) -> None:
    """Each rank's share of a split (several ranks), and the preset's event-rate check."""
    if len(summary.shares) > 1:
        parquet = any(sh.get("shards") or sh.get("shards_skipped") for sh in summary.shares)
        for sh in summary.shares:
            what = f"{sh['shards']} shards ({sh['files']} rows)" if parquet else f"{sh['files']} files"
            print(f"  rank {sh['rank']}: {what} written ({sh['skipped']} skipped), "
                  f"{sh['bytes'] / 1024:.1f} KB, {sh['seconds']:.1f} s")
    if summary.rate_note:
        print("  " + summary.rate_note)
