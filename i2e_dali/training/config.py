"""A run's configuration: one typed :class:`TrainConfig` (``data`` / ``model`` / ``optim`` / ``run``),
resolved in one place (:func:`resolve`) with a fixed precedence, later wins:

    built-in defaults -> the data set's paper defaults (then --preset) -> --recipe -> config file
    (or the mapping given to ``TrainConfig.from_dict``) -> command line

Every resolved value remembers where it came from (``config.origin("optim.lr")``; ``--print-config``).
``to_dict()`` / ``from_dict()`` use the nesting and key names of ``<output-dir>/config.yaml``. A bad key,
type or value raises :class:`~i2e_dali.errors.ConfigError` naming the key, the flag and the file.
The command line is parsed in training/cli.py (not here) into the flat mapping ``resolve`` takes.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import signal
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..convert.spec import parse_order
from ..errors import ConfigError
from ..placement import DEFAULT_SEED
from ..zoo import native_width, resolve_arch
from .recipes import RECIPES
from .schedule import SCHEDULES

__all__ = ["DATASETS", "DATASET_DEFAULTS", "PRESETS", "SECTIONS", "DataConfig", "ModelConfig", "OptimConfig",
           "RunConfig", "TrainConfig", "resolve", "default_of", "flag_of", "nest"]

DATASETS = ("imagenet", "wds", "cifar10", "cifar100", "i2e-npz", "i2e-parquet", "cifar10-dvs", "demo")

# The paper's settings (docs/guides/training.md) per data set kind: the second layer of the precedence.
_IMAGENET = dict(epochs=128, lr=0.1, weight_decay=1e-5, batch_size=128, timesteps=8, size=224, width=64)
_CIFAR = dict(epochs=256, lr=0.1, weight_decay=2e-4, batch_size=128, timesteps=8, size=128, width=64)
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": dict(_IMAGENET),
    # WebDataset tar shards of an image-folder set (ImageNet in practice): ImageNet's schedule and view
    "wds": dict(_IMAGENET),
    "cifar10": dict(_CIFAR),
    "cifar100": dict(_CIFAR),
    # exported I2E sets: mostly I2E-CIFAR, so the CIFAR schedule; frame size comes from the files
    "i2e-npz": dict(_CIFAR, size=None),
    # the authors' Parquet sets (UESTC-BICS/I2E) or our --format parquet exports; frame size from the rows
    "i2e-parquet": dict(_CIFAR, size=None),
    "cifar10-dvs": dict(epochs=128, lr=0.1, weight_decay=1e-5, batch_size=32, timesteps=8, size=None, width=64),
    # the embedded demo: small images, few timesteps, a narrow MS-ResNet18, so it trains in minutes on 2
    # CPU cores (measured in the README); same model class, loader and engine as the real runs
    "demo": dict(epochs=8, lr=0.1, weight_decay=1e-4, batch_size=32, timesteps=4, size=32, width=16),
}
# Named bundles of settings over the data set's defaults (below --recipe, the file and the flags).
PRESETS: dict[str, dict[str, Any]] = {
    # the paper's fine-tuning of an I2E-CIFAR10 model on CIFAR10-DVS (with --pretrained)
    "dvs-finetune": dict(lr=0.001, weight_decay=0.0),
}
# data set kinds that hold events already: the image-side options do not apply to them
_EVENT_KINDS = ("i2e-npz", "i2e-parquet", "cifar10-dvs")


def _f(default, flag: str | None = None, *, choices=None, check=None, rule: str = "", factory=None):
    """A config field: its default, the flag that sets it (for messages), allowed values, a range check."""
    meta = {"flag": flag, "choices": choices, "check": check, "rule": rule}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _ge(n):
    return (lambda v: v is None or v >= n), f">= {n}"


@dataclass(frozen=True)
class DataConfig:
    """What is read and how it becomes events (the loader's settings)."""
    root: str | None = _f(None, "--data")  # the data set's folder (or s3:// URL); None: the demo
    dataset: str | None = _f(None, "--dataset", choices=DATASETS)  # None: demo without data, else imagenet
    size: int | None = _f(224, "--size", check=lambda v: v is None or v >= 8, rule=">= 8")
    timesteps: int = _f(8, "--timesteps", check=lambda v: 1 <= v <= 8, rule="in 1..8")
    ratio: float | None = _f(None, "--ratio", check=lambda v: v is None or v > 0, rule="> 0")
    order: str | None = _f(None, "--order")
    batch_motions: bool = _f(False, "--batch-motions")
    workers: int | None = _f(None, "--workers", check=_ge(0)[0], rule=">= 0")
    threads: int | None = _f(None, "--threads", check=_ge(1)[0], rule=">= 1")
    cache_dir: str | None = _f(None, "--cache-dir")
    val_fraction: float = _f(0.1, "--val-fraction", check=lambda v: 0 < v < 1, rule="in (0, 1)")
    dvs_split: str = _f("seeded", "--dvs-split", choices=("seeded", "authors"))
    dvs_polarity: str = _f("on-off", "--dvs-polarity", choices=("on-off", "spikingjelly"))
    dvs_binarize: bool = _f(False, "--dvs-binarize")
    dvs_flip: bool = _f(True, "--no-dvs-flip")
    demo_dir: str | None = _f(None, "--demo-dir")
    exclude_list: str | None = _f(None, "--exclude-list")
    skip_bad: bool = _f(False, "--skip-bad")
    folder_index: str | None = _f(None, "--folder-index")  # "auto" or a folder of index files; None: scan
    aug: str = _f("baseline2", "--aug", choices=("baseline1", "baseline2"))
    random_motion: bool = _f(True, "--no-random-motion")
    fixed_threshold: float | None = _f(None, "--fixed-threshold", check=lambda v: v is None or 0 < v <= 1,
                                       rule="in (0, 1] (V lies in [0, 1])")
    input: str = _f("events", "--input", choices=("events", "rgb", "v"))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f("msresnet18", "--arch")
    width: int = _f(64, "--width", check=lambda v: v >= 0, rule=">= 1 (MS-ResNet)")
    zero_init_residual: bool = _f(False, "--zero-init-residual")
    pretrained: str | None = _f(None, "--pretrained")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = _f(128, "--epochs", check=lambda v: v >= 1, rule=">= 1")
    batch_size: int = _f(128, "--batch-size", check=lambda v: v >= 1, rule=">= 1 (per process)")
    lr: float = _f(0.1, "--lr", check=lambda v: v > 0, rule="> 0")
    lr_min: float = _f(5e-5, "--lr-min", check=lambda v: v >= 0, rule="in [0, --lr]")
    momentum: float = _f(0.9, "--momentum", check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    weight_decay: float = _f(1e-5, "--weight-decay", check=lambda v: v >= 0, rule=">= 0")
    label_smoothing: float = _f(0.1, "--label-smoothing", check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    sched: str = _f("cosine", "--sched", choices=SCHEDULES)
    decay_epochs: int = _f(30, "--decay-epochs", check=lambda v: v >= 1, rule=">= 1")
    decay_rate: float = _f(0.1, "--decay-rate", check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    warmup_epochs: int = _f(0, "--warmup-epochs", check=lambda v: v >= 0, rule="in 0..--epochs-1")
    warmup_lr: float = _f(0.0, "--warmup-lr", check=lambda v: v >= 0, rule="in [0, --lr]")
    mixup: bool = _f(False, "--mixup")
    t_train: int = _f(0, "--t-train", check=lambda v: v >= 0, rule="in 0..-T")
    amp: str = _f("auto", "--amp", choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = _f(False, "--channels-last")
    compile: bool = _f(False, "--compile")
    seed: int = _f(DEFAULT_SEED, "--seed", check=lambda v: 0 <= v < 2**63, rule="in 0..2^63-1")


@dataclass(frozen=True)
class RunConfig:
    device: str = _f("auto", "--device")
    output_dir: str | None = _f(None, "--output-dir")  # None: runs/<recipe> or runs/<dataset>-<arch>
    # None: a new run; "auto": <output_dir>/last.pt if present (the default under torchrun, which restarts
    # every worker after a failure: they must pick up their own checkpoint); or a checkpoint's path
    resume: str | None = _f(None, "--resume")
    ckpt_every: int = _f(1000, "--ckpt-every", check=lambda v: v >= 0, rule=">= 0")
    stop_after_epoch: int | None = _f(None, "--stop-after-epoch", check=_ge(1)[0], rule="in 1..--epochs")
    evaluate: bool = _f(False, "--evaluate")
    report: str | None = _f(None, "--report")
    report_batches: int | None = _f(None, "--report-batches", check=_ge(1)[0], rule=">= 1")
    log_every: int = _f(20, "--log-every", check=lambda v: v >= 1, rule=">= 1")
    tensorboard: bool = _f(True, "--no-tensorboard")
    progress: bool = _f(True, "--no-progress")
    # signals that ask the run to stop at the next step boundary with a checkpoint (training/preempt.py)
    stop_signals: list[str] = _f(None, "--stop-signals", factory=lambda: ["SIGTERM", "SIGUSR1"])
    requeue_on_signal: bool = _f(False, "--requeue-on-signal")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "run": RunConfig}
_TOP = {"recipe": _f(None, "--recipe", choices=tuple(sorted(RECIPES))),
        "preset": _f(None, "--preset", choices=tuple(sorted(PRESETS)))}
# name -> (section or None for top level, dataclasses.Field, type); names are unique across sections
_FIELDS: dict[str, tuple[str | None, Any, Any]] = {}
for _sec, _cls in SECTIONS.items():
    _hints = typing.get_type_hints(_cls)
    for _fld in dataclasses.fields(_cls):
        _FIELDS[_fld.name] = (_sec, _fld, _hints[_fld.name])
for _name, _fld in _TOP.items():
    _FIELDS[_name] = (None, _fld, str | None)
_BUILTIN = {name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
            for name, (_, f, _) in _FIELDS.items()}


def default_of(name: str):
    """The built-in default of a setting (the first layer; the data set's defaults may replace it)."""
    return _BUILTIN[name]


def flag_of(name: str) -> str:
    """The command-line flag of a setting (``weight_decay`` -> ``--weight-decay``)."""
    return _FIELDS[name][1].metadata["flag"] or "--" + name.replace("_", "-")


def _key(name: str) -> str:
    sec = _FIELDS[name][0]
    return name if sec is None else f"{sec}.{name}"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run. Build it with :meth:`from_dict` (or training/cli.py from flags); read
    ``config.optim.lr`` etc.; ``to_dict()`` is what ``config.yaml`` and checkpoints store."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    recipe: str | None = None
    preset: str | None = None
    # "section.key" -> where the value came from: default, data set X, preset X, recipe X, a file, command line
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None = None, *, source: str = "TrainConfig.from_dict") -> TrainConfig:
        """Resolve ``mapping`` (the nesting of ``config.yaml``; any part may be left out) over the defaults,
        the data set's and the recipe's; ``source`` names it in errors and origins."""
        return resolve(file=mapping, file_source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, float, bool, None, lists), nested like ``config.yaml``."""
        out: dict[str, Any] = {"recipe": self.recipe, "preset": self.preset}
        for sec in SECTIONS:
            out[sec] = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                        for k, v in dataclasses.asdict(getattr(self, sec)).items()}
        return out

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (the flag's destination: ``lr``, ``batch_size``, ...)."""
        d = self.to_dict()
        out = {"recipe": d.pop("recipe"), "preset": d.pop("preset")}
        for part in d.values():
            out.update(part)
        return out

    def origin(self, key: str) -> str:
        """Where ``key`` (``"optim.lr"`` or ``"lr"``) got its value."""
        return self.origins.get(_key(key) if key in _FIELDS else key, "default")

    def replace(self, **flat) -> TrainConfig:
        """A copy with some settings changed by flat name, unchecked (for values a run derives, e.g. the
        loader threads it picks on a CPU): origins say "derived"."""
        parts = {sec: {} for sec in SECTIONS}
        top = {}
        for name, value in flat.items():
            sec = _FIELDS[name][0]
            (top if sec is None else parts[sec])[name] = value
        new = dataclasses.replace(self, **top, **{s: dataclasses.replace(getattr(self, s), **v)
                                                  for s, v in parts.items() if v})
        object.__setattr__(new, "origins", {**self.origins, **{_key(n): "derived" for n in flat}})
        return new


# -------------------------------------------------------------------------------------------------
# checking one layer's values
# -------------------------------------------------------------------------------------------------
def _where(origin: str) -> str:
    return "" if origin in ("command line", "default") else f" (from {origin})"


def _bad(name: str, value, origin: str, why: str) -> ConfigError:
    return ConfigError(f"{flag_of(name)} (config key {_key(name)}){_where(origin)} has an invalid value "
                       f"{value!r}: {why}")


def _coerce(name: str, value, origin: str):
    """``value`` as the field's type; YAML/JSON spellings that mean the same are accepted (an int for a
    float, ``1e-5`` which YAML 1.1 reads as a string, a number for --order)."""
    tp = _FIELDS[name][2]
    args = set(typing.get_args(tp)) if isinstance(tp, types.UnionType) else {tp}
    if value is None:
        if type(None) in args:
            return None
        raise _bad(name, value, origin, "a value is required")
    base = next(a for a in args if a is not type(None))
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _bad(name, value, origin, "must be true or false")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad(name, value, origin, "must be a whole number")
    if base is float:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            try:
                value = float(value)
            except (ValueError, OverflowError):
                raise _bad(name, value, origin, "must be a finite number") from None
        if not isinstance(value, float) or not math.isfinite(value):
            raise _bad(name, value, origin, "must be a finite number")
        return value
    if base is str:
        if name == "order" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # the authors' numbered presets, written as numbers
        if not isinstance(value, str):
            raise _bad(name, value, origin, "must be a string")
        return value
    if typing.get_origin(base) is list:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _bad(name, value, origin, "must be a list of strings")
        return list(value)
    raise AssertionError(f"config field {name} has an unhandled type {tp}")  # a bug here, not user input


def _layer_from_mapping(mapping: Mapping, source: str) -> dict[str, Any]:
    """The flat settings of a nested mapping (config file / from_dict), every key and type checked."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{source}: a config is a mapping of sections (data, model, optim, run), got "
                          f"{type(mapping).__name__}")
    out = {}
    for sec, part in mapping.items():
        if sec in _TOP:
            out[sec] = part
            continue
        if sec not in SECTIONS:
            raise ConfigError(f"{source}: unknown key {sec!r}{_suggest(str(sec), list(SECTIONS) + list(_TOP))}; a "
                              "config has the sections data, model, optim, run (and recipe, preset)")
        if part is None:
            continue
        if not isinstance(part, Mapping):
            raise ConfigError(f"{source}: {sec} must be a mapping of settings, got {type(part).__name__}")
        for key, value in part.items():
            if not isinstance(key, str) or key not in _FIELDS or _FIELDS[key][0] != sec:
                owner = _FIELDS[key][0] if isinstance(key, str) and key in _FIELDS else None
                hint = (f" (it belongs in section {owner})" if owner else
                        _suggest(str(key), [f.name for f in dataclasses.fields(SECTIONS[sec])]))
                raise ConfigError(f"{source}: unknown key {sec}.{key}{hint}")
            out[key] = value
    return {k: _coerce(k, v, source) for k, v in out.items()}


def _suggest(word: str, options) -> str:
    near = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


# -------------------------------------------------------------------------------------------------
# the one resolution
# -------------------------------------------------------------------------------------------------
def resolve(*, file: Mapping | None = None, file_source: str = "config file", cli: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> TrainConfig:
    """The run's settings from the layers (later wins): built-in defaults, the data set's paper defaults,
    ``preset``, ``recipe``, ``file`` (nested like config.yaml, named ``file_source``), ``cli`` (flat: the
    flags the user gave, by destination). ``environ``: where torchrun is detected (default os.environ)."""
    environ = os.environ if environ is None else environ
    file_layer = _layer_from_mapping(file, file_source) if file is not None else {}
    cli_layer = {}
    for k, v in (cli or {}).items():
        if k not in _FIELDS:
            raise ConfigError(f"unknown setting {k!r}")
        cli_layer[k] = _coerce(k, v, "command line")
    upper = [(file_source, file_layer), ("command line", cli_layer)]

    def top(name):  # recipe / preset / dataset: from the layers that may set them, later wins
        val, org = None, None
        for org_, layer in upper:
            if name in layer:
                val, org = layer[name], org_
        return val, org

    recipe, _ = top("recipe")
    preset, _ = top("preset")
    for name, val in (("recipe", recipe), ("preset", preset)):
        if val is not None and val not in _TOP[name].metadata["choices"]:
            raise _bad(name, val, top(name)[1], f"one of {', '.join(_TOP[name].metadata['choices'])}")
    layers = [("recipe " + recipe, dict(RECIPES[recipe].settings))] if recipe else []
    layers += upper
    values = dict(_BUILTIN)
    origins = {k: "default" for k in values}
    dataset, root = None, None
    for org, layer in layers:
        dataset = layer.get("dataset", dataset)
        root = layer.get("root", root)
    if dataset is None:
        dataset = "demo" if root is None else "imagenet"
    if dataset not in DATASETS:
        org = next(o for o, layer in reversed(layers) if "dataset" in layer)
        raise _bad("dataset", dataset, org, f"one of {', '.join(DATASETS)}")
    below = [(f"data set {dataset}", DATASET_DEFAULTS[dataset])]
    if preset:
        below.append((f"preset {preset}", PRESETS[preset]))
    for org, layer in below + layers:
        for k, v in layer.items():
            values[k] = v
            origins[k] = org
    values["dataset"] = dataset
    try:
        _derive(values, origins, environ)
        _check(values, origins)
    except ConfigError as e:
        if file is not None and file_source not in str(e):  # a combination the file took part in
            raise ConfigError(f"{e} (with the settings of {file_source})") from None
        raise
    parts = {sec: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)}) for sec, cls in SECTIONS.items()}
    return TrainConfig(**parts, recipe=values["recipe"], preset=values["preset"],
                       origins={_key(k): o for k, o in origins.items()})


def _explicit(origin: str) -> bool:
    return not (origin == "default" or origin.startswith(("data set ", "preset ")))


def _derive(values: dict, origins: dict, environ: Mapping[str, str]) -> None:
    """Settings that follow from others: the architecture's canonical name and fixed width, the output
    folder, and ``resume: auto`` under torchrun."""
    try:
        values["arch"] = resolve_arch(values["arch"])
    except ValueError as e:
        raise ConfigError(f"--arch{_where(origins['arch'])}: {e}") from None
    fixed = native_width(values["arch"])
    if fixed is not None:  # zoo / user models have their own width; --width is MS-ResNet's
        if _explicit(origins["width"]) and values["width"] != fixed:
            raise ConfigError(f"--width{_where(origins['width'])} applies to MS-ResNet only; {values['arch']} has "
                              f"a fixed width ({fixed})")
        values["width"], origins["width"] = fixed, "arch " + values["arch"]
    if values["output_dir"] is None:
        if values["recipe"]:
            values["output_dir"] = str(Path("runs") / values["recipe"])
        else:
            safe_arch = "".join(c if c.isalnum() or c in "-_" else "_" for c in values["arch"])
            values["output_dir"] = str(Path("runs") / f"{values['dataset']}-{safe_arch}")
        origins["output_dir"] = "derived"
    if values["resume"] is None and not values["evaluate"] and _under_torchrun(environ):
        # torchrun restarts every worker after any failure: each must continue from the run's checkpoint
        values["resume"], origins["resume"] = "auto", "torchrun"


def _under_torchrun(environ: Mapping[str, str]) -> bool:
    return "TORCHELASTIC_RUN_ID" in environ or "WORLD_SIZE" in environ


def _check(v: dict, origins: dict) -> None:
    """Choices, ranges and combinations that cannot work; each error names the flag, key and source."""
    for name, (_, fld, _) in _FIELDS.items():
        meta, value = fld.metadata, v[name]
        if meta["choices"] and value is not None and value not in meta["choices"]:
            raise _bad(name, value, origins[name], f"one of {', '.join(meta['choices'])}")
        if meta["check"] and value is not None and not meta["check"](value):
            raise _bad(name, value, origins[name], "must be " + meta["rule"])

    def need(ok: bool, name: str, why: str):
        if not ok:
            raise _bad(name, v[name], origins[name], why)

    if v["dataset"] == "demo" and v["root"] is not None:
        raise ConfigError(f"--dataset demo generates its own data; drop --data{_where(origins['root'])} (or "
                          "choose the data set kind)")
    if v["dataset"] != "demo" and v["root"] is None:
        raise ConfigError(f"--dataset {v['dataset']}{_where(origins['dataset'])} needs --data (config key "
                          "data.root) pointing at the data set folder")
    need(v["width"] >= 1 or native_width(v["arch"]) is not None, "width", "must be >= 1")
    need(v["lr_min"] <= v["lr"], "lr_min", f"must be in [0, --lr] ({v['lr']})")
    need(v["warmup_lr"] <= v["lr"], "warmup_lr", f"must be in [0, --lr] ({v['lr']})")
    need(v["warmup_epochs"] == 0 or v["warmup_epochs"] < v["epochs"], "warmup_epochs",
         f"must be in 0..--epochs-1 ({v['epochs'] - 1})")
    need(v["t_train"] <= v["timesteps"], "t_train", f"must be in 0..-T ({v['timesteps']})")
    need(v["stop_after_epoch"] is None or v["stop_after_epoch"] <= v["epochs"], "stop_after_epoch",
         f"must be in 1..--epochs ({v['epochs']})")
    need(all(_is_signal(s) for s in v["stop_signals"]), "stop_signals",
         "signal names such as SIGTERM, SIGUSR1 (an empty list: no stop signals)")
    if v["report"] is not None and not v["evaluate"]:
        raise ConfigError(f"--report{_where(origins['report'])} goes with --evaluate (or use i2e-report on a "
                          "checkpoint)")
    if v["order"] is not None:
        try:
            parse_order(v["order"], v["timesteps"])
        except ValueError as e:
            raise ConfigError(f"--order (config key data.order){_where(origins['order'])}: {e}") from None
    if v["dataset"] in _EVENT_KINDS:
        image_side = [flag for flag, on in (("--aug baseline1", v["aug"] != "baseline2"),
                                            ("--fixed-threshold", v["fixed_threshold"] is not None),
                                            ("--no-random-motion", not v["random_motion"]),
                                            (f"--input {v['input']}", v["input"] != "events")) if on]
        if image_side:
            raise ConfigError(f"{', '.join(image_side)}: --dataset {v['dataset']} holds events already; these "
                              "options act on the images before conversion (imagenet, wds, cifar10/100, demo)")
    recipe = RECIPES.get(v["recipe"] or "")
    if recipe is not None and recipe.needs_pretrained and not (v["pretrained"] or v["resume"] or v["evaluate"]):
        how = (f"pre-train first: {recipe.pretrain_command()}, then pass --pretrained runs/{recipe.pretrain}/best.pt"
               if recipe.pretrain else "the pre-training source of this row is not known; pass your own weights")
        raise ConfigError(f"--recipe {recipe.name} fine-tunes pre-trained weights: give --pretrained PATH ({how})")


def _is_signal(name: str) -> bool:
    return name.startswith("SIG") and not name.startswith("SIG_") and isinstance(getattr(signal, name, None),
                                                                                 signal.Signals)


# -------------------------------------------------------------------------------------------------
# reading what older runs stored
# -------------------------------------------------------------------------------------------------
def nest(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored settings as a nested config mapping: checkpoints before TrainConfig stored
    the flat flag destinations (unknown ones, e.g. ``explicit``, are dropped); new ones are nested."""
    if any(isinstance(saved.get(sec), Mapping) for sec in SECTIONS):
        return {k: v for k, v in saved.items() if k in SECTIONS or k in _TOP}
    out: dict[str, Any] = {}
    for k, v in saved.items():
        k = "root" if k == "data" else k  # --data's destination before TrainConfig
        if k in _FIELDS:
            sec = _FIELDS[k][0]
            (out if sec is None else out.setdefault(sec, {}))[k] = v
    return out
