"""DuckDB helpers shared by planning, loading and querying."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from forcedphot import exits


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pa.Table:
    """Run one statement and return its result as an Arrow table (APIs differ across DuckDB versions)."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        fn = getattr(rel, name, None)
        if fn is not None:
            result = fn()
            return result.read_all() if isinstance(result, pa.RecordBatchReader) else result
    raise RuntimeError("this DuckDB cannot return Arrow tables")


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
