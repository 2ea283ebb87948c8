"""``forcedphot run --repo s3://... --dask tcp://...``: an s3 repository measured on a Dask cluster of separate
processes (:mod:`tests.dask_cluster`) against the session's moto_server (:mod:`tests.s3.conftest`).

The workers get the server's endpoint and credentials through their own environment (the cluster's
``worker_env``), never through a task: a task is (repository URI string, run ID, config, data ID,
options). The claim/commit protocol of :mod:`forcedphot.s3repo` runs in the worker. Every run measures
band r of the tiny survey (4 quanta) and is compared value for value with the serial local run of
``measured_tiny_repo``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from forcedphot import s3repo
from forcedphot.config import ForcedPhotConfig
from forcedphot.query import load_forced_source
from tests.dask_cluster import Cluster, record_frames, wait_for_file
from tests.s3.conftest import CREDENTIALS

pytestmark = pytest.mark.slow

BAND = "r"
RUN_TIMEOUT = 300  # seconds for one `forcedphot run` of 4 tiny quanta on a loaded 2-core machine


@pytest.fixture(scope="module")
def s3_cluster(moto_endpoint, tmp_path_factory):
    """Two workers whose own environment points at the session's moto_server."""
    with Cluster(2, worker_env={"AWS_ENDPOINT_URL": moto_endpoint, **CREDENTIALS}) as c:
        c.start(tmp_path_factory.mktemp("dask-s3-cluster"))
        yield c


@pytest.fixture
def s3_tiny(s3_bucket, tiny_repo_master) -> str:
    uri = f"s3://{s3_bucket}/survey"
    s3repo.upload_inputs(tiny_repo_master, uri)
    return uri


def _band(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("band") == BAND).sort(["objectId", "band", "tract", "patch"])


def _assert_equals_serial(uri: str, measured_tiny_repo) -> None:
    got, want = _band(load_forced_source(uri)), _band(load_forced_source(measured_tiny_repo))
    assert got.height == want.height > 0
    assert_frame_equal(got, want, check_exact=True)


def _records(uri: str) -> list[str]:
    return sorted(o["rel"] for o in s3repo.S3Repository(uri).list("commits/forced_source/"))


def _cli(uri: str, address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "forcedphot", "run", "--repo", uri, "--dask", address,
                             "--band", BAND, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ), start_new_session=True)


def test_a_cluster_run_on_s3_equals_a_serial_local_run(s3_cluster, s3_tiny, measured_tiny_repo):
    proc = _cli(s3_tiny, s3_cluster.address)
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert "4 quanta measured" in out
    _assert_equals_serial(s3_tiny, measured_tiny_repo)
    assert len(_records(s3_tiny)) == 4 and all(r.endswith("/g00000001.json") for r in _records(s3_tiny))
    repo = s3repo.S3Repository(s3_tiny)
    assert repo.list("runs/claims/") == []
    worker_pids = set(s3_cluster.worker_pids().values())
    recs = [json.loads(repo.get(r)) for r in _records(s3_tiny)]
    from forcedphot.query import sql

    done = sql(s3_tiny, "SELECT pid FROM quanta WHERE status = 'done'").column("pid").to_pylist()
    assert len(done) == 4 and set(done) <= worker_pids, (done, worker_pids)  # measured by the workers
    assert {r["run_id"] for r in recs} == {json.loads(repo.get("runs/last_run.json"))["run_id"]}


def test_what_the_client_sends_carries_the_uri_and_no_secret(s3_cluster, s3_tiny, measured_tiny_repo, monkeypatch):
    """Every frame the client writes to the scheduler, read raw (compression off): the tasks name the
    repository by its URI string; the secret key the client and the workers both hold is nowhere in them."""
    import dask

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret == CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    sent = record_frames(monkeypatch)
    with dask.config.set({"distributed.comm.compression": None}):
        summary = s3repo.run_all(s3_tiny, ForcedPhotConfig(), bands=[BAND], dask=s3_cluster.address)
    assert summary.ok and len(summary.done) == 4, summary.failed
    _assert_equals_serial(s3_tiny, measured_tiny_repo)
    wire = b"".join(sent)
    assert s3_tiny.encode() in wire and b"_measure_waiting" in wire  # the tasks were captured
    assert secret.encode() not in wire and CREDENTIALS["AWS_ACCESS_KEY_ID"].encode() not in wire
    assert b"S3FileSystem" not in wire and b"botocore" not in wire
    # the check can fail: a filesystem object built from the credentials carries them
    from distributed.protocol import pickle as dask_pickle
    from pyarrow.fs import S3FileSystem

    assert secret.encode() in dask_pickle.dumps(S3FileSystem(access_key="k", secret_key=secret))
    with s3_cluster.client() as c:  # what the workers used came from their own environment
        assert set(c.run(lambda: os.environ.get("AWS_ENDPOINT_URL")).values()) == {os.environ["AWS_ENDPOINT_URL"]}


