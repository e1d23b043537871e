"""Every experiment the I2E paper reports, by name: ``train_dali.py --recipe NAME`` (``--list-recipes``).

A recipe holds every setting of its row (data set, model, T, ratio, order, augmentation, epochs, batch,
lr, weight decay, schedule, and for transfer rows the pre-training source), the top-1 the paper reports
(None where the number was not available to the session that wrote this), and for transfer rows the
command of the pre-training step. Flags given on the command line still win over the recipe.

Sources of the settings: the authors' training scripts and commands (github.com/Ruichen0424/I2E,
TrainScript/Baseline-I/{train.py,code.txt}: batch 128, 256 epochs CIFAR / 128 ImageNet, SGD lr 0.1,
cosine to 5e-5, weight decay 2e-4 CIFAR / 1e-5 ImageNet, label smoothing 0.1, ratio 0.07 CIFAR / 0.12
ImageNet, --shuffle 4 = order efghabcd, no mixup, no warm-up; Train Script/DVS_CIFAR10/train.py: batch 32,
128 epochs), their README's result table (the expected top-1 values), and shared/DESIGN.md (the views and
the CIFAR10-DVS fine-tuning lr 0.001 / wd 0). What those sources do not state is marked in ``notes``.

None of these rows has been reproduced by this project yet: they need GPUs (see README).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recipe", "RECIPES", "recipe_table", "recipe_settings"]

# The paper's per-data-set base settings (every key is a trainer flag's destination).
_COMMON = dict(arch="msresnet18", width=64, timesteps=8, order="efghabcd", batch_size=128, lr=0.1, lr_min=5e-5,
               sched="cosine", warmup_epochs=0, label_smoothing=0.1, mixup=False, t_train=0, input="events",
               random_motion=True, fixed_threshold=None, momentum=0.9)
_CIFAR = dict(_COMMON, epochs=256, weight_decay=2e-4, ratio=0.07, size=128)
_IMAGENET = dict(_COMMON, epochs=128, weight_decay=1e-5, ratio=0.12, size=224)
_DVS = dict(_COMMON, dataset="cifar10-dvs", epochs=128, batch_size=32, ratio=None, order=None, size=None,
            weight_decay=1e-5)
_DVS_FINETUNE = dict(_DVS, lr=0.001, weight_decay=0.0)

_UNSTATED_TRANSFER = ("the fine-tuning schedule is not stated in the sources read here: the target's "
                      "Baseline-II settings are used")
_SOURCE_I = ("Transfer-I = 'pre-training on a source dataset' (authors' README); the source is not named in the "
             "sources read here; I2E-ImageNet (imagenet-baseline2) is assumed")
_TABLE4 = ("Table 4 ablation; its top-1 was not available to this session. Based on imagenet-baseline1 (Table 4 "
           "names its rows after Baseline-I)")


@dataclass(frozen=True)
class Recipe:
    name: str
    row: str  # where the paper reports it
    settings: dict[str, Any]
    expected_top1: float | None
    pretrain: str | None = None  # recipe whose best.pt is the --pretrained weights (transfer rows)
    notes: tuple[str, ...] = field(default_factory=tuple)
    weights_unknown: bool = False  # a transfer row whose pre-training source is not known: --pretrained required

    @property
    def needs_pretrained(self) -> bool:
        return self.pretrain is not None or self.weights_unknown

    def pretrain_command(self) -> str | None:
        if self.pretrain is None:
            return None
        src = RECIPES[self.pretrain]
        return (f"python train_dali.py --recipe {src.name} --data {_DATA_HINT[src.settings['dataset']]} "
                f"-o runs/{src.name}")

    def command(self) -> str:
        cmd = f"python train_dali.py --recipe {self.name} --data {_DATA_HINT[self.settings['dataset']]}"
        if self.pretrain is not None:
            cmd += f" --pretrained runs/{self.pretrain}/best.pt"
        elif self.needs_pretrained:
            cmd += " --pretrained <weights>"
        return cmd + f" -o runs/{self.name}"


_DATA_HINT = {"cifar10": "/data/cifar-10-batches-py", "cifar100": "/data/cifar-100-python",
              "imagenet": "/data/imagenet", "cifar10-dvs": "/data/CIFAR10-DVS"}


_PER_GPU_BATCH = ("the authors' ImageNet command divides -bz 128 over the node's GPUs (global batch 128); here "
                  "--batch-size is per GPU: with N GPUs pass -b 128/N to match it")


def _r(name, row, base, top1, *, pretrain=None, notes=(), weights_unknown=False, **over) -> Recipe:
    notes = tuple(notes) + ((_PER_GPU_BATCH,) if base is _IMAGENET else ())
    return Recipe(name, row, dict(base, **over), top1, pretrain, notes, weights_unknown)


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    _r("cifar10-baseline1", "authors' README: I2E-CIFAR10 Baseline-I", _CIFAR, 85.07, dataset="cifar10", aug="baseline1"),
    _r("cifar10-baseline2", "authors' README: I2E-CIFAR10 Baseline-II", _CIFAR, 89.23, dataset="cifar10", aug="baseline2"),
    _r("cifar10-transfer1", "authors' README: I2E-CIFAR10 Transfer-I", _CIFAR, 90.86, dataset="cifar10",
       aug="baseline2", pretrain="imagenet-baseline2", notes=(_SOURCE_I, _UNSTATED_TRANSFER)),
    _r("cifar100-baseline1", "authors' README: I2E-CIFAR100 Baseline-I", _CIFAR, 51.32, dataset="cifar100", aug="baseline1"),
    _r("cifar100-baseline2", "authors' README: I2E-CIFAR100 Baseline-II", _CIFAR, 60.68, dataset="cifar100", aug="baseline2"),
    _r("cifar100-transfer1", "authors' README: I2E-CIFAR100 Transfer-I", _CIFAR, 64.53, dataset="cifar100",
       aug="baseline2", pretrain="imagenet-baseline2", notes=(_SOURCE_I, _UNSTATED_TRANSFER)),
    _r("imagenet-baseline1", "paper + authors' README: I2E-ImageNet Baseline-I", _IMAGENET, 48.30, dataset="imagenet", aug="baseline1"),
    _r("imagenet-baseline2", "paper + authors' README: I2E-ImageNet Baseline-II", _IMAGENET, 57.97, dataset="imagenet", aug="baseline2"),
    _r("imagenet-transfer1", "paper + authors' README: I2E-ImageNet pre-train / Transfer-I", _IMAGENET, 59.28,
       dataset="imagenet", aug="baseline2", weights_unknown=True,
       notes=("needs --pretrained: the pre-training source of this row is not stated in the sources read here",
              _UNSTATED_TRANSFER)),
    _r("imagenet-msresnet34", "paper + authors' README: I2E-ImageNet MS-ResNet34 Baseline-II", _IMAGENET, 60.50,
       dataset="imagenet", aug="baseline2", arch="msresnet34"),
    _r("cifar10dvs-scratch", "authors' README: CIFAR10-DVS baseline (from scratch)", _DVS, 65.6),
    _r("cifar10dvs-transfer1", "authors' README: CIFAR10-DVS Transfer-I", _DVS_FINETUNE, 83.1,
       pretrain="imagenet-baseline2", notes=(_SOURCE_I, "fine-tuning lr 0.001 / wd 0 as for Transfer-II (DESIGN.md)")),
    _r("cifar10dvs-transfer2", "authors' README: CIFAR10-DVS Transfer-II (pre-trained on I2E-CIFAR10)", _DVS_FINETUNE,
       92.5, pretrain="cifar10-baseline2", notes=("fine-tuning lr 0.001 / wd 0 (DESIGN.md)",)),
    # Table 4 ablations on I2E-ImageNet
    _r("imagenet-ablation-fixed-threshold", "Table 4 ablation-1: fixed threshold", _IMAGENET, None,
       dataset="imagenet", aug="baseline1", fixed_threshold=0.12,
       notes=(_TABLE4, "the absolute threshold 0.12 (= the adaptive one on an image spanning the full [0, 1] "
                       "range) is this project's choice; the paper's value was not available")),
    _r("imagenet-ablation-no-random-motion", "Table 4 baseline-I: no random selection (canonical motions)",
       _IMAGENET, None, dataset="imagenet", aug="baseline1", random_motion=False, notes=(_TABLE4,)),
    # Table 6: static inputs into the same MS-ResNet, for the events-vs-frames comparison
    _r("imagenet-static-rgb", "Table 6: static RGB frames repeated T times", _IMAGENET, None, dataset="imagenet",
       aug="baseline2", input="rgb", notes=("Table 6's top-1 was not available to this session",)),
    _r("imagenet-static-v", "Table 6: static V map repeated T times", _IMAGENET, None, dataset="imagenet",
       aug="baseline2", input="v", notes=("Table 6's top-1 was not available to this session",)),
]}


def recipe_settings(name: str) -> dict[str, Any]:
    """The flag destinations a recipe sets (a copy)."""
    return dict(RECIPES[name].settings)


def recipe_table() -> str:
    """``--list-recipes``: name, data, model, epochs, expected top-1, and the pre-training step."""
    rows = [("recipe", "data", "model", "T", "epochs", "top-1 (paper)", "pre-training")]
    for r in RECIPES.values():
        s = r.settings
        rows.append((r.name, s["dataset"], s["arch"], str(s["timesteps"]), str(s["epochs"]),
                     "n/a" if r.expected_top1 is None else f"{r.expected_top1:.2f}",
                     f"--recipe {r.pretrain}" if r.pretrain else ("--pretrained <weights>" if r.needs_pretrained else "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("None of these has been reproduced by this project yet (they need GPUs). "
                 "Flags given with --recipe win over its settings.")
    return "\n".join(lines)
