"""``i2e-bench proof``: everything the README claims about the GPU, measured in one time-boxed run.

Parts, in order, each in its own process with its own time limit (a hang or a crash costs that part
only; the process group is killed at the limit):

- ``environment``: device, library versions, which of DALI / spikingjelly / Triton / torchvision import;
- ``gpu-tests``: ``pytest -m gpu`` over the repository's tests, pass/fail per test (JUnit XML), with the
  numbers the tests record (decode agreement GPU vs CPU, the LIF kernel spikingjelly picked);
- ``convert``: ``i2e-bench convert`` (fused Triton kernel vs torch path vs conv baseline, GB/s, roofline);
- ``corpus``: an ImageNet-like JPEG corpus made on the spot from ``--samples`` (the official samples);
- ``loader``: ``i2e-bench loader`` on it: DALI GPU vs DALI CPU vs the torchvision/PIL reference;
- ``train``: ``i2e-bench train --profile``: MS-ResNet18 T=8 steps, synthetic ceiling vs EventLoader vs
  reference, data-wait share, peak GPU memory, the 15 most expensive kernels of one step;
- ``train-cli``: a short real ``train_dali.py`` run on the corpus through the normal command line.

Writes ``<out-dir>/<device>-<date>-proof.json`` and a Markdown summary beside it (``.md``), and exits
non-zero naming the failed parts. ``--quick`` runs every part at smoke size (seconds each on a CPU);
parts that need a GPU are skipped there with the reason.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ... import placement
from ...fsio import atomic_write_text
from .common import _slug, environment, resolve_device, write_json
from .proof_report import goals, markdown

REPO = Path(__file__).resolve().parents[3]
GPU_BUDGET_S = 480  # the 8 minutes


@dataclass
class Part:
    name: str
    limit_s: float  # GPU limits (full run); --quick scales them
    quick_limit_s: float
    gpu_only: bool = False
    result: dict = field(default_factory=dict)


PARTS = [
    Part("environment", 30, 30),
    Part("gpu-tests", 150, 60, gpu_only=True),
    Part("convert", 60, 60),
    Part("corpus", 40, 60),
    Part("loader", 60, 90),
    Part("train", 80, 120),
    Part("train-cli", 80, 120),
]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def run_limited(cmd: list[str], *, limit_s: float, log: Path, env: dict | None = None, cwd: Path = REPO) -> dict:
    """Run ``cmd`` in its own process group with output to ``log``; kill the whole group at ``limit_s``."""
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(cwd), start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            rc = proc.wait(timeout=max(1.0, limit_s))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
    return {"cmd": cmd, "rc": rc, "timed_out": timed_out, "seconds": time.perf_counter() - t0,
            "output_tail": _tail(log)}


def _bench(mode: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "i2e_dali.tools.bench", mode, *args]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict:
    """Per-test outcome and recorded properties from pytest's JUnit XML."""
    tests = []
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        outcome = "passed"
        message = None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "")[:500]
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message, "properties": props})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


_VERBOSE_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def _verbose_log(path: Path) -> dict | None:
    """Outcomes from ``pytest -v`` output lines (when the run was killed before writing its XML)."""
    tests = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        m = _VERBOSE_LINE.match(line)
        if m:
            outcome = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "XPASS": "passed"}.get(
                m.group(2), "skipped")
            tests.append({"test": m.group(1), "outcome": outcome, "seconds": None, "message": None,
                          "properties": {}})
    if not tests:
        return None
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests, "from": "pytest -v log (no XML: the run was cut short)"}


