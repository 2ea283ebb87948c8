"""Start-up of `forcedphot --help`, `status` and `sql "SELECT 1"`: what they import, and that the shortcuts
that keep them light (views created only when read, results printed without Polars, status's stat memo,
the default config unvalidated) give what the full path gives. No timing here: the import set is the guard."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.config import PLUGIN_NAMES, ConfigSchema, ForcedPhotConfig
from forcedphot.duck import relation_batches
from forcedphot.frame_text import SIMPLE_TYPES, Shown, arrow_nbytes, fetch_shown, frame_text, simple_dtypes
from forcedphot.io.verified import Entry, dump_shard, parse_shard
from forcedphot.results import ResultTooLarge
from forcedphot.schema import load_schema, schema_version

HEAVY = ("polars", "pandas", "pyarrow", "pyarrow.dataset", "numpy", "pydantic", "yaml", "numba", "astropy")


def imported(args: list[str], cwd: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules a `forcedphot ARGS` process imports (from ``-X importtime``), and the process."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "forcedphot", *args], capture_output=True,
                         text=True, cwd=cwd, timeout=300)
    names = {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", res.stderr, re.M)}
    assert "forcedphot.cli" in names, res.stderr[-2000:]
    return names, res


@pytest.fixture(scope="module")
def repo(measured_tiny_repo, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("startup") / "repo"
    shutil.copytree(measured_tiny_repo, dst)
    return dst


# -- the import sets --------------------------------------------------------------------------------

def test_help_imports_no_library(tmp_path):
    names, res = imported(["--help"], tmp_path)
    assert res.returncode == 0 and "status" in res.stdout
    assert not names & {*HEAVY, "duckdb"}, sorted(names & {*HEAVY, "duckdb"})


def test_sql_select_1_imports_duckdb_only(repo):
    names, res = imported(["sql", "--repo", str(repo), "SELECT 1"], repo.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout == main_output(repo, "SELECT 1")
    assert "duckdb" in names and not names & set(HEAVY), sorted(names & set(HEAVY))


def test_sql_of_a_view_imports_pyarrow_datasets_but_not_polars(repo):
    names, res = imported(["sql", "--repo", str(repo), "SELECT band, count(*) AS n FROM forced_source GROUP BY band "
                                                       "ORDER BY band"], repo.parent)
    assert res.returncode == 0 and "shape: (4, 2)" in res.stdout, res.stderr[-2000:]
    assert "pyarrow.dataset" in names  # the files are read through checked Arrow datasets, as always
    assert "polars" not in names  # (pandas is: pyarrow.dataset imports it when it is installed)


def test_status_imports_no_arrow_once_it_has_looked(repo):
    shutil.rmtree(repo / "runs" / "verified", ignore_errors=True)
    first, res = imported(["status", "--repo", str(repo)], repo.parent)
    assert res.returncode == 0 and "16 up-to-date" in res.stdout, res.stderr[-2000:]
    assert not first & {"polars", "pandas", "pyarrow.dataset", "numba"}  # it reads footers with pyarrow
    second, res2 = imported(["status", "--repo", str(repo)], repo.parent)
    assert res2.stdout == res.stdout
    assert not second & {*HEAVY, "duckdb"}, sorted(second & {*HEAVY, "duckdb"})  # its plan remembered too


# -- sql: only the views a query reads ---------------------------------------------------------------

@pytest.mark.parametrize("sql, views", [
    ("SELECT 1", set()),
    ("SELECT $x + 1", set()),
    ("SELECT * FROM forced_source", {"forced_source"}),
    ("select count(*) from Object", {"object", "forced_source"}),
    ("WITH a AS (SELECT * FROM ref) SELECT * FROM a JOIN main.truth USING (objectId)", {"ref", "truth"}),
    ("SELECT 1; SELECT * FROM skymap", {"skymap"}),
    ("SELECT (SELECT count(*) FROM runs) IN (SELECT 1 FROM quanta)", {"runs", "quanta"}),
    ("WITH ref AS (SELECT 1) SELECT * FROM ref", None),  # a CTE named as a view
    ("SELECT * FROM duckdb_views()", None),
    ("SELECT * FROM query_table('ref')", None),
    ("SELECT * FROM information_schema.tables", None),
    ("EXPLAIN SELECT * FROM truth", None),
    ("SELECT * FROM forced_sourc", None),  # a typo: the error names the views as before
])
def test_views_read(sql, views):
    assert query.views_read(sql) == views


def test_view_reads_match_the_views_sql(repo):
    """VIEW_READS (the views a view reads) is what each view's rendered SQL names."""
    for name, stmt in query.view_statements().items():
        stmt = query._FILES.sub(lambda m: f"_files_{m.group(1)}", stmt)
        stmt = stmt.replace("@object_select@", query._object_select(query.Repository(repo)))
        select = re.sub(r"^\s*CREATE\s+OR\s+REPLACE\s+VIEW\s+\w+\s+AS\s+", "", stmt, flags=re.I)
        tables, ctes = query.tables_read(select)
        named = {t for t in tables - ctes if not t.startswith("_files_")}
        assert named == query.VIEW_READS.get(name, set()), name


