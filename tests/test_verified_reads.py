"""Readers of outputs verify them: a corrupted file is one line naming it, never numbers; verified once.

An output's psfFlux page is overwritten in place (8 bytes): pyarrow and Polars still decode it, into
other numbers. Every reader (sql, the loaders, report, export hats) must refuse it naming the file,
and ``run`` must measure it again rather than call it up to date. The verified state
(``forcedphot.io.verified``) is checked by counting the hashing calls: a file is hashed at its first
read, not at the second, and again when its stat changes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import InputError
from forcedphot.plan import plan_quanta
from forcedphot.repository import DataId, Repository
from forcedphot.runner import quantum_state, run_all

DATA_ID = DataId(0, 1, "g")
SUM_PSF_FLUX = "SELECT sum(psfFlux) FILTER (WHERE NOT isnan(psfFlux)) AS s FROM forced_source"


def corrupt_page(path: Path, column: str = "psfFlux", n: int = 8) -> None:
    """Overwrite ``n`` bytes in the middle of ``column``'s pages, in place (the file keeps its size and inode)."""
    chunk = next(c for c in (pq.read_metadata(path).row_group(0).column(i)
                             for i in range(pq.read_metadata(path).num_columns)) if c.path_in_schema == column)
    start = chunk.data_page_offset + chunk.total_compressed_size // 2
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\x7f" * n)


def settle() -> None:
    """Let the files just copied age past the racy window, so their verification is remembered."""
    from forcedphot.io import verified

    time.sleep(verified.RACY_NS / 1e9 * 2)


@pytest.fixture
def measured(measured_tiny_repo, tmp_path) -> Repository:
    dst = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, dst)
    return Repository(dst)


@pytest.fixture
def corrupted(measured) -> tuple[Repository, Path, bytes]:
    """A measured copy with the psfFlux page of one output overwritten; (repo, that file, its intact bytes)."""
    path = measured.forced_source_path(DATA_ID)
    intact = path.read_bytes()
    before = pq.read_table(path, columns=["psfFlux"]).column(0).to_numpy()
    corrupt_page(path)
    after = pq.read_table(path, columns=["psfFlux"]).column(0).to_numpy()  # decodes: silently other numbers
    assert after.shape == before.shape and not np.array_equal(after, before, equal_nan=True)
    return measured, path, intact


def one_error_line(capsys, path: Path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"forcedphot: error: {path}: content checksum mismatch"), err
    return err[0]


def test_sql_refuses_a_corrupted_output(corrupted, capsys):
    repo, path, _ = corrupted
    with pytest.raises(InputError, match=f"^{path}: content checksum mismatch"):
        query.sql(repo, SUM_PSF_FLUX)
    assert main(["sql", "--repo", str(repo.root), SUM_PSF_FLUX]) == 2
    one_error_line(capsys, path)
    # a query that does not read the corrupted column still refuses: no number from a corrupted repository
    assert main(["sql", "--repo", str(repo.root), "SELECT count(*) FROM forced_source"]) == 2
    one_error_line(capsys, path)


@pytest.mark.parametrize("load", [
    lambda r: query.load_forced_source(r),
    lambda r: query.load_forced_source(r, band="g", columns=["psfFlux"]),
    lambda r: query.scan_forced_source(r).collect(),
    lambda r: query.load_object(r),
    lambda r: query.load_object(r, ra=149.994, dec=1.995, radius=0.002),  # a cone within patch 1
], ids=["load_forced_source", "columns", "scan_forced_source", "load_object", "load_object_cone"])
def test_loaders_refuse_a_corrupted_output(corrupted, load):
    repo, path, _ = corrupted
    with pytest.raises(InputError, match=f"^{path}: content checksum mismatch") as err:
        load(repo)
    assert "\n" not in str(err.value)


def test_report_refuses_a_corrupted_output(corrupted, tmp_path, capsys):
    repo, path, _ = corrupted
    out = tmp_path / "report"
    assert main(["report", "--repo", str(repo.root), "--out", str(out)]) == 2
    one_error_line(capsys, path)
    assert not out.exists()


