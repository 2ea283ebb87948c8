"""Major schema versions: forced_source 1.x files (written by the 1.4.0 writer, the schema kept in
schemas/history/) and 2.0 files in one repository read as one 2.0 table by every reader, through the mapping
declared once in schemas/migrations/forced_source.yaml; a 1.x repository keeps working without a rewrite;
a newer major is refused; ``forcedphot schema diff`` says what changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from forcedphot import query
from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import InputError, QueryError, SchemaVersionError
from forcedphot.io.parquet import read_provenance, write_parquet
from forcedphot.repository import Repository
from forcedphot.runner import run_all
from forcedphot.schema import (META_VERSION, column_sources, load_schema, migrate, migrations, version_schema)

RENAMED = ("localBackgroundErr", "localBackground_stdev")
REMOVED = "undeblended_kronRad"
KEY = ["objectId", "tract", "patch", "band"]


def _write_as_1x(path: Path) -> None:
    """Rewrite a 2.0 output as the 1.4.0 writer wrote it: the old column names and the removed column, the
    1.4.0 schema (conform, stamp, checksum) and the output's provenance with its schema_version."""
    old = version_schema("forced_source", "1.4.0")
    table = pq.read_table(path)
    prov = read_provenance(path)
    table = table.rename_columns([RENAMED[0] if n == RENAMED[1] else n for n in table.column_names])
    table = table.append_column(REMOVED, table.column("kronRad"))  # what 1.x wrote: a copy of kronRad
    write_parquet(table, path, old, provenance={**prov, "schema_version": old.version})


def _outputs(root: Path) -> list[Path]:
    return sorted((root / "forced_source").glob("**/*.parquet"))


def _version(path: Path) -> str:
    return pq.read_schema(path).metadata[META_VERSION].decode()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mixed_repo(measured_tiny_repo, tmp_path) -> Path:
    """The measured tiny survey with the outputs of the g band (and patch 0 of every band) rewritten as 1.4.0."""
    dst = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, dst)
    for path in _outputs(dst):
        if "band=g" in path.parts or "patch=0" in path.parts:
            _write_as_1x(path)
    return dst


def _sorted(table: pa.Table) -> pl.DataFrame:
    return pl.from_arrow(table).sort(KEY)


def test_the_mixed_repository_holds_both_major_versions(mixed_repo):
    versions = {_version(p) for p in _outputs(mixed_repo)}
    assert versions == {"1.4.0", load_schema("forced_source").version} and load_schema("forced_source").major == 2
    old = pq.read_schema(next(p for p in _outputs(mixed_repo) if _version(p) == "1.4.0"))
    assert RENAMED[0] in old.names and REMOVED in old.names and RENAMED[1] not in old.names


def test_sql_reads_1x_and_2x_files_as_one_2x_table(mixed_repo, measured_tiny_repo):
    """Every row and every value of the all-2.0 repository, renamed column mapped, removed column absent."""
    want = _sorted(query.sql(measured_tiny_repo, "SELECT * FROM forced_source"))
    got = _sorted(query.sql(mixed_repo, "SELECT * FROM forced_source"))
    assert got.columns == load_schema("forced_source").names and REMOVED not in got.columns
    assert got.schema == want.schema
    assert got.equals(want, null_equal=True)
    # the renamed column carries the 1.x files' values: not all null where the 1.x rows are
    g = query.sql(mixed_repo, "SELECT count(localBackground_stdev) AS n, count(*) AS m FROM forced_source "
                              "WHERE band = 'g'").to_pylist()[0]
    assert g["m"] > 0 and g["n"] == want.filter(pl.col("band") == "g")["localBackground_stdev"].count()
    # a filtered query over both versions (predicate on the renamed column)
    q = "SELECT objectId, band FROM forced_source WHERE localBackground_stdev > 0 ORDER BY objectId, band, patch"
    assert pl.from_arrow(query.sql(mixed_repo, q)).equals(pl.from_arrow(query.sql(measured_tiny_repo, q)))


def test_reading_a_removed_or_renamed_column_is_a_clear_error(mixed_repo):
    with pytest.raises(QueryError, match=rf"{REMOVED}.*removed in schema 2\.0\.0.*kronRad"):
        query.sql(mixed_repo, f"SELECT {REMOVED} FROM forced_source")
    with pytest.raises(QueryError, match=rf"{RENAMED[0]} was renamed {RENAMED[1]} in schema 2\.0\.0"):
        query.sql(mixed_repo, f"SELECT {RENAMED[0]} FROM forced_source")
    with pytest.raises(InputError, match=rf"{REMOVED} was removed in schema 2\.0\.0"):
        query.load_forced_source(mixed_repo, columns=["objectId", REMOVED])
    with pytest.raises(InputError, match=rf"renamed {RENAMED[1]}"):
        query.load_forced_source(mixed_repo, columns=[RENAMED[0]])


