"""DuckDB helpers shared by planning, loading and querying."""

from __future__ import annotations

import duckdb
import pyarrow as pa


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pa.Table:
    """Run one statement and return its result as an Arrow table (APIs differ across DuckDB versions)."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        fn = getattr(rel, name, None)
        if fn is not None:
            result = fn()
            return result.read_all() if isinstance(result, pa.RecordBatchReader) else result
    raise RuntimeError("this DuckDB cannot return Arrow tables")
