"""Training: config (flags, data set defaults, presets) -> runtime (device, DDP, seeds, logging) ->
data (dataset kind -> loaders) -> engine (step, evaluate, Trainer) with checkpoint (the one format);
``run`` assembles them and ``main`` is the entry point of ``train_dali.py`` and ``i2e-train``.
Only this package and ``i2e_dali.tools`` parse command-line arguments.
"""
from .checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from .config import DATASET_DEFAULTS, DATASETS, PRESETS, build_parser, resolve_config
from .engine import Trainer, evaluate, make_train_step
from .run import main, run

__all__ = [
    "DATASETS",
    "DATASET_DEFAULTS",
    "PRESETS",
    "build_parser",
    "resolve_config",
    "make_train_step",
    "evaluate",
    "Trainer",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "run",
    "main",
]
