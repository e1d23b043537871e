"""The trainer flags of the paper's experiments and of the authors' training scripts (issue 12), the
``--recipe`` mechanism, and the parser that remembers which flags the user gave (so they win over a recipe).

Flags: ``--recipe NAME`` / ``--list-recipes`` (training/recipes.py), ``--aug baseline1|baseline2``,
``--mixup``, ``--t-train K``, ``--warmup-epochs`` / ``--warmup-lr``, ``--sched cosine|step`` with
``--decay-epochs`` / ``--decay-rate``, ``--fixed-threshold X``, ``--no-random-motion``, ``--input
events|rgb|v``. ``--order`` (config.py) also takes the authors' numbered presets 0..5.
"""
from __future__ import annotations

import argparse

from ..errors import TrainError
from .recipes import RECIPES, recipe_table
from .schedule import SCHEDULES

__all__ = ["RecordingParser", "PrintAndExit", "add_experiment_options", "apply_recipe", "check_experiment_options"]

# data set kinds read through the live DALI -> I2E loader (the image-side options apply to them only)
_IMAGE_KINDS_EXCLUDED = ("i2e-npz", "i2e-parquet", "cifar10-dvs")


class RecordingParser(argparse.ArgumentParser):
    """An ArgumentParser whose namespaces also carry ``explicit``: the destinations the user set on the
    command line (found by a second parse with every default suppressed)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        saved = [(a, a.default) for a in self._actions]
        try:
            for a, _ in saved:
                a.default = argparse.SUPPRESS
            probe, _ = super().parse_known_args(args, None)
        finally:
            for a, d in saved:
                a.default = d
        ns.explicit = sorted(k for k in vars(probe) if k != "explicit")
        return ns, rest


class PrintAndExit(argparse.Action):
    """A flag that prints ``text()`` and exits, like --help (--list-recipes, --list-archs)."""

    def __init__(self, option_strings, dest, text, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)
        self.text = text

    def __call__(self, parser, namespace, values, option_string=None):
        print(self.text())
        parser.exit()


def add_experiment_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paper experiments and the authors' script options")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="every setting of one row of the paper (see --list-recipes); your own flags still win")
    g.add_argument("--list-recipes", action=PrintAndExit, text=recipe_table, help="list the recipes (paper rows) and exit")
    g.add_argument("--aug", choices=("baseline1", "baseline2"), default="baseline2",
                   help="training view: baseline2 = random-resized-crop (CIFAR: pad-4 random crop, resize) + flip; "
                        "baseline1 = the fixed resize view (ImageNet 224x224, CIFAR 128x128) + flip")
    g.add_argument("--mixup", action="store_true",
                   help="CutMix or MixUp (random per batch) for the first two thirds of the epochs; mixes the "
                        "images before conversion (the loss uses the soft targets, accuracy the true labels)")
    g.add_argument("--t-train", type=int, default=0, metavar="K",
                   help="train on K random timesteps (sorted, fresh per batch) of the T; evaluation uses all T "
                        "(0 = all)")
    g.add_argument("--sched", choices=SCHEDULES, default="cosine",
                   help="cosine to --lr-min, or step: x --decay-rate every --decay-epochs")
    g.add_argument("--decay-epochs", type=int, default=30, help="--sched step: epochs between decays")
    g.add_argument("--decay-rate", type=float, default=0.1, help="--sched step: factor per decay")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs before the schedule")
    g.add_argument("--warmup-lr", type=float, default=0.0, help="learning rate the warm-up starts from")
    g.add_argument("--fixed-threshold", type=float, default=None, metavar="X",
                   help="ablation: one absolute threshold X on V in (0, 1] for every image instead of "
                        "ratio x the image's range")
    g.add_argument("--no-random-motion", dest="random_motion", action="store_false",
                   help="ablation: train on the canonical motions (no random selection within a group)")
    g.add_argument("--input", choices=("events", "rgb", "v"), default="events",
                   help="what the model sees: I2E events, or the static RGB image / its V map repeated T "
                        "times (3- or 1-channel stem)")


def apply_recipe(args: argparse.Namespace) -> None:
    """Set the recipe's settings for every flag the user did not give."""
    if not getattr(args, "recipe", None):
        return
    given = set(getattr(args, "explicit", None) or ())
    for key, value in RECIPES[args.recipe].settings.items():
        if key not in given:
            setattr(args, key, value)


def check_experiment_options(args: argparse.Namespace) -> None:
    """Range checks and combinations that cannot work, each naming the flag."""
    if not 0 <= args.t_train <= args.timesteps:
        raise TrainError(f"--t-train must be in 0..-T ({args.timesteps}), got {args.t_train}")
    if args.warmup_epochs < 0 or args.warmup_epochs >= args.epochs and args.warmup_epochs:
        raise TrainError(f"--warmup-epochs must be in 0..--epochs-1 ({args.epochs - 1}), got {args.warmup_epochs}")
    if not 0 <= args.warmup_lr <= args.lr:
        raise TrainError(f"--warmup-lr must be in [0, --lr], got {args.warmup_lr}")
    if args.decay_epochs < 1 or not 0 < args.decay_rate <= 1:
        raise TrainError("--decay-epochs must be >= 1 and --decay-rate in (0, 1]")
    if args.fixed_threshold is not None and not 0 < args.fixed_threshold <= 1:
        raise TrainError(f"--fixed-threshold must be in (0, 1] (V lies in [0, 1]), got {args.fixed_threshold}")
    if args.dataset in _IMAGE_KINDS_EXCLUDED:
        image_side = [flag for flag, on in (("--aug baseline1", args.aug != "baseline2"),
                                            ("--fixed-threshold", args.fixed_threshold is not None),
                                            ("--no-random-motion", not args.random_motion),
                                            (f"--input {args.input}", args.input != "events"))
                      if on]
        if image_side:
            raise TrainError(f"{', '.join(image_side)}: --dataset {args.dataset} holds events already; these "
                             "options act on the images before conversion (imagenet, cifar10/100, demo)")
    recipe = RECIPES.get(getattr(args, "recipe", None) or "")
    if recipe is not None and recipe.needs_pretrained and not (args.pretrained or args.resume or args.evaluate):
        how = (f"pre-train first: {recipe.pretrain_command()}, then pass --pretrained runs/{recipe.pretrain}/best.pt"
               if recipe.pretrain else "the pre-training source of this row is not known; pass your own weights")
        raise TrainError(f"--recipe {recipe.name} fine-tunes pre-trained weights: give --pretrained PATH ({how})")
