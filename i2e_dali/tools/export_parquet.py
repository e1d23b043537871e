"""``i2e-export --format parquet``: the authors' hub layout (``i2e_dali.data.parquet``), shard by shard.

Output: ``OUT/train-00000-of-0000N.parquet`` ... and ``OUT/validation-...`` (OUT is the config folder, e.g.
``I2E-Caltech101``), columns ``file_path`` ("<label>/<stem>.npy"), ``label`` and ``data`` (a .npy file of
uint8: 4 LE uint16 (T, C, H, W) + np.packbits of the bool events), the hub's ``huggingface`` schema
metadata (class names) and our settings under ``i2e``.

Shards are planned from the sample count alone (shard k holds samples [k*S, (k+1)*S) of the split in
source order), so every shard's content is fixed before anything runs: a shard is written to a temp file
in OUT while its rows stream in (one row group in memory at a time) and renamed when complete; a rerun
skips complete shards with the same settings; under torchrun each rank writes its contiguous share of
the shards, and the files are the same, byte for byte, as a single-process export's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..data.parquet import encode_batch, hf_schema_metadata, packed_row_bytes
from ..errors import ExportError
from ..fsio import atomic_write

__all__ = ["HUB_SPLIT", "shard_name", "plan_shards", "write_split"]

HUB_SPLIT = {"train": "train", "val": "validation"}
SHARD_BYTES = 512 << 20  # about the hub's shard size
GROUP_BYTES = 32 << 20  # row groups: what a reader holds in memory at once
COMPRESSION = "snappy"  # pyarrow's and the hub's default; every Parquet reader has it


def shard_name(split: str, k: int, n: int) -> str:
    return f"{HUB_SPLIT[split]}-{k:05d}-of-{n:05d}.parquet"


def plan_shards(n: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows_per_shard, n)) for a in range(0, n, rows_per_shard)]


def _schema(classes, settings: dict):
    import pyarrow as pa

    meta = hf_schema_metadata(classes)
    meta[b"i2e"] = json.dumps(settings, sort_keys=True).encode()
    return pa.schema([("file_path", pa.string()), ("label", pa.int64()), ("data", pa.binary())], metadata=meta)


def _shard_state(path: Path, settings: dict, rows: int) -> bool:
    """True: ``path`` is a complete shard with these settings. False: absent or unreadable (rewrite it).
    A complete shard made with other settings is an error (the user is mixing two exports)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return False
    try:
        pf = pq.ParquetFile(path)
        theirs = json.loads((pf.schema_arrow.metadata or {}).get(b"i2e", b"{}"))
        n = pf.metadata.num_rows
    except Exception:  # noqa: BLE001 - a damaged shard is redone
        return False
    common = {k: v for k, v in settings.items() if k not in ("shard", "rows")}
    diff = {k: (theirs.get(k), v) for k, v in common.items() if theirs.get(k) != v}
    if diff:
        raise ExportError(
            f"{path} was exported with other settings ("
            + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in sorted(diff.items()))
            + "); resume with the same settings or export to a new --out folder")
    return n == rows and theirs.get("rows") == settings.get("rows")


def _stem(source, index: int) -> str:
    path = source.samples[index][0]
    if getattr(source, "kind", "") == "folder":
        rel = Path(path).relative_to(Path(source.root))
        return str(Path(*rel.parts[1:]).with_suffix("")) if len(rel.parts) > 1 else rel.stem
    return f"{index:05d}"


def write_split(cfg, split: str, source, *, settings: dict, frame_shape: tuple[int, int, int],
                make_loader: Callable, summary, source_bytes: Callable, rank: int = 0, world: int = 1,
                progress: Callable | None = None):
    """Write (this rank's share of) the shards of one split; fills and returns ``summary``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import shard_bounds

    started = time.perf_counter()
    out = Path(cfg.out)
    n = len(source.samples)
    t, h, w = frame_shape
    row_bytes = packed_row_bytes(t, h, w) + 128  # + the .npy header
    per_shard = cfg.rows_per_shard or max(1, SHARD_BYTES // row_bytes)
    group = cfg.row_group_rows or max(1, min(per_shard, GROUP_BYTES // row_bytes))
    if per_shard < 1 or group < 1:
        raise ExportError(f"--rows-per-shard and --row-group-rows must be >= 1, got {per_shard}, {group}")
    shards = plan_shards(n, per_shard)
    lo, hi = shard_bounds(len(shards), rank, world)
    base = dict(settings, row_group_rows=group, rows_per_shard=per_shard, shards=len(shards),
                classes=list(source.classes))
    todo = []
    for k in range(lo, hi):
        a, b = shards[k]
        shard_settings = dict(base, shard=k, rows=[a, b])
        path = out / shard_name(split, k, len(shards))
        if _shard_state(path, shard_settings, b - a):
            summary.skipped += b - a
            summary.shards_skipped += 1
        else:
            todo.append((k, path, shard_settings))
    indices = [i for k, _, _ in todo for i in range(*shards[k])]
    if not indices:
        summary.seconds = time.perf_counter() - started
        return summary

    sub = source if len(indices) == n else source.subset(indices)
    loader = make_loader(sub, min(cfg.batch_size, len(indices)))
    per_t = np.zeros(t, dtype=np.int64)
    labels_all = np.asarray([lab for _, lab in source.samples], dtype=np.int64)

    def rows() -> Iterator[tuple[int, bytes]]:
        for events, _labels, idx in loader:
            ev = events.cpu().numpy()  # [T, B, 2, H, W] bool
            counts = ev.sum(axis=(2, 3, 4))
            per_t[:] += counts.sum(axis=1)
            summary.events += int(counts.sum())
            summary.cells += int(ev.size)
            data = encode_batch(ev.transpose(1, 0, 2, 3, 4))
            for j, blob in zip(idx.tolist(), data):
                yield indices[j], blob

    stream = rows()

    def write_shard(f, a: int, b: int, schema) -> None:
        with pq.ParquetWriter(f, schema, compression=COMPRESSION) as writer:
            for g in range(a, b, group):
                batch = []
                for _ in range(min(group, b - g)):
                    i, blob = next(stream)
                    if i != len(batch) + g:
                        raise ExportError(f"internal: rows arrived out of order ({i} for {len(batch) + g})")
                    batch.append(blob)
                ids = range(g, g + len(batch))
                table = pa.table({
                    "file_path": pa.array([f"{labels_all[i]}/{_stem(source, i)}.npy" for i in ids], pa.string()),
                    "label": pa.array(labels_all[g:g + len(batch)], pa.int64()),
                    "data": pa.array(batch, pa.binary()),
                }, schema=schema)
                writer.write_table(table, row_group_size=group)

    for k, path, shard_settings in todo:
        a, b = shards[k]
        schema = _schema(source.classes, shard_settings)
        summary.bytes_written += atomic_write(path, lambda f: write_shard(f, a, b, schema), suffix=".partial")
        summary.written += b - a
        summary.shards_written += 1
        summary.source_bytes += sum(source_bytes(source, i) for i in range(a, b))
        if progress is not None:
            progress(b - a)
    summary.seconds = time.perf_counter() - started
    if summary.cells:
        cells_t = summary.cells / t
        summary.per_timestep_rate = [float(c) / cells_t for c in per_t]
    return summary
