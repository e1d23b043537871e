"""THE I2E conversion's public entry points: ``i2e_convert``, the ``I2E`` module and ``event_rate``.

Written once and used by the loader, the exporter, the visualiser, the calibrator and the benchmark.
CUDA tensors go to the fused Triton kernel (``triton_path``) when it is available, everything else to
the torch path (``torch_path``); both consume the same motion draws and give identical events.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError

from .spec import (
    GROUP_LETTERS,
    check_dtype,
    check_images,
    check_motions,
    check_ratio,
    check_threshold,
    check_timesteps,
    draw_motions,
    parse_order,
)
from .torch_path import convert_torch

__all__ = ["i2e_convert", "event_rate", "I2E", "Conversion", "OUTPUTS"]


def _fused_available(images: torch.Tensor, impl: str) -> bool:
    if impl == "torch" or not images.is_cuda:
        return False
    try:
        from . import triton_path  # noqa: F401  (lazy: Triton is only needed on CUDA)
    except ImportError:
        if impl == "triton":
            raise
        return False
    return True


def i2e_convert(
    images: torch.Tensor,
    *,
    ratio: float = 0.12,
    timesteps: int = 8,
    order: Sequence[int] | str | None = None,
    train: bool = False,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
    motions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    impl: str = "auto",
    validate: bool = True,
    out: torch.Tensor | None = None,
    threshold: str = "adaptive",
    threshold_value: float | None = None,
) -> torch.Tensor:
    """Convert ``[B, 3, H, W]`` images to events ``[T, B, 2, H, W]`` (defined in docs/concepts/i2e.md).

    Args:
        images: uint8 0..255 or float 0..1, on CPU or CUDA.
        ratio: threshold as a fraction of each image's intensity range (0.12 ImageNet, 0.07 CIFAR@128).
        timesteps: T in 1..8; the first T groups of ``order`` are used.
        order: group order, indices 0..7 or letters ("efghabcd" is the default).
        train: random motion within each group (augmentation); False uses the canonical motions.
        per_sample: in training, draw per sample (this project) or once per batch (the authors').
        generator: torch.Generator for reproducible draws (on the images' device).
        motions: explicit ``[B, 8]`` choices (overrides train/per_sample/generator).
        dtype: bool/uint8 for storage, float16/bfloat16/float32 for a model.
        impl: "auto" (fused Triton kernel for CUDA tensors when available), "torch" or "triton".
        validate: check float inputs for NaN/inf/range (one reduction; costs a sync on CUDA).
        out: optional contiguous ``[T, B, 2, H, W]`` tensor of ``dtype`` on the images' device to write
            into. Reusing one buffer across calls (export, benchmarks) saves fresh-memory page faults,
            which on the CPU cost as much as the conversion itself.
        threshold: "adaptive" (the paper's: ``ratio`` x each image's intensity range) or "fixed" (the
            paper's Table 4 ablation: one absolute threshold ``threshold_value`` on V in (0, 1] for every
            image; ``ratio`` is then unused). ON fires iff ``d >= thr``, OFF iff ``-d >= thr`` either way.
    """
    fixed = check_threshold(threshold, threshold_value)
    ratio = check_ratio(ratio)
    order = parse_order(order, timesteps)
    dtype = check_dtype(dtype)
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    images = check_images(images, validate)
    batch = images.shape[0]
    uniform = None
    if motions is None:
        gen_device = generator.device if generator is not None else images.device
        motions = draw_motions(batch, train=train, per_sample=per_sample, generator=generator, device=gen_device)
        motions = motions.to(images.device)  # valid by construction: no check, no CUDA sync
        uniform = not train or not per_sample or batch == 1
    else:
        motions = check_motions(motions, batch, images.device)
    if out is not None:
        expected = (len(order), batch, 2, images.shape[2], images.shape[3])
        if (not isinstance(out, torch.Tensor) or tuple(out.shape) != expected or out.dtype != dtype
                or out.device != images.device or not out.is_contiguous()):
            got = (tuple(out.shape), out.dtype, out.device) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"out must be a contiguous tensor {list(expected)} of {dtype} on {images.device}, got {got}")
    if _fused_available(images, impl):
        from .triton_path import convert_fused

        return convert_fused(images, ratio=ratio, order=order, motions=motions, dtype=dtype, out=out, fixed=fixed)
    return convert_torch(images, ratio, order, motions, dtype, uniform, out, fixed)


def event_rate(events: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Fraction of pixels firing, per timestep and polarity.

    ``events`` is ``[T, B, 2, H, W]``; returns ``[T, 2]`` (mean over the batch) or ``[T, B, 2]``.
    """
    if not isinstance(events, torch.Tensor) or events.dim() != 5 or events.shape[2] != 2:
        shape = tuple(events.shape) if isinstance(events, torch.Tensor) else type(events).__name__
        raise ValueError(f"events must be a tensor [T, B, 2, H, W], got {shape}")
    rate = events.to(torch.float32).mean(dim=(-2, -1))  # [T, B, 2]
    return rate if per_sample else rate.mean(dim=1)


class I2E(nn.Module):
    """The I2E conversion as a module: ``training`` mode draws random motions, ``eval()`` is canonical.

    >>> i2e = I2E(ratio=0.12).eval()
    >>> events = i2e(images_uint8)          # [8, B, 2, H, W] float32
    """

    def __init__(
        self,
        ratio: float = 0.12,
        timesteps: int = 8,
        order: Sequence[int] | str | None = None,
        per_sample: bool = True,
        dtype: torch.dtype = torch.float32,
        impl: str = "auto",
        threshold: str = "adaptive",
        threshold_value: float | None = None,
    ):
        super().__init__()
        self.threshold_value = check_threshold(threshold, threshold_value)
        self.threshold = threshold
        self.ratio = check_ratio(ratio)
        self.timesteps = check_timesteps(timesteps)
        self.order = parse_order(order, timesteps)
        self.per_sample = bool(per_sample)
        self.dtype = check_dtype(dtype)
        if impl not in ("auto", "torch", "triton"):
            raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
        self.impl = impl

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        motions: torch.Tensor | None = None,
        validate: bool = True,
    ) -> torch.Tensor:
        return i2e_convert(
            images,
            ratio=self.ratio,
            timesteps=self.timesteps,
            order=self.order,
            train=self.training,
            per_sample=self.per_sample,
            generator=generator,
            motions=motions,
            dtype=self.dtype,
            impl=self.impl,
            validate=validate,
            threshold=self.threshold,
            threshold_value=self.threshold_value,
        )

    def extra_repr(self) -> str:
        order = "".join(GROUP_LETTERS[g] for g in self.order)
        thr = f"fixed threshold={self.threshold_value}, " if self.threshold == "fixed" else ""
        return f"{thr}ratio={self.ratio}, timesteps={self.timesteps}, order={order!r}, per_sample={self.per_sample}, dtype={self.dtype}"


# What a loader hands out: events (I2E), the static baselines "rgb" / "v" repeated T times, or the
# decoded, augmented uint8 images themselves ("images": no conversion; calibration converts them itself).
OUTPUTS = ("events", "rgb", "v", "images")


@dataclass(frozen=True)
class Conversion:
    """The conversion a loader applies, as one value (instead of its ten parameters beside DALI's knobs).

    ``ratio=None`` takes the data set's default (0.12 ImageNet, 0.07 CIFAR, ...). ``random_motion``:
    training draws random motions within each group (the paper's default); False trains on the canonical
    ones (Table 4 "baseline-I"). Evaluation always uses the canonical motions. Build it from an ``I2E``
    module with :meth:`coerce` (a loader does that for you: ``conversion=I2E(ratio=0.1)`` works).
    """

    ratio: float | None = None
    timesteps: int = 8
    order: tuple[int, ...] | str | None = None
    per_sample: bool = True
    dtype: torch.dtype = torch.float32
    impl: str = "auto"
    threshold: str = "adaptive"
    threshold_value: float | None = None
    random_motion: bool = True
    output: str = "events"

    def __post_init__(self):
        try:
            check_threshold(self.threshold, self.threshold_value)
            if self.ratio is not None:
                object.__setattr__(self, "ratio", check_ratio(self.ratio))
            check_timesteps(self.timesteps)
            object.__setattr__(self, "order", parse_order(self.order, self.timesteps))
            check_dtype(self.dtype)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"conversion: {exc}") from None
        if self.impl not in ("auto", "torch", "triton"):
            raise ConfigError(f"conversion: impl must be 'auto', 'torch' or 'triton', got {self.impl!r}")
        if self.output not in OUTPUTS:
            raise ConfigError(f"conversion: output must be one of {OUTPUTS}, got {self.output!r}")
        object.__setattr__(self, "per_sample", bool(self.per_sample))
        object.__setattr__(self, "random_motion", bool(self.random_motion))

    @classmethod
    def coerce(cls, value, *, name: str = "conversion") -> "Conversion":
        """A ``Conversion`` from None (the defaults), a ``Conversion`` or an ``I2E`` module (its settings;
        its train/eval mode is not used: the loader's split decides); anything else is a ConfigError."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, I2E):
            return cls(ratio=value.ratio, timesteps=value.timesteps, order=value.order, per_sample=value.per_sample,
                       dtype=value.dtype, impl=value.impl, threshold=value.threshold,
                       threshold_value=value.threshold_value)
        raise ConfigError(f"{name} must be an i2e_dali.Conversion or an i2e_dali.I2E module (or None for the "
                          f"defaults), got {type(value).__name__}")

    def replace(self, **changes) -> "Conversion":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def module(self, default_ratio: float = 0.12) -> "I2E":
        """The ``I2E`` module computing this conversion (``ratio=None`` -> ``default_ratio``)."""
        return I2E(ratio=default_ratio if self.ratio is None else self.ratio, timesteps=self.timesteps,
                   order=self.order, per_sample=self.per_sample, dtype=self.dtype, impl=self.impl,
                   threshold=self.threshold, threshold_value=self.threshold_value)
