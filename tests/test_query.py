"""Query surface: DuckDB views, Polars LazyFrame with partition pruning, pandas."""

import polars as pl

from forcedphot import query
from forcedphot.schema import load_schema


def test_polars_lazyframe_prunes_partitions_and_matches_sql(measured_tiny_repo):
    lf = query.scan_forced_source(measured_tiny_repo, band="r", patch=[0, 3])
    df = lf.select("objectId", "band", "patch", "psfFlux").collect()
    assert set(df["band"]) == {"r"} and set(df["patch"]) == {0, 3}
    n_sql = query.sql(measured_tiny_repo,
                      "SELECT count(*) AS n FROM forced_source WHERE band = 'r' AND patch IN (0, 3)").column("n")[0]
    assert df.height == n_sql.as_py() > 0
    plan = query.scan_forced_source(measured_tiny_repo, band="r").explain()
    assert "band" in plan  # the hive filter is pushed into the scan


def test_pandas_and_schema_types(measured_tiny_repo):
    pdf = query.load_forced_source(measured_tiny_repo, band="g", columns=["objectId", "psfFlux", "psfFlux_flag"],
                                   backend="pandas")
    assert list(pdf.columns) == ["objectId", "psfFlux", "psfFlux_flag"] and len(pdf) > 0
    full = query.load_forced_source(measured_tiny_repo, band="g")
    assert full.columns == load_schema("forced_source").names
    assert full.schema["psfFlux_chi2"] == pl.Float32 and full.schema["objectId"] == pl.Int64


def test_views_exist_before_the_first_run(tiny_repo):
    t = query.sql(tiny_repo, "SELECT count(*) AS n, count(psfFlux) AS m FROM forced_source")
    assert t.column("n")[0].as_py() == 0
    assert query.scan_forced_source(tiny_repo).collect().height == 0