def test_a_query_of_no_view_opens_no_file(repo, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was opened")

    monkeypatch.setattr(query, "dataset_files", refuse)
    monkeypatch.setattr(query, "checked_files", refuse)
    monkeypatch.setattr(query, "_dataset_listing", refuse)  # what arrow_dataset checks its files with
    assert query.sql(repo, "SELECT 41 + 1 AS x").column("x").to_pylist() == [42]
    with pytest.raises(AssertionError, match="a dataset was opened"):
        query.sql(repo, "SELECT count(*) FROM ref")


@pytest.mark.parametrize("sql", [
    "SELECT count(*) AS n FROM forced_source",
    "SELECT count(*) AS n FROM object",
    "SELECT count(*) AS n FROM quanta",
    "WITH x AS (SELECT * FROM ref) SELECT count(*) AS n FROM x, skymap",
])
def test_a_query_gives_what_it_gives_with_every_view(repo, sql, monkeypatch):
    some = query.sql(repo, sql).to_pylist()
    monkeypatch.setattr(query, "views_read", lambda q, con=None: None)  # every view, as before
    assert query.sql(repo, sql).to_pylist() == some and some[0]["n"] > 0


# -- sql: results printed without Polars --------------------------------------------------------------

def main_output(repo, sql: str, *args) -> str:
    """What `forcedphot sql` prints of ``sql`` through Arrow and Polars (the path of every other result)."""
    table = query.sql(repo, sql)
    max_rows = int(args[args.index("--max-rows") + 1]) if "--max-rows" in args else 40
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, tbl_width_chars=200):
        return str(pl.from_arrow(table, rechunk=False)) + "\n"


@pytest.mark.parametrize("sql, args", [
    ("SELECT 1", ()),
    ("SELECT 1 AS x, 2 AS x, 'a' AS X", ()),
    ("SELECT objectId, band, detect_isPrimary FROM forced_source ORDER BY objectId, band", ()),
    ("SELECT objectId, band, detect_isPrimary FROM forced_source ORDER BY objectId, band", ("--max-rows", "7")),
    ("SELECT objectId, band FROM forced_source ORDER BY objectId, band", ("--max-rows", "-1")),
    ("SELECT band, count(*) AS n FROM forced_source WHERE band = 'nope' GROUP BY band", ()),
    ("SELECT CAST(NULL AS INTEGER) AS i, CAST(NULL AS VARCHAR) AS s, NULL::BOOLEAN AS b", ()),
    ("SELECT status, count(*) AS n FROM quanta GROUP BY status", ()),
])
def test_simple_results_print_as_polars_prints_them(repo, sql, args, capsys):
    assert main(["sql", "--repo", str(repo), sql, *args]) == 0
    assert capsys.readouterr().out == main_output(repo, sql, *args)


