"""Unattended runs: kills at random points, concurrent runs, Ctrl-C and a killed parent (subprocesses)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.io.parquet import read_provenance
from forcedphot.repository import DataId, Repository

FORCED = "forced_source/tract=*/patch=*/band=*/forced_source.parquet"


def _run_cmd(repo: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "forcedphot", "run", "--repo", str(repo), "-q", *extra]


def _popen(repo: Path, *extra: str) -> subprocess.Popen:
    # own session: a signal to its process group is what a terminal's Ctrl-C sends
    return subprocess.Popen(_run_cmd(repo, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


# A fork server for the kill test: a fresh interpreter that imports forcedphot (no kernel run, so no
# thread yet) and forks one child per `forcedphot run` (cli.main, as the console script calls it), so
# ten killed runs do not each pay the seconds of imports. Lines in: "run ARGV-JSON" -> child pid;
# "wait PID" -> its exit code (negative: killed by that signal).
FORK_SERVER = r"""
import json, os, sys
import forcedphot.cli, forcedphot.runner, forcedphot.task
for line in sys.stdin:
    cmd, arg = line.split(" ", 1)
    if cmd == "run":
        argv = json.loads(arg)
        pid = os.fork()
        if pid == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            sys.argv = ["forcedphot", *argv]
            os._exit(forcedphot.cli.main(argv))
        print(pid, flush=True)
    else:
        _, status = os.waitpid(int(arg), 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
"""


class ForkServer:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def _ask(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def run(self, argv: list[str]) -> int:
        return self._ask("run " + json.dumps(argv))

    def wait(self, pid: int) -> int:
        return self._ask(f"wait {pid}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _descendants(pid: int) -> set[int]:
    """Live (not zombie) processes below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pids) -> set[int]:
    out = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            out.add(pid)
    return out


