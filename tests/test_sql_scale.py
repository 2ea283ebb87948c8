"""Queries read each tract's manifest instead of listing its files, and a point query on objectId opens only the
files whose range can hold the id; the bench mode that measures both at 10^2..10^4 files works."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import InputError
from forcedphot.io import manifest
from forcedphot.repository import DataId, Repository
from forcedphot.runner import run_all
from forcedphot.sql_scale import run_sql_scale

COUNT = "SELECT count(*) AS n FROM forced_source"


@pytest.fixture
def measured(measured_tiny_repo, tmp_path) -> Repository:
    dst = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, dst)
    return Repository(dst)


def count(repo) -> int:
    return query.sql(repo, COUNT).column("n")[0].as_py()


def test_the_manifest_lists_what_the_runner_committed(measured):
    doc = manifest.read(measured.root, 0)
    files = sorted((measured.root / "forced_source").rglob("*.parquet"))
    assert doc["format"] == "forcedphot.manifest/1" and doc["dataset"] == "forced_source" and doc["tract"] == 0
    assert sorted(manifest.tract_dir(measured.root, 0) / rel for rel in doc["files"]) == files
    for rel, entry in doc["files"].items():
        t = pq.read_table(manifest.tract_dir(measured.root, 0) / rel, columns=["objectId", "patch", "band"])
        ids = t.column("objectId").to_pylist()
        assert entry["rows"] == t.num_rows and entry["objectId"] == [min(ids), max(ids)]
        assert entry["quanta"] == [[t.column("patch")[0].as_py(), t.column("band")[0].as_py()]]
    assert sum(e["rows"] for e in doc["files"].values()) == count(measured)


def test_queries_read_the_manifest_not_a_listing(measured, monkeypatch):
    n = count(measured)
    real_glob = Path.glob

    def glob(self, pattern):
        assert "forced_source" not in self.parts, f"listed {self}"
        return real_glob(self, pattern)

    monkeypatch.setattr(Path, "glob", glob)
    assert count(measured) == n
    assert query.load_forced_source(measured, band="g").height == n // 4
    # a file the manifest does not list (not committed: a foreign file, or a run killed before its commit) is not read
    stray = manifest.tract_dir(measured.root, 0) / "patch=1" / "band=g" / "stray.parquet"
    shutil.copy(measured.forced_source_path(DataId(0, 1, "g")), stray)
    assert count(measured) == n


def test_a_point_query_registers_only_the_files_that_can_hold_the_id(measured, monkeypatch):
    # the files each query makes dataset fragments of (what DuckDB can open), recorded where they are made;
    # not by a Python filesystem counting opens: pyarrow's scanner calls one from its own threads while
    # DuckDB's dataset source holds the GIL, and that hung a full `make test` twice
    registered = []
    make = query._fragment_dataset

    def recording(listing, arrow_schema):
        registered.append(sorted(listing))
        return make(listing, arrow_schema)

    monkeypatch.setattr(query, "_fragment_dataset", recording)
    oid = query.sql(measured, "SELECT objectId FROM forced_source WHERE patch = 2 AND band = 'r' LIMIT 1").column(0)[0].as_py()
    registered.clear()
    got = query.sql(measured, "SELECT band FROM forced_source WHERE objectId = $id ORDER BY band", {"id": oid})
    assert got.column("band").to_pylist() == ["g", "i", "r", "z"]
    doc = manifest.read(measured.root, 0)
    can = sorted(str(manifest.tract_dir(measured.root, 0) / rel) for rel, e in doc["files"].items()
                 if e["objectId"] and e["objectId"][0] <= oid <= e["objectId"][1])
    assert len(can) == 4 and len(doc["files"]) == 16  # the files of the id's patch (4 bands), of 16
    assert registered == [can]  # only they are checked and made fragments
    registered.clear()
    assert count(measured) > 0 and not registered  # count(*): the manifests' row counts, no file registered
    n = query.sql(measured, "SELECT count(objectId) AS n FROM forced_source").column("n")[0].as_py()
    assert n == count(measured) and len(registered) == 1 and len(registered[0]) == 16  # a column: every file


@pytest.mark.parametrize(("sql", "params", "oid"), [
    ("SELECT * FROM forced_source WHERE objectId = 42", None, 42),
    ("SELECT band FROM forced_source f WHERE f.band = 'g' AND f.objectId = $id", {"id": 7}, 7),
    ("SELECT count(*) FROM forced_source WHERE 9 = OBJECTID AND psfFlux > 0 GROUP BY band", None, 9),
    ("SELECT * FROM forced_source WHERE objectId = -3 ORDER BY band LIMIT 1", None, -3),
    ("SELECT * FROM forced_source WHERE objectId = 42 OR band = 'g'", None, None),
    ("SELECT * FROM forced_source WHERE objectId = $id", {"id": True}, None),
    ("SELECT * FROM forced_source WHERE objectId = $id", {"id": "42"}, None),
    ("SELECT * FROM forced_source WHERE objectId = 1.5", None, None),
    ("SELECT * FROM forced_source WHERE objectId IN (1, 2)", None, None),
    ("SELECT * FROM forced_source WHERE objectId = 1 UNION ALL SELECT * FROM forced_source", None, None),
    ("SELECT * FROM forced_source a JOIN forced_source b USING (band) WHERE a.objectId = 1", None, None),
    ("SELECT * FROM forced_source WHERE objectId = 1 AND band IN (SELECT band FROM forced_source)", None, None),
    ("WITH forced_source AS (SELECT * FROM ref) SELECT * FROM forced_source WHERE objectId = 1", None, None),
    ("SELECT * FROM forced_source f WHERE g.objectId = 1", None, None),
    ("SELECT * FROM (SELECT * FROM forced_source) WHERE objectId = 1", None, None),
    ("SELECT * FROM forced_source WHERE objectId = 1; SELECT 2", None, None)])
def test_point_queries_are_told_from_the_parse_tree(sql, params, oid):
    assert query.point_object_id(sql, params) == oid


def test_a_point_query_checks_only_the_files_whose_range_holds_the_id(measured, monkeypatch):
    doc = manifest.read(measured.root, 0)
    rel, entry = sorted(doc["files"].items())[5]
    oid = entry["objectId"][0]
    can = {str(manifest.tract_dir(measured.root, 0) / r) for r, e in doc["files"].items()
           if e["objectId"] and e["objectId"][0] <= oid <= e["objectId"][1]}
    scan = query.sql(measured, "SELECT objectId, band, psfFlux FROM (SELECT * FROM forced_source) WHERE objectId = $id "
                               "ORDER BY band", {"id": oid})
    seen = []
    real = query._checked

    def checked(repo, paths, *args, **kwargs):
        seen.append(sorted(paths))
        return real(repo, paths, *args, **kwargs)

    monkeypatch.setattr(query, "_checked", checked)
    for sql, params in ((f"SELECT objectId, band, psfFlux FROM forced_source WHERE objectId = {oid} ORDER BY band", None),
                        ("SELECT objectId, band, psfFlux FROM forced_source f WHERE f.objectId = $id ORDER BY band",
                         {"id": oid})):
        seen.clear()
        assert query.sql(measured, sql, params).equals(scan) and scan.num_rows == 4
        assert seen == [sorted(can)] and len(can) == 4 < len(doc["files"])
    # an id no file's range holds: no file checked, an empty answer
    seen.clear()
    assert query.sql(measured, "SELECT * FROM forced_source WHERE objectId = -1").num_rows == 0 and seen == [[]]


@pytest.mark.parametrize(("sql", "rows_only"), [
    (COUNT, True), ("SELECT count(*), count(*) + 1 AS m FROM forced_source", True),
    ("SELECT 1 AS one FROM forced_source LIMIT 3", True), ("SELECT count(*) FROM forced_source WHERE $x = 1", True),
    ("SELECT count(objectId) FROM forced_source", False), ("SELECT * FROM forced_source", False),
    ("SELECT count(*) FROM forced_source WHERE band = 'g'", False), ("SELECT #1 FROM forced_source", False),
    ("SELECT count(forced_source) FROM forced_source", False), ("SELECT COLUMNS('psf.*') FROM forced_source", False),
    ("SELECT count(*) FROM forced_source a JOIN forced_source b USING (objectId)", False),
    ("SELECT count(*) FROM forced_source NATURAL JOIN forced_source", False),
    ("SELECT count(*) FROM forced_source t(a, b)", False), ("SELECT count(*) FROM forced_source; SELECT 1", False)])
def test_queries_that_read_only_row_counts_are_told_from_the_parse_tree(sql, rows_only):
    assert query.reads_only_row_counts(sql) is rows_only


def test_row_counts_from_the_manifest_equal_a_scan_and_fall_back_when_they_cannot_be_trusted(measured):
    scan = "SELECT count(objectId) AS n FROM forced_source"
    n = query.sql(measured, scan).column("n")[0].as_py()
    assert query.rows_only_count(measured, "forced_source", COUNT) == n == count(measured)
    for sql in ("SELECT count(*) AS n FROM forced_source LIMIT 1", "SELECT 1 AS n FROM forced_source"):
        assert query.sql(measured, sql).equals(query.sql(measured, sql.replace("forced_source", "(SELECT objectId FROM forced_source)")))
    # a manifest entry whose checksum record is not the verified file's: the files are scanned
    path = manifest.manifest_path(measured.root, 0)
    doc = json.loads(path.read_text())
    entry = doc["files"]["patch=1/band=g/forced_source.parquet"]
    entry["rows"], entry["checksum"] = entry["rows"] + 1000, "1:" + "0" * 64
    path.write_text(json.dumps(doc))
    assert query.rows_only_count(measured, "forced_source", COUNT) is None and count(measured) == n
    # a tract without a manifest (listed from its folder): scanned
    path.unlink()
    assert query.rows_only_count(measured, "forced_source", COUNT) is None and count(measured) == n


def test_forced_source_files_keep_statistics_only_for_the_columns_readers_prune_on(measured):
    from forcedphot.io.parquet import STATISTICS_COLUMNS

    md = pq.read_metadata(measured.forced_source_path(DataId(0, 1, "g")))
    with_stats = {md.row_group(0).column(i).path_in_schema for i in range(md.num_columns)
                  if md.row_group(0).column(i).is_stats_set}
    assert with_stats == set(STATISTICS_COLUMNS["forced_source"]) and md.num_columns > 400
    ref = pq.read_metadata(measured.ref_path(0, 1))  # other datasets: every column
    assert all(ref.row_group(0).column(i).is_stats_set for i in range(ref.num_columns))


def test_a_commit_lost_to_a_kill_is_completed_by_the_next_run(measured):
    """A run killed between the rename of an output and its commit: not visible, and the next run commits it."""
    n = count(measured)
    path = manifest.manifest_path(measured.root, 0)
    doc = json.loads(path.read_text())
    lost = doc["files"].pop("patch=0/band=i/forced_source.parquet")
    path.write_text(json.dumps(doc))
    assert count(measured) == n - lost["rows"]
    summary = run_all(measured, ForcedPhotConfig(), progress=False)
    assert summary.ok and not summary.done  # up to date: committed, not measured again
    assert count(measured) == n


def test_a_missing_committed_file_is_left_out_and_a_bad_manifest_named(measured, caplog):
    n = count(measured)
    gone = measured.forced_source_path(DataId(0, 3, "z"))
    rows = pq.read_metadata(gone).num_rows
    gone.unlink()
    assert count(measured) == n - rows and "listed by its tract's manifest but gone" in caplog.text
    path = manifest.manifest_path(measured.root, 0)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "format": "forcedphot.manifest/2"}))
    with pytest.raises(InputError, match=f"{path}: manifest format 'forcedphot.manifest/2', this forcedphot reads"):
        count(measured)


def test_the_sql_scale_bench(tmp_path):
    rows = run_sql_scale(tmp_path, sizes=[12], repeat=1, workers=2)
    (row,) = rows
    assert row["build_workers"] == 2 and not (tmp_path / "sql-scale-12").exists()  # compact consumed the build
    assert row["files"] == 12 and row["parts"] == 1
    for state in ("listing", "manifest", "compacted"):  # the same answers in every state
        assert row[state]["answers"] == {"count": 12 * 4, "point": sorted("ugrizy"), "scan": 12 * 4}
        assert row[state]["count_s"] > 0 and row[state]["point_s"] > 0
    out = tmp_path / "b.json"
    assert main(["bench", "--repo", str(tmp_path), "--sql-scale", "12", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["sql_scale"][0]["manifest"]["answers"]["count"] == 48
