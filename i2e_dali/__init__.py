"""i2e-dali: I2E image-to-event conversion fed by NVIDIA DALI, and an SNN trainer.

Front doors: ``make_loader(data, split, batch_size)`` for data (an EventLoader or FrameLoader yielding
``Batch(events, labels)``), ``Conversion`` / ``I2E`` for the conversion anywhere (``I2ETransform`` in a
torchvision pipeline, ``I2EEncoder`` in a spikingjelly network), ``i2e_dali.training`` for runs.

The house (imports run down this list only; docs/concepts/architecture.md):
- ``convert/``  THE conversion: spec -> torch path / Triton path -> api (``i2e_convert``, ``I2E``, ``Conversion``)
- ``data/``     sources, DALI ``EventLoader`` and ``FrameLoader`` on one loader contract, ``make_loader``
- ``models``    MS-ResNet on spikingjelly LIF neurons
- ``training/`` config, runtime, data, engine, checkpoint; ``train_dali.py`` is its entry point
- ``tools/``    the CLIs: check, export, viz, calibrate, bench
- ``errors``, ``fsio``, ``placement``: the error family, the atomic writer, device/shard/core rules
"""
from __future__ import annotations

import importlib

from .convert import DEFAULT_ORDER, I2E, MOTION_GROUPS, Conversion, draw_motions, event_rate, i2e_convert

__all__ = ["I2E", "Conversion", "i2e_convert", "draw_motions", "event_rate", "MOTION_GROUPS", "DEFAULT_ORDER",
           "make_loader", "Batch", "DaliOptions", "EventLoader", "FrameLoader", "open_source", "I2EError",
           "ConfigError", "I2ETransform", "I2EEncoder", "ToTonicEvents"]
__version__ = "0.2.0"

# Loaders, sources and the drop-ins import DALI / torch.utils.data / torchvision / spikingjelly: resolved on
# first use, so `import i2e_dali` stays light.
_LAZY = {
    "make_loader": "i2e_dali.data.factory",
    "Batch": "i2e_dali.data.base",
    "DaliOptions": "i2e_dali.data.event_loader",
    "EventLoader": "i2e_dali.data.event_loader",
    "FrameLoader": "i2e_dali.data.frame_loader",
    "open_source": "i2e_dali.data.sources",
    "I2EError": "i2e_dali.errors",
    "ConfigError": "i2e_dali.errors",
    "I2ETransform": "i2e_dali.convert.dropin",
    "I2EEncoder": "i2e_dali.convert.dropin",
    "ToTonicEvents": "i2e_dali.convert.dropin",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'i2e_dali' has no attribute {name!r}")
