"""THE I2E conversion (defined in docs/concepts/i2e.md), in one package whose imports run one way:
``api`` (i2e_convert, I2E, event_rate: the dispatch) -> ``torch_path`` / ``triton_path`` -> ``spec``.
``conv_baseline`` is the conv-based way of computing I2E, kept only as the benchmarks' speed baseline.
Never imports DALI.
"""
from .api import I2E, OUTPUTS, Conversion, event_rate, i2e_convert
from .spec import (
    DEFAULT_ORDER,
    GROUP_LETTERS,
    GROUP_SIZES,
    MAX_TIMESTEPS,
    MOTION_GROUPS,
    OUT_DTYPES,
    draw_motions,
    intensity_and_threshold,
    parse_order,
    position_offset,
    threshold_from_extremes,
)

__all__ = [
    "I2E",
    "Conversion",
    "OUTPUTS",
    "i2e_convert",
    "event_rate",
    "draw_motions",
    "parse_order",
    "position_offset",
    "threshold_from_extremes",
    "intensity_and_threshold",
    "MOTION_GROUPS",
    "GROUP_SIZES",
    "GROUP_LETTERS",
    "DEFAULT_ORDER",
    "MAX_TIMESTEPS",
    "OUT_DTYPES",
]
