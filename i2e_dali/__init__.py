"""i2e-dali: I2E image-to-event conversion fed by NVIDIA DALI, and an SNN trainer.

The house (imports run down this list only; shared/DESIGN.md):
- ``convert/``  THE conversion: spec -> torch path / Triton path -> api (``i2e_convert``, ``I2E``)
- ``data/``     sources, DALI ``EventLoader`` and ``FrameLoader`` on one loader contract, decode checks
- ``models``    MS-ResNet on spikingjelly LIF neurons
- ``training/`` config, runtime, data, engine, checkpoint; ``train_dali.py`` is its entry point
- ``tools/``    the CLIs: check, export, viz, calibrate, bench
- ``errors``, ``fsio``, ``placement``: the error family, the atomic writer, device/shard/core rules
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from .convert import DEFAULT_ORDER, I2E, MOTION_GROUPS, draw_motions, event_rate, i2e_convert

__all__ = ["I2E", "i2e_convert", "draw_motions", "event_rate", "MOTION_GROUPS", "DEFAULT_ORDER",
           "EventLoader", "FrameLoader", "open_source", "I2EError"]
__version__ = "0.2.0"

# Loaders and sources import DALI / torch.utils.data: resolved on first use, so `import i2e_dali` stays light.
_LAZY = {
    "EventLoader": "i2e_dali.data.event_loader",
    "FrameLoader": "i2e_dali.data.frame_loader",
    "open_source": "i2e_dali.data.sources",
    "I2EError": "i2e_dali.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'i2e_dali' has no attribute {name!r}")


# Module paths from before the package had its rooms (convert/, data/, training/, tools/). Users' scripts
# import them (`from i2e_dali.loader import EventLoader`), so each old name resolves to the module that
# now holds the code: the same module object, not a copy. `python -m i2e_dali.bench` has a real alias file.
_MOVED = {
    "i2e_dali.i2e": "i2e_dali.convert",
    "i2e_dali.i2e_triton": "i2e_dali.convert.triton_path",
    "i2e_dali.baseline": "i2e_dali.convert.conv_baseline",
    "i2e_dali.datasets": "i2e_dali.data.sources",
    "i2e_dali.loader": "i2e_dali.data.event_loader",
    "i2e_dali.frame_loader": "i2e_dali.data.frame_loader",
    "i2e_dali.npz": "i2e_dali.data.npz",
    "i2e_dali.dvs": "i2e_dali.data.dvs",
    "i2e_dali.demo": "i2e_dali.data.demo",
    "i2e_dali.check": "i2e_dali.tools.check",
    "i2e_dali.export": "i2e_dali.tools.export",
    "i2e_dali.viz": "i2e_dali.tools.viz",
    "i2e_dali.calibrate": "i2e_dali.tools.calibrate",
    "i2e_dali.corpus": "i2e_dali.tools.bench.corpus",
    "i2e_dali.train": "i2e_dali.training",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):  # already executed under its new name
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