@pytest.mark.parametrize("table", ["object", "forced_source"])
def test_export_hats_refuses_a_corrupted_output(corrupted, tmp_path, capsys, table):
    pytest.importorskip("hats_import", reason="hats-import is in the test extra: pip install -e '.[test]'")
    repo, path, _ = corrupted
    out = tmp_path / "hats"
    assert main(["export", "hats", "--repo", str(repo.root), "--out", str(out), "--table", table]) == 2
    one_error_line(capsys, path)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left


def test_run_measures_a_corrupted_output_again(corrupted, caplog):
    repo, path, intact = corrupted
    config = ForcedPhotConfig()
    states = {str(q.data_id): quantum_state(repo, q, config)[0] for q in plan_quanta(repo)}
    assert states.pop(str(DATA_ID)) == "corrupt"
    assert set(states.values()) == {"up-to-date"}
    with caplog.at_level(logging.WARNING, logger="forcedphot.runner"):
        summary = run_all(repo, config, progress=False)
    assert [d for d, _, _ in summary.done] == [str(DATA_ID)] and len(summary.skipped) == 15 and summary.ok
    warned = [r.getMessage() for r in caplog.records if "measured again" in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0] and "content checksum mismatch" in warned[0]
    assert path.read_bytes() == intact  # measured again: the same inputs and config give the same bytes
    assert query.sql(repo, SUM_PSF_FLUX).column("s")[0].as_py() > 0


def count_hashes(monkeypatch) -> list[Path]:
    """Every file the verified state hashes from now on (a list that grows)."""
    from forcedphot.io import verified

    hashed, hash_file = [], verified._hash_file

    def counting(f, n_prefix):
        hashed.append(Path(f.name))
        return hash_file(f, n_prefix)

    monkeypatch.setattr(verified, "_hash_file", counting)
    return hashed


def view_files(repo: Repository) -> set[Path]:
    """The Parquet files a query's views read: the datasets of sql/views.sql and the run ledger."""
    return {p for d in ("forced_source", "ref", "truth", "skymap", "runs/ledger")
            for p in (repo.root / d).rglob("*.parquet")}


