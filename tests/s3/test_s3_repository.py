"""s3:// repositories end to end against a real local S3 server (moto_server, see conftest.py).

The commit protocol (forcedphot.s3repo): data files under unique names, visible only through per-quantum
commit records written with a conditional put; claims decide which run measures a quantum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from forcedphot import s3repo
from forcedphot.config import ForcedPhotConfig
from forcedphot.io.store import s3_client
from forcedphot.query import load_forced_source, sql

pytestmark = pytest.mark.slow
RUN_TIMEOUT = 600  # seconds for one CLI run of a few quanta on a busy machine


@pytest.fixture
def s3_tiny(s3_bucket, tiny_repo_master) -> str:
    """The session's tiny survey uploaded to a fresh bucket (as `simulate --repo s3://...` does)."""
    uri = f"s3://{s3_bucket}/survey"
    s3repo.upload_inputs(tiny_repo_master, uri)
    return uri


def _cli(uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "forcedphot", "run", "--repo", uri, "-q", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _keys(uri: str, rel: str) -> list[str]:
    repo = s3repo.S3Repository(uri)
    return sorted(o["rel"] for o in repo.list(rel))


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(["objectId", "band", "tract", "patch"])


def test_tiny_survey_on_s3_equals_local_disk(s3_tiny, measured_tiny_repo):
    """run on s3 gives the local run's forced_source value for value; status, sql, the ledger and a rerun
    (everything up to date) work there, and only commit records name what is read."""
    summary = s3repo.run_all(s3_tiny, ForcedPhotConfig())
    assert summary.ok and len(summary.done) == 16 and not summary.skipped, summary.failed
    s3_df = _sorted(load_forced_source(s3_tiny))
    local_df = _sorted(load_forced_source(measured_tiny_repo))
    assert s3_df.height == local_df.height > 0
    assert_frame_equal(s3_df, local_df, check_exact=True)
    counts = sql(s3_tiny, "SELECT band, count(*) AS n FROM forced_source GROUP BY band ORDER BY band")
    assert counts.column("n").to_pylist() == local_df.group_by("band").len().sort("band")["len"].to_list()
    obj = sql(s3_tiny, "SELECT count(*) AS n FROM object").column("n")[0].as_py()
    assert obj == sql(measured_tiny_repo, "SELECT count(*) AS n FROM object").column("n")[0].as_py() > 0
    from forcedphot.query import load_object

    assert_frame_equal(load_object(s3_tiny), load_object(measured_tiny_repo), check_exact=True)
    cone = dict(ra=float(local_df["coord_ra"][0]), dec=float(local_df["coord_dec"][0]), radius=0.01)
    assert_frame_equal(_sorted(load_forced_source(s3_tiny, **cone)), _sorted(load_forced_source(measured_tiny_repo,
                                                                                              **cone)))
    rows = s3repo.status_rows(s3repo.open_repository(s3_tiny), ForcedPhotConfig())
    assert {r["state"] for r in rows} == {"up-to-date"} and len(rows) == 16
    again = s3repo.run_all(s3_tiny, ForcedPhotConfig())
    assert len(again.skipped) == 16 and not again.done
    quanta = sql(s3_tiny, "SELECT status, count(*) AS n FROM quanta GROUP BY status ORDER BY status").to_pylist()
    assert quanta == [{"status": "done", "n": 16}, {"status": "up-to-date", "n": 16}]
    assert len(_keys(s3_tiny, "commits/forced_source/")) == 16
    assert _keys(s3_tiny, "runs/claims/") == []


def test_uncommitted_data_file_is_never_read_and_is_swept(s3_tiny):
    """A data file uploaded without its commit record (a run killed between the two) is invisible to every
    reader, the quantum stays new, and the sweep removes it once its writer is dead."""
    from forcedphot.repository import DataId

    did = DataId(0, 0, "g")
    uploaded = []

    def die(rel):
        uploaded.append(rel)
        raise RuntimeError("killed between upload and commit")

    result = s3repo.measure_quantum(s3_tiny, "test-run", ForcedPhotConfig(), did, after_upload=die)
    assert result[1] == "failed" and len(uploaded) == 1
    repo = s3repo.open_repository(s3_tiny)
    assert uploaded[0] in _keys(s3_tiny, "forced_source/")
    assert repo.committed_files() == []
    assert sql(s3_tiny, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py() == 0
    assert load_forced_source(s3_tiny).height == 0
    assert {r["state"] for r in s3repo.status_rows(repo, ForcedPhotConfig())} == {"new"}
    assert s3repo.sweep(repo, older_than=time.time()) == []  # its writer (this process) is alive: kept
    # the same file left by a dead writer of this host (pid 999999 does not run) is swept
    head, _pid, _start, tail = uploaded[0].rsplit("-", 3)  # ...forced_source-<host>-<pid>-<start>-<rand>.parquet
    dead_rel = f"{head}-999999-1-{tail}"
    b = repo.loc.bucket
    s3_client().copy_object(Bucket=b, Key=repo.loc.key(dead_rel), CopySource={"Bucket": b, "Key": repo.loc.key(uploaded[0])})
    repo.delete(uploaded[0])
    assert s3repo.sweep(repo, older_than=time.time()) == [dead_rel]
    assert _keys(s3_tiny, "forced_source/") == []


def test_killed_run_then_rerun_completes_with_nothing_duplicated(s3_tiny):
    """SIGKILL of `forcedphot run` mid-way: what it committed stays, nothing half-done is visible, and a rerun
    takes over its claim, completes every quantum once and sweeps its uncommitted file."""
    proc = _cli(s3_tiny, "--band", "g", "--jobs", "1")
    deadline = time.monotonic() + RUN_TIMEOUT
    while not _keys(s3_tiny, "commits/forced_source/"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no quantum committed in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    repo = s3repo.open_repository(s3_tiny)
    committed = repo.committed_files()
    assert 1 <= len(committed) < 4
    visible = load_forced_source(s3_tiny)
    assert visible.height == sum(r["n_rows"] for r in committed)
    summary = s3repo.run_all(s3_tiny, ForcedPhotConfig(), bands=["g"])
    assert summary.ok and not summary.elsewhere, summary
    assert len(summary.done) + len(summary.skipped) == 4 and len(summary.skipped) == len(committed)
    df = load_forced_source(s3_tiny, band="g")
    assert df.height == df.select(["objectId", "tract", "patch"]).unique().height  # no row twice
    assert len(repo.committed_files()) == 4
    assert len(_keys(s3_tiny, "commits/forced_source/")) == 4  # one generation per quantum
    assert _keys(s3_tiny, "runs/claims/") == []
    named = {r["file"] for r in repo.committed_files()}
    assert set(_keys(s3_tiny, "forced_source/")) == named  # the killed run's uncommitted file was swept
    runs = sql(s3_tiny, "SELECT outcome FROM runs ORDER BY started").column("outcome").to_pylist()
    assert runs == ["unfinished", "ok"]  # the ledger: the killed run has a start and no end


def test_two_concurrent_runs_measure_each_quantum_once(s3_tiny, capsys):
    """Two `forcedphot run` processes at once on one s3 repository (one of them with 2 spawned workers, which
    receive the URI, never a filesystem): every quantum measured by exactly one."""
    procs = [_cli(s3_tiny, "--band", "r", "--jobs", "2"), _cli(s3_tiny, "--band", "r")]
    outs = [p.communicate(timeout=RUN_TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = sql(s3_tiny, "SELECT tract, patch, band, count(*) AS n FROM quanta WHERE status = 'done' "
                        "GROUP BY ALL ORDER BY ALL").to_pylist()
    assert len(done) == 4 and {d["n"] for d in done} == {1}
    commits = _keys(s3_tiny, "commits/forced_source/")
    assert len(commits) == 4 and all(c.endswith("g00000001.json") for c in commits)
    repo = s3repo.open_repository(s3_tiny)
    assert len(_keys(s3_tiny, "forced_source/")) == 4
    assert sum(r["n_rows"] for r in repo.committed_files()) == load_forced_source(s3_tiny).height
    from forcedphot.cli import main

    assert main(["status", "--repo", s3_tiny]) == 0
    assert f"repository {s3_tiny}: 16 quanta: 12 new, 4 up-to-date" in capsys.readouterr().out
    assert main(["sql", "--repo", s3_tiny, "--format", "csv", "SELECT band, count(*) AS n FROM forced_source "
                 "GROUP BY band"]) == 0
    assert capsys.readouterr().out.splitlines() == ["band,n", f"r,{load_forced_source(s3_tiny).height}"]
    assert main(["status", "--repo", s3_tiny, "--history", "5"]) == 0
    assert capsys.readouterr().out.count(" ok ") >= 2  # both runs in the ledger, ended ok


def test_corrupted_input_object_fails_its_quantum_by_name(s3_tiny):
    """An input object whose bytes no longer match the manifest's sha256 is refused before it is read: the
    quantum fails naming the object, nothing is committed, and the other quanta are not affected."""
    from forcedphot.repository import DataId

    repo = s3repo.open_repository(s3_tiny)
    rel = "coadd/tract=0/patch=0/band=z/coadd.arrow"
    data = bytearray(repo.get(rel))
    data[len(data) // 2] ^= 0xFF
    repo.put(rel, bytes(data))
    did, status, payload = s3repo.measure_quantum(s3_tiny, "test-run", ForcedPhotConfig(), DataId(0, 0, "z"))
    assert status == "failed" and f"{s3_tiny}/{rel}: checksum mismatch" in payload
    assert repo.committed_files() == [] and _keys(s3_tiny, "forced_source/") == []
    assert _keys(s3_tiny, "runs/claims/") == []
    ledger = sql(s3_tiny, "SELECT status, error FROM quanta").to_pylist()
    assert ledger == [{"status": "failed", "error": payload}]


def test_a_claim_won_after_a_commit_measures_nothing(s3_tiny, monkeypatch):
    """A run that read the commits just before another run committed generation 1 and released its claim wins
    the (now free) claim on generation 1: it must find that commit and not measure the quantum again."""
    import json

    from forcedphot.provenance import make_provenance
    from forcedphot.repository import DataId
    from forcedphot.schema import schema_version

    did, config = DataId(0, 1, "i"), ForcedPhotConfig()
    repo = s3repo.open_repository(s3_tiny)
    q = next(q for q in s3repo.plan(repo) if q.data_id == did)
    record = {"tract": 0, "patch": 1, "band": "i", "file": "forced_source/elsewhere.parquet", "sha256": "0" * 64,
              "size": 1, "n_rows": 0, "provenance": make_provenance(
                  data_id=did, config=config, inputs=s3repo.fingerprints(repo, q),
                  schema_version=schema_version("forced_source"))}
    repo.put_if_absent(s3repo.commit_key(did, 1), json.dumps(record).encode())
    real, calls = s3repo.S3Repository.commits, []

    def stale_first(self, data_id=None):  # the first read predates the other run's commit
        calls.append(data_id)
        return {} if len(calls) == 1 else real(self, data_id)

    monkeypatch.setattr(s3repo.S3Repository, "commits", stale_first)
    _, status, _ = s3repo.measure_quantum(s3_tiny, "late-run", config, did)
    assert status == "up-to-date" and len(calls) == 2
    assert _keys(s3_tiny, "forced_source/") == [] and _keys(s3_tiny, "runs/claims/") == []


def test_export_hats_from_s3(s3_tiny, tmp_path, capsys):
    """`export hats --repo s3://...` writes a local HATS catalog of the committed rows (forced_source table)."""
    lsdb = pytest.importorskip("lsdb", reason="lsdb is in the test extra")
    from forcedphot.cli import main

    assert s3repo.run_all(s3_tiny, ForcedPhotConfig(), bands=["i"]).ok
    out = tmp_path / "fs"
    assert main(["export", "hats", "--repo", s3_tiny, "--out", str(out), "--table", "forced_source",
                 "--highest-order", "5"]) == 0, capsys.readouterr().err
    long = lsdb.open_catalog(out).compute()
    want = load_forced_source(s3_tiny, columns=["objectId", "band", "psfFlux"])
    assert len(long) == want.height > 0 and set(long["band"]) == {"i"}
    got = pl.from_pandas(long[["objectId", "band", "psfFlux"]]).sort("objectId")
    assert_frame_equal(got, want.sort("objectId"), check_dtypes=False)
    assert list(tmp_path.iterdir()) == [out]


def test_report_of_an_s3_repository(s3_tiny, tmp_path, capsys):
    """`report --repo s3://...` writes the QA page from a verified snapshot of the committed state: an
    uncommitted data file is not in it."""
    from forcedphot.cli import main
    from forcedphot.repository import DataId

    assert s3repo.run_all(s3_tiny, ForcedPhotConfig(), bands=["g"]).ok
    s3repo.measure_quantum(s3_tiny, "killed", ForcedPhotConfig(), DataId(0, 0, "r"),
                           after_upload=lambda rel: (_ for _ in ()).throw(RuntimeError("killed")))
    snap = s3repo.local_snapshot(s3_tiny, tmp_path / "snap")
    assert sorted(p.parent.name for p in (snap / "forced_source").rglob("*.parquet")) == ["band=g"] * 4
    assert load_forced_source(snap).height == load_forced_source(s3_tiny).height > 0
    out = tmp_path / "qa"
    assert main(["report", "--repo", s3_tiny, "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "index.html").is_file() and list(out.glob("*.png"))
