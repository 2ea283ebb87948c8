"""Schema-checked Parquet I/O: conform on write, stamp version and provenance, check on read.

Every file carries two checksums, both verified on read: Parquet page CRCs
(``write_page_checksum``) and a sha256 of all bytes before the footer, stored in the footer's
key-value metadata (``forcedphot.sha256``). The digest lives inside the file, so the atomic
rename moves data and checksum together (no sidecar or manifest can go out of step), and it
covers what page CRCs do not: page headers, dictionary pages and the page layout.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from forcedphot.errors import InputError
from forcedphot.io.atomic import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

    from forcedphot.schema import TableSchema
# pyarrow is imported by the functions that read or write (the constants and checksum helpers need none)

META_PROVENANCE = b"forcedphot.provenance"
META_CHECKSUM = b"forcedphot.sha256"  # "<bytes>:<sha256 hex>" of the file before its footer
READ_BATCH_ROWS = 8192
# buffered, page-by-page column reads: without them a column chunk is read whole before decoding
# (a 200 MB heavy-values chunk held next to the decoded batches); page CRCs verified
STREAM_READ = {"buffer_size": 1 << 20, "pre_buffer": False, "page_checksum_verification": True}
HASH_BLOCK = 1 << 22
# Columns whose Parquet min/max statistics a reader uses, per dataset (others: every column). forced_source has
# 429 columns: statistics for all of them were ~20% of its footer, which every scan parses. Used: objectId (the
# manifest's per-file range, io/manifest.file_entry; row-group pruning of compacted parts for point queries),
# parentObjectId (deblend families), tract/patch/band (partition filters of compacted parts), coord_ra/coord_dec
# (position cuts).
STATISTICS_COLUMNS = {"forced_source": ("objectId", "parentObjectId", "tract", "patch", "band", "coord_ra", "coord_dec")}


class ChecksumError(InputError):
    """A file's bytes differ from those its writer recorded: corrupted or modified after writing."""


def checksum_mismatch_message(path) -> str:
    return (f"{path}: content checksum mismatch (the file was corrupted or modified after it was written); "
            "re-create it with the tool that wrote it")


