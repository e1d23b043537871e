"""``i2e-report``: what a trained SNN spends, measured on real validation batches.

Per layer the firing rate per timestep, synaptic operations (ACs where the input is spikes or binary events,
MACs where it is not) and estimated energy; totals per image; the same layers as an ANN (MACs x 4.6 pJ) and
the ratio; the I2E encoding's own cost. Writes a table (terminal and report.txt), report.json and report.png.
The numbers come from :func:`i2e_dali.energy.measure_energy` (spikingjelly's op_counter and monitors).

    i2e-report --checkpoint runs/demo-msresnet18/best.pt                    # demo checkpoint: demo val set
    i2e-report --checkpoint runs/i2e-cifar10/best.pt --data /data/cifar-10-batches-py --batches 8
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "report_for_checkpoint"]


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="i2e-report",
        description="Firing rates, synaptic operations and estimated energy of a trained SNN checkpoint, per layer "
                    "and per image, against the same network as an ANN (the I2E paper's Appendix B model).",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a training checkpoint (last.pt / best.pt)")
    p.add_argument("--data", default=None, help="data set root (default: the checkpoint's; none for the demo)")
    p.add_argument("--dataset", default=None, help="data set kind (default: the checkpoint's)")
    p.add_argument("--batches", type=int, default=16, help="validation batches to measure (0 = all)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <checkpoint folder>/report)")
    p.add_argument("--ann-in-channels", type=int, default=3, help="input channels of the ANN compared against (RGB)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("-j", "--workers", type=int, default=None, help="loader threads")
    p.add_argument("--demo-dir", default=None, help="where the demo set lives (default: the checkpoint's)")
    return p.parse_args(argv)


def _trainer_config(ckpt: dict, args):
    """The trainer's settings for this checkpoint's evaluation view: its stored config (nested, or flat from
    before TrainConfig), with this CLI's overrides."""
    from ..training.checkpoint import saved_setting
    from ..training.config import TrainConfig, nest

    stored = ckpt.get("config") or {}
    saved = nest(stored)
    data, model, run = (saved.setdefault(k, {}) for k in ("data", "model", "run"))
    model["arch"] = ckpt.get("arch", model.get("arch", "msresnet18"))
    if ckpt.get("width") is not None:
        model["width"] = ckpt["width"]
    model["pretrained"] = None
    data["dataset"] = args.dataset or saved_setting(stored, "dataset") or ckpt.get("dataset")
    if args.data is not None:
        data["root"] = args.data
    elif data["dataset"] == "demo":
        data["root"] = None
    for key, value in (("demo_dir", args.demo_dir), ("workers", args.workers)):
        if value is not None:
            data[key] = value
    if args.batch_size is not None:
        saved.setdefault("optim", {})["batch_size"] = args.batch_size
    run.update(device=args.device, evaluate=True, resume=None, report=None, progress=False, tensorboard=False,
               report_batches=None, output_dir=str(args.out or args.checkpoint.parent))
    return TrainConfig.from_dict(saved, source=f"{args.checkpoint} (its stored config)")


def report_for_checkpoint(checkpoint, *, data=None, dataset=None, batches: int | None = 16, batch_size=None,
                          out=None, ann_in_channels: int = 3, device: str = "auto", workers=None,
                          demo_dir=None) -> tuple[dict, dict]:
    """Measure ``checkpoint`` on its validation set; returns (report, written file paths)."""
    from ..energy import measure_energy, write_report
    from ..training.checkpoint import load_checkpoint, load_state_into
    from ..training.data import build_loaders
    from ..training.runtime import init_runtime
    from ..training.run import model_for

    args = argparse.Namespace(checkpoint=Path(checkpoint), data=data, dataset=dataset, batches=batches,
                              batch_size=batch_size, out=out, device=device, workers=workers, demo_dir=demo_dir)
    ckpt = load_checkpoint(args.checkpoint)
    targs = _trainer_config(ckpt, args)
    rt = init_runtime(targs.run.device)
    _, val = build_loaders(targs, rt, need_train=False)
    if val.num_classes != ckpt.get("num_classes"):
        raise ValueError(f"{checkpoint} has {ckpt.get('num_classes')} classes, the data set {val.num_classes}")
    model = model_for(targs, ckpt["num_classes"])  # the run's own builder: --input rgb|v stems included
    load_state_into(model, ckpt["model"], source=str(checkpoint))
    model.to(rt.device)
    report = measure_energy(model, val, max_batches=batches or None, ann_in_channels=ann_in_channels,
                            encoding=targs.data.dataset != "cifar10-dvs")
    report["checkpoint"] = {"path": str(checkpoint), "epoch": ckpt.get("epoch"), "dataset": targs.data.dataset,
                            "best_top1": ckpt.get("best_top1")}
    out_dir = Path(out) if out is not None else Path(checkpoint).parent / "report"
    return report, write_report(report, out_dir)


def main(argv=None) -> int:
    args = _parse_args(argv)
    from ..energy import format_report
    from ..errors import I2EError

    try:
        report, paths = report_for_checkpoint(
            args.checkpoint, data=args.data, dataset=args.dataset, batches=args.batches, batch_size=args.batch_size,
            out=args.out, ann_in_channels=args.ann_in_channels, device=args.device, workers=args.workers,
            demo_dir=args.demo_dir)
    except (I2EError, ValueError, OSError) as e:
        if os.environ.get("I2E_DEBUG"):
            raise
        print(f"i2e-report: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"\nwrote {paths['table']}, {paths['json']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
