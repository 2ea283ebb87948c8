"""Every interrupt is one line and exit 130, and a run's ledger record says so (subprocesses).

The signal is sent at a known moment, not after a guessed sleep: a ``sitecustomize`` module put on the
command's PYTHONPATH (``SITE`` below, standard library only) pauses the command at a named point -
while a module is imported, or before or after a function runs - and writes a marker file; the test
waits for the marker, then signals. For a DuckDB query it watches instead: the marker is written
once the main thread has stayed for half a second in one call that released the GIL (the query).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forcedphot import query
from forcedphot.repository import Repository

SITE = r'''
import importlib.abc, importlib.util, os, sys, threading, time

MARKER = os.environ["FP_TEST_MARKER"]


def reached():
    with open(MARKER, "w") as f:
        f.write("reached")


def pause():  # the test's signal raises here, as it would in the code paused at this point
    reached()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)


def wrap(fn, when):
    def paused(*args, **kwargs):
        if when == "before":
            pause()
        result = fn(*args, **kwargs)
        if when == "after":
            pause()
        return result
    return paused


class PauseAt(importlib.abc.MetaPathFinder):
    """FP_TEST_PAUSE=MODULE:ATTR:before|after wraps MODULE.ATTR (ATTR may be Class.method) once MODULE
    is imported; FP_TEST_PAUSE=MODULE::import pauses as MODULE starts to be imported."""

    def __init__(self, spec):
        self.module, self.attr, self.when = spec.split(":")

    def find_spec(self, name, path, target=None):
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        if self.when == "import":
            pause()
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            *owner_path, last = self.attr.split(".")
            owner = module
            for part in owner_path:
                owner = getattr(owner, part)
            setattr(owner, last, wrap(getattr(owner, last), self.when))

        spec.loader.exec_module = exec_and_wrap
        return spec


def watch_main_thread():
    """The marker once the main thread has stayed 0.5 s in one call while this thread ran: a long call
    that released the GIL (imports and Python code move on far sooner)."""
    main = threading.main_thread().ident
    last, since = None, time.monotonic()
    while True:
        frame = sys._current_frames().get(main)
        here = (id(frame), frame.f_lasti) if frame is not None else None
        if here != last:
            last, since = here, time.monotonic()
        elif time.monotonic() - since > 0.5:
            reached()
            return
        time.sleep(0.02)


if os.environ.get("FP_TEST_PAUSE"):
    sys.meta_path.insert(0, PauseAt(os.environ["FP_TEST_PAUSE"]))
if os.environ.get("FP_TEST_WATCH"):
    threading.Thread(target=watch_main_thread, daemon=True).start()
'''

RUN_LINE = "forcedphot: interrupted; completed quanta are kept, partial outputs were not written"
LONG_QUERY = "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b"  # ~10^12 pairs: hours


@pytest.fixture
def measured_copy(measured_tiny_repo, tmp_path) -> Path:
    dst = tmp_path / "measured"
    shutil.copytree(measured_tiny_repo, dst)
    return dst


def _start(tmp_path: Path, args: list[str], *, pause: str | None = None, watch: bool = False,
           command: list[str] | None = None) -> tuple[subprocess.Popen, Path]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    marker = tmp_path / "reached"
    marker.unlink(missing_ok=True)
    env = dict(os.environ, FP_TEST_MARKER=str(marker),
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    env.pop("FP_TEST_PAUSE", None)
    env.pop("FP_TEST_WATCH", None)
    if pause:
        env["FP_TEST_PAUSE"] = pause
    if watch:
        env["FP_TEST_WATCH"] = "1"
    # its own session: a signal to its process group is what a terminal's Ctrl-C sends
    proc = subprocess.Popen((command or [sys.executable, "-m", "forcedphot"]) + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    return proc, marker


def _wait_reached(proc: subprocess.Popen, marker: Path) -> None:
    t0 = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the command ended (exit {proc.returncode}) before the point was reached:\n{err}")
        assert time.monotonic() - t0 < 120, "the point was not reached in 120 s"
        time.sleep(0.02)


def _signal(proc: subprocess.Popen, sig: int) -> tuple[str, str]:
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the whole process group
    else:
        os.kill(proc.pid, sig)  # systemd's stop, a scheduler's kill
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _signal_when_reached(proc: subprocess.Popen, marker: Path, sig: int) -> tuple[str, str]:
    _wait_reached(proc, marker)
    return _signal(proc, sig)


def _assert_one_line(proc, err: str, line: str) -> None:
    assert proc.returncode == 130, err
    assert err.splitlines() == [line], err


def _runs(repo: Path) -> list[dict]:
    return query.sql(Repository(repo), "SELECT run_id, outcome, exit_code FROM runs ORDER BY started").to_pylist()


def _assert_run_recorded_interrupted(repo: Path, runs_before: int) -> None:
    runs = _runs(repo)
    assert len(runs) == runs_before + 1, runs  # the interrupted run, recorded
    assert {k: runs[-1][k] for k in ("outcome", "exit_code")} == {"outcome": "interrupted", "exit_code": 130}
    last = json.loads((repo / "runs" / "last_run.json").read_text())
    assert (last["run_id"], last["outcome"], last["exit_code"]) == (runs[-1]["run_id"], "interrupted", 130)


def _n_runs(repo: Path) -> int:
    return len(list((repo / "runs" / "ledger" / "run_start").glob("*.parquet")))


# -- any command -----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["forcedphot.cli", "duckdb"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_while_the_command_imports_is_one_line_and_130(tiny_repo, tmp_path, module, sig):
    """forcedphot.cli: the command line itself is loading; duckdb: a library the command needs (`SELECT 1` imports
    no polars)."""
    proc, marker = _start(tmp_path, ["sql", "--repo", str(tiny_repo), "SELECT 1"], pause=f"{module}::import")
    _, err = _signal_when_reached(proc, marker, sig)
    _assert_one_line(proc, err, "forcedphot: interrupted")


def test_the_console_script_catches_an_interrupt_while_it_imports(tmp_path):
    script = Path(sys.executable).with_name("forcedphot")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (not installed with pip)")
    proc, marker = _start(tmp_path, ["--help"], pause="forcedphot.cli::import", command=[str(script)])
    _, err = _signal_when_reached(proc, marker, signal.SIGTERM)
    _assert_one_line(proc, err, "forcedphot: interrupted")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_during_a_long_duckdb_query_is_one_line_and_130(tiny_repo, tmp_path, sig):
    """DuckDB turns the interrupt into its own "Query interrupted" error: still an interrupt."""
    proc, marker = _start(tmp_path, ["sql", "--repo", str(tiny_repo), LONG_QUERY], watch=True)
    _, err = _signal_when_reached(proc, marker, sig)
    _assert_one_line(proc, err, "forcedphot: interrupted")


def test_an_interrupt_right_at_exit_is_one_line_and_130(tiny_repo, tmp_path):
    """After the command has printed its result, before the process ends."""
    proc, marker = _start(tmp_path, ["sql", "--repo", str(tiny_repo), "SELECT 42 AS answer"],
                          pause="forcedphot.cli:cmd_sql:after")
    out, err = _signal_when_reached(proc, marker, signal.SIGTERM)
    _assert_one_line(proc, err, "forcedphot: interrupted")
    assert "42" in out  # what it printed before the signal is not lost


# -- run: the ledger records the interrupted run ---------------------------------------------------------
RUN_POINTS = {  # name: (pause, options, signal)
    "planning": ("forcedphot.runner:plan_quanta:before", [], signal.SIGTERM),
    "measuring": ("forcedphot.task:ForcedPhotCoaddTask.run_quantum:before", ["--force"], signal.SIGINT),
    "stopping the workers": ("forcedphot.runner:_InProcess.stop:before", [], signal.SIGTERM),
    "stopping the pool": ("forcedphot.runner:_Pool.stop:before", ["--jobs", "2"], signal.SIGINT),
    "band summary, Ctrl-C": ("forcedphot.runner:run_all:after", [], signal.SIGINT),
    "band summary, SIGTERM": ("forcedphot.runner:run_all:after", [], signal.SIGTERM),
    "exiting": ("forcedphot.cli:cmd_run:after", [], signal.SIGTERM),
}


@pytest.mark.parametrize("point", list(RUN_POINTS))
def test_an_interrupted_run_is_recorded_as_interrupted_130(measured_copy, tmp_path, point):
    pause, extra, sig = RUN_POINTS[point]
    before = _n_runs(measured_copy)
    proc, marker = _start(tmp_path, ["run", "--repo", str(measured_copy), "-q", *extra], pause=pause)
    _wait_reached(proc, marker)
    children = _children(proc.pid)
    assert children or "--jobs" not in extra  # the pool's worker, running
    _, err = _signal(proc, sig)
    _assert_one_line(proc, err, RUN_LINE)
    _assert_run_recorded_interrupted(measured_copy, before)
    t0 = time.monotonic()  # no worker outlives the run (they die with it)
    while _alive(children) and time.monotonic() - t0 < 3.0:
        time.sleep(0.05)
    assert not _alive(children), "workers left running"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _children(pid: int) -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (f := _stat_fields(int(p.name))) and int(f[1]) == pid}


def _alive(pids) -> set[int]:
    return {pid for pid in pids if (f := _stat_fields(pid)) and f[0] != "Z"}


def test_a_completed_run_is_recorded_with_its_exit_code(measured_copy, tmp_path):
    proc, _ = _start(tmp_path, ["run", "--repo", str(measured_copy), "-q"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    last = _runs(measured_copy)[-1]
    assert (last["outcome"], last["exit_code"]) == ("ok", 0)
    status = subprocess.run([sys.executable, "-m", "forcedphot", "status", "--repo", str(measured_copy)],
                            capture_output=True, text=True)
    assert "last run (ok, exit 0): 0 measured, 16 up to date, 0 failed" in status.stdout, status.stdout


# -- start-up: --help loads none of the heavy libraries ---------------------------------------------
HEAVY = {"astropy", "duckdb", "numba", "numpy", "photutils", "polars", "pyarrow", "pydantic", "scipy"}


def _imported(args: list[str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "forcedphot", *args], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", proc.stderr, flags=re.M)
    assert "forcedphot.cli" in names  # what this reads is -X importtime's list
    return {name.split(".")[0] for name in names}


def test_help_imports_no_heavy_library():
    assert not _imported(["--help"]) & HEAVY
    assert not _imported(["run", "--help"]) & HEAVY
    assert not _imported(["ingest", "fits", "--help"]) & HEAVY


def test_status_and_sql_import_no_measuring_library(measured_copy):
    """status plans (DuckDB) and reads provenance (pyarrow); sql queries: neither needs the measurement
    or ingest stack."""
    for args in (["status", "--repo", str(measured_copy)], ["sql", "--repo", str(measured_copy), "SELECT 1"]):
        assert not _imported(args) & {"astropy", "numba", "photutils", "scipy"}, args
