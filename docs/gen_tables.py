"""Write every generated table in README.md and docs/ from committed files, or check that none is stale.

    python docs/gen_tables.py            # rewrite the blocks between the markers
    python docs/gen_tables.py --check    # exit 1 naming every stale block (tests/test_docs.py runs this)

A block looks like this in a Markdown file (the name picks the generator below):

    <!-- generated: demo-epochs (python docs/gen_tables.py) -->
    ...table...
    <!-- end generated: demo-epochs -->

Sources: benchmarks/results/cpu/ (CPU reference runs: demo/ = the demo's metrics.jsonl, config.yaml and run.json;
interp-compare.json; scale-*.json from `i2e-bench scale`),
benchmarks/results/*-proof.json (GPU proofs), pyproject.toml ([project.scripts]) and the recipe registry
(i2e_dali.training.recipes). A measured number in the docs that is not in such a block carries the date
and the command that gave it. Edit the sources, never the blocks: the next --check would fail.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(?P<head><!-- generated: (?P<name>[a-z0-9-]+) \(python docs/gen_tables.py\) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<tail><!-- end generated: (?P=name) -->)",
    re.S,
)
DEMO = Path("benchmarks/results/cpu/demo")
INTERP = Path("benchmarks/results/cpu/interp-compare.json")
SCALE = "benchmarks/results/cpu/scale-*.json"  # one file per i2e-bench scale run

# One line per console script, with the guide that explains it. A script in pyproject.toml without a line
# here makes --check fail: every CLI is in the table.
CLIS = {
    "i2e-train": ("train a spiking network (same as `python train_dali.py`)", "training"),
    "i2e-check": ("find every file the pipeline cannot decode, before a long run", "bad-data"),
    "i2e-bench": ("benchmarks: convert, loader, train, corpus, the GPU proof", "benchmarks"),
    "i2e-export": ("export an image set as an I2E event set (npz or Parquet), also under torchrun",
                   "datasets"),
    "i2e-shard": ("pack an image folder into WebDataset tar shards for `--dataset wds`", "datasets"),
    "i2e-viz": ("events of an image as an animated GIF and a contact sheet", "datasets"),
    "i2e-calibrate": ("find the ratio that gives a target event rate on your images", "datasets"),
    "i2e-report": ("firing rates, operation counts and energy estimate of a checkpoint", "energy"),
    "i2e-export-nir": ("export a trained network as a NIR graph for neuromorphic hardware", "nir"),
}

TITLES = {"training": "Training", "bad-data": "Bad data", "benchmarks": "Benchmarks", "datasets": "Data sets",
          "energy": "Energy report", "nir": "NIR export", "loader": "Loader", "cluster": "Cluster"}


def _link(md_file: Path, root: Path, page: str) -> str:
    target = root / "docs" / "guides" / f"{page}.md"
    return Path(os.path.relpath(target, md_file.parent)).as_posix()


def gen_clis(root: Path, md_file: Path) -> str:
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    missing = sorted(set(scripts) - set(CLIS))
    if missing:
        raise SystemExit(f"gen_tables: console script(s) {', '.join(missing)} in pyproject.toml have no line in "
                         "CLIS (docs/gen_tables.py): add what each does and its guide")
    rows = ["| command | what it does | guide |", "|---|---|---|"]
    for name in scripts:
        what, page = CLIS[name]
        rows.append(f"| `{name}` | {what} | [{TITLES[page]}]({_link(md_file, root, page)}) |")
    return "\n".join(rows) + "\n"


def _demo(root: Path) -> tuple[list[dict], dict, dict]:
    folder = root / DEMO
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line) for line in lines if line.strip()]
    config = yaml.safe_load((folder / "config.yaml").read_text())
    run = json.loads((folder / "run.json").read_text())
    return epochs, config, run


def gen_demo_summary(root: Path, md_file: Path) -> str:
    epochs, config, run = _demo(root)
    last = epochs[-1]
    train_s = sum(e["epoch_time_s"] for e in epochs)
    ips = sum(e["train_img_per_s"] for e in epochs) / len(epochs)
    wait = sum(e["train_data_wait_fraction"] for e in epochs) / len(epochs)
    return (
        f"| demo run | {run['date']}, {run['machine']} |\n|---|---|\n"
        f"| command | `{run['command']}` |\n"
        f"| model | {config['model']['arch']} width {config['model']['width']}, T={config['data']['timesteps']}, "
        f"{config['data']['size']} px, {len(epochs)} epochs, batch {config['optim']['batch_size']} |\n"
        f"| best / last validation top-1 | **{last['best_top1']:.2f} %** / {last['val_top1']:.2f} % "
        f"({last['val_count']} images, chance 10 %) |\n"
        f"| time | {train_s:.0f} s for {len(epochs)} epochs with evaluation; {run['wall_s']:.0f} s wall with start-up "
        f"and data generation |\n"
        f"| mean speed, data wait | {ips:.0f} img/s, {100 * wait:.1f} % (code at {run['code']}) |\n"
    )


def gen_demo_epochs(root: Path, md_file: Path) -> str:
    epochs, _, _ = _demo(root)
    rows = ["| epoch | val top-1 | val top-5 | val loss | train loss | train img/s | data wait |",
            "|---|---|---|---|---|---|---|"]
    for e in epochs:
        rows.append(f"| {e['epoch']} | {e['val_top1']:.2f} % | {e['val_top5']:.2f} % | {e['val_loss']:.4f} | "
                    f"{e['train_loss']:.4f} | {e['train_img_per_s']:.0f} | "
                    f"{100 * e['train_data_wait_fraction']:.1f} % |")
    return "\n".join(rows) + "\n"


def _si(value: float, unit: str) -> str:
    """``1.55e-06, "J"`` -> ``1.55 µJ``; ``1.72e6, "ACs"`` -> ``1.72 M ACs``."""
    prefixes = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"))
    if value == 0:
        return f"0 {unit}"
    for scale, prefix in prefixes:
        if abs(value) >= scale:
            break
    sep = " " if unit.endswith("s") else ""  # "M ACs", but "µJ"
    return f"{value / scale:.3g} {prefix}{sep}{unit}".replace("  ", " ")


def gen_demo_energy(root: Path, md_file: Path) -> str:
    rep = json.loads((root / DEMO / "report.json").read_text())
    run = json.loads((root / DEMO / "run.json").read_text())
    t, enc, m, inp = rep["totals"], rep["encoding"], rep["model"], rep["input"]
    e = rep["energy_model"]
    rows = [
        f"| per image, {m['arch']} width {m['width']}, T={inp['timesteps']}, {inp['images']} images "
        f"(top-1 {inp['top1']:.2f} %) | |", "|---|---|",
        f"| mean firing rate (all neurons, all timesteps) | {100 * t['mean_firing_rate']:.1f} % |",
        f"| SNN: counted operations | {_si(t['acs_per_image'], 'ACs')} + {_si(t['macs_per_image'], 'MACs')} |",
        f"| SNN energy, counted (paper's formula ops × rate × T) | **{_si(t['snn_energy_pj'] * 1e-12, 'J')}** "
        f"({_si(t['snn_formula_energy_pj'] * 1e-12, 'J')}) |",
        f"| ANN equivalent (same layers, 3-channel input) | {_si(t['ann_macs_per_image'], 'MACs')} = "
        f"{_si(t['ann_energy_pj'] * 1e-12, 'J')} |",
        f"| ANN / SNN energy | **{t['ann_over_snn']:.1f}×** |",
        f"| I2E encoding ({enc['height']}×{enc['width']}) | {_si(enc['acs'], 'ACs')} + {enc['macs']} MAC = "
        f"{_si(enc['energy_pj'] * 1e-12, 'J')}; ANN / (SNN + encoding) {t['ann_over_snn_plus_encoding']:.1f}× |",
    ]
    rows.append(f"\n*{e['e_mac_pj']} pJ/MAC, {e['e_ac_pj']} pJ/AC ({e['source']}). {run['date']}, {run['machine']}: "
                f"`{run['report_command']}` on the committed demo run ({run['report_wall_s']:.0f} s).*")
    return "\n".join(rows) + "\n"


def gen_gpu_proofs(root: Path, md_file: Path) -> str:
    proofs = sorted((root / "benchmarks" / "results").glob("*-proof.json"))
    if not proofs:
        return ("No GPU result is committed yet: `benchmarks/results/` holds no `*-proof.json`, and no number in "
                "these docs was measured on a GPU.\n")
    rows = ["| proof | device | date | goal | target | measured | verdict |", "|---|---|---|---|---|---|---|"]
    for path in proofs:
        rec = json.loads(path.read_text())
        env = rec.get("environment", {})
        for g in rec.get("goals", []):
            rows.append(f"| `{path.name}` | {env.get('device', '?')} | {env.get('date', '?')[:10]} | {g['goal']} | "
                        f"{g['target']} | {g['measured']} | {g['verdict']} |")
    return "\n".join(rows) + "\n"


def _recipes() -> dict:
    """The recipe registry. recipes.py is plain data: loaded on its own it spares importing torch and
    DALI through the package (seconds per check); through the package if it ever imports a sibling."""
    import importlib.util

    path = ROOT / "i2e_dali" / "training" / "recipes.py"
    try:
        spec = importlib.util.spec_from_file_location("_i2e_recipes", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    except ImportError:
        from i2e_dali.training import recipes as module
    return module.RECIPES


def gen_recipes(root: Path, md_file: Path) -> str:
    RECIPES = _recipes()

    rows = ["| recipe | paper row | data | model | epochs | expected top-1 (paper) | pre-training |",
            "|---|---|---|---|---|---|---|"]
    for r in RECIPES.values():
        s = r.settings
        top1 = "n/a here" if r.expected_top1 is None else f"{r.expected_top1:.2f}"
        pre = f"`--recipe {r.pretrain}`" if r.pretrain else ("your `--pretrained`" if r.needs_pretrained else "–")
        rows.append(f"| `{r.name}` | {r.row} | {s['dataset']} | {s['arch']} | {s['epochs']} | {top1} | {pre} |")
    return "\n".join(rows) + "\n"


def gen_interp(root: Path, md_file: Path) -> str:
    rec = json.loads((root / INTERP).read_text())
    rows = ["| case | mean abs pixel diff (0–255) | max | pixels equal | event cells agree | event F1 | "
            "event rate DALI / PIL |", "|---|---|---|---|---|---|---|"]
    for case, r in rec["results"].items():
        rows.append(f"| {case} | {r['mean_abs_pixel_diff']:.3f} | {r['max_abs_pixel_diff']} | "
                    f"{100 * r['share_pixels_equal']:.1f} % | {100 * r['event_cells_agree']:.3f} % | "
                    f"{r['event_f1']:.3f} | {100 * r['rate_dali']:.2f} % / {100 * r['rate_pil']:.2f} % |")
    n = {r["images"] for r in rec["results"].values()}
    rows.append(f"\n*{'/'.join(map(str, sorted(n)))} images, {rec['date']}, {rec['machine']}: `{rec['command']}`*")
    return "\n".join(rows) + "\n"


def gen_scale(root: Path, md_file: Path) -> str:
    """Every committed ``i2e-bench scale`` run, one row per run and file count (the machine is shared, so
    the spread between runs is part of the answer)."""
    rows = ["| files | run | scan on every rank | index write (rank 0, once) | start from the index | "
            "+ EventLoader (train, 1 rank) | tar-shard manifest | + EventLoader on shards |",
            "|---|---|---|---|---|---|---|---|"]
    runs = sorted((json.loads(p.read_text()) for p in sorted(root.glob(SCALE))),
                  key=lambda rec: rec["environment"]["date"])
    for r, rec in sorted(((r, rec) for rec in runs for r in rec["results"]),
                         key=lambda x: (x[0]["files"], x[1]["environment"]["date"])):
        sc, wr, ix, ld = r["scan"], r["index-write"], r["from-index"], r["loader"]
        sh, sl = r.get("shards"), r.get("shards-loader")
        rows.append(f"| {r['files']:,} | {rec['environment']['date'][11:16]} | {sc['source_s']:.2f} s, "
                    f"+{sc['extra_rss_mb']:.0f} MB | {wr['source_s']:.2f} s | {ix['source_s']:.2f} s, "
                    f"+{ix['extra_rss_mb']:.0f} MB | {ld['loader_s']:.2f} s, +{ld['loader_extra_rss_mb']:.0f} MB "
                    f"in all | " + (f"{sh['source_s']:.2f} s, +{sh['extra_rss_mb']:.0f} MB" if sh else "–") + " | "
                    + (f"{sl['loader_s']:.2f} s, +{sl['loader_extra_rss_mb']:.0f} MB in all" if sl else "–") + " |")
    env = runs[-1]["environment"]
    rows.append(f"\n*{env['date'][:10]} (run = UTC time), {env['cpu_cores']}-core {env['cpu']} shared with other "
                f"jobs, hard links to real JPEGs in {runs[-1]['settings']['classes']} classes, warm page cache, each "
                f"step a fresh process: `i2e-bench scale --out DIR --files 10000 1281167 [--shards]`*")
    return "\n".join(rows) + "\n"


def gen_config_keys(root: Path, md_file: Path) -> str:
    import dataclasses

    from i2e_dali.training.config import SECTIONS

    rows = ["| key | flag | built-in default | allowed |", "|---|---|---|---|"]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            allowed = " ".join(f"`{c}`" for c in meta.get("choices") or ()) or meta.get("rule") or ""
            flag = meta.get("flag") or "--" + f.name.replace("_", "-")
            rows.append(f"| `{section}.{f.name}` | `{flag}` | `{default!r}` | {allowed} |")
    return "\n".join(rows) + "\n"


GENERATORS = {
    "config-keys": gen_config_keys,
    "demo-energy": gen_demo_energy,
    "folder-scale": gen_scale,
    "interp-compare": gen_interp,
    "clis": gen_clis,
    "demo-summary": gen_demo_summary,
    "demo-epochs": gen_demo_epochs,
    "gpu-proofs": gen_gpu_proofs,
    "recipes": gen_recipes,
}


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def process(root: Path, *, check: bool) -> list[str]:
    """Regenerate every block under ``root``; return the stale ones as 'file: name' (written unless check)."""
    stale = []
    for md in markdown_files(root):
        text = md.read_text()

        def fill(m: re.Match) -> str:
            name = m["name"]
            if name not in GENERATORS:
                raise SystemExit(f"gen_tables: {md}: unknown block {name!r} (known: {', '.join(GENERATORS)})")
            body = GENERATORS[name](root, md)
            if body != m["body"]:
                stale.append(f"{md.relative_to(root)}: {name}")
            return m["head"] + body + m["tail"]

        new = BLOCK.sub(fill, text)
        if new != text and not check:
            md.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is stale")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = ap.parse_args(argv)
    stale = process(args.root.resolve(), check=args.check)
    if args.check and stale:
        print("stale generated tables (run `python docs/gen_tables.py` and commit):", *stale, sep="\n  ")
        return 1
    print(("checked" if args.check else "wrote"), "generated tables:", "stale: " + ", ".join(stale) if stale
          else "all up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