def _sha256_prefix(path: Path, n_bytes: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = n_bytes
        while left > 0:
            block = f.read(min(HASH_BLOCK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: strings (band names, ids as text). A float column of measurements
    has no repeats, and a bool is one bit already: trying a dictionary on them cost a forced-source
    write 60% of its time and 25% of its bytes (measured on the bench quantum)."""
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_binary(f.type) or pa.types.is_dictionary(f.type)]


def statistics_columns(schema: TableSchema, arrow_schema: pa.Schema) -> bool | list[str]:
    """The columns :func:`write_parquet` writes min/max statistics for (True: every column)."""
    wanted = STATISTICS_COLUMNS.get(getattr(schema, "dataset", None))
    return True if wanted is None else [name for name in wanted if name in arrow_schema.names]


def write_parquet(table: pa.Table, path: str | Path, schema: TableSchema, *, provenance: dict | None = None,
                  row_group_size: int | None = None) -> Path:
    """Conform ``table`` to ``schema`` and write it atomically with schema version and provenance
    (``row_group_size``: rows per row group, pyarrow's default if None)."""
    return write_parquet_batches([table], path, schema, provenance=provenance, row_group_size=row_group_size)


def write_parquet_batches(parts, path: str | Path, schema: TableSchema, *, provenance: dict | None = None,
                          row_group_size: int | None = None) -> Path:
    """Write ``parts`` (tables or record batches, produced one at a time: a generator is consumed as
    it is written) atomically as one file: each part conformed to ``schema``, with schema version
    and provenance.

    Rows are written in row groups of exactly ``row_group_size`` rows (the last may be shorter), so
    the file's bytes do not depend on how the rows were cut into parts; at most one row group of
    conformed rows is held at a time. ``row_group_size=None``: one row group per part, split at
    pyarrow's default. An exception from ``parts`` (or the writer) leaves nothing under ``path``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    arrow_schema = schema.arrow_schema()
    meta = dict(arrow_schema.metadata or {})
    if provenance is not None:
        meta[META_PROVENANCE] = json.dumps(provenance, sort_keys=True).encode()
    arrow_schema = arrow_schema.with_metadata(meta)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink:
            writer = pq.ParquetWriter(sink, arrow_schema, compression="zstd",
                                      write_statistics=statistics_columns(schema, arrow_schema),
                                      write_page_checksum=True, use_dictionary=dictionary_columns(arrow_schema))
            try:
                pending, n_pending, wrote = [], 0, False
                for part in parts:
                    if isinstance(part, pa.RecordBatch):
                        part = pa.Table.from_batches([part])
                    table = schema.conform(part, where=str(path)).replace_schema_metadata(meta)
                    if row_group_size is None:
                        writer.write_table(table)
                        wrote = True
                        continue
                    pending.append(table)
                    n_pending += table.num_rows
                    while n_pending >= row_group_size:  # whole row groups out, the rest kept
                        rows = pa.concat_tables(pending)
                        # one contiguous row group: its pages do not depend on where the parts were cut
                        writer.write_table(rows.slice(0, row_group_size).combine_chunks(),
                                           row_group_size=row_group_size)
                        wrote = True
                        rest = rows.slice(row_group_size)
                        pending, n_pending = [rest], rest.num_rows
                        del rows
                if n_pending or not wrote:  # the last rows; an empty table gets its (empty) row group
                    rows = pa.concat_tables(pending).combine_chunks() if pending else arrow_schema.empty_table()
                    writer.write_table(rows, row_group_size=max(row_group_size or rows.num_rows, 1))
                n_bytes = sink.tell()  # every row group is written: only the footer follows
                writer.add_key_value_metadata({META_CHECKSUM: f"{n_bytes}:{_sha256_prefix(tmp, n_bytes)}"})
            finally:
                writer.close()
    return path


def recorded_checksum(path: str | Path, kv: dict) -> tuple[int, str] | None:
    """(bytes covered, sha256) that the writer recorded in a file's key-value metadata ``kv``; None if
    none was recorded; :class:`ChecksumError` naming ``path`` if the record does not parse."""
    recorded = kv.get(META_CHECKSUM)
    if recorded is None:
        return None
    try:
        n_text, expected = recorded.decode().split(":")
        return int(n_text), expected
    except ValueError:  # UnicodeDecodeError included
        raise ChecksumError(f"{path}: unreadable content checksum {recorded[:80]!r} (corrupted footer)") from None


def verify_checksum(path: str | Path, metadata=None) -> bool:
    """Check the file's bytes against the sha256 its writer recorded; False if none was recorded
    (files of older versions). Raises :class:`ChecksumError` naming the file on a mismatch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        metadata = metadata if metadata is not None else pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    recorded = recorded_checksum(path, metadata.metadata or {})
    if recorded is None:
        return False
    n_bytes, expected = recorded
    footer_start = os.path.getsize(path) - 8 - metadata.serialized_size
    if n_bytes != footer_start or _sha256_prefix(path, n_bytes) != expected:
        raise ChecksumError(checksum_mismatch_message(path))
    return True


def read_parquet(path: str | Path, schema: TableSchema, *, columns: list[str] | None = None) -> pa.Table:
    """Read a file written by :func:`write_parquet`, refusing unknown major versions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        pf = pq.ParquetFile(path, **STREAM_READ)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    schema.check_metadata(pf.schema_arrow.metadata, where=str(path))
    verify_checksum(path, pf.metadata)
    # batch by batch: decoding a whole column chunk of ragged lists at once costs ~5x the table in scratch
    arrow_schema = pf.schema_arrow if columns is None else pa.schema([pf.schema_arrow.field(c) for c in columns])
    try:
        batches = list(pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns, use_threads=False))
    except (pa.ArrowInvalid, OSError) as exc:  # a page CRC mismatch, or pages that do not decode
        raise ChecksumError(f"{path}: corrupted Parquet pages ({exc})") from exc
    return pa.Table.from_batches(batches, schema=arrow_schema).replace_schema_metadata(pf.schema_arrow.metadata)


def iter_column(path: str | Path, column: str):
    """Decoded batches of one column of a file :func:`read_parquet` has already checked, one at a time.

    For a column too large to hold twice (heavy footprint values): the caller copies each batch
    where it belongs and drops it. A page that fails its CRC or does not decode is one line.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path, **STREAM_READ).iter_batches(batch_size=READ_BATCH_ROWS, columns=[column],
                                                                       use_threads=False):
            yield batch.column(0)
            del batch
            pa.default_memory_pool().release_unused()  # the pool would keep every decoded batch's pages
    except (pa.ArrowInvalid, OSError) as exc:
        raise ChecksumError(f"{path}: corrupted Parquet pages ({exc})") from exc


def read_provenance(path: str | Path) -> dict | None:
    """Provenance stored by :func:`write_parquet`, or None if absent/unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(META_PROVENANCE)
    return json.loads(raw) if raw else None
