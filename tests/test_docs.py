"""The documentation a user reads: the README's limits and commands, the strict docs build, the generated
tables (fresh, and a stale one is caught), every name the docs import exists, and the release's version.

These run in CI's `pytest`, so a broken link, a missing API reference, a hand-edited measured number or a
renamed function the docs still mention fails the build.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GEN = ROOT / "docs" / "gen_tables.py"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEMO_COMMAND = "pip install -e . && python train_dali.py"
TEST_COMMAND = 'pip install -e ".[test]" && pytest'


def _docs_markdown() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _gen(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GEN), "--root", str(root), *args], capture_output=True,
                          text=True, timeout=120)


def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "README.md over 250 lines: move detail into docs/"
    assert DEMO_COMMAND in text
    assert TEST_COMMAND in text
    # CI runs the README's test command verbatim
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_readme_reaches_every_cli_and_the_three_uses():
    text = README.read_text()
    for script in PYPROJECT["project"]["scripts"]:
        assert f"`{script}`" in text, f"console script {script} is not in the README's table"
    for page in ("docs/guides/loader.md", "docs/guides/training.md", "docs/guides/benchmarks.md"):
        assert f"({page})" in text, f"README does not link {page}"


def test_version_agrees_everywhere():
    import i2e_dali

    version = PYPROJECT["project"]["version"]
    assert i2e_dali.__version__ == version
    out = subprocess.run([sys.executable, "-c", "import i2e_dali; print(i2e_dali.__version__)"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == version
    assert re.search(rf"^## {re.escape(version)} \(", (ROOT / "CHANGELOG.md").read_text(), re.M), \
        f"CHANGELOG.md has no section for {version}"


def test_license_file_matches_pyproject():
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def test_generated_tables_are_current():
    out = _gen("--check")
    assert out.returncode == 0, out.stdout + out.stderr


def _copy_for_tables(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(README, root / "README.md")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("*.png"))
    shutil.copytree(ROOT / "benchmarks" / "results", root / "benchmarks" / "results")
    return root  # fresh: test_generated_tables_are_current checks the same files


def _generated_block(text: str, name: str) -> tuple[int, int]:
    start = text.index(f"<!-- generated: {name} ")
    return start, text.index(f"<!-- end generated: {name} -->", start)


def test_check_fails_when_a_number_in_a_table_is_edited(tmp_path):
    root = _copy_for_tables(tmp_path)
    page = root / "docs" / "getting-started.md"
    text = page.read_text()
    start, end = _generated_block(text, "demo-summary")
    block = text[start:end]
    number = re.search(r"\*\*(\d+\.\d\d) %\*\*", block)  # the best top-1, in bold
    assert number, block
    edited = block.replace(number[0], f"**{float(number[1]) + 1:.2f} %**")
    page.write_text(text[:start] + edited + text[end:])
    out = _gen("--check", root=root)
    assert out.returncode == 1
    assert "docs/getting-started.md: demo-summary" in out.stdout
    # writing mode puts the measured number back, and the check passes again
    assert _gen(root=root).returncode == 0
    assert number[0] in page.read_text()
    assert _gen("--check", root=root).returncode == 0


def test_check_fails_when_the_source_of_a_table_changes(tmp_path):
    root = _copy_for_tables(tmp_path)
    metrics = root / "benchmarks" / "results" / "cpu" / "demo" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[-1] = re.sub(r'"val_top1": [0-9.]+', '"val_top1": 12.5', lines[-1])
    metrics.write_text("\n".join(lines) + "\n")
    out = _gen("--check", root=root)
    assert out.returncode == 1
    assert "demo-epochs" in out.stdout


def test_a_new_gpu_proof_makes_its_table_stale(tmp_path):
    """The first GPU session commits benchmarks/results/<gpu>-<date>-proof.json: the check then asks for the
    table, and the written table carries the proof's goals."""
    root = _copy_for_tables(tmp_path)
    record = {"mode": "proof", "environment": {"device": "NVIDIA H200", "date": "2026-12-01T10:00:00+00:00"},
              "goals": [{"goal": "fused float16 224x224 B=256 T=8: share of the copy roofline",
                         "target": ">= 0.50", "measured": "0.61", "verdict": "met"}]}
    (root / "benchmarks" / "results" / "nvidia-h200-2026-12-01-proof.json").write_text(json.dumps(record))
    out = _gen("--check", root=root)
    assert out.returncode == 1 and "gpu-proofs" in out.stdout
    assert _gen(root=root).returncode == 0
    text = (root / "docs" / "guides" / "benchmarks.md").read_text()
    assert "| `nvidia-h200-2026-12-01-proof.json` | NVIDIA H200 | 2026-12-01 | fused float16" in text
    assert "| >= 0.50 | 0.61 | met |" in text


