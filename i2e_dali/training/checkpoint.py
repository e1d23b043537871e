"""The one checkpoint format: written atomically by rank 0, loaded without unpickling code; plus
loading weights from our checkpoints or the authors' releases (``--pretrained``)."""
from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, TrainError
from ..fsio import atomic_write
from ..models import unwrap

__all__ = [
    "CKPT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "check_compatible",
    "saved_setting",
    "rng_state",
    "set_rng_state",
    "extract_state_dict",
    "load_pretrained",
    "load_state_into",
]

log = logging.getLogger("i2e_dali.train")

CKPT_FORMAT = "i2e-dali-checkpoint/1"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, os.replace.

    A reader (or a resumed run after SIGKILL) sees the old complete file or the new complete file,
    never a partial one. Leftover temp files of a killed writer are named ``.<name>.*.tmp``.
    """
    path = Path(path)
    atomic_write(path, lambda f: torch.save(state, f), durable=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of our checkpoints with ``weights_only=True`` and check it is one."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(
            f"{path} is not an i2e-dali training checkpoint (no format tag {CKPT_FORMAT!r}); "
            "to start from foreign weights use --pretrained instead of --resume"
        )
    _fields_ok(ckpt, path, required=False)
    return ckpt


def _fields_ok(ckpt: dict, path, *, required: bool) -> None:
    """A tagged checkpoint whose fields were damaged is refused by name, before a model or optimiser meets
    a wrong type deep inside torch. Fields present must be well formed; ``required`` (a resume) also needs
    every field the trainer restores."""
    def is_count(v):
        return not isinstance(v, bool) and isinstance(v, int) and v >= 0

    checks = (
        ("model", "a state dict of tensors", lambda v: isinstance(v, dict) and bool(v) and all(
            isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())),
        ("optimizer", "a state dict", lambda v: isinstance(v, dict)),
        ("scheduler", "a state dict", lambda v: isinstance(v, dict)),
        ("epoch", "a count >= 0", is_count),
        ("step_in_epoch", "a count >= 0", is_count),
        ("global_step", "a count >= 0", is_count),
        ("best_top1", "a number", lambda v: not isinstance(v, bool) and isinstance(v, (int, float))),
        ("ranks", "a list of per-rank dicts", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
    )
    for field, want, ok in checks:
        if field in ckpt:
            if ok(ckpt[field]):
                continue
        elif not required or field == "ranks":
            continue
        raise CheckpointError(f"{path}: damaged checkpoint: '{field}' is missing or not {want} "
                              f"(got {type(ckpt.get(field)).__name__}); use another copy (e.g. best.pt or an "
                              "earlier last.pt)")


def clean_stale_temps(output_dir: Path) -> None:
    for p in output_dir.glob(".*.pt.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            log.info("removed %s, left by a run that was killed while writing a checkpoint", p.name)


def rng_state(device: torch.device) -> dict:
    """All RNG states as tensors and plain containers (loadable with weights_only=True)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def saved_setting(saved: dict | None, name: str, default=None):
    """One setting from a checkpoint's stored config by its flat name (``lr``, ``root``): nested in a
    section (TrainConfig.to_dict) or, in checkpoints from before TrainConfig, flat (``--data`` was ``data``)."""
    saved = saved or {}
    for section in ("data", "model", "optim", "run"):
        part = saved.get(section)
        if isinstance(part, dict) and name in part:
            return part[name]
    if any(isinstance(saved.get(s), dict) for s in ("data", "model", "optim", "run")):
        return saved.get(name, default) if name in ("recipe", "preset") else default
    return saved.get("data" if name == "root" else name, default)


def check_compatible(ckpt: dict, *, arch: str, width: int, dataset: str, num_classes: int, class_names: list[str],
                     source: str) -> None:
    """Refuse a checkpoint of another model, width, data set or class list, saying what differs."""
    _fields_ok(ckpt, source, required=True)  # a resume restores every field: all must be there and sound
    problems = []
    if ckpt.get("arch") != arch:
        problems.append(f"architecture {ckpt.get('arch')} (this run: --arch {arch})")
    if ckpt.get("width") != width:
        problems.append(f"width {ckpt.get('width')} (this run: --width {width})")
    if ckpt.get("dataset") != dataset:
        problems.append(f"data set {ckpt.get('dataset')} (this run: --dataset {dataset})")
    if ckpt.get("num_classes") != num_classes:
        problems.append(f"{ckpt.get('num_classes')} classes (this data set has {num_classes})")
    elif class_names and ckpt.get("class_names") and list(ckpt["class_names"]) != list(class_names):
        problems.append("a different list of class names")
    if problems:
        raise CheckpointError(
            f"{source} cannot resume this run: it was saved with " + "; ".join(problems)
            + ". Use a matching --output-dir/--resume, or start from its weights with --pretrained."
        )


