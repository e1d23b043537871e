"""The proof's verdicts against the issue's goals and its Markdown summary (pure functions of the record)."""
from __future__ import annotations

# (goal, target) pairs of the issue, measured side by side in one run
ROOFLINE_TARGET = 0.5
CONV_TARGET = 20.0
LOADER_TARGET = 3.0
TRAIN_TARGET = 0.95


def _record(record: dict, part: str) -> dict | None:
    return (record["parts"].get(part) or {}).get("record")


def _goal(goal: str, value, target: float, fmt: str, unit: str = "") -> dict:
    """One goal row: what was measured against the issue's target, formatted with ``fmt`` (a format spec)."""
    return {"goal": goal, "target": f">= {target:{fmt}}{unit}", "value": value,
            "measured": "-" if value is None else f"{value:{fmt}}{unit}",
            "verdict": "not measured" if value is None else ("met" if value >= target else "NOT met")}


def goals(record: dict) -> list[dict]:
    out = []
    conv = _record(record, "convert") or {}
    for dtype in ("bool", "float16", "float32"):
        row = next((r for r in conv.get("results", []) if r["impl"] == "fused" and r["size"] == 224
                    and r["batch"] == 256 and r["dtype"] == dtype and r["mode"] == "eval"), None) or {}
        out.append(_goal(f"fused {dtype} 224x224 B=256 T=8: share of the copy roofline",
                         row.get("roofline_fraction"), ROOFLINE_TARGET, ".0%"))
        out.append(_goal(f"fused {dtype} 224x224 B=256 T=8: speed-up over the conv baseline",
                         row.get("speedup_vs_conv"), CONV_TARGET, ".1f", "x"))
    loader = _record(record, "loader") or {}
    row = next((r for r in loader.get("results", []) if r["pipeline"] == "dali-gpu"), None) or {}
    out.append(_goal("DALI GPU loader vs the reference recipe (events/s on the device)",
                     row.get("speedup_vs_reference"), LOADER_TARGET, ".2f", "x"))
    train = _record(record, "train") or {}
    row = next((r for r in train.get("results", []) if r["feed"] == "dali-gpu"), None) or {}
    out.append(_goal("training fed by the DALI GPU loader vs the synthetic ceiling",
                     row.get("fraction_of_ceiling"), TRAIN_TARGET, ".3f", "x"))
    return out


def _table(columns: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "-" if v is None else str(v).replace("|", "/")

    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def markdown(record: dict) -> str:
    env = record["environment"]
    v = env.get("versions", {})
    lines = [f"# i2e-bench proof: {env['device']} ({env['date']})", "",
             f"{'Quick smoke run' if record['quick'] else 'Full run'} on {record['settings']['device']}, "
             f"{env['cpu_cores']} CPU cores ({env['cpu']}), python {env['python']}, torch {v.get('torch')} "
             f"(CUDA {v.get('torch_cuda')}), DALI {v.get('nvidia-dali')}, triton {v.get('triton')}, "
             f"spikingjelly {v.get('spikingjelly')}. Total {record['seconds']:.0f} s.", ""]
    lines += ["## Parts", ""] + _table(["part", "status", "seconds", "note"], [
        [name, p["status"], p.get("seconds"), p.get("reason")] for name, p in record["parts"].items()])
    lines += ["", "## Goals (issue 10)", ""] + _table(["goal", "target", "measured", "verdict"], [
        [g["goal"], g["target"], g["measured"], g["verdict"]] for g in record["goals"]])
    gt = record["parts"].get("gpu-tests", {})
    if gt.get("junit"):
        c = gt["junit"]["counts"]
        lines += ["", "## GPU tests", "", f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
                  f"{c['skipped']} skipped.", ""]
        bad = [t for t in gt["junit"]["tests"] if t["outcome"] in ("failed", "error")]
        lines += _table(["failed test", "message"], [[t["test"], (t["message"] or "")[:200]] for t in bad]) if bad else []
        props = [(t["test"], k, val) for t in gt["junit"]["tests"] for k, val in t["properties"].items()]
        if props:
            lines += ["", "Recorded by the tests:", ""] + _table(["test", "what", "value"], props)
    conv = _record(record, "convert")
    if conv:
        lines += ["", f"## Conversion (copy bandwidth {conv['copy_bandwidth_gb_per_s']:.0f} GB/s)", ""]
        lines += _table(["impl", "size", "batch", "dtype", "mode", "ms", "img/s", "GB/s", "roofline", "x conv",
                         "mismatches"],
                        [[r["impl"], r["size"], r["batch"], r["dtype"], r["mode"], r["median_ms"], r["images_per_s"],
                          r["gb_per_s"], r["roofline_fraction"], r["speedup_vs_conv"], r.get("mismatched_events")]
                         for r in conv["results"]])
    loader = _record(record, "loader")
    if loader:
        lines += ["", "## Loader (events/s on the device)", ""] + _table(
            ["pipeline", "batch", "img/s", "x reference", "description"],
            [[r["pipeline"], r["batch"], r["images_per_s"], r["speedup_vs_reference"], r["description"]]
             for r in loader["results"]])
    train = _record(record, "train")
    if train:
        s = train["settings"]
        lines += ["", f"## Training steps ({s['arch']} width {s['width']}, batch {s['batch_size']}, {s['crop']}px, "
                  f"T={s['timesteps']}, amp {s['amp']}, events {s['dtype']})", ""] + _table(
            ["feed", "img/s", "of ceiling", "data wait", "peak GiB"],
            [[r["feed"], r["images_per_s"], r.get("fraction_of_ceiling"), r["data_wait_fraction"],
              r.get("peak_memory_gib")] for r in train["results"]])
        prof = train.get("profile")
        if prof:
            lines += ["", f"One step fed by {prof['feed']}: {prof['what']} (total {prof['total_ms']:.1f} ms)", ""]
            lines += _table(["name", "ms", "calls", "share"],
                            [[r["name"][:90], r["ms"], r["calls"], r["share"]] for r in prof["top"]])
    cli = record["parts"].get("train-cli", {})
    if cli.get("metrics"):
        lines += ["", "## train_dali.py (normal CLI)", ""] + _table(
            ["epoch", "train img/s", "data wait", "train loss", "val top-1", "val images"],
            [[m.get("epoch"), m.get("train_img_per_s"), m.get("train_data_wait_fraction"), m.get("train_loss"),
              m.get("val_top1"), m.get("val_count")] for m in cli["metrics"]])
    failed = record["failed_parts"]
    lines += ["", f"**Failed parts: {', '.join(failed)}**" if failed else "**No part failed.**", ""]
    return "\n".join(lines)