def _wait_for_records(repo: Path, n: int, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while _n_records(repo) < n:
        assert time.monotonic() - t0 < timeout, "no quantum recorded in time"
        time.sleep(0.05)


def _assert_no_partial_outputs(repo: Path) -> None:
    """Every file under a final name is whole: a readable Parquet file matching its provenance."""
    for path in repo.glob(FORCED):
        prov = read_provenance(path)
        assert prov is not None, path
        assert pq.ParquetFile(path).metadata.num_rows == prov["n_rows"], path
    for path in repo.glob("runs/ledger/**/*.parquet"):
        assert pq.ParquetFile(path).metadata.num_rows == 1, path


def _n_records(repo: Path) -> int:
    return len(list((repo / "runs" / "ledger" / "quanta").glob("*/*.parquet")))


@pytest.fixture
def measured_copy(measured_tiny_repo, tmp_path) -> Path:
    dst = tmp_path / "measured"
    shutil.copytree(measured_tiny_repo, dst)
    return dst


def test_runs_killed_at_random_points_rerun_to_identical_outputs(tiny_repo, measured_tiny_repo):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kills = []
    server = ForkServer()
    try:
        for _ in range(10):
            # a random point: after 0-3 more quanta were decided (for 0: at a random time of the start), then
            # up to 0.3 s further into planning, fingerprinting, measuring, writing or recording
            before, more = _n_records(tiny_repo), rng.randint(0, 3)
            t0 = time.monotonic()
            pid = server.run(["run", "--repo", str(tiny_repo), "-q"])
            limit = t0 + (rng.uniform(0.05, 1.0) if more == 0 else 60.0)
            while (time.monotonic() < limit and (more == 0 or _n_records(tiny_repo) < before + more)
                   and _alive([pid])):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(pid, signal.SIGKILL)
            kills.append((more, round(time.monotonic() - t0, 2), server.wait(pid)))
            _assert_no_partial_outputs(tiny_repo)
    finally:
        server.close()
    assert sum(rc == -signal.SIGKILL for *_, rc in kills) >= 8, (seed, kills)
    done = subprocess.run(_run_cmd(tiny_repo), capture_output=True, text=True)
    assert done.returncode == 0, (seed, kills, done.stderr)
    want = sorted(p.relative_to(measured_tiny_repo) for p in measured_tiny_repo.glob(FORCED))
    got = sorted(p.relative_to(tiny_repo) for p in tiny_repo.glob(FORCED))
    assert got == want and len(want) == 16
    for rel in want:
        assert (tiny_repo / rel).read_bytes() == (measured_tiny_repo / rel).read_bytes(), (seed, kills, rel)
    # no temporary file survives the final run (the killed writers' are swept), and the ledger reads whole
    leftovers = [p for p in tiny_repo.rglob(".*") if p.name.endswith((".tmp", ".tmpdir"))]
    assert not leftovers, leftovers
    runs = query.sql(Repository(tiny_repo), "SELECT outcome, count(*) AS n FROM runs GROUP BY outcome").to_pydict()
    outcomes = dict(zip(runs["outcome"], runs["n"]))
    assert outcomes.get("ok") == 1 + sum(rc == 0 for *_, rc in kills), (seed, kills, outcomes)
    assert outcomes.get("unfinished", 0) <= sum(rc == -signal.SIGKILL for *_, rc in kills)


def test_two_concurrent_runs_never_measure_a_quantum_twice(tiny_repo):
    bands = ("--band", "g,r")  # 8 quanta; both runs walk them in the same order, so they contend throughout
    first, second = _popen(tiny_repo, *bands), _popen(tiny_repo, *bands)
    for proc in (first, second):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err  # a quantum left to the other run is not a failure
    q = query.sql(Repository(tiny_repo), "SELECT run_id, tract, patch, band, status FROM quanta").to_pylist()
    done = [(r["tract"], r["patch"], r["band"]) for r in q if r["status"] == "done"]
    assert len(done) == len(set(done)) == 8  # each quantum measured exactly once, by one of the two runs
    statuses = [r["status"] for r in q]
    assert set(statuses) <= {"done", "up-to-date", "running-elsewhere"}
    assert "running-elsewhere" in statuses or len({r["run_id"] for r in q if r["status"] == "done"}) == 2, \
        "the runs did not overlap"
    by_run = {}
    for r in q:
        by_run.setdefault(r["run_id"], []).append(r["status"])
    assert len(by_run) == 2 and all(len(v) == 8 for v in by_run.values())  # each run decided every quantum


def test_wait_waits_for_a_quantum_another_run_holds(tiny_repo):
    import threading

    from filelock import FileLock

    from forcedphot.runner import run_all

    repo = Repository(tiny_repo)
    lock = repo.lock_path(DataId(0, 0, "g"))
    lock.parent.mkdir(parents=True, exist_ok=True)
    result = {}
    with FileLock(str(lock)):  # "another run" is measuring the quantum
        waiter = threading.Thread(target=lambda: result.update(s=run_all(repo, bands=["g"], patches=[0], wait=True,
                                                                         progress=False)))
        waiter.start()
        waiter.join(timeout=1.5)
        assert waiter.is_alive() and not repo.forced_source_path(DataId(0, 0, "g")).exists()
    waiter.join(timeout=60)
    summary = result["s"]
    assert summary.ok and not summary.elsewhere and [d for d, _, _ in summary.done] == ["tract=0 patch=0 band=g"]


def test_ctrl_c_stops_a_pooled_run_within_2_s_leaving_no_worker(measured_copy):
    for _ in range(3):  # a run that ended before the signal was sent proves nothing: start another
        before = _n_records(measured_copy)
        proc = _popen(measured_copy, "--jobs", "2", "--force")
        _wait_for_records(measured_copy, before + 1)  # the workers are measuring
        workers = _descendants(proc.pid)
        assert len(workers) >= 1  # --jobs 2: the run's process measures too, beside one worker
        t0 = time.monotonic()
        if proc.poll() is None:
            break
        proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = proc.communicate(timeout=10)
    seconds = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert seconds < 2.0, seconds
    time.sleep(0.2)
    assert not _alive(workers), "workers left running"
    assert "interrupted" in err
    _assert_no_partial_outputs(measured_copy)
    runs = query.sql(Repository(measured_copy), "SELECT outcome, exit_code FROM runs ORDER BY started").to_pylist()
    assert runs[-1] == {"outcome": "interrupted", "exit_code": 130}


def test_killing_the_parent_leaves_no_orphan_worker(measured_copy):
    before = _n_records(measured_copy)
    proc = _popen(measured_copy, "--jobs", "2", "--force")
    _wait_for_records(measured_copy, before + 1)
    workers = _descendants(proc.pid)
    assert len(workers) >= 1  # the pool's worker (and, when it was spawned, multiprocessing's resource tracker)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only
    proc.communicate()
    t0 = time.monotonic()
    while _alive(workers) and time.monotonic() - t0 < 3.0:
        time.sleep(0.05)
    assert not _alive(workers), "orphan workers"
    # no orphan holds a lock: the next run decides every quantum itself (none left to a "live" holder)
    from forcedphot.runner import run_all

    rerun = run_all(Repository(measured_copy), progress=False)
    assert rerun.ok and not rerun.elsewhere and len(rerun.done) + len(rerun.skipped) == 16


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_ctrl_c_swallowed_by_a_destructor_still_stops_the_run():
    """Python ignores an exception raised in ``__del__`` (a lock released as the signal lands): the
    run's handler records the signal, and the run raises it again at its next step."""
    from forcedphot.runner import _Interrupts

    class ReleasedAsCtrlCArrives:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here, inside the destructor

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupts = _Interrupts().install()
        try:
            ReleasedAsCtrlCArrives()  # collected at once: its KeyboardInterrupt is swallowed
            time.sleep(0.01)
            with pytest.raises(KeyboardInterrupt):
                interrupts.check()
        finally:
            interrupts.restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_unreachable_dask_scheduler_fails_the_run_before_it_is_recorded(tiny_repo):
    import dask

    from forcedphot.errors import ForcedPhotError
    from forcedphot.runner import run_all

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ForcedPhotError, match=r"could not connect to the Dask scheduler tcp://127\.0\.0\.1:1"):
            run_all(Repository(tiny_repo), dask="tcp://127.0.0.1:1", progress=False)
    assert not list((Path(tiny_repo) / "runs" / "ledger").glob("run_start/*.parquet"))
    assert not list(Path(tiny_repo).glob("forced_source/**/*.parquet"))
