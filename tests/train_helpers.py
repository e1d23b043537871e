"""Helpers for the trainer tests: tiny data sets, run settings, a DDP evaluation worker."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from i2e_dali.data.demo import DemoConfig, ensure_demo_dataset

REPO = Path(__file__).resolve().parents[1]


def tiny_data(root: Path, classes: int = 4) -> Path:
    """A tiny ImageNet-layout JPEG set made by the demo generator: 8 train / 3 val images per class, 24 px."""
    cfg = DemoConfig(train_per_class=8, val_per_class=3, image_size=24, num_classes=classes)
    return ensure_demo_dataset(root, cfg, progress=False)


def tiny_args(data: Path, out: Path, *extra: str, epochs: int = 2, batch: int = 2) -> list[str]:
    """Command-line flags for a seconds-long run: 16 px crops, T=2, width-4 MS-ResNet18."""
    return [
        "--dataset", "imagenet", "--data", str(data), "--size", "16", "-T", "2", "--width", "4",
        "-b", str(batch), "--epochs", str(epochs), "--no-progress", "--no-tensorboard", "-o", str(out), *extra,
    ]


def metrics(out: Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def ddp_evaluate_worker(rank: int, world: int, init_file: str, batches, state: dict, result_file: str) -> None:
    """Each rank evaluates its share of ``batches`` (uneven: rank 0 gets more) and writes the result."""
    import torch.distributed as dist

    from i2e_dali.models import build_model
    from i2e_dali.training.engine import evaluate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = build_model("msresnet18", num_classes=state["fc.weight"].shape[0], width=4)
        model.load_state_dict(state)
        mine = [b for i, b in enumerate(batches) if (i < 2) == (rank == 0)]  # rank 0: 2 batches, rank 1: rest
        res = evaluate(model, mine)
        with open(f"{result_file}.{rank}", "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()
