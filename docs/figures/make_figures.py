"""Draw the documentation's figures from one of the authors' official ImageNet samples.

    python docs/figures/make_figures.py [--samples ../shared/data/official-samples]

Writes docs/img/flow.png (photo -> V -> events per timestep), docs/img/motions.png (the eight direction
groups) and docs/img/ratio.png (one timestep at three ratios). The events come from the package's own
``i2e_convert`` in evaluation mode, drawn with ``i2e_dali.tools.viz.events_to_rgb`` (the authors' colours:
ON red, OFF blue, both magenta, none white), so the pictures show what the code computes.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from PIL import Image  # noqa: E402

from i2e_dali import MOTION_GROUPS, event_rate, i2e_convert  # noqa: E402
from i2e_dali.convert.spec import GROUP_LETTERS, parse_order  # noqa: E402
from i2e_dali.tools.viz import events_to_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img"
SAMPLE = "1002293_rgb.jpg"


def _load(samples: Path) -> torch.Tensor:
    img = np.asarray(Image.open(samples / SAMPLE).convert("RGB"))
    return torch.from_numpy(img.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()  # [1, 3, H, W] uint8


def _frame(ax) -> None:
    """A thin grey border: event frames are mostly white on a white page."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.7")


def flow(images: torch.Tensor) -> None:
    events = i2e_convert(images, ratio=0.12, dtype=torch.bool)[:, 0].numpy()  # [8, 2, H, W]
    frames = events_to_rgb(events)
    letters = [GROUP_LETTERS[g] for g in parse_order(None)]
    v = images[0].float().max(dim=0).values.numpy() / 255
    fig = plt.figure(figsize=(12, 3.3), dpi=110)
    grid = fig.add_gridspec(2, 7, width_ratios=[2, 2, 1, 1, 1, 1, 0.1], wspace=0.08, hspace=0.22)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(images[0].permute(1, 2, 0).numpy())
    ax.set_title("JPEG, decoded + cropped\nby DALI (uint8)", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[:, 1])
    ax.imshow(v, cmap="gray", vmin=0, vmax=1)
    ax.set_title("intensity V = max(R, G, B)\nthreshold = 0.12 x range(V)", fontsize=9)
    ax.axis("off")
    rates = event_rate(torch.from_numpy(events).unsqueeze(1)).sum(dim=1).numpy()
    for t in range(8):
        ax = fig.add_subplot(grid[t // 4, 2 + t % 4])
        ax.imshow(frames[t])
        ax.set_title(f"t={t} ({letters[t]}) {100 * rates[t]:.1f}%", fontsize=8)
        _frame(ax)
    fig.suptitle("I2E events, T = 8 (ON red, OFF blue): the tensor [T, B, 2, H, W] a spiking network reads",
                 fontsize=10, x=0.62, y=0.06)
    fig.savefig(OUT / "flow.png", bbox_inches="tight")
    plt.close(fig)


def motions() -> None:
    fig, axes = plt.subplots(2, 4, figsize=(8, 4.6), dpi=110)
    for g, ax in enumerate(axes.flat):
        ax.set_xlim(-0.5, 2.5)
        ax.set_ylim(2.5, -0.5)
        ax.set_aspect("equal")
        for r in range(3):
            for c in range(3):
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=0.8, color="0.6"))
                ax.text(c, r + 0.33, str(3 * r + c + 1), ha="center", va="center", fontsize=6, color="0.5")
        for k, (s, e) in enumerate(MOTION_GROUPS[g]):
            (rs, cs), (re_, ce) = divmod(s - 1, 3), divmod(e - 1, 3)
            colour, width = ("black", 1.8) if k == 0 else ("0.65", 0.8)
            ax.add_patch(FancyArrowPatch((cs, rs), (ce, re_), arrowstyle="-|>", mutation_scale=9,
                                         color=colour, lw=width, zorder=3 if k == 0 else 2))
        ax.set_title(f"group {GROUP_LETTERS[g]} ({len(MOTION_GROUPS[g])})", fontsize=9)
        ax.axis("off")
    fig.suptitle("The eight direction groups: arrow s -> e, black = canonical (evaluation),\ngrey = the "
                 "others drawn in training", fontsize=9, y=0.03)
    fig.savefig(OUT / "motions.png", bbox_inches="tight")
    plt.close(fig)


def ratios(images: torch.Tensor) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3), dpi=110)
    for ax, ratio in zip(axes, (0.06, 0.12, 0.24)):
        ev = i2e_convert(images, ratio=ratio, dtype=torch.bool)
        rate = 100 * event_rate(ev).sum(dim=1).mean().item()
        ax.imshow(events_to_rgb(ev[:, 0].numpy())[0])
        ax.set_title(f"ratio {ratio}\n{rate:.1f}% of pixels fire per timestep", fontsize=9)
        _frame(ax)
    fig.savefig(OUT / "ratio.png", bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=Path(os.environ.get(
        "I2E_OFFICIAL_SAMPLES", ROOT.parent / "shared" / "data" / "official-samples")))
    samples = ap.parse_args().samples
    OUT.mkdir(parents=True, exist_ok=True)
    images = _load(samples)
    flow(images)
    motions()
    ratios(images)
    print("wrote", *(str(OUT / n) for n in ("flow.png", "motions.png", "ratio.png")))


if __name__ == "__main__":
    main()
