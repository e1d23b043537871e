"""Batch-level training augmentations of the authors' scripts: CutMix/MixUp (``--mixup``) and random
temporal deletion (``--t-train K``).

Where mixing happens. The authors convert inside the model, so their ``cutmix_or_mixup(images, target)``
mixes the *images* and I2E then converts the mixture. We keep that order for the live I2E loader: the
EventLoader hands each augmented uint8 batch to :class:`BatchMixer` right after DALI's hand-off and converts
the mixed images on the same stream. Mixing the events instead would break what they are: MixUp of two
binary event maps gives fractional "events" (0.3 of a spike) that no sensor or conversion produces, and
the threshold of a mixed image is its own (adaptive, from its own intensity range), not a blend of two
thresholds. CutMix would be the same either way; MixUp is not. Data sets that are already events
(exported I2E sets, CIFAR10-DVS) have no images: there the same mixer is applied to the frames, as the
authors' DVS script does.

RNG: torchvision's v2 CutMix/MixUp/RandomChoice draw from torch's global CPU generator (host-side scalars:
no GPU sync), which every checkpoint stores per rank, so a resumed run mixes exactly as the uninterrupted
one. ``temporal_subset`` draws from the same generator.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from ..convert.spec import U8_SCALE

__all__ = ["BatchMixer", "mixing_active", "temporal_subset"]


def mixing_active(epoch: int, epochs: int) -> bool:
    """The authors' rule: mix while the 0-based epoch index is <= 2/3 of the epochs (``epoch <= epochs*2/3``)."""
    return epoch <= epochs * 2 / 3


class BatchMixer:
    """CutMix or MixUp (one of the two, chosen at random per batch, as torchvision v2 RandomChoice does).

    ``mixer(images [B,3,H,W] uint8 or float, labels [B]) -> (float images 0..1, soft targets [B, C])`` while
    ``active``; ``(images, None)`` untouched otherwise. ``mix_frames`` does the same on ``[T,B,C,H,W]``
    frames. The trainer switches ``active`` per epoch (:func:`mixing_active`).
    """

    def __init__(self, num_classes: int, *, alpha: float = 1.0):
        self.num_classes = int(num_classes)
        self.active = True
        self._choice = v2.RandomChoice([v2.CutMix(num_classes=self.num_classes, alpha=alpha),
                                        v2.MixUp(num_classes=self.num_classes, alpha=alpha)])

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        if not self.active:
            return images, None
        if images.dtype == torch.uint8:  # the spec's uint8 meaning: u * float32(1/255)
            images = images.to(torch.float32).mul_(torch.full((), U8_SCALE, dtype=torch.float32, device=images.device))
        return self._choice(images, labels)

    def mix_frames(self, frames: torch.Tensor, labels: torch.Tensor):
        """Mix ``[T, B, C, H, W]`` frames (data sets that are events already): the same transform on the
        batch seen as ``[B, T*C, H, W]`` images."""
        if not self.active:
            return frames, None
        t, b, c, h, w = frames.shape
        flat = frames.transpose(0, 1).reshape(b, t * c, h, w).float()
        mixed, soft = self._choice(flat, labels)
        mixed = mixed.reshape(b, t, c, h, w).transpose(0, 1)
        return (mixed.to(frames.dtype) if frames.is_floating_point() else mixed), soft


def temporal_subset(events: torch.Tensor, k: int) -> torch.Tensor:
    """The authors' "random temporal delete": keep ``k`` of the T timesteps, a fresh random subset per
    batch, in time order. Indices are drawn on the host (global torch generator) and gathered by slicing,
    so no index tensor is copied to the device."""
    steps = events.shape[0]
    if not 0 < k < steps:
        return events
    keep = sorted(torch.randperm(steps)[:k].tolist())
    return torch.cat([events[i:i + 1] for i in keep], dim=0)
