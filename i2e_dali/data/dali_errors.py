"""Which DALI errors are the data's fault (an unreadable or undecodable file) and which file they name."""
from __future__ import annotations

import re

__all__ = ["is_dali_data_error", "PATH_PATTERNS"]

# DALI names the failing sample's source in some errors ("Failed to decode sample #3 : /x/y.JPEG",
# "File mapping failed: /x/y.JPEG"), not in all (e.g. "nvImageCodec failure: '#4'").
PATH_PATTERNS = (
    re.compile(r"sample #\d+\s*:\s*(\S+)"),
    re.compile(r"(?:File mapping failed|Failed to open file|Could not open file)\s*:?\s*(\S+)"),
)
# Phrases of errors about the data itself. nvImageCodec reports statuses by number (nvimgcodec.h):
# 3/13 bad code stream, 4/14 code stream unsupported, 19 incomplete bit stream are the file's fault;
# the others (allocator, execution, arch mismatch, internal, CUDA call errors) are the machine's.
_DALI_DATA_PHRASES = ("failed to decode sample", "premature end", "invalid marker", "not a jpeg",
                      "file mapping failed", "failed to open file", "could not open file",
                      "nvjpeg_status_bad_jpeg", "nvjpeg_status_jpeg_not_supported")
_NVIMGCODEC_DATA_STATUS = {3, 4, 13, 14, 19}
_NVIMGCODEC_STATUS = re.compile(r"nvimagecodec failure: '#(\d+)'")
# CUDA / driver / nvJPEG infrastructure failures: never a bad image, even when the decoder reports them.
_INFRA_PHRASES = ("cuda", "driver", "out of memory", "illegal memory", "illegal address", "launch failure",
                  "nvjpeg_status_execution_failed", "nvjpeg_status_internal_error",
                  "nvjpeg_status_allocator_failure", "nvjpeg_status_arch_mismatch", "ecc error")


def is_dali_data_error(message: str) -> bool:
    """True when a DALI error is about a sample (unreadable or undecodable file), False when it is a
    CUDA, driver or decoder-infrastructure failure (those pass through unchanged: a culprit search over
    the data set would only hide them). Only the part after DALI's "encountered:" is read, with the
    sample paths removed, so an operator traceback or a folder named "cuda" cannot misclassify it."""
    text = str(message)
    low = text.lower()
    detail = low.split("encountered:", 1)[1] if "encountered:" in low else low
    for pat in PATH_PATTERNS:
        detail = pat.sub(" ", detail)
    if any(k in detail for k in _INFRA_PHRASES):
        return False
    codes = {int(c) for c in _NVIMGCODEC_STATUS.findall(detail)}
    if codes:
        return codes <= _NVIMGCODEC_DATA_STATUS
    return any(k in low for k in _DALI_DATA_PHRASES)