def test_loaders_read_both_versions(mixed_repo, measured_tiny_repo):
    want = query.load_forced_source(measured_tiny_repo).sort(KEY)
    got = query.load_forced_source(mixed_repo).sort(KEY)
    assert got.schema == want.schema and got.equals(want, null_equal=True)
    lazy = query.scan_forced_source(mixed_repo, band=["g", "r"]).collect().sort(KEY)
    assert lazy.equals(want.filter(pl.col("band").is_in(["g", "r"])), null_equal=True)
    cols = ["objectId", "band", "patch", "tract", RENAMED[1]]
    sel = query.load_forced_source(mixed_repo, band="g", columns=cols).sort(KEY)
    assert sel.equals(want.filter(pl.col("band") == "g").select(cols), null_equal=True)
    assert sel[RENAMED[1]].null_count() < sel.height
    qt = query.load_forced_source(mixed_repo, band="g", columns=cols, backend="astropy")
    assert str(qt[RENAMED[1]].unit) == "nJy / pix"
    # the eager Arrow dataset (migrated in memory) agrees too
    ds = query.arrow_dataset(mixed_repo, "forced_source").to_table()
    assert _sorted(ds).equals(pl.from_arrow(want.to_arrow()).sort(KEY), null_equal=True)


def test_object_view_reads_both_versions(mixed_repo, measured_tiny_repo):
    want = query.load_object(measured_tiny_repo)
    got = query.load_object(mixed_repo)
    assert got.height > 0 and got.equals(want, null_equal=True)
    q = "SELECT * FROM object ORDER BY objectId, tract, patch"
    got, want = pl.from_arrow(query.sql(mixed_repo, q)), pl.from_arrow(query.sql(measured_tiny_repo, q))
    assert got.schema == want.schema and got.equals(want, null_equal=True)  # polars: NaN equals NaN


def test_a_1x_repository_keeps_working_after_the_upgrade_without_a_rewrite(measured_tiny_repo, tmp_path, capsys):
    """Every output 1.4.0: sql and loaders read it as 2.0, status and run count it up to date (nothing is
    measured or rewritten: same bytes), and `run --force` rewrites a quantum as 2.0."""
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    for path in _outputs(root):
        _write_as_1x(path)
    before = {p: _sha(p) for p in _outputs(root)}
    want = _sorted(query.sql(measured_tiny_repo, "SELECT * FROM forced_source"))
    assert _sorted(query.sql(root, "SELECT * FROM forced_source")).equals(want, null_equal=True)
    assert main(["status", "--repo", str(root)]) == 0
    out = capsys.readouterr().out
    n = len(before)
    assert f"{n} up-to-date" in out and "stale" not in out and "new" not in out.split("\n")[0]
    assert f"{n} up-to-date outputs are forced_source 1.4.0 ({n}), read as 2.0.0" in out and "run --force" in out
    summary = run_all(Repository(root), ForcedPhotConfig(), progress=False)
    assert summary.ok and not summary.done and len(summary.skipped) == n
    assert {p: _sha(p) for p in _outputs(root)} == before
    # --force rewrites one quantum as 2.0; the repository then mixes both and still reads as one table
    summary = run_all(Repository(root), ForcedPhotConfig(), patches=[1], bands=["r"], force=True, progress=False)
    assert summary.ok and len(summary.done) == 1
    rewritten = [p for p in _outputs(root) if _version(p) != "1.4.0"]
    assert len(rewritten) == 1 and _version(rewritten[0]) == "2.0.0"
    assert _sorted(query.sql(root, "SELECT * FROM forced_source")).equals(want, null_equal=True)


def test_a_newer_major_version_is_refused_in_one_line(mixed_repo):
    path = next(p for p in _outputs(mixed_repo) if _version(p) == "2.0.0")
    t = pq.read_table(path)
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, META_VERSION: b"3.0.0"}), path)
    with pytest.raises(SchemaVersionError) as info:
        query.sql(mixed_repo, "SELECT count(*) FROM forced_source")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "3.0.0" in msg and "newer than this forcedphot" in msg
    with pytest.raises(SchemaVersionError, match="newer than this forcedphot"):
        query.load_forced_source(mixed_repo)
    # and the ruling is the schema's own: a major with no migration (0.x) is refused too
    with pytest.raises(SchemaVersionError, match="reads major version 2"):
        load_schema("forced_source").check_metadata({META_VERSION: b"0.9.0"}, where="x")


