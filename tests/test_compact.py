"""``forcedphot compact``: a tract's outputs rewritten into few files sorted by (objectId, band), switched in by
one manifest commit; queries answer the same before and after, a reader never sees old and new files
together, and a quantum measured again afterwards supersedes its compacted rows (never counted twice)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from forcedphot import query
from forcedphot.cli import main
from forcedphot.compact import compact
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import InputError
from forcedphot.io.parquet import ChecksumError
from forcedphot.io import manifest
from forcedphot.repository import DataId, Repository
from forcedphot.runner import run_all
from tests.test_verified_reads import corrupt_page

ALL_ROWS = "SELECT * FROM forced_source ORDER BY objectId, band, tract, patch"
QUERIES = [ALL_ROWS, "SELECT count(*) AS n FROM forced_source",
           # a float sum depends on the order of its terms (rows are in another order after compact): ordered here
           "SELECT band, count(*) AS n, min(psfFlux) AS lo, max(psfFlux) AS hi, "
           "sum(psfFlux ORDER BY objectId) FILTER (WHERE NOT isnan(psfFlux)) AS s FROM forced_source "
           "GROUP BY band ORDER BY band",
           "SELECT * FROM object ORDER BY objectId"]


@pytest.fixture
def measured(measured_tiny_repo, tmp_path) -> Repository:
    dst = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, dst)
    return Repository(dst)


def answers(repo: Repository) -> list:
    return [query.sql(repo, q) for q in QUERIES]


def assert_same(a: list, b: list) -> None:
    """Equal tables, row for row (NaN equal to NaN, as a query compares them: Arrow's equals does not)."""
    for x, y in zip(a, b, strict=True):
        assert x.schema == y.schema and x.num_rows == y.num_rows
        assert pl.from_arrow(x).equals(pl.from_arrow(y), null_equal=True)


def data_files(repo: Repository) -> list[Path]:
    return sorted((repo.root / "forced_source").rglob("*.parquet"))


def test_compact_keeps_every_answer_and_removes_only_the_old_outputs(measured, capsys):
    before, old_files = answers(measured), data_files(measured)
    point = query.sql(measured, "SELECT objectId FROM forced_source ORDER BY objectId LIMIT 1 OFFSET 37")
    oid = point.column("objectId")[0].as_py()
    point_before = query.sql(measured, "SELECT * FROM forced_source WHERE objectId = $id ORDER BY band", {"id": oid})
    assert len(old_files) == 16 and before[1].column("n")[0].as_py() > 0
    assert main(["compact", "--repo", str(measured.root), "--tract", "0", "--rows-per-part", "300", "--grace", "0"]) == 0
    assert "tract 0: 16 files ->" in capsys.readouterr().out
    parts = data_files(measured)
    assert parts and all(p.parent.name == "compacted" for p in parts) and len(parts) < len(old_files)
    assert not any(p.exists() for p in old_files)
    assert_same(answers(measured), before)
    assert_same([query.sql(measured, "SELECT * FROM forced_source WHERE objectId = $id ORDER BY band",
                           {"id": oid})], [point_before])
    # every part sorted by (objectId, band), parts in objectId order, not overlapping
    spans = []
    for p in parts:
        t = pq.read_table(p, columns=["objectId", "band"])
        keys = list(zip(t.column("objectId").to_pylist(), t.column("band").to_pylist()))
        assert keys == sorted(keys)
        spans.append((keys[0][0], keys[-1][0]))
    spans.sort()
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    doc = manifest.read(measured.root, 0)
    assert doc["format"] == manifest.MANIFEST_FORMAT and set(doc["files"]) == {
        p.relative_to(manifest.tract_dir(measured.root, 0)).as_posix() for p in parts}
    assert len(doc["compacted"]) == 16 and sum(e["rows"] for e in doc["files"].values()) == before[1].column("n")[0].as_py()
    # the quanta are up to date: a run measures nothing; the loaders read the parts too
    summary = run_all(measured, ForcedPhotConfig(), progress=False)
    assert summary.ok and not summary.done
    fs = query.load_forced_source(measured, patch=1, band="g").sort(["objectId"])
    expect = before[0].filter(np.array([(p == 1 and b == "g") for p, b in zip(
        before[0].column("patch").to_pylist(), before[0].column("band").to_pylist())]))
    assert fs.height == expect.num_rows > 0 and sorted(fs["objectId"].to_list()) == sorted(
        expect.column("objectId").to_pylist())
    assert query.load_object(measured, patch=1).height == query.sql(
        measured, "SELECT count(*) AS n FROM object WHERE patch = 1").column("n")[0].as_py()


def test_a_reader_sees_the_old_files_or_the_new_parts_never_both(measured, monkeypatch):
    n = query.sql(measured, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py()
    seen = {}
    real_write, real_remove = manifest.write, __import__("forcedphot.compact", fromlist=["x"])._remove_old

    def write(root, tract, doc):
        seen["parts written, not switched"] = query.sql(measured, "SELECT count(*) AS n FROM forced_source")
        return real_write(root, tract, doc)

    def remove_old(*args):
        seen["switched, old files still there"] = query.sql(measured, "SELECT count(*) AS n FROM forced_source")
        return real_remove(*args)

    monkeypatch.setattr(manifest, "write", write)
    monkeypatch.setattr("forcedphot.compact._remove_old", remove_old)
    compact(measured.root, 0)
    assert len(seen) == 2 and all(t.column("n")[0].as_py() == n for t in seen.values())


def test_a_quantum_measured_again_supersedes_its_compacted_rows(measured):
    before = answers(measured)
    compact(measured.root, rows_per_part=10_000)
    data_id = DataId(0, 1, "g")
    summary = run_all(measured, ForcedPhotConfig(), tracts=[0], patches=[1], bands=["g"], force=True, progress=False)
    assert summary.ok and [d for d, _, _ in summary.done] == [str(data_id)]
    doc = manifest.read(measured.root, 0)
    assert "1/g" not in doc["compacted"] and "patch=1/band=g/forced_source.parquet" in doc["files"]
    for rel, entry in doc["files"].items():  # its rows are in its own file only
        t = pq.read_table(manifest.tract_dir(measured.root, 0) / rel, columns=["patch", "band"])
        has = any(p == 1 and b == "g" for p, b in zip(t.column("patch").to_pylist(), t.column("band").to_pylist()))
        assert has == (rel == "patch=1/band=g/forced_source.parquet"), rel
        assert ([1, "g"] in entry["quanta"]) == has
    assert_same(answers(measured), before)  # measured again, bit for bit the same rows, once
    compact(measured.root, grace=0)  # and compacted again (what it replaced removed at once)
    assert_same(answers(measured), before)
    assert all(p.parent.name == "compacted" for p in data_files(measured))


def test_compact_refuses_a_corrupted_output_and_changes_nothing(measured):
    path = measured.forced_source_path(DataId(0, 2, "r"))
    corrupt_page(path)
    state = manifest.manifest_path(measured.root, 0).read_bytes()
    files = data_files(measured)
    with pytest.raises(ChecksumError, match=str(path)):
        compact(measured.root, 0)
    assert manifest.manifest_path(measured.root, 0).read_bytes() == state and data_files(measured) == files


def test_compact_refuses_a_tract_a_run_is_measuring(measured):
    state = manifest.manifest_path(measured.root, 0).read_bytes()
    lock = FileLock(str(measured.lock_path(DataId(0, 3, "i"))))
    with lock:
        with pytest.raises(InputError, match="tract=0 patch=3 band=i is being measured"):
            compact(measured.root, 0)
    assert manifest.manifest_path(measured.root, 0).read_bytes() == state
    with pytest.raises(InputError, match="no forced_source outputs in tract 7"):
        compact(measured.root, 7)


def test_a_tract_without_a_manifest_is_listed_then_compacted(measured):
    """A repository written before manifests: queries list the tract; compact builds its manifest first."""
    before = answers(measured)
    manifest.manifest_path(measured.root, 0).unlink()
    assert_same(answers(measured), before)
    compact(measured.root, 0)
    doc = json.loads(manifest.manifest_path(measured.root, 0).read_text())
    assert len(doc["compacted"]) == 16
    assert_same(answers(measured), before)


def test_a_vanished_quantum_leaves_the_compacted_parts(measured):
    """A quantum the repository no longer has (its band removed): its rows leave the parts too (runner's
    remove_vanished_outputs calls this with every planned quantum)."""
    n = query.sql(measured, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py()
    gone = query.sql(measured, "SELECT count(*) AS n FROM forced_source WHERE patch = 1 AND band = 'g'").column("n")[0].as_py()
    compact(measured.root, rows_per_part=10_000)
    keep = {(0, p, b) for p in range(4) for b in "griz"} - {(0, 1, "g")}
    assert manifest.remove_vanished(measured.root, keep) == ["tract=0 patch=1 band=g"]
    assert gone > 0 and query.sql(measured, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py() == n - gone
    assert "1/g" not in manifest.read(measured.root, 0)["compacted"]
    assert manifest.remove_vanished(measured.root, keep) == []


def test_replaced_files_stay_readable_for_the_grace_period(measured, capsys):
    """compact retires the files it replaces instead of removing them: a reader that listed them from the old
    manifest just before still reads every row; new readers never see them (no row twice), a run does not take
    a retired output for its quantum's; `vacuum` removes them only once the grace period is over."""
    before = answers(measured)
    listed = query.dataset_files(measured, "forced_source")  # a reader lists, then compact switches
    n = before[1].column("n")[0].as_py()
    assert len(listed) == 16
    compact(measured.root, 0, rows_per_part=300)  # the default grace period: 1 h
    assert all(p.exists() for p in listed)
    assert sum(pq.ParquetFile(p).read().num_rows for p in listed) == n  # the listing of a moment ago reads every row
    assert_same(answers(measured), before)
    doc = manifest.read(measured.root, 0)
    assert sorted(doc["retired"]) == sorted(p.relative_to(manifest.tract_dir(measured.root, 0)).as_posix()
                                            for p in listed)
    summary = run_all(measured, ForcedPhotConfig(), progress=False)  # its start vacuums: within the grace period
    assert summary.ok and len(summary.skipped) == 16 and not summary.done
    assert all(p.exists() for p in listed) and manifest.read(measured.root, 0)["files"] == doc["files"]
    assert main(["vacuum", "--repo", str(measured.root), "--grace", "3600"]) == 0
    assert "0 retired files removed" in capsys.readouterr().out and all(p.exists() for p in listed)
    # a quantum measured again meanwhile: its path is live again, never removed as retired
    again = DataId(0, 2, "z")
    assert run_all(measured, ForcedPhotConfig(), tracts=[0], patches=[2], bands=["z"], force=True,
                   progress=False).ok
    retired = manifest.read(measured.root, 0)["retired"]
    assert "patch=2/band=z/forced_source.parquet" not in retired
    parts = [rel for rel in retired if rel.startswith("compacted/")]  # the part that held 2/z, rewritten without it
    assert len(parts) >= 1 and len(retired) == 15 + len(parts)
    assert main(["vacuum", "--repo", str(measured.root), "--grace", "0"]) == 0
    assert f"{15 + len(parts)} retired files removed" in capsys.readouterr().out
    assert not any((manifest.tract_dir(measured.root, 0) / rel).exists() for rel in parts)
    assert [p for p in listed if p.exists()] == [measured.forced_source_path(again)]
    assert not manifest.read(measured.root, 0)["retired"]
    assert_same(answers(measured), before)
    assert manifest.expire_retired(measured.root, 0, grace=0) == []


def test_a_retired_part_is_kept_then_removed(measured, monkeypatch):
    """Parts replaced by a later compaction or by a re-measured quantum's copy-on-write are retired too, and
    ``FORCEDPHOT_GRACE_PERIOD`` sets the default grace period."""
    compact(measured.root, 0, rows_per_part=10_000, grace=0)
    parts = [p for p in data_files(measured)]
    assert parts and all(p.parent.name == "compacted" for p in parts)
    assert run_all(measured, ForcedPhotConfig(), tracts=[0], patches=[1], bands=["g"], force=True,
                   progress=False).ok  # rewrites the parts holding 1/g without it
    assert all(p.exists() for p in parts)
    assert {manifest.COMPACTED_DIR + "/" + p.name for p in parts} <= set(manifest.read(measured.root, 0)["retired"])
    monkeypatch.setenv("FORCEDPHOT_GRACE_PERIOD", "0")
    removed = manifest.vacuum(measured.root)
    assert sorted(removed) == sorted(p.relative_to(measured.root).as_posix() for p in parts)
    assert not any(p.exists() for p in parts)
    assert query.sql(measured, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py() > 0


def test_a_part_read_in_slices_of_files_equals_one_read(measured, monkeypatch, tmp_path):
    """Files are read FILES_PER_READ at a time (memory bounded by the slice, not by the file count): the parts
    are the same rows in the same order as a part read in one go."""
    import forcedphot.compact as compact_module

    other = Repository(shutil.copytree(measured.root, tmp_path / "other"))
    compact(measured.root, 0, grace=0)
    monkeypatch.setattr(compact_module, "FILES_PER_READ", 3)  # 16 files: slices of 3, 3, 3, 3, 3 and 1
    compact(other.root, 0, grace=0)
    a, b = data_files(measured), data_files(other)
    assert [p.name for p in a] == [p.name for p in b] and a
    for x, y in zip(a, b):
        tx, ty = pq.read_table(x), pq.read_table(y)
        assert pl.from_arrow(tx).equals(pl.from_arrow(ty), null_equal=True)
