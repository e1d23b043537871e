"""Shared test fixtures: GPU gating and the authors' official samples."""
from __future__ import annotations

import importlib.util
import os
import sys
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


@pytest.fixture(scope="session")
def interpreted_triton():
    """``i2e_dali.convert.triton_path`` with interpreted kernels (CPU tensors allowed): a private copy of
    the module imported with TRITON_INTERPRET=1 set only for that import (Triton reads the flag when
    ``@triton.jit`` decorates), so the real module and other tests never see it."""
    pytest.importorskip("triton")
    path = REPO_ROOT / "i2e_dali" / "convert" / "triton_path.py"
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location("i2e_dali.convert._triton_path_interpreted", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the body runs
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    assert module._interpreted(), "the private copy should hold interpreted kernels"
    return module
