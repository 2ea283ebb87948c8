"""The run ledger: what a run records, the runs/quanta views, status --history, killed runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from forcedphot import __version__, ledger, query
from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import ForcedPhotError
from forcedphot.io.parquet import read_provenance
from forcedphot.provenance import file_digest
from forcedphot.repository import DataId, Repository
from forcedphot.runner import read_last_run, run_all


@pytest.fixture
def measured_copy(measured_tiny_repo, tmp_path):
    dst = tmp_path / "measured"
    shutil.copytree(measured_tiny_repo, dst)
    return dst


def test_views_exist_and_are_empty_before_any_run(tiny_repo):
    repo = Repository(tiny_repo)
    assert query.sql(repo, "SELECT count(*) AS n FROM runs").column("n")[0].as_py() == 0
    cols = query.sql(repo, "SELECT * FROM quanta").column_names
    assert {"run_id", "status", "seconds", "n_rows", "inputs", "output_checksum", "error"} <= set(cols)


def test_a_run_records_its_config_command_and_every_quantum(measured_copy):
    repo = Repository(measured_copy)
    config = ForcedPhotConfig(aperture_radii=[3.0, 6.0])
    summary = run_all(repo, config, bands=["r"], progress=False, command=["forcedphot", "run", "--band", "r"])
    (run,) = query.sql(repo, f"SELECT * FROM runs WHERE run_id = '{summary.run_id}'").to_pylist()
    assert run["outcome"] == "ok" and run["exit_code"] == 0 and run["n_done"] == 4 and run["n_failed"] == 0
    assert run["config_fingerprint"] == config.fingerprint() and json.loads(run["config"]) == json.loads(json.dumps(config.to_dict()))
    assert run["command"] == "forcedphot run --band r" and run["code_version"] == __version__
    assert run["finished"] >= run["started"]
    rows = query.sql(repo, f"SELECT * FROM quanta WHERE run_id = '{summary.run_id}' ORDER BY patch").to_pylist()
    assert [(r["patch"], r["band"], r["status"]) for r in rows] == [(p, "r", "done") for p in range(4)]
    for r in rows:
        out = repo.forced_source_path(DataId(r["tract"], r["patch"], r["band"]))
        assert r["output_checksum"] == file_digest(out)
        assert json.loads(r["inputs"]) == read_provenance(out)["inputs"]
        assert r["n_rows"] == read_provenance(out)["n_rows"] and r["seconds"] > 0
        assert "total" in json.loads(r["timings"]) and r["error"] is None
    # runs/last_run.json is still written for its readers
    assert read_last_run(repo)["run_id"] == summary.run_id


def test_failures_and_missing_inputs_are_recorded_with_their_cause(measured_copy):
    repo = Repository(measured_copy)
    repo.coadd_path(DataId(0, 2, "i")).unlink()
    summary = run_all(repo, bands=["i"], progress=False)
    rows = query.sql(repo, f"SELECT patch, status, error FROM quanta WHERE run_id = '{summary.run_id}' "
                           "ORDER BY patch").to_pylist()
    assert [r["status"] for r in rows] == ["up-to-date", "up-to-date", "missing-inputs", "up-to-date"]
    assert "missing inputs: coadd" in rows[2]["error"]
    (run,) = query.sql(repo, "SELECT outcome, exit_code, n_failed FROM runs "
                             f"WHERE run_id = '{summary.run_id}'").to_pylist()
    assert run == {"outcome": "failed", "exit_code": 1, "n_failed": 1}


def test_status_history_shows_runs_and_a_killed_one(measured_copy, capsys):
    repo = Repository(measured_copy)
    run_all(repo, bands=["g"], progress=False)
    # a run whose process has gone without an end record: what a SIGKILL leaves
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = "20000101T000000.000000Z-elsewhere-1-abcdef"
    ledger.record_start(measured_copy, dead, command=["forcedphot", "run"], config=ForcedPhotConfig())
    start = measured_copy / "runs" / "ledger" / "run_start" / f"{dead}.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(start)
    t = t.set_column(t.schema.get_field_index("pid"), "pid", pa.array([int(proc.stdout)], pa.int64()))
    pq.write_table(t, start)
    assert main(["status", "--repo", str(measured_copy), "--history"]) == 0
    out = capsys.readouterr().out
    assert "last 3 run(s)" in out and "killed" in out and " ok " in out  # with the fixture's run
    assert main(["status", "--repo", str(measured_copy), "--history", "1"]) == 0
    assert "last 1 run(s)" in capsys.readouterr().out


def _runs(repo) -> list[dict]:
    return query.sql(Repository(repo), "SELECT run_id, outcome, exit_code FROM runs ORDER BY started").to_pylist()


def test_run_all_records_how_it_ended_for_a_library_caller(measured_copy, monkeypatch):
    """Interrupted while planning: start and end recorded together; an unexpected error once started:
    error/1; bad input before the start: nothing (the CLI's subprocess tests: tests/test_interrupts.py)."""
    import forcedphot.runner as runner

    before = len(_runs(measured_copy))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner, "plan_quanta", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_all(Repository(measured_copy), progress=False)
    runs = _runs(measured_copy)
    assert len(runs) == before + 1 and (runs[-1]["outcome"], runs[-1]["exit_code"]) == ("interrupted", 130)
    last = read_last_run(Repository(measured_copy))
    assert (last["run_id"], last["outcome"], last["exit_code"]) == (runs[-1]["run_id"], "interrupted", 130)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    with monkeypatch.context() as m:
        m.setattr(runner, "remove_vanished_outputs", broken)
        with pytest.raises(RuntimeError, match="a bug"):
            run_all(Repository(measured_copy), progress=False)
    assert [(r["outcome"], r["exit_code"]) for r in _runs(measured_copy)[-1:]] == [("error", 1)]

    with pytest.raises(ForcedPhotError):
        run_all(Repository(measured_copy), bands=["x"], progress=False)
    assert len(_runs(measured_copy)) == before + 2
