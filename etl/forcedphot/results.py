"""Query results of bounded size: unique column names, row and byte limits, files written batch by batch.

A DuckDB result is read as a stream of Arrow record batches (``duck.query_reader``). Every batch
is counted as it arrives, so a result above its row or byte limit stops the query at the first
batch past the limit (:class:`ResultTooLarge`) instead of filling the memory; a file export holds
one batch at a time and appears under its final name only when complete (``io.atomic``).

Duplicate column names (``SELECT 1 AS x, 2 AS x``, a self-join's ``SELECT *``) are renamed as
DuckDB names the columns of a table created from such a query: the second ``x`` becomes ``x_1``,
the third ``x_2``, skipping names already taken (compared case-insensitively, as SQL does).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from forcedphot.errors import QueryError

if TYPE_CHECKING:
    import pyarrow as pa
# pyarrow is imported by the functions that use it: forcedphot.frame_text prints small results without it

# Output file formats of an export, by file name suffix.
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".ndjson": "json",
                  ".jsonl": "json"}
BATCH_BYTES = 1 << 24  # rows per batch read from DuckDB: about 16 MB at 8 bytes per value
ROW_GROUP_BYTES = 1 << 26  # a Parquet export's row groups: about 64 MB of Arrow data (or 1M rows)
ROW_GROUP_ROWS = 1 << 20
TEXT_SLICE_ROWS = 1 << 14  # CSV/JSON are formatted this many rows at a time


class ResultTooLarge(QueryError):
    """A query result above its row or byte limit; raised at the first batch past the limit."""

    def __init__(self, what: str, limit: int, seen: int):
        self.what = what  # "rows" or "bytes"
        self.limit = limit
        self.seen = seen  # rows or bytes read when the query was stopped (> limit)
        keyword = "max_rows" if what == "rows" else "max_bytes"
        super().__init__(f"query result exceeds {keyword}={limit} ({what}); add a LIMIT clause, raise {keyword} "
                         "(None: no bound), or stream the result with query.sql_reader")


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique as DuckDB does: a repeated ``x`` becomes ``x_1``, ``x_2``... (case-insensitive)."""
    taken: set[str] = set()
    last: dict[str, int] = {}
    out = []
    for name in names:
        key = name.lower()
        if key in taken:
            k = last.get(key, 0) + 1
            while f"{key}_{k}" in taken:
                k += 1
            last[key] = k
            name = f"{name}_{k}"
        taken.add(name.lower())
        out.append(name)
    return out


