"""``forcedphot run --dask tcp://...`` against a scheduler and workers started as separate processes.

The cluster (:mod:`tests.dask_cluster`) is ``dask scheduler`` and two ``dask worker --nthreads 1``
processes on 127.0.0.1, each its own interpreter with its own environment (no ``AWS_*`` variable);
the client is ``forcedphot run`` in a subprocess (or ``run_all`` in this process where the test reads
what it sends). Every run measures band r of the tiny survey (4 quanta) and is compared value for value
with the serial run of ``measured_tiny_repo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from forcedphot.repository import Repository
from tests.dask_cluster import Cluster, free_port, record_frames, wait_for_file
from tests.tables import assert_same_values

pytestmark = pytest.mark.slow

BAND = "r"
RUN_LINE = "forcedphot: interrupted; completed quanta are kept, partial outputs were not written"
SECRET = "fp-test-secret-Zq8vT3kLw9"  # the client's AWS_SECRET_ACCESS_KEY: never in what it sends
RUN_TIMEOUT = 240  # seconds for one `forcedphot run` of 4 tiny quanta on a loaded 2-core machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two workers that serve every test of the module that leaves the cluster as it found it."""
    with Cluster(2) as c:
        c.start(tmp_path_factory.mktemp("dask-cluster"))
        yield c


def _forcedphot(args: list[str], *, env: dict | None = None, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forcedphot", *args], capture_output=True, text=True,
                          env=os.environ | (env or {}), timeout=timeout)


