"""`forcedphot sql` results: unique column names, empty queries, row and byte limits, streamed exports."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.errors import QueryError
from forcedphot.results import TEXT_SLICE_ROWS, ResultTooLarge, unique_names

# 10^10 rows: never held anywhere; the limits must stop it at their first batch
HUGE = "SELECT a.range AS a, b.range AS b FROM range(100000) a, range(100000) b"
# 3.6 10^7 rows (576 MB of Arrow data): above the default row limit of the command, small enough to finish
BIG = "SELECT a.range AS a, b.range AS b FROM range(6000) a, range(6000) b"
# a generated result of several types, longer than one text slice and one DuckDB batch
GENERATED = ("SELECT range AS i, range * 0.37 - 5 AS x, CAST(range % 7 AS FLOAT) AS f, 'r' || range AS s, "
             "range % 3 = 0 AS flag, CASE WHEN range % 5 = 0 THEN NULL ELSE range / 3 END AS maybe "
             "FROM range(100003) ORDER BY i")


def one_error_line(capsys) -> str:
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("forcedphot: error: "), out.err
    assert out.out == "", out.out[:200]  # nothing printed: never half a result
    return lines[0]


def run_sql(repo, *args) -> int:
    return main(["sql", "--repo", str(repo), *args])


# -- duplicate column names ------------------------------------------------------------------------

@pytest.mark.parametrize("names", [["x", "x"], ["x", "x", "x"], ["x", "x", "x_1"], ["x_1", "x", "x"],
                                   ["x", "X"], ["x", "x", "X", "x_1", "x_2"], ["a", "b"], ["id", "ID", "Id_1"]])
def test_unique_names_are_duckdbs(names):
    """The names DuckDB gives the columns of a table created from the query."""
    select = ", ".join(f'{i} AS "{n}"' for i, n in enumerate(names))
    assert unique_names(names) == duckdb.connect().sql(f"SELECT * FROM (SELECT {select})").columns


def test_unique_names_are_duckdbs_for_random_lists():
    rng = random.Random(5)
    con = duckdb.connect()
    for _ in range(200):
        names = [rng.choice(["x", "X", "x_1", "x_2", "X_1", "x_1_1", "y"]) for _ in range(rng.randint(1, 7))]
        select = ", ".join(f'{i} AS "{n}"' for i, n in enumerate(names))
        assert unique_names(names) == con.sql(f"SELECT * FROM (SELECT {select})").columns, names


def test_duplicate_names_print_with_unique_names(measured_tiny_repo, capsys):
    assert run_sql(measured_tiny_repo, "SELECT 1 AS x, 2 AS x, 3 AS x_1", "--format", "csv") == 0
    assert capsys.readouterr().out == "x,x_1,x_1_1\n1,2,3\n"
    assert run_sql(measured_tiny_repo, "SELECT 1 AS x, 2 AS x") == 0  # the table format
    assert "x_1" in capsys.readouterr().out


def test_a_self_join_select_star_keeps_every_column(measured_tiny_repo, capsys):
    n_ref = len(query.sql(measured_tiny_repo, "SELECT * FROM ref LIMIT 0").column_names)
    assert run_sql(measured_tiny_repo, "SELECT * FROM ref a JOIN ref b ON a.id = b.id ORDER BY a.id LIMIT 3",
                   "--format", "json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and len(rows[0]) == 2 * n_ref
    assert rows[0]["id"] == rows[0]["id_1"] and rows[0]["coord_ra"] == rows[0]["coord_ra_1"]


def test_python_sql_returns_unique_names(measured_tiny_repo):
    table = query.sql(measured_tiny_repo, "SELECT 1 AS x, 2 AS x")
    assert table.column_names == ["x", "x_1"]
    assert pl.from_arrow(table).row(0) == (1, 2)


# -- empty queries ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [";", " ; ;\n", "-- only a comment", "/* a comment */;", "  "])
def test_an_empty_query_is_one_line_exit_2(text, measured_tiny_repo, capsys):
    assert run_sql(measured_tiny_repo, text) == 2
    assert "query: empty SQL query" in one_error_line(capsys)
    with pytest.raises(QueryError, match="empty SQL query"):
        query.sql(measured_tiny_repo, text)


def test_an_empty_query_file_is_named(measured_tiny_repo, tmp_path, capsys):
    path = tmp_path / "nothing.sql"
    path.write_text("-- the query is still to be written\n;\n")
    assert run_sql(measured_tiny_repo, "--file", str(path)) == 2
    assert f"{path}: empty SQL query" in one_error_line(capsys)


# -- row and byte limits ---------------------------------------------------------------------------

def test_a_result_above_the_row_limit_is_refused_whole(measured_tiny_repo, capsys):
    assert run_sql(measured_tiny_repo, BIG, "--format", "csv") == 2  # the default: 10^6 rows
    line = one_error_line(capsys)
    assert "exceeds --row-limit (1000000 rows); nothing printed" in line and "--out FILE.parquet" in line
    assert run_sql(measured_tiny_repo, "SELECT * FROM range(11)", "--row-limit", "10") == 2
    assert "exceeds --row-limit (10 rows)" in one_error_line(capsys)
    assert run_sql(measured_tiny_repo, "SELECT * FROM range(10)", "--row-limit", "10", "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines()[1:] == [str(i) for i in range(10)]  # at the limit: all of it


def test_a_result_above_the_byte_limit_is_refused(measured_tiny_repo, capsys):
    assert run_sql(measured_tiny_repo, HUGE, "--row-limit", "-1", "--byte-limit", "4M") == 2
    assert "exceeds --byte-limit (4M of Arrow data)" in one_error_line(capsys)
    assert run_sql(measured_tiny_repo, HUGE, "--row-limit", "-1", "--byte-limit", "1000000") == 2
    assert "exceeds --byte-limit (1000000 bytes of Arrow data)" in one_error_line(capsys)


@pytest.mark.parametrize("value", ["0", "abc", "-2", "1.5X"])
def test_bad_limits_are_usage_errors(value, measured_tiny_repo, capsys):
    option = "--byte-limit" if value != "-2" else "--row-limit"
    with pytest.raises(SystemExit) as info:
        run_sql(measured_tiny_repo, "SELECT 1", option, value)
    assert info.value.code == 2 and option in capsys.readouterr().err


def test_python_sql_stops_at_the_first_batch_past_its_limit(measured_tiny_repo):
    """The query stops when the limit is passed: what it read is the limit plus at most one batch."""
    with pytest.raises(ResultTooLarge, match="max_rows=1000") as info:
        query.sql(measured_tiny_repo, HUGE, max_rows=1000)
    assert 1000 < info.value.seen <= 1000 + 65536
    with pytest.raises(ResultTooLarge, match="max_bytes=1000000") as info:
        query.sql(measured_tiny_repo, HUGE, max_bytes=10**6)
    assert 10**6 < info.value.seen <= 10**6 + 65536 * 16
    assert query.sql(measured_tiny_repo, "SELECT * FROM range(1000)", max_rows=1000).num_rows == 1000


def test_python_sql_is_bounded_by_default(measured_tiny_repo, monkeypatch):
    from forcedphot import results

    monkeypatch.setattr(results, "physical_memory", lambda: 2 << 20)  # a 2 MB machine: 1 MB of result at most
    with pytest.raises(ResultTooLarge, match="max_bytes=1048576"):
        query.sql(measured_tiny_repo, HUGE)
    assert query.sql(measured_tiny_repo, "SELECT * FROM range(100)").num_rows == 100


def test_a_huge_cross_join_ends_with_the_message_in_bounded_memory(measured_tiny_repo):
    """10^10 rows: the command stops at the default row limit; its peak memory stays far below the result's."""
    # the child's own peak: VmHWM (kB), not ru_maxrss, which on Linux keeps the forking pytest worker's RSS
    # across exec (a worker that compiled the kernels holds ~1.2 GB; see bench._peak_rss_bytes)
    code = ("import sys\n"
            "from forcedphot.cli import main\n"
            f"status = main(['sql', '--repo', {str(measured_tiny_repo)!r}, {HUGE!r}])\n"
            "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
            "print(hwm.split()[1], file=sys.stderr)\n"
            "sys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    err = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert err[0].startswith("forcedphot: error: query result exceeds --row-limit (1000000 rows)")
    assert proc.stdout == ""
    peak_mb = int(err[1]) / 1024
    assert peak_mb < 1024, peak_mb  # the result would be 160 GB of Arrow data


# -- stdout text formats ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_text_output_equals_polars_of_the_whole_result(fmt, measured_tiny_repo, capsysbinary):
    assert run_sql(measured_tiny_repo, GENERATED, "--format", fmt) == 0
    out = capsysbinary.readouterr().out
    df = pl.from_arrow(query.sql(measured_tiny_repo, GENERATED))
    assert df.height > TEXT_SLICE_ROWS
    assert out == (df.write_csv() if fmt == "csv" else df.write_ndjson()).encode()


def test_an_empty_result_as_csv_is_its_header(measured_tiny_repo, capsys):
    assert run_sql(measured_tiny_repo, "SELECT 1 AS a, 'x' AS b WHERE false", "--format", "csv") == 0
    assert capsys.readouterr().out == "a,b\n"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_reader_that_stops_early_ends_the_text_output_quietly(fmt, measured_tiny_repo):
    """`forcedphot sql ... --format csv | head -1`: the closed pipe ends the command, exit 0, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "forcedphot", "sql", "--repo", str(measured_tiny_repo), GENERATED,
                             "--format", fmt], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()  # the result is megabytes: the command is still writing when the pipe closes
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 0, err[-2000:]
    assert first.startswith(b"i," if fmt == "csv" else b'{"i":0,')
    assert err == ""


# -- --out: streamed exports ---------------------------------------------------------------------

def _read(path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.from_arrow(pq.read_table(path))
    if path.suffix == ".csv":
        return pl.read_csv(path, infer_schema=False)
    return pl.read_ndjson(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
@pytest.mark.parametrize("sql_text", [GENERATED, "SELECT * FROM forced_source ORDER BY objectId, band"])
def test_out_writes_the_whole_result(suffix, sql_text, measured_tiny_repo, tmp_path, capsys):
    out = tmp_path / f"result{suffix}"
    assert run_sql(measured_tiny_repo, sql_text, "--out", str(out)) == 0
    expected = pl.from_arrow(query.sql(measured_tiny_repo, sql_text))
    assert f"wrote {expected.height} rows ({expected.width} columns) to {out}" in capsys.readouterr().out
    got = _read(out)
    if suffix == ".csv":
        assert out.read_bytes() == expected.write_csv().encode()
    elif suffix == ".json":
        assert out.read_bytes() == expected.write_ndjson().encode()
    else:
        assert got.equals(expected, null_equal=True)
        assert pq.read_metadata(out).num_rows == expected.height
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left


def test_out_streams_a_result_above_the_stdout_limits(measured_tiny_repo, tmp_path, capsys):
    out = tmp_path / "big.parquet"
    assert run_sql(measured_tiny_repo, "SELECT range AS i FROM range(1500000)", "--out", str(out)) == 0
    assert pq.read_metadata(out).num_rows == 1_500_000
    assert pq.read_table(out).column("i").to_pylist()[-1] == 1_499_999


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_out_leaves_no_file_when_the_result_passes_a_limit(suffix, measured_tiny_repo, tmp_path, capsys):
    out = tmp_path / f"cut{suffix}"
    assert run_sql(measured_tiny_repo, HUGE, "--out", str(out), "--row-limit", "300000") == 2
    assert f"exceeds --row-limit (300000 rows); {out} was not written" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_out_keeps_an_existing_file_when_the_query_fails(measured_tiny_repo, tmp_path, capsys):
    out = tmp_path / "kept.csv"
    out.write_text("a user's file\n")
    failing = "SELECT CAST(CASE WHEN range > 150000 THEN 'x' ELSE '1' END AS INT) AS v FROM range(200000)"
    assert run_sql(measured_tiny_repo, failing, "--out", str(out), "--overwrite") == 2
    assert "Could not convert string 'x'" in one_error_line(capsys)
    assert out.read_text() == "a user's file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.csv"]


def test_out_refuses_to_replace_a_file_unless_asked(measured_tiny_repo, tmp_path, capsys):
    out = tmp_path / "mine.parquet"
    out.write_bytes(b"precious")
    assert run_sql(measured_tiny_repo, "SELECT 1 AS one", "--out", str(out)) == 2
    assert f"{out}: file exists; pass --overwrite" in one_error_line(capsys)
    assert out.read_bytes() == b"precious"
    assert run_sql(measured_tiny_repo, "SELECT 1 AS one", "--out", str(out), "--overwrite") == 0
    assert pq.read_table(out).to_pylist() == [{"one": 1}]


@pytest.mark.parametrize("args, message", [
    (["--out", "x.xlsx"], "x.xlsx: unknown output format '.xlsx'"),
    (["--out", "x.csv", "--format", "json"], "--format json and --out x.csv disagree"),
    (["--out", "missing/x.csv"], "folder missing does not exist"),
])
def test_out_usage_errors(args, message, measured_tiny_repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sql(measured_tiny_repo, "SELECT 1", *args) == 2
    assert message in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_sql_reader_streams_batches(measured_tiny_repo):
    with query.sql_reader(measured_tiny_repo, "SELECT range AS i, range AS i FROM range(200000)") as reader:
        assert reader.schema.names == ["i", "i_1"]
        sizes = [batch.num_rows for batch in reader]
    assert sum(sizes) == 200000 and len(sizes) > 1
    assert isinstance(reader, pa.RecordBatchReader)


def test_an_interrupted_export_leaves_no_file_even_when_interrupted_twice(measured_tiny_repo, tmp_path,
                                                                          monkeypatch):
    """One Ctrl-C during Polars' CSV writing can raise twice: the second lands in the temporary file's
    clean-up, which must still happen (the process then exits at once: nothing later would remove it)."""
    from forcedphot import results
    from forcedphot.io import atomic

    real_atomic_path, kept = atomic.atomic_path, []

    class InterruptedOnExit:  # the second KeyboardInterrupt, raised before atomic_path's own clean-up
        def __init__(self, path):
            self.cm = real_atomic_path(path)
            kept.append(self.cm)  # never collected during the test: its clean-up cannot run late

        def __enter__(self):
            return self.cm.__enter__()

        def __exit__(self, *exc):
            raise KeyboardInterrupt

    def interrupted_writer(batches, sink, fmt, schema):
        sink.write(b"a,b\n1,2\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "atomic_path", InterruptedOnExit)
    monkeypatch.setattr(results, "write_text", interrupted_writer)
    with pytest.raises(KeyboardInterrupt):
        with query.sql_reader(measured_tiny_repo, "SELECT 1 AS a, 2 AS b") as reader:
            results.write_result(reader, tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_query_is_a_keyboard_interrupt_not_an_sql_error():
    """DuckDB reports an interrupt inside the Arrow stream as an OSError; the command must exit 130 on it."""
    import threading

    from forcedphot.results import bounded_reader

    con = duckdb.connect()
    reader = bounded_reader(con.sql(HUGE).to_arrow_reader(4096), max_rows=10**9)
    timer = threading.Timer(0.5, con.interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in reader:
                pass
    finally:
        timer.cancel()
        con.close()