def test_the_migration_is_declared_once_and_maps_every_column():
    (step,) = migrations("forced_source")
    assert (step.from_version, step.to_version) == ("1.4.0", "2.0.0")
    assert dict(step.renamed) == {RENAMED[0]: RENAMED[1]} and REMOVED in dict(step.removed)
    old, new = version_schema("forced_source", "1"), load_schema("forced_source")
    sources = column_sources("forced_source", "1.2.0")
    assert list(sources) == new.names
    assert sources[RENAMED[1]] == RENAMED[0] and REMOVED not in sources
    assert all(s in old.names for s in sources.values() if s is not None)
    assert set(old.names) - {s for s in sources.values()} == {REMOVED}
    # migrate(): an Arrow table of a 1.x file as a 2.0 table
    row = {c.name: None for c in old.columns}
    row |= {"objectId": 7, "parentObjectId": 0, "tract": 0, "patch": 1, "band": "g", "coord_ra": 1.0, "coord_dec": 2.0,
            "deblend_nChild": 0, "detect_isPrimary": True, RENAMED[0]: 3.5, REMOVED: 4.0}
    t = migrate(old.conform(pa.Table.from_pylist([row]), where="test"), "1.4.0")
    assert t.schema == new.arrow_schema() and t.column(RENAMED[1]).to_pylist() == [3.5]
    # a 1.x file written before a later 1.x minor added columns (1.0.0): missing columns read null
    t = migrate(pa.table({"objectId": pa.array([7], pa.int64()), RENAMED[0]: [1.5]}), "1.0.0")
    assert t.column(RENAMED[1]).to_pylist() == [1.5] and t.column("psfFlux").to_pylist() == [None]


def test_export_hats_stages_1x_files_as_2x(mixed_repo, tmp_path):
    from forcedphot.export_hats import _stage_input

    staged = _stage_input(Repository(mixed_repo), "forced_source", tmp_path)
    names = load_schema("forced_source").names
    assert len(staged) == len(_outputs(mixed_repo))
    assert all(pq.read_schema(p).names == names for p in staged)
    copies = [p for p in staged if p.parent == tmp_path]
    assert copies and all(RENAMED[1] in pq.read_schema(p).names for p in copies)
    got = pl.concat([pl.read_parquet(p) for p in staged]).sort(KEY)
    assert got.equals(query.load_forced_source(mixed_repo).sort(KEY), null_equal=True)


def _felis(path: Path, version: str, columns: list[dict]) -> Path:
    doc = {"name": "t", "@id": "#t", "description": "test", "version": version,
           "tables": [{"name": "x", "@id": "#x", "description": "x", "columns": [
               {"@id": f"#x.{c['name']}", "description": c.get("description", c["name"]), **c} for c in columns]}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_schema_diff_of_versions_and_of_felis_files(tmp_path, capsys):
    assert main(["schema", "diff", "1.4.0", "2.0.0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "forced_source: forced_source 1.4.0 -> forced_source 2.0.0"
    assert f"  renamed  {RENAMED[0]} -> {RENAMED[1]}" in out
    assert any(ln.startswith(f"  removed  {REMOVED}  (") for ln in out)
    assert out[-1] == "  0 added, 1 removed, 1 renamed, 0 retyped"
    assert main(["schema", "diff", "2.0.0", "forced_source:2"]) == 0
    assert "no change" in capsys.readouterr().out
    # two Felis files: a column added, one removed, one renamed (same description), one retyped
    a = _felis(tmp_path / "a.yaml", "1.0.0", [{"name": "id", "datatype": "long"},
                                               {"name": "flux", "datatype": "float", "description": "The flux."},
                                               {"name": "gone", "datatype": "int"},
                                               {"name": "n", "datatype": "int"}])
    b = _felis(tmp_path / "b.yaml", "2.0.0", [{"name": "id", "datatype": "long"},
                                               {"name": "psfFlux", "datatype": "float", "description": "The flux."},
                                               {"name": "n", "datatype": "long"},
                                               {"name": "new", "datatype": "boolean"}])
    assert main(["schema", "diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["  added    new", "  removed  gone", "  renamed  flux -> psfFlux", "  retyped  n: int -> long",
                       "  1 added, 1 removed, 1 renamed, 1 retyped"]
    # an unknown version: one line
    assert main(["schema", "diff", "3.0.0", "2.0.0"]) != 0
    err = capsys.readouterr().err
    assert "no forced_source schema of version 3.0.0" in err and err.count("\n") == 1


def test_the_history_schema_is_the_1x_writers_schema():
    """The kept 1.4.0 definition is what main's 1.4 writer wrote: 2.0's columns, the rename undone, the removed
    column back in its place."""
    old, new = version_schema("forced_source", "1.4.0"), load_schema("forced_source")
    assert old.version == "1.4.0" and new.version == "2.0.0"
    undone = [RENAMED[0] if n == RENAMED[1] else n for n in new.names]
    assert [n for n in old.names if n != REMOVED] == undone
    assert old.column(REMOVED).datatype == new.column("kronRad").datatype
    assert np.all([old.column(n).datatype == new.column(n).datatype for n in new.names if n != RENAMED[1]])
