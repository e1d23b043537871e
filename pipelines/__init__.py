"""DALI graphs only (no torch): read, shard, decode, augment; uint8 out."""
from __future__ import annotations

# The paper's seed (docs/guides/training.md): the one default of every seed argument and flag of the project
# (re-exported as i2e_dali.placement.DEFAULT_SEED). It lives here because pipelines/ is the lowest layer.
DEFAULT_SEED = 2024


def shard_bounds(num_samples: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """[begin, end) of a contiguous shard, split the way DALI's readers split a data set: shard sizes
    differ by at most one and every sample belongs to exactly one shard."""
    return (shard_id * num_samples) // num_shards, ((shard_id + 1) * num_samples) // num_shards


def pipeline_options(cfg, checkpoint: str | None) -> dict:
    """The ``@pipeline_def`` keywords every graph here takes from its config.

    One seed per shard: ranks draw different crops/flips, and a rerun draws the same ones.
    """
    return dict(
        batch_size=cfg.batch_size,
        num_threads=cfg.num_threads,
        device_id=cfg.device_id,
        seed=cfg.seed + 1000 * cfg.shard_id,
        prefetch_queue_depth=cfg.prefetch_queue_depth,
        enable_checkpointing=cfg.enable_checkpointing,
        checkpoint=checkpoint,
    )


# Resize interpolations by name (``interp`` of the pipeline configs). "cubic" is DALI's INTERP_CUBIC, the
# counterpart of PIL's BICUBIC that the authors' data-set generation uses (README: how closely they agree).
INTERPOLATIONS = ("linear", "cubic", "lanczos3", "triangular", "nn")


def interp_type(name: str):
    """The DALI ``types.DALIInterpType`` for an interpolation name of ``INTERPOLATIONS``."""
    from nvidia.dali import types

    table = {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC, "lanczos3": types.INTERP_LANCZOS3,
             "triangular": types.INTERP_TRIANGULAR, "nn": types.INTERP_NN}
    if name not in table:
        raise ValueError(f"interp must be one of {INTERPOLATIONS}, got {name!r}")
    return table[name]
