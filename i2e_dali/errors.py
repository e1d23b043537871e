"""The one family of user-facing errors: every problem a user can fix derives from ``I2EError``.

The CLIs catch ``I2EError`` and print its message in one line (no traceback; ``I2E_DEBUG=1`` shows it).
Each class also keeps the builtin base it always had (ValueError, FileNotFoundError, RuntimeError), so
code that caught those before still does. Messages name the file, folder or flag and say what to do.
"""
from __future__ import annotations

__all__ = [
    "I2EError",
    "ConfigError",
    "DatasetError",
    "MissingDataError",
    "UndecodableImageError",
    "NpzFormatError",
    "ParquetFormatError",
    "DVSFormatError",
    "DVSCacheError",
    "EventGIFError",
    "CheckpointError",
    "TrainError",
    "ExportError",
    "BenchError",
    "CorpusError",
]


class I2EError(Exception):
    """Base of every error the user can fix."""


class ConfigError(I2EError, ValueError):
    """A bad argument or configuration value (a loader's keyword, a config file's key, a flag): the message
    names the argument or key (and the file it came from) and says what is allowed."""


# data
class DatasetError(I2EError, ValueError):
    """A data set on disk is not usable as it is; the message says which file/folder and what to do."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A folder or file the data set needs does not exist."""


class UndecodableImageError(DatasetError, RuntimeError):
    """DALI could not decode an image (raised by the loader; ``i2e-check`` lists every such file)."""


class NpzFormatError(I2EError, ValueError):
    """An npz file is missing, corrupt, truncated or not an I2E event file."""


class ParquetFormatError(I2EError, ValueError):
    """A Parquet shard or row is not in the I2E format (corrupt shard, missing column, damaged row); the
    message names the shard and the row."""


class DVSFormatError(I2EError, ValueError):
    """A recording is not a readable DVS128 AEDAT 2.0 file; the message names the file."""


class DVSCacheError(I2EError, ValueError):
    """The frame cache cannot be written where it was asked for; the message says what to pass instead."""


class EventGIFError(I2EError, ValueError):
    """An event GIF that cannot be read (corrupt, not a GIF, or implausibly large); the message names the file."""


# models and training
class CheckpointError(I2EError, ValueError):
    """A checkpoint that does not fit the model (other architecture, width, class count, format)."""


class TrainError(I2EError, RuntimeError):
    """A problem the user can fix (bad flag, missing data, wrong checkpoint); printed without a traceback."""


# tools
class ExportError(I2EError, RuntimeError):
    """The export cannot go on; the message says which file/folder and what to do."""


class BenchError(I2EError, ValueError):
    """Bad benchmark settings (printed in one line by the CLI)."""


class CorpusError(I2EError, ValueError):
    """Bad corpus settings or sources (a ValueError: the CLI prints it in one line)."""
