"""i2e-dali: I2E image-to-event conversion fed by NVIDIA DALI, and an SNN trainer."""
from .i2e import (
    DEFAULT_ORDER,
    MOTION_GROUPS,
    I2E,
    draw_motions,
    event_rate,
    i2e_convert,
)

__all__ = ["I2E", "i2e_convert", "draw_motions", "event_rate", "MOTION_GROUPS", "DEFAULT_ORDER"]
__version__ = "0.1.0"
