"""The query surface: DuckDB views over the repository, Polars LazyFrames and pandas.

Views come from ``sql/views.sql``; a dataset with no files yet gets an empty view with the
columns of its schema, so queries are valid before the first run.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from forcedphot.duck import query_arrow
from forcedphot.errors import QueryError
from forcedphot.repository import Repository
from forcedphot.resources import read_sql
from forcedphot.schema import load_schema

_DUCK_TYPES = {"boolean": "BOOLEAN", "byte": "TINYINT", "short": "SMALLINT", "int": "INTEGER", "long": "BIGINT",
               "float": "FLOAT", "double": "DOUBLE", "char": "VARCHAR", "string": "VARCHAR", "unicode": "VARCHAR",
               "text": "VARCHAR", "binary": "BLOB"}


def _sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def view_statements(sql_file: str = "views") -> dict[str, str]:
    """``-- name: X`` sections of sql/views.sql (or another sql/*.sql file of views)."""
    text = read_sql(sql_file)
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def _empty_view(name: str) -> str:
    return empty_view_sql(name, load_schema(name))


def empty_view_sql(name: str, schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {_DUCK_TYPES[c.datatype]}{'[]' if c.is_array else ''}) AS \"{c.name}\""
                     for c in schema.columns)
    return f"CREATE OR REPLACE VIEW {name} AS SELECT {cols} WHERE false"


def connect(repo: Repository | str | Path, *, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views forced_source, ref, truth, skymap, runs and quanta."""
    repo = repo if isinstance(repo, Repository) else Repository(repo)
    repo.check()
    con = con or duckdb.connect()
    root = _sql_literal(str(repo.root.resolve()))
    for name, stmt in view_statements().items():
        files = list(repo.dataset_dir(name).glob("**/*.parquet"))
        if files:
            con.execute(stmt.replace("@root@", root))
        else:
            con.execute(_empty_view(name))
    from forcedphot.ledger import create_views  # runs and quanta: the run ledger

    create_views(con, repo.root, root)
    return con


def sql(repo, query: str, params: dict | None = None) -> pa.Table:
    """Run one SQL query over the repository views; returns Arrow."""
    con = connect(repo)
    try:
        return query_arrow(con, query, params)
    except duckdb.Error as exc:
        raise QueryError(f"SQL error: {' '.join(str(exc).split())}") from exc
    finally:
        con.close()


def forced_source_schema() -> pl.Schema:
    return pl.Schema(pl.from_arrow(load_schema("forced_source").arrow_schema().empty_table()).schema)


def scan_forced_source(repo, *, tract=None, patch=None, band=None) -> pl.LazyFrame:
    """The forced-source table as a Polars LazyFrame; filters on tract/patch/band prune partitions."""
    repo = repo if isinstance(repo, Repository) else Repository(repo)
    repo.check()
    schema = forced_source_schema()
    pattern = str(repo.dataset_dir("forced_source") / "**" / "*.parquet")
    if not list(repo.dataset_dir("forced_source").glob("**/*.parquet")):
        return pl.LazyFrame(schema=schema)
    lf = pl.scan_parquet(pattern, hive_partitioning=True, schema=schema, missing_columns="insert",
                         extra_columns="ignore")
    for col, val in (("tract", tract), ("patch", patch), ("band", band)):
        if val is not None:
            vals = [val] if isinstance(val, (int, str)) else list(val)
            lf = lf.filter(pl.col(col).is_in(vals))
    return lf


def load_forced_source(repo, *, tract=None, patch=None, band=None, columns=None, backend: str = "polars"):
    """Collect the forced-source table (optionally filtered) as a Polars or pandas DataFrame."""
    lf = scan_forced_source(repo, tract=tract, patch=patch, band=band)
    if columns:
        lf = lf.select(columns)
    df = lf.collect()
    if backend == "pandas":
        return df.to_pandas()
    if backend != "polars":
        raise ValueError(f"backend must be 'polars' or 'pandas', not {backend!r}")
    return df
