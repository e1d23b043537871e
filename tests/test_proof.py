"""``i2e-bench proof``: the one command that proves the GPU path. On a CPU, ``--quick`` runs every part at
smoke size (the GPU tests skipped with the reason); time limits kill a hanging part's whole process
group; a failed part makes the exit status non-zero and is named."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from i2e_dali.tools.bench import main
from i2e_dali.tools.bench.proof import PARTS, run_limited
from i2e_dali.tools.bench.proof_report import goals, markdown


def _only(out_dir: Path) -> tuple[dict, str]:
    (path,) = out_dir.glob("*-proof.json")
    return json.loads(path.read_text()), path.with_suffix(".md").read_text()


def test_proof_quick_runs_every_part_on_cpu(tmp_path, official_samples, capsys):
    rc = main(["proof", "--quick", "--device", "cpu", "--samples", str(official_samples),
               "--work", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")])
    record, md = _only(tmp_path / "out")
    status = {name: p["status"] for name, p in record["parts"].items()}
    assert rc == 0, (status, {n: p.get("reason") for n, p in record["parts"].items()})
    assert list(status) == [p.name for p in PARTS]
    assert status.pop("gpu-tests") == "skipped" and "CUDA" in record["parts"]["gpu-tests"]["reason"]
    assert set(status.values()) == {"passed"}
    parts = record["parts"]
    assert parts["environment"]["imports"]["nvidia.dali"]["ok"]
    assert {r["impl"] for r in parts["convert"]["record"]["results"]} == {"torch", "conv"}
    assert parts["corpus"]["record"]["train_images"] == 12
    assert {r["pipeline"] for r in parts["loader"]["record"]["results"]} == {"dali-cpu", "dali-cpu-wds", "reference"}
    train = parts["train"]["record"]
    assert [r["feed"] for r in train["results"]] == ["synthetic", "dali-cpu", "reference"]
    assert 0 < len(train["profile"]["top"]) <= 15 and train["profile"]["feed"] == "dali-cpu"
    (epoch,) = parts["train-cli"]["metrics"]
    assert epoch["train_img_per_s"] > 0 and epoch["val_count"] == 4
    assert all(g["verdict"] == "not measured" for g in record["goals"])  # no GPU, no GPU claim
    for heading in ("## Parts", "## Goals", "## Conversion", "## Loader", "## Training steps", "train_dali.py"):
        assert heading in md
    assert "No part failed" in md


def test_failed_part_is_named_and_the_exit_status_says_so(tmp_path, capsys):
    empty = tmp_path / "no-samples"
    empty.mkdir()
    rc = main(["proof", "--quick", "--device", "cpu", "--samples", str(empty), "--parts", "corpus", "loader",
               "--work", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")])
    record, md = _only(tmp_path / "out")
    assert rc == 1
    assert record["failed_parts"] == ["corpus", "loader"]
    assert "official samples" in record["parts"]["corpus"]["output_tail"] or "sample" in record["parts"]["corpus"]["output_tail"]
    assert record["parts"]["loader"]["reason"].startswith("no corpus")
    assert record["parts"]["convert"] == {"status": "skipped", "reason": "not selected (--parts)"}
    assert "FAILED parts: corpus, loader" in capsys.readouterr().err
    assert "**Failed parts: corpus, loader**" in md


def test_time_limit_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\ntime.sleep(120)\n")
    t0 = time.perf_counter()
    res = run_limited([sys.executable, "-c", code], limit_s=3, log=tmp_path / "hang.log")
    assert res["timed_out"] and time.perf_counter() - t0 < 30
    assert "started" in res["output_tail"]
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the part's child process survived the time limit")


def test_spent_budget_skips_the_remaining_parts(tmp_path):
    rc = main(["proof", "--quick", "--device", "cpu", "--budget-s", "1", "--work", str(tmp_path / "w"),
               "--out-dir", str(tmp_path / "out")])
    record, _ = _only(tmp_path / "out")
    assert rc == 0 and record["failed_parts"] == []
    reasons = {p["reason"] for name, p in record["parts"].items() if name != "gpu-tests"}
    assert reasons == {"the proof's time budget was spent"}


def _row(impl, dtype, roof, xconv):
    return {"impl": impl, "size": 224, "batch": 256, "dtype": dtype, "mode": "eval", "roofline_fraction": roof,
            "speedup_vs_conv": xconv}


def test_goal_verdicts():
    record = {"parts": {
        "convert": {"record": {"results": [_row("fused", "bool", 0.62, 31.0), _row("fused", "float16", 0.41, 25.0),
                                           _row("torch", "float16", 0.1, 2.0)]}},
        "loader": {"record": {"results": [{"pipeline": "dali-gpu", "speedup_vs_reference": 2.5}]}},
        "train": {"record": {"results": [{"feed": "dali-gpu", "fraction_of_ceiling": 0.97}]}},
    }}
    got = {g["goal"]: g["verdict"] for g in goals(record)}
    assert got["fused bool 224x224 B=256 T=8: share of the copy roofline"] == "met"
    assert got["fused float16 224x224 B=256 T=8: share of the copy roofline"] == "NOT met"
    assert got["fused float16 224x224 B=256 T=8: speed-up over the conv baseline"] == "met"
    assert got["fused float32 224x224 B=256 T=8: share of the copy roofline"] == "not measured"
    assert got["DALI GPU loader vs the reference recipe (events/s on the device)"] == "NOT met"
    assert got["training fed by the DALI GPU loader vs the synthetic ceiling"] == "met"


def test_markdown_lists_failed_gpu_tests_and_recorded_numbers():
    junit = {"counts": {"passed": 1, "failed": 1, "error": 0, "skipped": 0}, "tests": [
        {"test": "tests.t::test_a", "outcome": "passed", "message": None, "properties": {"lif_selection": "triton"}},
        {"test": "tests.t::test_b", "outcome": "failed", "message": "assert 1 == 2", "properties": {}}]}
    record = {"environment": {"device": "NVIDIA H200", "date": "2026-12-01T00:00:00+00:00", "cpu_cores": 16,
                              "cpu": "x", "python": "3.12", "versions": {}},
              "quick": False, "settings": {"device": "cuda:0"}, "seconds": 400.0,
              "parts": {"gpu-tests": {"status": "failed", "reason": "1 GPU test(s) failed", "junit": junit}},
              "failed_parts": ["gpu-tests"]}
    record["goals"] = goals(record)
    md = markdown(record)
    assert "| tests.t::test_b | assert 1 == 2 |" in md and "lif_selection" in md and "triton" in md
    assert "**Failed parts: gpu-tests**" in md


def test_gpu_test_outcomes_survive_a_killed_pytest(tmp_path):
    from i2e_dali.tools.bench.proof import _verbose_log

    log = tmp_path / "gpu-tests.log"
    log.write_text("tests/test_a.py::test_x PASSED [ 10%]\ntests/test_a.py::test_y[p0] FAILED [ 20%]\n"
                   "tests/test_b.py::test_z SKIPPED (needs a CUDA GPU) [ 30%]\ntests/test_b.py::test_w ")
    got = _verbose_log(log)
    assert got["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert [t["test"] for t in got["tests"]] == ["tests/test_a.py::test_x", "tests/test_a.py::test_y[p0]",
                                                 "tests/test_b.py::test_z"]


def test_gpu_tests_part_reports_each_gpu_test(tmp_path):
    """The part itself, on a CPU: pytest -m gpu collects the GPU tests, each skips with the reason, and
    the JUnit report lists them one by one."""
    from i2e_dali.tools.bench import build_parser
    from i2e_dali.tools.bench.proof import Proof

    args = build_parser().parse_args(["proof", "--quick", "--device", "cpu", "--work", str(tmp_path)])
    res = Proof(args).part_gpu_tests(240)
    assert res["status"] == "passed", res.get("reason")
    tests = res["junit"]["tests"]
    assert len(tests) >= 20 and all(t["outcome"] == "skipped" for t in tests)
    assert any("test_gpu_and_cpu_decoding_agree" in t["test"] for t in tests)
    assert all("CUDA" in (t["message"] or "") for t in tests)
