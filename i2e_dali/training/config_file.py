"""Config files: reading ``--config FILE`` (YAML, or JSON by the ``.json`` suffix), writing a run's
resolved config to ``<output-dir>/config.yaml`` (atomically), and the ``--print-config`` listing.

Reading is data only: ``yaml.safe_load`` builds plain mappings, lists and scalars, never objects (no tags
that run code). Every failure is a :class:`~i2e_dali.errors.ConfigError` naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..fsio import atomic_write_text
from .config import SECTIONS, TrainConfig

__all__ = ["MAX_CONFIG_BYTES", "read_config_file", "load_config", "write_config", "dump_config", "describe"]

MAX_CONFIG_BYTES = 1 << 20  # a run's config is a few kB; a bigger file is not one


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML or JSON config file (not yet checked against TrainConfig's keys)."""
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes, not a run's config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                          + " ".join(str(e).split())) from None
    except RecursionError:  # hostile nesting depth
        raise ConfigError(f"--config {path}: nested too deeply to be a run's config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping (data:, model:, optim:, run:), got "
                          f"{type(data).__name__}")
    return data


def load_config(path: str | os.PathLike) -> TrainConfig:
    """A config file resolved over the defaults, the data set's and the recipe's (as ``--config FILE``
    without further flags)."""
    return TrainConfig.from_dict(read_config_file(path), source=str(Path(path).expanduser()))


def dump_config(config: TrainConfig) -> str:
    """The YAML text of ``config.to_dict()``: sections in a fixed order, keys in their declared order."""
    header = ("# i2e-dali run config: every setting of this run, resolved. Repeat the run with\n"
              "#   train_dali.py --config THIS_FILE [-o another/folder]\n")
    return header + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    atomic_write_text(path, dump_config(config))
    return path


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def describe(config: TrainConfig) -> str:
    """``--print-config``: the resolved config as YAML, each value followed by where it came from."""
    d = config.to_dict()
    lines = []
    rows = [(f"{k}: {_scalar(d[k])}", config.origin(k)) for k in ("recipe", "preset")]
    for sec in SECTIONS:
        rows.append((f"{sec}:", None))
        rows += [(f"  {k}: {_scalar(v)}", config.origin(f"{sec}.{k}")) for k, v in d[sec].items()]
    width = max(len(text) for text, _ in rows)
    for text, origin in rows:
        lines.append(text if origin is None else f"{text.ljust(width)}  # {origin}")
    return "\n".join(lines)
