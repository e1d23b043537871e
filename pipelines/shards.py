"""DALI graph for WebDataset tar shards: ``fn.readers.webdataset`` + the folder graph's decode and views.

No torch here. The caller (``i2e_dali.data.shards``) writes, per epoch and rank, DALI index files that
list exactly the samples this rank reads in this epoch, in order (format below); the reader then reads
them sequentially (no reader shuffle: ``random_shuffle`` would reorder samples inside DALI, and the
sample ids could no longer be known). The ids come from ``sample_ids`` through a per-sample
``external_source`` indexed by the sample's position in the epoch (``SampleInfo.idx_in_epoch``), which
DALI's checkpointing restores together with the reader's position.

DALI index file (``wds2idx``'s format; DALI reads v1.0-v1.2): a first line ``v1.2 <samples>``, then one line
per sample of ``<ext> <data offset> <size> <member name>`` per component (v1.1: without the name). The
offset is where the member's data starts in the tar (its header offset + 512), a multiple of 512. An index
may list a subset of the tar's samples in any order: DALI seeks to each offset.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from . import pipeline_options
from .folder import READER_NAME, FolderPipelineConfig, decode_views

__all__ = ["IMAGE_EXTS", "build_shard_pipeline"]

# Image members the reader takes (one per sample), in either case.
IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm", "jp2", "j2k")


class _Ids:
    """Per-sample id feed: the id of the sample the reader yields at the same position. The reader's epoch is
    the listed samples padded to whole batches (the padding repeats the last sample); when the pipeline runs
    on into further epochs (an evaluation pipeline is rewound and read again) the reader starts over while
    this source's ``idx_in_epoch`` keeps counting (it never ends an epoch itself), hence the modulo."""

    def __init__(self, ids: np.ndarray, batch_size: int):
        self.ids = np.asarray(ids, dtype=np.int32).reshape(-1, 1)
        self.period = -(-len(self.ids) // batch_size) * batch_size

    def __call__(self, info):
        return self.ids[min(info.idx_in_epoch % self.period, len(self.ids) - 1)]


@pipeline_def(enable_conditionals=True)  # decode_views' declared-size guard
def _shard_graph(paths: Sequence[str], index_paths: Sequence[str], ids: np.ndarray, cfg: FolderPipelineConfig):
    encoded = fn.readers.webdataset(
        paths=list(paths), index_paths=list(index_paths), ext=[";".join(IMAGE_EXTS)],
        case_sensitive_extensions=False, missing_component_behavior="error",
        pad_last_batch=True,  # epochs end on a batch boundary; the iterator drops or trims the padding
        dont_use_mmap=cfg.dont_use_mmap, name=READER_NAME,
    )
    sample_ids = fn.external_source(source=_Ids(ids, cfg.batch_size), batch=False, dtype=types.INT32, ndim=1)
    return decode_views(encoded, sample_ids, cfg)


def build_shard_pipeline(paths: Sequence[str], index_paths: Sequence[str], sample_ids, cfg: FolderPipelineConfig,
                         checkpoint: str | None = None):
    """An (unbuilt) pipeline with outputs ``images`` uint8 [B,3,S,S] and ``ids`` int32 [B,1] (and ``declared``
    with ``cfg.max_pixels``: see ``pipelines.folder``).

    ``paths``: the tar shards (local paths or s3:// URLs), ``index_paths``: one LOCAL index file each
    (DALI reads index files with plain file I/O), listing this epoch's samples in reading order;
    ``sample_ids``: the id of each listed sample, in the same order (shard by shard).
    """
    cfg.validate()
    if len(paths) != len(index_paths):
        raise ValueError(f"paths ({len(paths)}) and index_paths ({len(index_paths)}) differ in length")
    if not len(paths) or not len(sample_ids):
        raise ValueError("no shard or no sample to read; a DALI reader needs at least one")
    return _shard_graph(paths, index_paths, np.asarray(sample_ids), cfg, **pipeline_options(cfg, checkpoint))