def test_check_fails_on_a_cli_without_a_table_row(tmp_path):
    root = _copy_for_tables(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        "[project.scripts]\n", '[project.scripts]\ni2e-newtool = "i2e_dali.tools.newtool:main"\n'))
    out = _gen("--check", root=root)
    assert out.returncode != 0
    assert "i2e-newtool" in out.stdout + out.stderr


def test_docs_build_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    api = "".join((site / "reference" / page / "index.html").read_text()
                  for page in ("convert", "data", "training"))
    for name in ("i2e_convert", "I2E", "EventLoader", "FrameLoader", "make_loader", "TrainConfig", "train"):
        assert re.search(rf'id="i2e_dali\.[\w.]*\b{name}"', api), f"the API reference does not document {name}"


_DOTTED = re.compile(r"\b(i2e_dali(?:\.[A-Za-z_]\w*)+)")
_FROM_IMPORT = re.compile(r"^\s*from (i2e_dali[\w.]*) import \(?([\w, ]+)\)?", re.M)


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_python_name_in_the_docs_exists():
    """A renamed function or module that a page still mentions fails here."""
    missing = []
    for md in _docs_markdown():
        text = md.read_text()
        names = {m for m in _DOTTED.findall(text)}
        for module, imported in _FROM_IMPORT.findall(text):
            names.update(f"{module}.{n.strip()}" for n in imported.split(",") if n.strip())
        missing += [f"{md.relative_to(ROOT)}: {name}" for name in sorted(names) if not _resolve(name)]
    assert not missing, "names in the docs that the package does not have:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", ["guides/loader.md", "guides/training.md", "guides/cluster.md"])
def test_guides_are_written(page):
    text = (ROOT / "docs" / page).read_text()
    assert "being written" not in text and len(text.splitlines()) > 20


# Flags of other programs the pages show (pip, torchrun, sbatch, the hub's CLI, TensorBoard) and the authors'.
_FOREIGN_FLAGS = {"--help", "--index-url", "--include", "--local-dir", "--repo-type", "--revision", "--logdir",
                  "--nnodes", "--node_rank", "--nproc_per_node", "--rdzv_endpoint", "--rdzv_backend",
                  "--rdzv_id", "--max-restarts", "--standalone", "--shuffle", "--no-deps", "--upgrade",
                  "--nodes", "--signal", "--requeue", "--time", "--gpus-per-node", "--ntasks-per-node"}


def test_every_flag_in_the_docs_exists():
    """A flag a page shows is defined by one of the project's parsers (as a "--flag" string in the code)."""
    code = "".join(p.read_text() for p in [*ROOT.glob("i2e_dali/**/*.py"), *ROOT.glob("pipelines/*.py"),
                                           ROOT / "train_dali.py", *ROOT.glob("docs/**/*.py"),
                                           *ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/**/*.py")])
    missing = []
    for md in _docs_markdown():
        if md == ROOT / "docs" / "README.md":  # the docs' own maintenance commands (chromium, mkdocs)
            continue
        for flag in sorted(set(re.findall(r"(?<![\w-])(--[a-z]\w*(?:-[a-z]\w*)*)", md.read_text())) - _FOREIGN_FLAGS):
            if f'"{flag}"' not in code and f"'{flag}'" not in code:
                missing.append(f"{md.relative_to(ROOT)}: {flag}")
    assert not missing, "flags in the docs that no parser defines:\n" + "\n".join(missing)


def test_the_definition_page_and_the_code_agree():
    """docs/concepts/i2e.md is the conversion's definition (the bit-exact tests are written from it): its motion
    table, default order and numbered orders are the ones the code uses."""
    from i2e_dali import DEFAULT_ORDER, MOTION_GROUPS
    from i2e_dali.convert.spec import GROUP_LETTERS, parse_order

    text = (ROOT / "docs" / "concepts" / "i2e.md").read_text()
    rows = re.findall(r"^\| ([a-h]) \| (\d) \| ((?:`\[\d,\d\]` ?)+)\|$", text, re.M)
    assert len(rows) == 8, rows
    for letter, index, motions in rows:
        assert GROUP_LETTERS.index(letter) == int(index)
        assert tuple(tuple(map(int, m)) for m in re.findall(r"\[(\d),(\d)\]", motions)) == MOTION_GROUPS[int(index)]
    assert "default order is `e f g h a b c d`" in text
    assert "".join(GROUP_LETTERS[g] for g in DEFAULT_ORDER) == "efghabcd"
    presets = dict(re.findall(r"(\d) `([a-h]{8})`", text))
    assert len(presets) == 6
    for number, letters in presets.items():
        assert "".join(GROUP_LETTERS[g] for g in parse_order(int(number))) == letters