@pytest.mark.parametrize("allowed_failures", [None, 0], ids=["retried", "reported-failed"])
def test_a_worker_killed_mid_quantum_commits_once(moto_endpoint, s3_tiny, measured_tiny_repo, tmp_path,
                                                  allowed_failures):
    """The first worker to upload a forced_source data file pauses right after the upload (claim held, data
    file uploaded, no commit record) and is SIGKILLed there. Retried (the scheduler's default): another
    worker finds the claim of a dead process of this host (pid gone, or a zombie, or another start time) and
    takes it over with If-Match; the run succeeds. ``allowed-failures: 0``: the quantum is reported failed
    by name. Either way each quantum has exactly one commit record, the killed worker's data file is named
    by none and never read, and the next run sweeps it."""
    pause = tmp_path / "pause"
    pause.mkdir()
    sched_env = {} if allowed_failures is None else {
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
    with Cluster(2, worker_env={"AWS_ENDPOINT_URL": moto_endpoint, **CREDENTIALS}, scheduler_env=sched_env,
                 pause="forcedphot.s3repo:S3Repository.put:after", pause_dir=pause,
                 pause_match="forced_source-") as c:
        c.start(tmp_path / "logs")
        proc = _cli(s3_tiny, c.address)
        try:
            pid = int(wait_for_file(pause / "reached", proc=proc))
            repo = s3repo.S3Repository(s3_tiny)
            orphan = [o["rel"] for o in repo.list("forced_source/") if f"-{pid}-" in o["rel"]]
            assert len(orphan) == 1, orphan
            claims = {r: json.loads(repo.get(r)) for r in (o["rel"] for o in repo.list("runs/claims/"))}
            held = [r for r, body in claims.items() if body["pid"] == pid]
            assert len(held) == 1, claims
            os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    killed = orphan[0].split("/")[1:4]  # tract=T patch=P band=B
    killed_did = " ".join(killed)
    records = _records(s3_tiny)
    assert all(r.endswith("/g00000001.json") for r in records), records  # never a second commit
    named = {json.loads(repo.get(r))["file"] for r in records}
    assert orphan[0] not in named and orphan[0] in {o["rel"] for o in repo.list("forced_source/")}
    if allowed_failures is None:
        assert proc.returncode == 0, err
        assert "4 quanta measured" in out and "FAILED" not in err, f"{out}\n{err}"
        assert len(records) == 4 and repo.list("runs/claims/") == []
        _assert_equals_serial(s3_tiny, measured_tiny_repo)  # the orphan would add rows if it were read
    else:
        assert proc.returncode == 1, err
        failed = {ln.split(": ")[0].removeprefix("FAILED "): ln for ln in err.splitlines() if ln.startswith("FAILED")}
        why = f"killed {killed_did}\n{out}\n{err}"
        assert killed_did in failed, why
        assert all(ln.startswith(f"FAILED {did}: worker died: KilledWorker") for did, ln in failed.items()), why
        assert len(records) + len(failed) == 4 and f"{len(records)} quanta measured" in out, why
        assert not any(f"/{'/'.join(killed)}/" in r for r in records)
        from forcedphot.query import sql

        ledger = {f"tract={r['tract']} patch={r['patch']} band={r['band']}": r["status"]
                  for r in sql(s3_tiny, "SELECT tract, patch, band, status FROM quanta").to_pylist()}
        assert {did: ledger[did] for did in failed} == {did: "failed" for did in failed}
    # the next run (serial, this host): the dead claim is taken over, the orphan swept, everything committed once
    again = s3repo.run_all(s3_tiny, ForcedPhotConfig(), bands=[BAND])
    assert again.ok, again.failed
    assert orphan[0] not in {o["rel"] for o in repo.list("forced_source/")}
    records = _records(s3_tiny)
    assert len(records) == 4 and all(r.endswith("/g00000001.json") for r in records), records
    assert repo.list("runs/claims/") == []
    _assert_equals_serial(s3_tiny, measured_tiny_repo)


def test_the_claim_of_an_unreaped_dead_worker_is_dead():
    """A SIGKILLed worker stays a zombie until its nanny reaps it: /proc still has its pid and start time;
    its claim must count as dead (the retry may come first). A live process's claim stays alive."""
    import socket
    import time

    from forcedphot.io.atomic import process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        body = {"host": socket.gethostname(), "pid": child.pid, "process_start": process_start(child.pid),
                "time": time.time()}
        assert s3repo._claimer_alive(body)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not s3repo._zombie(child.pid):  # not reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process_start(child.pid) == body["process_start"]  # what the pid check alone would see: alive
        assert not s3repo._claimer_alive(body)
    finally:
        child.kill()
        child.wait()
    assert not s3repo._claimer_alive(body)  # reaped: gone
