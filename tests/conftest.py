"""Shared test fixtures: GPU gating and the authors' official samples."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the project next to shared/; an installed user has no shared/ folder.
OFFICIAL_SAMPLES = Path(
    os.environ.get("I2E_OFFICIAL_SAMPLES", REPO_ROOT.parent / "shared" / "data" / "official-samples")
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def official_samples() -> Path:
    """Folder with the authors' 100 ImageNet samples (*_rgb.jpg + *_es.gif)."""
    if not OFFICIAL_SAMPLES.is_dir() or not any(OFFICIAL_SAMPLES.glob("*_rgb.jpg")):
        pytest.skip(f"official samples not found at {OFFICIAL_SAMPLES} (they live in the repo's ../shared/)")
    return OFFICIAL_SAMPLES