@pytest.mark.parametrize("sql", [
    "SELECT 'é' AS accent",  # not ASCII: Polars prints it (its widths are display widths)
    "SELECT 1 AS " + "a" * 31,  # a name Polars cuts
    "SELECT " + ", ".join(f"'{'x' * 30}' AS c{i}" for i in range(7)),  # wider than 200 characters
    "SELECT 1.5 AS x",  # not a simple type
])
def test_other_results_print_through_polars(repo, sql, capsys):
    assert main(["sql", "--repo", str(repo), sql]) == 0
    assert capsys.readouterr().out == main_output(repo, sql)


def random_frame(rng: random.Random) -> tuple[list[str], list[str], list[list]]:
    n_cols, n_rows = rng.randint(1, 5), rng.choice([0, 1, 2, 3, 5, 8, 40, 41, 57])
    alphabet = "ab Z_0-\"'\\|{}~"
    names, dtypes, columns = [], [], []
    for j in range(n_cols):
        duck = rng.choice(list(SIMPLE_TYPES))
        dtype = SIMPLE_TYPES[duck][0]
        if dtype == "str":
            values = ["".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 29, 30, 31, 45])))
                      for _ in range(n_rows)]
        elif dtype == "bool":
            values = [rng.random() < 0.5 for _ in range(n_rows)]
        else:
            bits = int(re.sub(r"\D", "", dtype))
            lo, hi = (0, 2 ** bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            values = [rng.choice([lo, hi, 0, rng.randint(lo, hi)]) for _ in range(n_rows)]
        values = [None if rng.random() < 0.15 else v for v in values]
        names.append(rng.choice(["x", "longer_name", "a b", "n" * rng.randint(1, 30)]) + str(j % 2))
        dtypes.append(dtype)
        columns.append(values)
    return names, dtypes, columns


POLARS_DTYPES = {"i8": pl.Int8, "i16": pl.Int16, "i32": pl.Int32, "i64": pl.Int64, "u8": pl.UInt8, "u16": pl.UInt16,
                 "u32": pl.UInt32, "u64": pl.UInt64, "str": pl.String, "bool": pl.Boolean}


def test_frame_text_is_polars_text_on_random_tables():
    rng = random.Random(20)
    compared = 0
    for _ in range(400):
        names, dtypes, columns = random_frame(rng)
        names = list(dict.fromkeys(names))  # Polars needs unique names (the results are made unique first)
        columns, dtypes = columns[:len(names)], dtypes[:len(names)]
        max_rows = rng.choice([-1, 0, 1, 2, 4, 5, 10, 40])
        rows = list(zip(*columns)) if columns[0] else []
        head_n = len(rows) if max_rows < 0 or len(rows) <= max_rows else (max_rows + 1) // 2
        tail_n = 0 if max_rows < 0 or len(rows) <= max_rows else max_rows - head_n
        shown = Shown(len(rows), rows[:head_n], rows[len(rows) - tail_n:] if tail_n else [])
        text = frame_text(names, dtypes, shown, max_rows=max_rows)
        frame = pl.DataFrame({n: c for n, c in zip(names, columns)},
                             schema={n: POLARS_DTYPES[d] for n, d in zip(names, dtypes)})
        with pl.Config(tbl_rows=max_rows, tbl_cols=-1, tbl_width_chars=200):
            expected = str(frame)
        if text is not None:
            assert text == expected, (names, dtypes, max_rows)
            compared += 1
    assert compared > 300  # the formatter, not the fallback, prints most of them


@pytest.mark.parametrize("rows_per_batch", [1, 7, 2048])
def test_fetch_counts_the_bytes_of_the_arrow_batches(rows_per_batch):
    sql = ("SELECT (range % 100)::TINYINT AS a, range::UINTEGER AS b, CASE WHEN range % 3 = 0 THEN NULL ELSE "
           "repeat('é', range % 4) END AS s, range % 2 = 0 AS t, NULL::BIGINT AS n FROM range(5000)")
    con = duckdb.connect()
    rel = con.sql(sql)
    assert simple_dtypes(rel.types) == ["i8", "u32", "str", "bool", "i64"]
    arrow = [(b.num_rows, b.nbytes) for b in relation_batches(rel, batch_rows=rows_per_batch)]
    cursor = con.execute(sql)
    ours = []
    while batch := cursor.fetchmany(rows_per_batch):
        ours.append((len(batch), arrow_nbytes(rel.types, batch)))
    assert ours == arrow
    total = sum(n for _, n in arrow)
    with pytest.raises(ResultTooLarge) as err:  # the first batch past the limit, as the Arrow path
        fetch_shown(con.execute(sql), rel.types, max_shown=40, batch_rows=rows_per_batch, max_bytes=total - 1)
    assert err.value.seen == total
    shown = fetch_shown(con.execute(sql), rel.types, max_shown=5, batch_rows=rows_per_batch, max_bytes=total,
                        max_rows=5000)
    every = con.execute(sql).fetchall()
    assert shown == Shown(5000, every[:3], every[-2:])


def test_row_and_byte_limits_of_simple_results(repo, capsys):
    sql = "SELECT objectId, band FROM forced_source"
    for option, value, message in (("--row-limit", "5", "exceeds --row-limit (5 rows)"),
                                   ("--byte-limit", "1K", "exceeds --byte-limit")):
        assert main(["sql", "--repo", str(repo), sql, option, value]) == 2
        out = capsys.readouterr()
        assert out.out == "" and message in out.err


# -- status: the stat memo ---------------------------------------------------------------------------

def status_lines(repo, capsys, *args) -> list[str]:
    assert main(["status", "--repo", str(repo), *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_memo_follows_the_files(measured_tiny_repo, tmp_path, capsys, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, repo)
    time.sleep(0.1)  # out of the racy window of the copies' ctime (io.verified.RACY_NS)
    memo = repo / "runs" / "verified"
    assert status_lines(repo, capsys)[0].endswith("16 quanta: 16 up-to-date")
    fingerprints = json.loads((memo / "memo+fingerprints.json").read_text())["entries"]
    provenance = json.loads((memo / "memo+provenance.json").read_text())["entries"]
    assert len(fingerprints) == 16 * 2 + 4 and len(provenance) == 16  # coadd + footprints per quantum, ref per patch

    from forcedphot import provenance as prov

    calls = []
    real = prov.input_fingerprint
    monkeypatch.setattr(prov, "input_fingerprint", lambda p: calls.append(Path(p)) or real(p))
    assert status_lines(repo, capsys)[0].endswith("16 up-to-date") and calls == []  # nothing read again
    ref = next((repo / "ref").rglob("ref.parquet"))
    os.utime(ref, ns=(ref.stat().st_atime_ns, ref.stat().st_mtime_ns + 10**9))  # a new stat, the same bytes
    assert status_lines(repo, capsys)[0].endswith("16 up-to-date")
    assert calls == [ref], calls
    # another config: stale, from the remembered provenance (the memo holds facts of files, not decisions)
    assert status_lines(repo, capsys, "--aperture-method", "exact")[0].endswith("16 quanta: 16 stale")
    # a memo that is not one is ignored (and rewritten)
    (memo / "memo+provenance.json").write_text("{not json")
    assert status_lines(repo, capsys)[0].endswith("16 up-to-date")
    assert len(json.loads((memo / "memo+provenance.json").read_text())["entries"]) == 16


def test_status_memo_never_hides_a_changed_output(measured_tiny_repo, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, repo)
    status_lines(repo, capsys)
    out = next((repo / "forced_source").rglob("forced_source.parquet"))
    data = bytearray(out.read_bytes())
    data[100] ^= 0xFF
    out.write_bytes(bytes(data))
    assert "1 corrupt" in status_lines(repo, capsys)[0]
    out.unlink()
    assert "1 new" in status_lines(repo, capsys)[0]


def test_plan_memo_gives_the_plan_of_the_sql(tiny_repo, capsys):
    from forcedphot.plan import PLAN_MEMO, plan_quanta
    from forcedphot.repository import Repository

    repo = Repository(tiny_repo)
    time.sleep(0.1)  # the copied skymap out of the racy window
    sql_plan = plan_quanta(repo)
    assert plan_quanta(repo, memo=True) == sql_plan and (tiny_repo / PLAN_MEMO).exists()
    assert plan_quanta(repo, memo=True, bands=["g"], footprint_dataset="scarlet") == plan_quanta(
        repo, bands=["g"], footprint_dataset="scarlet")
    for change in (lambda: next((tiny_repo / "coadd").rglob("coadd.arrow")).unlink(),
                   lambda: shutil.rmtree(next((tiny_repo / "footprints").rglob("band=r"))),
                   lambda: shutil.copytree(next((tiny_repo / "footprints").rglob("band=g")),
                                           next((tiny_repo / "footprints").rglob("band=g")).with_name("band=y"))):
        change()
        assert plan_quanta(repo, memo=True) == plan_quanta(repo) != sql_plan
        sql_plan = plan_quanta(repo)
    assert sum(q.missing == ("coadd",) for q in sql_plan) == 2
    assert status_lines(tiny_repo, capsys)[0].startswith(f"repository {tiny_repo}: 17 quanta: 3 missing, 14 new")
    (tiny_repo / PLAN_MEMO).write_text("[1, 2")  # unreadable: the SQL plans
    assert plan_quanta(repo, memo=True) == sql_plan


# -- config and verified-state without pydantic --------------------------------------------------------

def test_the_defaults_are_valid_as_they_are():
    """ForcedPhotConfig() skips validating its defaults: they must be what validation makes of them."""
    defaults = ForcedPhotConfig()
    valid = ConfigSchema.model_validate({k: getattr(defaults, k) for k in ConfigSchema.model_fields},
                                        context={"plugin_names": PLUGIN_NAMES})
    for name in ConfigSchema.model_fields:
        assert getattr(valid, name) == getattr(defaults, name) and type(getattr(valid, name)) is type(
            getattr(defaults, name)), name
    assert ForcedPhotConfig(aperture_method="exact").aperture_method == "exact"  # anything else is validated
    res = subprocess.run([sys.executable, "-c", "import sys; from forcedphot.config import load_config; "
                          "load_config().fingerprint(); print('pydantic' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr


def test_shards_round_trip_and_refuse_what_is_not_one():
    entries = {"forced_source/tract=0/x.parquet": Entry(1, 2, 3, 4, 5, "10:ab", "cd", "forced_source.forced_source",
                                                         "1.3.0"),
               "ref/y.parquet": Entry(6, 7, 8, 9, 10, None, "ef", None, None)}
    assert parse_shard(dump_shard(entries).encode()) == entries
    for bad in ('{"format": 2, "entries": {}}', '{"entries": {"a": [1, 2, 3]}}', '[]',
                '{"entries": {"a": [1, 2, 3, 4, true, null, "d", null, null]}}',
                '{"entries": {"a": ["1", 2, 3, 4, 5, null, "d", null, null]}}'):
        with pytest.raises(ValueError):
            parse_shard(bad.encode())


def test_schema_version_reads_the_version_line():
    from forcedphot.resources import SCHEMA_DIR

    for path in sorted(Path(SCHEMA_DIR).glob("*.yaml")):
        assert schema_version(path.stem) == load_schema(path.stem).version, path
