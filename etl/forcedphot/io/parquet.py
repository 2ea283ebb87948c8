"""Schema-checked Parquet I/O: conform on write, stamp version and provenance, check on read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from forcedphot.errors import InputError
from forcedphot.io.atomic import atomic_path
from forcedphot.schema import TableSchema

META_PROVENANCE = b"forcedphot.provenance"
READ_BATCH_ROWS = 8192
# buffered, page-by-page column reads: without them a column chunk is read whole before decoding
# (a 200 MB heavy-values chunk held next to the decoded batches)
STREAM_READ = {"buffer_size": 1 << 20, "pre_buffer": False}


def write_parquet(table: pa.Table, path: str | Path, schema: TableSchema, *, provenance: dict | None = None) -> Path:
    """Conform ``table`` to ``schema`` and write it atomically with schema version and provenance."""
    path = Path(path)
    table = schema.conform(table, where=str(path))
    meta = dict(table.schema.metadata or {})
    if provenance is not None:
        meta[META_PROVENANCE] = json.dumps(provenance, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    return path


def read_parquet(path: str | Path, schema: TableSchema, *, columns: list[str] | None = None) -> pa.Table:
    """Read a file written by :func:`write_parquet`, refusing unknown major versions."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        pf = pq.ParquetFile(path, **STREAM_READ)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    schema.check_metadata(pf.schema_arrow.metadata, where=str(path))
    # batch by batch: decoding a whole column chunk of ragged lists at once costs ~5x the table in scratch
    arrow_schema = pf.schema_arrow if columns is None else pa.schema([pf.schema_arrow.field(c) for c in columns])
    batches = pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns, use_threads=False)
    return pa.Table.from_batches(batches, schema=arrow_schema).replace_schema_metadata(pf.schema_arrow.metadata)


def read_provenance(path: str | Path) -> dict | None:
    """Provenance stored by :func:`write_parquet`, or None if absent/unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(META_PROVENANCE)
    return json.loads(raw) if raw else None