def test_a_second_query_hashes_nothing(measured, monkeypatch):
    settle()
    hashed = count_hashes(monkeypatch)
    n = query.sql(measured, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py()
    assert n > 0 and sorted(hashed) == sorted((measured.root / "forced_source").rglob("*.parquet"))  # once each
    hashed.clear()
    query.sql(measured, "SELECT (SELECT count(*) FROM ref), (SELECT count(*) FROM truth), "
                        "(SELECT count(*) FROM skymap), (SELECT count(*) FROM runs)")
    assert sorted(hashed) == sorted(view_files(measured) - set((measured.root / "forced_source").rglob("*.parquet")))
    state = measured.root / "runs" / "verified" / "forced_source+tract=0.json"
    entries = json.loads(state.read_text())["entries"]
    assert set(entries) == {p.relative_to(measured.root).as_posix()
                            for p in (measured.root / "forced_source").rglob("*.parquet")}
    hashed.clear()
    assert query.sql(measured, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py() == n
    query.load_forced_source(measured)
    query.load_object(measured)
    assert hashed == []


def test_another_process_reads_the_saved_state(measured, monkeypatch):
    """The state on disk, not only this process's memo: a new store (as in a new process) hashes nothing."""
    from forcedphot.io import verified

    settle()
    query.sql(measured, "SELECT count(*) FROM forced_source")
    monkeypatch.setattr(verified, "_STORES", {})
    hashed = count_hashes(monkeypatch)
    query.sql(measured, "SELECT count(*) FROM forced_source")
    assert hashed == []


def rewrite_same_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes())  # in place: same size, same inode, same bytes


def touch(path: Path) -> None:
    os.utime(path)


def replace_by_copy(path: Path) -> None:
    tmp = path.with_name(".copy.tmp")
    shutil.copy2(path, tmp)  # same bytes and mtime, another inode
    os.replace(tmp, path)


@pytest.mark.parametrize("change", [rewrite_same_bytes, touch, replace_by_copy])
def test_a_changed_file_is_hashed_again(measured, monkeypatch, change):
    settle()
    any_view = "SELECT count(*) FROM forced_source"
    query.sql(measured, any_view)
    hashed = count_hashes(monkeypatch)
    path = measured.forced_source_path(DATA_ID)
    change(path)
    query.sql(measured, "SELECT 1")  # reads no view: opens no file
    assert hashed == []
    query.sql(measured, any_view)
    assert hashed == [path]  # that file only, then it is remembered again
    hashed.clear()
    settle()
    query.sql(measured, any_view)
    assert hashed in ([], [path])  # a change within the racy window is hashed once more, out of it
    hashed.clear()
    query.sql(measured, any_view)
    assert hashed == []


def test_a_verified_file_corrupted_in_place_is_refused(measured, capsys):
    settle()
    assert query.sql(measured, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py() > 0  # remembered
    path = measured.forced_source_path(DATA_ID)
    size = path.stat().st_size
    corrupt_page(path)
    assert path.stat().st_size == size
    assert main(["sql", "--repo", str(measured.root), "SELECT count(*) FROM forced_source"]) == 2
    one_error_line(capsys, path)


def test_a_change_the_stat_cannot_see_is_named(measured, capsys):
    """Bits changed under the filesystem keep the stat: the page CRCs catch them, and the error names the file."""
    from forcedphot.io import verified

    settle()
    query.sql(measured, "SELECT count(*) FROM forced_source")  # its files verified and remembered
    path = measured.forced_source_path(DATA_ID)
    corrupt_page(path)
    rel = path.relative_to(measured.root).as_posix()
    state = measured.root / "runs" / "verified" / "forced_source+tract=0.json"
    doc = json.loads(state.read_text())
    doc["entries"][rel][:5] = list(verified.stat_key(path.stat()))  # as if the change left the stat as it was
    state.write_text(json.dumps(doc))
    assert main(["sql", "--repo", str(measured.root), SUM_PSF_FLUX]) == 2
    one_error_line(capsys, path)
    assert rel not in json.loads(state.read_text())["entries"]  # forgotten, so the next query refuses it too
    assert main(["sql", "--repo", str(measured.root), "SELECT count(*) FROM forced_source"]) == 2
    one_error_line(capsys, path)


def test_a_read_only_repository_is_verified_in_memory(measured, monkeypatch):
    from forcedphot.io import verified

    def refuse(self, name, new):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(verified.VerifiedFiles, "_save_shard", refuse)
    shutil.rmtree(measured.root / "runs" / "verified")
    settle()
    hashed = count_hashes(monkeypatch)
    query.sql(measured, "SELECT count(*) FROM forced_source")
    assert hashed and not (measured.root / "runs" / "verified").exists()
    hashed.clear()
    query.sql(measured, "SELECT count(*) FROM forced_source")
    assert hashed == []


def test_outputs_are_recorded_verified_by_their_writer(tiny_repo, monkeypatch):
    repo = Repository(tiny_repo)
    summary = run_all(repo, ForcedPhotConfig(), tracts=[0], patches=[1], bands=["g"], progress=False)
    assert summary.done and summary.ok
    path = repo.forced_source_path(DATA_ID)
    entries = json.loads((repo.root / "runs" / "verified" / "forced_source+tract=0.json").read_text())["entries"]
    from forcedphot.io import verified

    assert verified.Entry(*entries[path.relative_to(repo.root).as_posix()]).matches(path.stat())
    hashed = count_hashes(monkeypatch)
    query.sql(repo, "SELECT count(*) FROM forced_source")
    assert path not in hashed  # the first query does not hash the fresh output again


def test_racy_window():
    from forcedphot.io.verified import RACY_COARSE_NS, RACY_NS, racy

    t = 1_700_000_000_123_456_789
    assert racy(t, t) and racy(t, t + RACY_NS - 1) and not racy(t, t + RACY_NS)
    whole = 1_700_000_000_000_000_000  # a filesystem without sub-second timestamps
    assert racy(whole, whole + RACY_NS) and not racy(whole, whole + RACY_COARSE_NS)
