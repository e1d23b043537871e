"""The I2E conversion where SNN people already work, each computing exactly ``i2e_convert``:

- :class:`I2ETransform`: a torchvision ``transforms.v2`` transform on single images (uint8 tensor
  ``[3, H, W]``, float ``[3, H, W]`` in 0..1, or a PIL image) -> events ``[T, 2, H, W]``, for users who
  keep a CPU ``DataLoader``: ``v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(),
  I2ETransform(train=True)])``. Random motions draw from torch's global generator, which the DataLoader
  seeds per worker, so runs repeat.
- :class:`I2EEncoder`: a spikingjelly encoder (``encoding.StatefulEncoder``): multi-step (``step_mode="m"``)
  maps images ``[B, 3, H, W]`` to ``[T, B, 2, H, W]`` at once; single-step (``"s"``) returns frame ``t`` at
  the t-th call and is reset with ``functional.reset_net`` like any spikingjelly memory module. Training
  mode draws random motions, ``eval()`` uses the canonical ones (the paper's encoder proposal for
  spikingjelly, issue 654).
- :class:`ToTonicEvents`: image -> tonic's structured events (fields x, y, t, p) so tonic's transforms
  (``ToFrame``, ``Denoise``, ``DropEvent``...) apply. Timestep ``k`` is stamped ``t = k * dt_us``; ``p`` is the
  I2E channel (0 = ON, 1 = OFF), so ``tonic.transforms.ToFrame(sensor_size=(W, H, 2), time_window=dt_us,
  start_time=0, end_time=T * dt_us)`` gives back exactly the I2E frames.

torchvision, spikingjelly and tonic are imported only when the class is used.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .api import Conversion, i2e_convert

__all__ = ["I2ETransform", "I2EEncoder", "ToTonicEvents", "image_tensor"]


def image_tensor(image) -> torch.Tensor:
    """A single image as ``[3, H, W]`` (uint8 or float 0..1): from a PIL image (any mode, converted to
    RGB) or a tensor ``[3, H, W]`` / ``[1, H, W]`` (grey: its V is the grey value, as for an RGB grey)."""
    if isinstance(image, torch.Tensor):
        x = image
    else:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - PIL comes with torchvision
            Image = None
        if Image is None or not isinstance(image, Image.Image):
            raise ConfigError(f"I2E drop-in: expected a PIL image or a tensor [3, H, W], got {type(image).__name__}")
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ConfigError(f"I2E drop-in: expected one image [3, H, W] (or [1, H, W]), got shape {tuple(x.shape)}")
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def _ratio(conv: Conversion) -> float:
    return 0.12 if conv.ratio is None else conv.ratio  # the I2E module's default (ImageNet's)


def _convert(conv: Conversion, images: torch.Tensor, *, train: bool, generator=None) -> torch.Tensor:
    if conv.output != "events":
        raise ConfigError(f"conversion: the drop-ins produce events, not output={conv.output!r}")
    return i2e_convert(images, ratio=_ratio(conv), timesteps=conv.timesteps, order=conv.order,
                       train=train and conv.random_motion, per_sample=conv.per_sample, generator=generator,
                       dtype=conv.dtype, impl=conv.impl, threshold=conv.threshold,
                       threshold_value=conv.threshold_value)


def _make_transform_class():
    from torchvision.transforms import v2

    class I2ETransform(v2.Transform):
        """I2E on one image inside ``torchvision.transforms.v2.Compose`` -> ``[T, 2, H, W]``.

        Args:
            conversion: ``Conversion`` or ``I2E`` module (None: defaults; ``ratio=None`` -> 0.12).
            train: random motions (augmentation, if the conversion's ``random_motion``); False: canonical.
        """

        def __init__(self, conversion=None, *, train: bool = False):
            super().__init__()
            self.conversion = Conversion.coerce(conversion)
            self.train_motion = bool(train)

        def transform(self, inpt, params):
            # v2 hands over images (PIL, tv_tensors.Image, the sample's first plain tensor); boxes, masks and
            # other tv_tensors pass through unchanged (they have no events)
            from torchvision import tv_tensors

            if isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, tv_tensors.Image):
                return inpt
            x = image_tensor(inpt.as_subclass(torch.Tensor) if isinstance(inpt, torch.Tensor) else inpt)
            return _convert(self.conversion, x.unsqueeze(0), train=self.train_motion)[:, 0]

        def _transform(self, inpt, params):  # torchvision < 0.17 spelling
            return self.transform(inpt, params)

        def extra_repr(self) -> str:
            return f"{self.conversion}, train={self.train_motion}"

    return I2ETransform


def _make_encoder_class():
    from spikingjelly.activation_based import encoding

    class I2EEncoder(encoding.StatefulEncoder):
        """I2E as a spikingjelly encoder: images ``[B, 3, H, W]`` -> spikes ``[T, B, 2, H, W]`` ("m"), or
        frame ``t`` ``[B, 2, H, W]`` at the t-th call ("s"; ``functional.reset_net`` starts over).

        Args:
            conversion: ``Conversion`` or ``I2E`` module (None: defaults; ``ratio=None`` -> 0.12).
            step_mode: "m" (default, spikingjelly's multi-step layout) or "s".
            generator: optional ``torch.Generator`` for the training-mode motion draws.
        """

        def __init__(self, conversion=None, step_mode: str = "m", generator: torch.Generator | None = None):
            self.conversion = Conversion.coerce(conversion)
            if step_mode not in ("s", "m"):
                raise ConfigError(f"step_mode must be 's' or 'm', got {step_mode!r}")
            super().__init__(self.conversion.timesteps, step_mode=step_mode)
            self.generator = generator

        def single_step_encode(self, x: torch.Tensor) -> torch.Tensor:
            return _convert(self.conversion, x, train=self.training, generator=self.generator)

        def multi_step_forward(self, x: torch.Tensor) -> torch.Tensor:
            # Static images enter spikingjelly networks either once ([B, 3, H, W]) or repeated T times
            # ([T, B, 3, H, W], functional.seq_to_ann_forward style): one conversion either way.
            if x.dim() == 5:
                if x.shape[0] > 1 and not torch.equal(x[0], x[-1]):
                    raise ConfigError("I2EEncoder: a [T, B, 3, H, W] input must repeat one image batch T times")
                x = x[0]
            return self.single_step_encode(x)

        def extra_repr(self) -> str:
            return f"{self.conversion}, step_mode={self.step_mode}"

    return I2EEncoder


class ToTonicEvents:
    """Image (PIL / ``[3, H, W]``) -> tonic's structured event array (x, y, t, p), sorted by time.

    Args:
        conversion: ``Conversion`` or ``I2E`` module (None: defaults; ``ratio=None`` -> 0.12).
        train: random motions (if the conversion's ``random_motion``); False: canonical.
        dt_us: microseconds between timesteps (event ``t`` = timestep * dt_us).
    ``sensor_size`` for tonic is ``(W, H, 2)``.
    """

    def __init__(self, conversion=None, *, train: bool = False, dt_us: int = 1000):
        self.conversion = Conversion.coerce(conversion)
        self.train = bool(train)
        if isinstance(dt_us, bool) or not isinstance(dt_us, int) or dt_us < 1:
            raise ConfigError(f"dt_us must be a positive int (microseconds), got {dt_us!r}")
        self.dt_us = dt_us

    def __call__(self, image) -> np.ndarray:
        from tonic.io import make_structured_array

        x = image_tensor(image)
        frames = _convert(self.conversion.replace(dtype=torch.uint8), x.unsqueeze(0), train=self.train)[:, 0]
        t, p, yy, xx = np.nonzero(frames.cpu().numpy())  # row-major: sorted by timestep
        return make_structured_array(xx, yy, t.astype(np.int64) * self.dt_us, p)

    def __repr__(self) -> str:
        return f"ToTonicEvents({self.conversion}, train={self.train}, dt_us={self.dt_us})"


_CLASSES = {"I2ETransform": _make_transform_class, "I2EEncoder": _make_encoder_class}


def __getattr__(name: str):
    # Built on first use (their bases live in torchvision / spikingjelly), then cached in the module.
    if name in _CLASSES:
        cls = _CLASSES[name]()
        cls.__module__ = __name__
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
