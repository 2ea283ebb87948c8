"""The SQL surface reads the repository's datasets and nothing else; bad files are one line naming them."""

from __future__ import annotations

import hashlib
import shutil

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.errors import ForcedPhotError, InputError, QueryError


@pytest.fixture(scope="module")
def repo(measured_tiny_repo, tmp_path_factory):
    """A private copy of the measured tiny survey (the statements below try to write into it)."""
    dst = tmp_path_factory.mktemp("sandbox") / "repo"
    shutil.copytree(measured_tiny_repo, dst)
    return dst


def _snapshot(root):
    """Every file's hash, but for runs/verified/ (what readers remember of the files they verified)."""
    state = root / "runs" / "verified"
    return {p: hashlib.blake2b(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and state not in p.parents}


def _forbidden(repo, outside):
    committed = next((repo / "forced_source").rglob("forced_source.parquet"))
    return [
        f"COPY (SELECT * FROM forced_source LIMIT 1) TO '{committed}' (FORMAT parquet)",
        f"COPY forced_source TO '{outside / 'copy.csv'}'",
        f"ATTACH '{outside / 'attached.duckdb'}' AS extra",
        f"ATTACH '{repo / 'forced_source' / 'attached.duckdb'}' AS extra",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        f"SELECT * FROM read_parquet('{committed}')",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        f"CREATE TABLE written AS SELECT * FROM read_csv('{outside / 'x.csv'}')",
        f"EXPORT DATABASE '{outside / 'exported'}'",
    ]


def test_every_forbidden_statement_is_refused_and_nothing_changes(repo, tmp_path):
    before = _snapshot(repo)
    con = query.connect(repo)
    for statement in _forbidden(repo, tmp_path):
        with pytest.raises(QueryError) as refused:
            query.sql(repo, statement)
        assert "\n" not in str(refused.value)
        with pytest.raises(duckdb.Error):  # the DuckDB connection itself refuses it too (no file access)
            con.execute(statement).fetchall()
    with pytest.raises(QueryError, match="refused CREATE"):
        query.sql(repo, "CREATE TABLE t AS SELECT * FROM forced_source")
    with pytest.raises(QueryError, match="refused COPY"):
        query.sql(repo, "SELECT 1; COPY forced_source TO 'x.parquet'")
    assert _snapshot(repo) == before
    assert list(tmp_path.iterdir()) == []


def test_allowed_queries_still_work(repo):
    n = query.sql(repo, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py()
    assert n == sum(pq.read_metadata(p).num_rows for p in (repo / "forced_source").rglob("*.parquet"))
    joined = query.sql(repo, "WITH s AS (SELECT objectId, band FROM forced_source) "
                             "SELECT count(*) AS n FROM s JOIN truth t ON t.id = s.objectId AND t.band = s.band")
    assert joined.column("n")[0].as_py() > 0
    assert query.sql(repo, "SELECT count(*) AS n FROM skymap").column("n")[0].as_py() == 4
    plan = query.sql(repo, "EXPLAIN SELECT psfFlux FROM forced_source WHERE band = 'g'")
    assert "ARROW_SCAN" in str(plan.to_pydict())
    described = query.sql(repo, "DESCRIBE ref").column("column_name").to_pylist()
    assert "coord_ra" in described
    assert query.sql(repo, "SELECT $x + 1 AS y", {"x": 41}).column("y")[0].as_py() == 42


def _with_bad_file(repo, tmp_path, name: str, write) -> tuple:
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst)
    bad = dst / "forced_source" / "tract=0" / "patch=1" / "band=r" / name
    write(bad)
    return dst, bad


# in place of a committed output: a forced_source file its tract's manifest does not list is not read at all
# (tests/test_sql_scale.py), so a foreign file is met where a committed one was
@pytest.mark.parametrize("name, write, cause", [
    ("forced_source.parquet", lambda p: p.write_bytes(b"PAR1 truncated by a crash"), "not a readable Parquet file"),
    ("forced_source.parquet", lambda p: pq.write_table(pa.table({"x": [1, 2]}), p), "not written by forcedphot"),
    ("forced_source.parquet", lambda p: shutil.copy(next((p.parents[4] / "ref").rglob("ref.parquet")), p),
     "a ref.ref file"),
])
def test_a_corrupt_or_foreign_file_is_one_line_naming_it(repo, tmp_path, capsys, name, write, cause):
    dst, bad = _with_bad_file(repo, tmp_path, name, write)
    for call in (lambda: query.sql(dst, "SELECT count(*) FROM forced_source"),
                 lambda: query.sql(dst, "SELECT count(*) FROM object"), lambda: query.load_forced_source(dst),
                 lambda: query.load_object(dst)):
        with pytest.raises(ForcedPhotError) as err:
            call()
        assert str(err.value).startswith(f"{bad}: ") and cause in str(err.value) and "\n" not in str(err.value)
    assert main(["sql", "--repo", str(dst), "SELECT count(*) FROM forced_source"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and str(bad) in err_lines[0]
    # a query checks the files of the views it reads: one that reads no dataset opens none of them
    assert query.sql(dst, "SELECT 1 AS one").column("one").to_pylist() == [1]
    with pytest.raises(ForcedPhotError, match="not a readable|not written by|a ref.ref file"):
        query.sql(dst, "SELECT count(*) FROM ref r JOIN forced_source f USING (objectId)")


def test_loader_filters_name_the_valid_values(repo):
    with pytest.raises(InputError, match=r"tract must be an int .* not '0'; .* has tract \[0\]"):
        query.load_forced_source(repo, tract="0")
    with pytest.raises(InputError, match=r"band must be a str .* has band \['g', 'i', 'r', 'z'\]"):
        query.load_forced_source(repo, band=["g", 3])
    with pytest.raises(InputError, match=r"forced_source has no column\(s\) \['psf_flux'\]"):
        query.load_forced_source(repo, columns=["objectId", "psf_flux"])
    assert set(query.load_forced_source(repo, tract=0, patch=(1, 2), band="g")["patch"]) == {1, 2}


def test_a_view_cannot_read_a_path(repo, monkeypatch):
    views = {"ledger": "CREATE VIEW ledger AS SELECT * FROM read_parquet(@root@ || '/runs/*.parquet')"}
    monkeypatch.setattr(query, "view_statements", lambda sql_file="views": views if sql_file == "views" else {})
    with pytest.raises(QueryError, match="view ledger reads files by path"):
        query.sql(repo, "SELECT 1")  # whatever the query reads
    views["ledger"] = "CREATE VIEW ledger AS SELECT * FROM @files(no_such_dataset)@"
    with pytest.raises(ForcedPhotError, match="no_such_dataset.yaml: schema file not found"):
        query.sql(repo, "SELECT * FROM ledger")
