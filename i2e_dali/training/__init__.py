"""Training: ``train(TrainConfig) -> TrainResult`` runs a whole training from Python; the command line
(``train_dali.py``, ``i2e-train``; training/cli.py) only parses flags into a TrainConfig and calls it.

    from i2e_dali.training import TrainConfig, train
    result = train(TrainConfig.from_dict({"optim": {"epochs": 2}}))   # the embedded demo, 2 epochs
    print(result.best_top1, result.output_dir)

Inside: config (TrainConfig, the one resolution of defaults/recipe/file/flags) -> runtime (device, DDP,
seeds, logging) -> data (dataset kind -> loaders) -> engine (step, evaluate, Trainer) with checkpoint (the
one format). Only training/cli.py, training/options.py and ``i2e_dali.tools`` parse command-line arguments.
"""
from .checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from .config import (DATASET_DEFAULTS, DATASETS, PRESETS, DataConfig, ModelConfig, OptimConfig, RunConfig,
                     TrainConfig)
from .config_file import dump_config, load_config, write_config
from .engine import Trainer, evaluate, make_train_step
from .run import TrainResult, evaluate_run, main, train

__all__ = [
    "TrainConfig",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainResult",
    "train",
    "evaluate_run",
    "load_config",
    "write_config",
    "dump_config",
    "DATASETS",
    "DATASET_DEFAULTS",
    "PRESETS",
    "make_train_step",
    "evaluate",
    "Trainer",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "main",
]