class Proof:
    def __init__(self, args):
        self.args = args
        self.quick = bool(args.quick)
        self.device = resolve_device(args.device)
        self.cuda = self.device.type == "cuda"
        self.work = Path(args.work or tempfile.mkdtemp(prefix="i2e-proof-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.budget_s = args.budget_s or (GPU_BUDGET_S if not self.quick else 600)
        self.t0 = time.perf_counter()
        self.corpus = self.work / "corpus"
        self.dev = ["--device", str(self.device)]
        self.samples_env = {"I2E_OFFICIAL_SAMPLES": str(Path(args.samples).resolve())} if args.samples else {}

    # ---------------------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def run(self) -> dict:
        env = environment(self.device)
        parts = {}
        for part in PARTS:
            limit = part.quick_limit_s if self.quick else part.limit_s
            if self.args.parts and part.name not in self.args.parts:
                parts[part.name] = {"status": "skipped", "reason": "not selected (--parts)"}
            elif part.gpu_only and not self.cuda:
                parts[part.name] = {"status": "skipped", "reason": f"needs a CUDA GPU; this run is on {self.device}"}
            elif self.remaining() < min(10.0, limit):
                parts[part.name] = {"status": "skipped", "reason": "the proof's time budget was spent"}
            else:
                limit = min(limit, self.remaining())
                print(f"[proof] {part.name} (limit {limit:.0f} s) ...", flush=True)
                try:
                    parts[part.name] = getattr(self, "part_" + part.name.replace("-", "_"))(limit)
                except Exception as exc:  # a part's own bug must not cost the others
                    parts[part.name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            p = parts[part.name]
            print(f"[proof] {part.name}: {p['status']}"
                  + (f" ({p.get('seconds', 0):.1f} s)" if "seconds" in p else "")
                  + (f" - {p['reason']}" if p.get("reason") else ""), flush=True)
        failed = [n for n, p in parts.items() if p["status"] == "failed"]
        record = {"mode": "proof", "environment": env, "quick": self.quick,
                  "settings": {"budget_s": self.budget_s, "device": str(self.device), "work": str(self.work),
                               "samples": self.args.samples, "corpus_images": self.corpus_images()},
                  "seconds": time.perf_counter() - self.t0, "parts": parts, "failed_parts": failed}
        record["goals"] = goals(record)
        return record

    def corpus_images(self) -> int:
        return self.args.corpus_images or (12 if self.quick else 4096)

    # ---------------------------------------------------------------------------------------------
    def _subprocess_part(self, name: str, cmd: list[str], limit: float, *, json_out: Path | None = None,
                         env: dict | None = None) -> dict:
        res = run_limited(cmd, limit_s=limit, log=self.work / f"{name}.log", env=env)
        res["record"] = _read_json(json_out) if json_out else None
        if res["timed_out"]:
            res.update(status="failed", reason=f"timed out after {limit:.0f} s")
        elif res["rc"] != 0:
            res.update(status="failed", reason=f"exit status {res['rc']}")
        elif json_out is not None and res["record"] is None:
            res.update(status="failed", reason=f"wrote no JSON record at {json_out}")
        else:
            res["status"] = "passed"
        return res

    def part_environment(self, limit: float) -> dict:
        code = ("import importlib, json\nout = {}\n"
                "for m in ('nvidia.dali', 'spikingjelly', 'triton', 'torchvision', 'pyarrow', 'nir', 'nirtorch'):\n"
                "    try:\n        mod = importlib.import_module(m)\n"
                "        out[m] = {'ok': True, 'version': getattr(mod, '__version__', None), 'file': getattr(mod, '__file__', None)}\n"
                "    except Exception as e:\n        out[m] = {'ok': False, 'error': f'{type(e).__name__}: {e}'}\n"
                "import torch\nout['torch'] = {'ok': True, 'version': torch.__version__, 'cuda': torch.cuda.is_available()}\n"
                "print('IMPORTS ' + json.dumps(out))\n")
        res = run_limited([sys.executable, "-c", code], limit_s=limit, log=self.work / "environment.log")
        line = next((ln for ln in res["output_tail"].splitlines() if ln.startswith("IMPORTS ")), None)
        res["imports"] = json.loads(line[8:]) if line else None
        needed = ["nvidia.dali", "spikingjelly", "torchvision"] + (["triton"] if self.cuda else [])
        missing = [m for m in needed if not (res["imports"] or {}).get(m, {}).get("ok")]
        res["status"] = "failed" if res["rc"] or missing else "passed"
        if missing:
            res["reason"] = f"cannot import {', '.join(missing)} (see imports)"
        return res

    def part_gpu_tests(self, limit: float) -> dict:
        tests = REPO / "tests"
        if not tests.is_dir():
            return {"status": "skipped", "reason": f"no tests/ folder at {REPO} (an installed package)"}
        xml = self.work / "gpu-tests.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rfE", "-p", "no:cacheprovider",
               f"--junitxml={xml}", "-o", "junit_family=xunit1", str(tests)]
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd.insert(-1, f"--timeout={int(max(30, limit / 3))}")  # one hanging test fails alone
        log = self.work / "gpu-tests.log"
        res = run_limited(cmd, limit_s=limit, log=log, env=self.samples_env)
        # pytest writes the XML at the end of the session; killed at the limit, the -v log still says
        # which tests finished how
        res["junit"] = _junit(xml) if xml.exists() else _verbose_log(log)
        counts = (res["junit"] or {}).get("counts", {})
        if res["timed_out"]:
            res.update(status="failed", reason=f"timed out after {limit:.0f} s")
        elif res["junit"] is None:
            res.update(status="failed", reason=f"pytest wrote no report (exit status {res['rc']})")
        elif counts.get("failed") or counts.get("error") or res["rc"] not in (0, 5):
            bad = [t["test"] for t in res["junit"]["tests"] if t["outcome"] in ("failed", "error")]
            res.update(status="failed", reason=f"{len(bad)} GPU test(s) failed: {', '.join(bad[:8])}")
        else:
            res["status"] = "passed"
        return res

    def part_convert(self, limit: float) -> dict:
        out = self.work / "convert.json"
        if self.quick:
            args = ["--quick", "--modes", "eval", "--impls", "torch", "conv"] + (["fused"] if self.cuda else [])
        else:
            args = ["--sizes", "128", "224", "--batch-sizes", "64", "256", "--dtypes", "bool", "float16", "float32",
                    "--repeats", "10", "--warmup", "3"]
        return self._subprocess_part("convert", _bench("convert", *self.dev, *args, "--json", str(out)), limit,
                                     json_out=out)

    def part_corpus(self, limit: float) -> dict:
        n = self.corpus_images()
        classes = 2 if self.quick else 64
        val = 4 if self.quick else 256
        args = ["--out", str(self.corpus), "--images", str(n), "--val-images", str(val), "--classes", str(classes),
                "--json", str(self.work / "corpus.json")]
        if self.quick:
            args += ["--quick", "--workers", "1"]
        if self.args.samples:
            args += ["--samples", self.args.samples]
        return self._subprocess_part("corpus", _bench("corpus", *args), limit, json_out=self.corpus / "corpus.json")

    def _need_corpus(self) -> dict | None:
        if not (self.corpus / "corpus.json").is_file():
            return {"status": "failed", "reason": "no corpus (the corpus part failed or was skipped)"}
        return None

    def part_loader(self, limit: float) -> dict:
        if (missing := self._need_corpus()):
            return missing
        out = self.work / "loader.json"
        if self.quick:
            args = ["--quick", "--timesteps", "2", "--workers", "0", "--threads", "1", "--batches", "1"]
        else:
            args = ["--batch-size", "256", "--batches", "60", "--warmup", "5", "--dtype", "bfloat16"]
        return self._subprocess_part("loader", _bench("loader", *self.dev, "--data", str(self.corpus), *args,
                                                      "--json", str(out)), limit, json_out=out)

    def part_train(self, limit: float) -> dict:
        if (missing := self._need_corpus()):
            return missing
        out = self.work / "train.json"
        if self.quick:
            args = ["--quick", "--timesteps", "2", "--width", "4", "--crop", "16", "--steps", "1", "--workers", "0",
                    "--threads", "1"]
        else:
            args = ["--batch-size", "128", "--crop", "224", "--steps", "20", "--warmup", "5", "--dtype", "bfloat16",
                    "--amp", "bf16", "--pipelines", "dali-gpu", "reference"]
        return self._subprocess_part("train", _bench("train", *self.dev, "--data", str(self.corpus), "--profile",
                                                     *args, "--json", str(out)), limit, json_out=out)

    def part_train_cli(self, limit: float) -> dict:
        if (missing := self._need_corpus()):
            return missing
        out = self.work / "train-cli"
        if self.quick:
            args = ["--size", "16", "-T", "2", "--width", "4", "-b", "2", "--epochs", "1", "-j", "1"]
        else:
            args = ["--size", "224", "-b", "32", "--epochs", "2", "--amp", "bf16", "--channels-last"]
        cmd = [sys.executable, str(REPO / "train_dali.py"), "--dataset", "imagenet", "--data", str(self.corpus),
               *self.dev, "--no-progress", "--no-tensorboard", "--log-every", "50", "-o", str(out), *args]
        res = self._subprocess_part("train-cli", cmd, limit)
        metrics = out / "metrics.jsonl"
        res["metrics"] = ([json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
                          if metrics.is_file() else [])
        if res["status"] == "passed" and not res["metrics"]:
            res.update(status="failed", reason=f"the run wrote no metrics at {metrics}")
        return res


def default_out_dir(quick: bool, cuda: bool) -> Path:
    # benchmarks/results/ holds records of real GPU runs only; smoke runs go under runs/ (ignored by git)
    return Path("benchmarks/results") if cuda and not quick else Path("runs/proof-quick")


def run_proof(args) -> dict:
    proof = Proof(args)
    record = proof.run()
    env = record["environment"]
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(proof.quick, proof.cuda)
    stem = f"{_slug(env['device'])}-{env['date'][:10]}-proof"
    json_path = Path(args.json) if args.json else out_dir / f"{stem}.json"
    md_path = json_path.with_suffix(".md")
    record["json_path"], record["markdown_path"] = str(json_path), str(md_path)
    write_json(record, json_path)
    atomic_write_text(md_path, markdown(record))
    print(f"\nwrote {json_path}\nwrote {md_path}")
    for g in record["goals"]:
        print(f"goal {g['goal']}: {g['measured']} (target {g['target']}) -> {g['verdict']}")
    if record["failed_parts"]:
        print(f"i2e-bench proof: FAILED parts: {', '.join(record['failed_parts'])}", file=sys.stderr)
    return record


def add_proof_parser(sub) -> None:
    pr = sub.add_parser("proof", help="everything the README claims about the GPU, one time-boxed run (JSON + Markdown)")
    pr.add_argument("--quick", action="store_true", help="smoke sizes (a CPU CI test); GPU-only parts are skipped")
    pr.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:i]")
    pr.add_argument("--samples", help="official-samples folder for the corpus (default ../shared/data/official-samples "
                                      "or $I2E_OFFICIAL_SAMPLES); on a GPU machine carry it in with the repository")
    pr.add_argument("--corpus-images", type=int, help="training images of the generated corpus (default 4096; quick 12)")
    pr.add_argument("--budget-s", type=float, help=f"wall-time budget for all parts (default {GPU_BUDGET_S}; quick 600)")
    pr.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], help="run only these parts")
    pr.add_argument("--work", help="scratch folder for the corpus, logs and part records (default a new temp folder)")
    pr.add_argument("--out-dir", help="where the JSON and Markdown go (default benchmarks/results on a GPU, "
                                      "runs/proof-quick for --quick or a CPU)")
    pr.add_argument("--json", help="exact JSON path (the Markdown goes beside it, .md)")
    pr.set_defaults(seed=placement.DEFAULT_SEED)


def proof_exit_code(record: dict) -> int:
    return 1 if record["failed_parts"] else 0


__all__ = ["run_proof", "add_proof_parser", "proof_exit_code", "run_limited", "PARTS"]
