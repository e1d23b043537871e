"""Decode checking: which files of a list DALI's CPU decoder cannot decode, and why.

Used by ``i2e-check`` (tools/check.py) and by the EventLoader to name the culprit when a batch fails
(a DALI decode error does not always say which sample it was).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from .sources import dali_error_detail

__all__ = ["decode_check"]


def _reason(exc: Exception) -> str:
    return f"cannot be decoded (DALI: {dali_error_detail(str(exc)) or type(exc).__name__})"


def _decoder(batch_size: int, num_threads: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        img = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
        # Keep the output tiny: we only need to know that decoding worked.
        return img.shape()

    p = pipe()
    p.build()
    return p


def _read(path: str) -> np.ndarray | Exception:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return exc


def decode_check(files: list[str], *, num_threads: int = 2, batch_size: int = 32,
                 progress: bool | None = None) -> list[tuple[str, str]]:
    """Decode every file with DALI's CPU decoder; return ``(path, reason)`` for each failure.

    Batches are decoded in parallel (``num_threads``); a failing batch is re-decoded one file at a time
    (a DALI pipeline is unusable after an error, so it is rebuilt) to name the culprit(s).
    """
    bad: list[tuple[str, str]] = []
    if not files:
        return bad
    batch_size = max(1, min(batch_size, len(files)))
    pipe = _decoder(batch_size, num_threads)
    single = None
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    bar = tqdm(total=len(files), desc="decoding", unit="img", disable=True if progress is False else None)
    with ThreadPoolExecutor(max_workers=max(2, num_threads)) as pool:
        pending = pool.map(lambda chunk: [_read(f) for f in chunk], chunks)  # reads run ahead of decoding
        for chunk, datas in zip(chunks, pending):
            todo = []
            for f, d in zip(chunk, datas):
                if isinstance(d, Exception):
                    bad.append((f, f"cannot read: {d}"))
                elif d.size == 0:
                    bad.append((f, "empty (zero-byte) file"))
                else:
                    todo.append((f, d))
            if todo:
                try:
                    pipe.feed_input("enc", [d for _, d in todo])
                    pipe.run()
                except Exception:  # noqa: BLE001 - DALI raises RuntimeError subclasses; find the file(s)
                    pipe = _decoder(batch_size, num_threads)
                    for f, d in todo:
                        if single is None:
                            single = _decoder(1, 1)
                        try:
                            single.feed_input("enc", [d])
                            single.run()
                        except Exception as exc:  # noqa: BLE001
                            bad.append((f, _reason(exc)))
                            single = None
            bar.update(len(chunk))
    bar.close()
    return bad
