"""The trainer flags of the paper's experiments and of the authors' training scripts (issue 12), part of
the command line of training/cli.py; their checks live with the config (training/config.py).

Flags: ``--recipe NAME`` / ``--list-recipes`` (training/recipes.py), ``--aug baseline1|baseline2``,
``--mixup``, ``--t-train K``, ``--warmup-epochs`` / ``--warmup-lr``, ``--sched cosine|step`` with
``--decay-epochs`` / ``--decay-rate``, ``--fixed-threshold X``, ``--no-random-motion``, ``--input
events|rgb|v``. ``--order`` (config.py) also takes the authors' numbered presets 0..5.
"""
from __future__ import annotations

import argparse

from .recipes import RECIPES, recipe_table
from .schedule import SCHEDULES

__all__ = ["PrintAndExit", "add_experiment_options"]


class PrintAndExit(argparse.Action):
    """A flag that prints ``text()`` and exits, like --help (--list-recipes, --list-archs)."""

    def __init__(self, option_strings, dest, text, **kw):
        kw.pop("default", None)  # never a setting: nothing to default
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)
        self.text = text

    def __call__(self, parser, namespace, values, option_string=None):
        print(self.text())
        parser.exit()


def add_experiment_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paper experiments and the authors' script options")
    g.add_argument("--recipe", choices=sorted(RECIPES),
                   help="every setting of one row of the paper (see --list-recipes); your own flags still win")
    g.add_argument("--list-recipes", action=PrintAndExit, text=recipe_table, help="list the recipes (paper rows) and exit")
    g.add_argument("--aug", choices=("baseline1", "baseline2"),
                   help="training view: baseline2 = random-resized-crop (CIFAR: pad-4 random crop, resize) + flip; "
                        "baseline1 = the fixed resize view (ImageNet 224x224, CIFAR 128x128) + flip")
    g.add_argument("--mixup", action="store_true",
                   help="CutMix or MixUp (random per batch) for the first two thirds of the epochs; mixes the "
                        "images before conversion (the loss uses the soft targets, accuracy the true labels)")
    g.add_argument("--t-train", type=int, metavar="K",
                   help="train on K random timesteps (sorted, fresh per batch) of the T; evaluation uses all T "
                        "(0 = all)")
    g.add_argument("--sched", choices=SCHEDULES,
                   help="cosine to --lr-min, or step: x --decay-rate every --decay-epochs")
    g.add_argument("--decay-epochs", type=int, help="--sched step: epochs between decays")
    g.add_argument("--decay-rate", type=float, help="--sched step: factor per decay")
    g.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs before the schedule")
    g.add_argument("--warmup-lr", type=float, help="learning rate the warm-up starts from")
    g.add_argument("--fixed-threshold", type=float, metavar="X",
                   help="ablation: one absolute threshold X on V in (0, 1] for every image instead of "
                        "ratio x the image's range")
    g.add_argument("--no-random-motion", dest="random_motion", action="store_false",
                   help="ablation: train on the canonical motions (no random selection within a group)")
    g.add_argument("--input", choices=("events", "rgb", "v"),
                   help="what the model sees: I2E events, or the static RGB image / its V map repeated T "
                        "times (3- or 1-channel stem)")