_DROPPED_KEYS = ("i2e.weight",)  # the authors' in-model conversion kernel; here the loader converts


def extract_state_dict(obj, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the model weights in a loaded checkpoint object.

    Accepts our trainer checkpoints (``{"model": ...}``), the authors' (``{"state_dict": ...}``,
    saved from DataParallel so keys start with ``module.``) and a bare state dict. Strips
    ``module.`` / ``_orig_mod.`` (torch.compile) prefixes and drops ``i2e.weight``.
    """
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source}: no model weights found (expected a state dict, or a dict with 'model' or 'state_dict')"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        if k in _DROPPED_KEYS:
            log.info("%s: dropping %s (the authors' in-model I2E kernel; conversion happens in the loader)", source, k)
            continue
        out[k] = v
    return out


def _numpy_safe_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray.scalar, np.dtype]
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


def load_pretrained(model: nn.Module, path, *, num_classes: int | None = None, strict: bool = True) -> list[str]:
    """Load weights from ``path`` into ``model`` (ours or the authors' checkpoint).

    ``num_classes``: the class count the model should end with; when the checkpoint's classifier has a
    different size (fine-tuning, e.g. I2E-CIFAR10 -> CIFAR10-DVS with the same 10 classes is fine, but
    ImageNet -> CIFAR10 is not), ``fc`` is re-initialised for ``num_classes`` and only the backbone is
    loaded. Returns notes describing what was adapted. Raises :class:`CheckpointError` when the
    checkpoint belongs to another architecture or width, or is missing.
    Loading uses ``torch.load(weights_only=True)``: no code from the file is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights not found: {path}")
    try:
        # numpy scalars/dtypes (e.g. a stored accuracy) are data, not code: allowed besides tensors
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the message says what to do
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(e).__name__}: {e}). "
            "Checkpoints that pickle Python objects are refused for safety; re-save only the state dict."
        ) from e
    return load_state_into(model, extract_state_dict(obj, source=str(path)), num_classes=num_classes,
                           source=str(path), strict=strict)


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], *, num_classes: int | None = None,
                    source: str = "checkpoint", strict: bool = True) -> list[str]:
    """Load a cleaned state dict (see :func:`extract_state_dict`) with the checks of :func:`load_pretrained`."""
    target = unwrap(model)
    notes: list[str] = []
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        arch = getattr(target, "arch", type(target).__name__)
        raise CheckpointError(
            f"{source}: parameter names do not match {arch} "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}). "
            "It is probably a checkpoint of another architecture: pass the matching --arch."
        )
    head = getattr(target, "_head", "fc")  # the classifier's name: fc (ResNets), head (zoo Spikformer)
    ckpt_classes = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else None
    want = num_classes if num_classes is not None else getattr(target, "num_classes", ckpt_classes)
    shape_bad = [
        k for k, v in state.items() if not k.startswith(head + ".") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shape_bad:
        k = shape_bad[0]
        raise CheckpointError(
            f"{source}: {k} has shape {tuple(state[k].shape)} but the model expects {tuple(own[k].shape)}; "
            "the checkpoint was made with another architecture, --width or --input (events: 2 channels, rgb: 3, v: 1)."
        )
    if ckpt_classes is not None and ckpt_classes != want:
        notes.append(f"classifier re-initialised: checkpoint has {ckpt_classes} classes, model needs {want}")
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        if hasattr(target, "reset_classifier"):
            target.reset_classifier(want)
        result = target.load_state_dict(state, strict=False)
        if set(result.missing_keys) - {f"{head}.weight", f"{head}.bias"} or result.unexpected_keys:
            raise CheckpointError(f"{source}: unexpected key mismatch {result}")
    else:
        if getattr(target, "num_classes", want) != want and hasattr(target, "reset_classifier"):
            target.reset_classifier(want)
        target.load_state_dict(state, strict=strict)
    for n in notes:
        log.info("%s: %s", source, n)
    return notes