def batch_rows(n_columns: int) -> int:
    """Rows per batch read from DuckDB: about :data:`BATCH_BYTES` at 8 bytes per value, 2048 to 65536 rows."""
    return int(min(max(BATCH_BYTES // (8 * max(n_columns, 1)), 2048), 65536))


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_max_bytes() -> int | None:
    """The default byte limit of an in-memory result: half of the physical memory (None where unknown)."""
    memory = physical_memory()
    return None if memory is None else memory // 2


def _read_error(exc: Exception) -> BaseException:
    """An error DuckDB raised while streaming (it reaches Python through the Arrow stream as an OSError)."""
    text = " ".join(str(exc).split())
    if text.startswith("INTERRUPT Error"):  # the query was interrupted (Ctrl-C, SIGTERM) while computing a batch
        return KeyboardInterrupt()
    return QueryError(f"SQL error: {text}")


def bounded_batches(reader: pa.RecordBatchReader, schema: pa.Schema, *, max_rows: int | None = None,
                    max_bytes: int | None = None) -> Iterator[pa.RecordBatch]:
    """The batches of ``reader`` with the column names of ``schema``, counted against the limits.

    Raises :class:`ResultTooLarge` at the first batch that takes the rows or bytes read past a limit
    (``None``: no bound); the caller then closes the query, so no more of it is computed.
    """
    import pyarrow as pa

    rows = n_bytes = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            raise _read_error(exc) from exc
        rows += batch.num_rows
        n_bytes += batch.nbytes
        if max_rows is not None and rows > max_rows:
            raise ResultTooLarge("rows", max_rows, rows)
        if max_bytes is not None and n_bytes > max_bytes:
            raise ResultTooLarge("bytes", max_bytes, n_bytes)
        yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)


def bounded_reader(reader: pa.RecordBatchReader, *, max_rows: int | None = None,
                   max_bytes: int | None = None) -> pa.RecordBatchReader:
    """``reader`` with unique column names (:func:`unique_names`) and the row and byte limits."""
    import pyarrow as pa

    schema = pa.schema([field.with_name(name) for field, name in
                        zip(reader.schema, unique_names(reader.schema.names))], metadata=reader.schema.metadata)
    return pa.RecordBatchReader.from_batches(schema, bounded_batches(reader, schema, max_rows=max_rows,
                                                                     max_bytes=max_bytes))


def output_format(path: str | Path) -> str:
    """``parquet``, ``csv`` or ``json`` (newline-delimited) from the file name's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise QueryError(f"{path}: unknown output format {suffix or '(no suffix)'!r}; name the file "
                         f"{', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


def write_text(batches, sink, fmt: str, schema: pa.Schema) -> int:
    """Write record batches as CSV (one header line) or NDJSON, a slice at a time; return the row count.

    Polars formats the values, so the text is that of ``pl.DataFrame.write_csv``/``write_ndjson`` of
    the whole result, without ever holding more than one slice of it as text.
    """
    import polars as pl

    rows = 0
    try:
        for batch in batches:
            for start in range(0, batch.num_rows, TEXT_SLICE_ROWS):
                df = pl.from_arrow(batch.slice(start, TEXT_SLICE_ROWS))
                if fmt == "csv":
                    df.write_csv(sink, include_header=rows == 0)
                else:
                    df.write_ndjson(sink)
                rows += df.height
        if rows == 0 and fmt == "csv":  # the header of an empty result
            pl.from_arrow(schema.empty_table()).write_csv(sink)
    except OSError as exc:
        if _broken_pipe(exc):  # the reader went away (`forcedphot sql ... | head`)
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from exc
        raise
    return rows


def _broken_pipe(exc: OSError) -> bool:
    """A write into a closed pipe: Python's BrokenPipeError, or Polars' OSError, which carries no errno but
    the text of Rust's I/O error (``Broken pipe (os error 32)``)."""
    return isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE or f"(os error {errno.EPIPE})" in str(exc)


def _write_parquet(reader: pa.RecordBatchReader, path: Path) -> int:
    """Row groups of about :data:`ROW_GROUP_BYTES` (or :data:`ROW_GROUP_ROWS`), zstd, page checksums."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = pending_bytes = 0
    with pq.ParquetWriter(str(path), reader.schema, compression="zstd", write_statistics=True,
                          write_page_checksum=True) as writer:
        for batch in reader:
            pending.append(batch)
            pending_rows += batch.num_rows
            pending_bytes += batch.nbytes
            if pending_rows >= ROW_GROUP_ROWS or pending_bytes >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_batches(pending, reader.schema), row_group_size=pending_rows)
                rows += pending_rows
                pending, pending_rows, pending_bytes = [], 0, 0
        if pending or rows == 0:
            writer.write_table(pa.Table.from_batches(pending, reader.schema), row_group_size=max(pending_rows, 1))
            rows += pending_rows
    return rows


def write_result(reader: pa.RecordBatchReader, path: str | Path, *, overwrite: bool = False) -> int:
    """Stream ``reader`` into ``path`` (Parquet, CSV or NDJSON by its suffix) and return its row count.

    Written under a temporary name next to ``path`` and renamed when complete: an error or an
    interrupt leaves no file under ``path`` (and an existing ``path`` as it was).
    """
    from forcedphot.io.atomic import atomic_path, sweep_temp

    path = Path(path)
    fmt = output_format(path)
    if path.is_dir():
        raise QueryError(f"{path}: is a folder; name the file to write")
    if path.exists() and not overwrite:
        raise QueryError(f"{path}: file exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise QueryError(f"{path}: folder {path.parent} does not exist")
    sweep_temp(path.parent, prefix=f".{path.name}.")  # temporary files of killed exports to this name
    temp = []
    try:
        with atomic_path(path) as tmp:
            temp.append(tmp)
            if fmt == "parquet":
                return _write_parquet(reader, tmp)
            with open(tmp, "wb") as sink:
                return write_text(reader, sink, fmt, reader.schema)
    except BaseException:
        # atomic_path removes its temporary file, unless a second interrupt lands in its exit (one Ctrl-C
        # during Polars' writing raises twice): then this does, so an interrupted export leaves nothing
        for tmp in temp:
            _discard(tmp)
        raise


def _discard(path: Path) -> None:
    """Remove ``path``, retrying when an interrupt lands while doing so."""
    for _ in range(100):
        try:
            path.unlink(missing_ok=True)
            return
        except KeyboardInterrupt:
            continue
