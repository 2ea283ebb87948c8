"""DuckDB helpers shared by planning, loading and querying."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import duckdb

from forcedphot import exits

if TYPE_CHECKING:
    import pyarrow as pa


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pa.Table:
    """Run one statement and return its result as an Arrow table (APIs differ across DuckDB versions)."""
    import pyarrow as pa

    rel = con.sql(sql, params=params) if params else con.sql(sql)
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        fn = getattr(rel, name, None)
        if fn is not None:
            result = fn()
            return result.read_all() if isinstance(result, pa.RecordBatchReader) else result
    raise RuntimeError("this DuckDB cannot return Arrow tables")


def query_reader(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None, *,
                 batch_rows: int | Callable[[int], int] = 65536) -> pa.RecordBatchReader | None:
    """Run ``sql`` (its last statement's result) as a stream of Arrow record batches; None when it has no
    result (no statement). DuckDB computes the batches as they are read: reading stops the work.

    ``batch_rows``: rows per batch, or a function of the result's column count that returns them.
    """
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    if rel is None:
        return None
    return relation_batches(rel, batch_rows=batch_rows)


def relation_batches(rel: duckdb.DuckDBPyRelation, *,
                     batch_rows: int | Callable[[int], int] = 65536) -> pa.RecordBatchReader:
    """A relation's result as a stream of Arrow record batches (see :func:`query_reader`)."""
    rows = batch_rows(len(rel.columns)) if callable(batch_rows) else batch_rows
    for name in ("to_arrow_reader", "fetch_arrow_reader", "fetch_record_batch", "record_batch"):  # newest first
        fn = getattr(rel, name, None)
        if fn is not None:
            return fn(rows)
    raise RuntimeError("this DuckDB cannot stream Arrow record batches")


def is_empty_query(sql: str) -> bool:
    """True when ``sql`` holds no statement (blank, semicolons or comments only); a statement that does
    not parse is not empty (running it reports the syntax error)."""
    try:
        return not duckdb.extract_statements(sql)
    except duckdb.Error:
        return False


# DuckDB settings of a query connection: no file system, network or extension access at all (the
# repository's data reach it as Arrow datasets), and the configuration locked so SET cannot undo it.
SANDBOX_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                  "allow_community_extensions": False}
SANDBOX_SETTINGS = (("enable_external_access", False), ("lock_configuration", True))
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def sandboxed_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that can read, write, attach, install or load no file: only registered data."""
    con = duckdb.connect(config=dict(SANDBOX_CONFIG))
    exits.interrupt_with_signal(con)  # Ctrl-C stops its query
    for name, value in SANDBOX_SETTINGS:  # in order: lock_configuration last
        con.execute(f"SET {name} = {str(value).lower()}")
    return con


def refuse_unless_read_only(sql: str) -> None:
    """Raise ``ValueError`` naming the first statement of ``sql`` that is not a query (COPY, ATTACH, SET...)."""
    for statement in duckdb.extract_statements(sql):
        kind = statement.type.name
        if kind not in READ_ONLY_STATEMENTS:
            text = " ".join(statement.query.split())
            raise ValueError(f"only read-only queries ({', '.join(READ_ONLY_STATEMENTS)}) are run; "
                             f"refused {kind} statement: {text[:80]}")