def _start_forcedphot(args: list[str]) -> subprocess.Popen:
    # its own session: a signal to its process group is what a terminal's Ctrl-C sends
    return subprocess.Popen([sys.executable, "-m", "forcedphot", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _outputs(root: Path) -> dict:
    repo = Repository(root)
    return {p.relative_to(root): p for p in sorted(repo.dataset_dir("forced_source").rglob(f"band={BAND}/*.parquet"))}


def _assert_equals_serial(root: Path, serial_root: Path) -> None:
    want = _outputs(serial_root)
    got = _outputs(root)
    assert len(want) == 4 and sorted(got) == sorted(want)
    for rel, path in want.items():
        assert_same_values(pq.read_table(got[rel]), pq.read_table(path), str(rel))


def _ledger_quanta(root: Path) -> list[dict]:
    rows = []
    for f in sorted((root / "runs" / "ledger" / "quanta").rglob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def _wait_idle(c: Cluster, timeout: float = 120) -> None:
    """Bounded: no task processing on any worker (a cancelled quantum that was running has finished)."""
    t0 = time.monotonic()
    with c.client() as client:
        while any(client.processing().values()):
            assert time.monotonic() - t0 < timeout, f"the cluster is still busy after {timeout} s"
            time.sleep(0.2)


def _wait_unlocked(root: Path, timeout: float = 120) -> None:
    """Bounded: no quantum lock of the repository is held. A client that left makes the scheduler forget
    its tasks at once, while the quantum a worker thread was running still holds its lock until it ends."""
    from filelock import FileLock, Timeout

    t0 = time.monotonic()
    for path in sorted((root / "runs" / "locks").glob("*.lock")):
        while True:
            try:
                with FileLock(str(path), timeout=0):
                    break
            except Timeout:
                assert time.monotonic() - t0 < timeout, f"{path.name} is still held after {timeout} s"
                time.sleep(0.2)


def test_a_cluster_run_equals_a_serial_run_and_runs_on_the_workers(cluster, tiny_repo, measured_tiny_repo):
    res = _forcedphot(["run", "--repo", str(tiny_repo), "--dask", cluster.address, "--band", BAND, "-q"])
    assert res.returncode == 0, res.stderr
    assert "4 quanta measured" in res.stdout
    _assert_equals_serial(tiny_repo, measured_tiny_repo)
    worker_pids = set(cluster.worker_pids().values())
    done = [r for r in _ledger_quanta(tiny_repo) if r["status"] == "done"]
    assert len(done) == 4 and {r["pid"] for r in done} <= worker_pids  # decided and written by the workers


def test_what_the_client_sends_carries_the_repo_as_a_string_and_no_credentials(cluster, tiny_repo,
                                                                                measured_tiny_repo, monkeypatch):
    """Every frame the client writes to the scheduler, read raw (compression off): the task names the
    repository by its path string; the client's secret key is nowhere, and the workers do not have it."""
    import dask
    from distributed.protocol import pickle as dask_pickle

    from forcedphot.runner import run_all

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fp-test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    sent = record_frames(monkeypatch)
    with dask.config.set({"distributed.comm.compression": None}):
        summary = run_all(Repository(tiny_repo), dask=cluster.address, bands=[BAND], progress=False)
    assert summary.ok and len(summary.done) == 4
    _assert_equals_serial(tiny_repo, measured_tiny_repo)
    wire = b"".join(sent)
    assert str(tiny_repo.resolve()).encode() in wire and b"_run_one" in wire  # the tasks were captured
    assert SECRET.encode() not in wire and b"S3FileSystem" not in wire
    # the check can fail: a filesystem object built from the client's credentials carries them
    from pyarrow.fs import S3FileSystem

    assert SECRET.encode() in dask_pickle.dumps(S3FileSystem(access_key="k", secret_key=SECRET))
    from forcedphot.runner import _Dask
    from forcedphot.threads import available_cores

    workers = _Dask(cluster.address, 1)  # threads per quantum: the workers' machine's, not the client's
    try:
        assert workers.threads_per_quantum() == max(1, available_cores() // 2)
    finally:
        workers.stop(interrupted=False)
    with cluster.client() as c:  # the workers' own environment has no credentials
        assert set(c.run(lambda: os.environ.get("AWS_SECRET_ACCESS_KEY")).values()) == {None}


@pytest.mark.parametrize("allowed_failures", [None, 0], ids=["retried", "reported-failed"])
def test_a_worker_killed_mid_write_leaves_no_partial_output(tiny_repo, measured_tiny_repo, tmp_path,
                                                            allowed_failures):
    """The first worker to write a forced_source file pauses with the file half written (row groups, no
    footer) under its temporary name and is SIGKILLed there. With the scheduler's default the quantum
    is retried on a worker and the run succeeds; with ``allowed-failures: 0`` the quantum is reported
    failed by name (exit 1, as for any failed quantum). No partial file is ever under a final name,
    and the next run sweeps the leftover temporary file."""
    pause = tmp_path / "pause"
    pause.mkdir()
    sched_env = {} if allowed_failures is None else {
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
    with Cluster(2, scheduler_env=sched_env, pause="forcedphot.io.parquet:_sha256_prefix:before",
                 pause_dir=pause, pause_match="forced_source") as c:
        c.start(tmp_path / "logs")
        proc = _start_forcedphot(["run", "--repo", str(tiny_repo), "--dask", c.address, "--band", BAND, "-q"])
        try:
            pid = int(wait_for_file(pause / "reached", proc=proc))
            partial = [p for p in tiny_repo.rglob(".forced_source.parquet.w-*.tmp") if f"-{pid}-" in p.name]
            assert len(partial) == 1 and partial[0].stat().st_size > 0
            final = partial[0].with_name("forced_source.parquet")
            assert not final.exists()
            os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        killed_did = " ".join(part for part in final.parent.relative_to(tiny_repo / "forced_source").parts)
        if allowed_failures is None:
            assert proc.returncode == 0, err
            assert "4 quanta measured" in out and "FAILED" not in err, f"{out}\n{err}"
            _assert_equals_serial(tiny_repo, measured_tiny_repo)
        else:
            assert proc.returncode == 1, err
            failed = {ln.split(": ")[0].removeprefix("FAILED "): ln for ln in err.splitlines() if ln.startswith("FAILED")}
            why = f"killed {killed_did}\n{out}\n{err}"
            # the killed quantum, and any other the scheduler had already handed to that worker (Dask charges
            # the death to every task the worker held), each named, the rest measured
            assert killed_did in failed, why
            assert all(ln.startswith(f"FAILED {did}: worker died: KilledWorker") for did, ln in failed.items()), why
            assert not final.exists()
            outputs = _outputs(tiny_repo)
            assert len(outputs) + len(failed) == 4 and f"{len(outputs)} quanta measured" in out, why
            for rel, path in outputs.items():  # the others are complete and right
                assert_same_values(pq.read_table(path), pq.read_table(measured_tiny_repo / rel), str(rel))
            ledger = {f"tract={r['tract']} patch={r['patch']} band={r['band']}": r["status"]
                      for r in _ledger_quanta(tiny_repo)}
            assert {did: ledger[did] for did in failed} == {did: "failed" for did in failed}
        assert partial[0].exists()  # left by the killed writer, hidden (never read), then swept:
        again = _forcedphot(["run", "--repo", str(tiny_repo), "--band", BAND, "-q"])
        assert again.returncode == 0, again.stderr
        assert not partial[0].exists()
        _assert_equals_serial(tiny_repo, measured_tiny_repo)


def test_ctrl_c_of_the_client_leaves_the_cluster_usable(tiny_repo, measured_tiny_repo, tmp_path):
    """Ctrl-C while a worker measures: the client ends with its one line and 130; the cluster keeps its
    workers (same PIDs) and a second run on the same scheduler measures every quantum."""
    pause = tmp_path / "pause"
    pause.mkdir()
    with Cluster(2, pause="forcedphot.task:ForcedPhotCoaddTask.run_quantum:before", pause_dir=pause) as c:
        c.start(tmp_path / "logs")
        pids = c.worker_pids()
        proc = _start_forcedphot(["run", "--repo", str(tiny_repo), "--dask", c.address, "--band", BAND, "-q"])
        try:
            wait_for_file(pause / "reached", proc=proc)
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        assert proc.returncode == 130, err
        assert err.splitlines() == [RUN_LINE], err
        (pause / "release").touch()  # the quantum running when the client left finishes (dask cannot stop it)
        _wait_idle(c)
        _wait_unlocked(tiny_repo)
        assert c.worker_pids() == pids
        again = _forcedphot(["run", "--repo", str(tiny_repo), "--dask", c.address, "--band", BAND, "-q"])
        assert again.returncode == 0, again.stderr
        assert "FAILED" not in again.stderr and "RUNNING ELSEWHERE" not in again.stderr
        _assert_equals_serial(tiny_repo, measured_tiny_repo)


def test_no_scheduler_is_one_line_and_exit_2(tiny_repo):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    res = _forcedphot(["run", "--repo", str(tiny_repo), "--dask", address, "-q"],
                      env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"forcedphot: error: could not connect to the Dask scheduler "
                                                   f"{address}"), res.stderr
    assert time.monotonic() - t0 < 60
    assert not list(tiny_repo.glob("forced_source/**/*.parquet"))
