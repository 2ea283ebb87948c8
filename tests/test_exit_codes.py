"""Exit codes a scheduler can act on: 0 done or up to date, 1 failed quanta, 2 bad input or usage."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from forcedphot.cli import main
from forcedphot.repository import DataId, Repository


@pytest.fixture
def measured_copy(measured_tiny_repo, tmp_path):
    dst = tmp_path / "measured"
    shutil.copytree(measured_tiny_repo, dst)
    return dst


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forcedphot: error: "), err
    return err[0]


def test_up_to_date_is_0(measured_copy, capsys):
    assert main(["run", "--repo", str(measured_copy), "-q"]) == 0
    assert "0 quanta measured (0 rows), 16 up to date, 0 failed" in capsys.readouterr().out


def test_a_failed_quantum_is_1(measured_copy, capsys):
    coadd = Repository(measured_copy).coadd_path(DataId(0, 1, "g"))
    coadd.write_bytes(coadd.read_bytes()[:1000])  # truncated: stale and unreadable
    assert main(["run", "--repo", str(measured_copy), "-q"]) == 1
    captured = capsys.readouterr()
    assert "15 up to date, 1 failed" in captured.out
    assert "FAILED " in captured.err and "coadd/tract=0/patch=1/band=g/coadd.arrow" in captured.err


def test_a_selection_matching_no_quantum_is_2_naming_what_exists(measured_copy, capsys):
    assert main(["run", "--repo", str(measured_copy), "--band", "x"]) == 2
    line = _one_error_line(capsys)
    assert "--band x" in line and "bands g,i,r,z" in line
    assert main(["run", "--repo", str(measured_copy), "--patch", "7", "--band", "g"]) == 2
    assert "patches 0,1,2,3" in _one_error_line(capsys)


def test_jobs_0_is_a_usage_error(measured_copy, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--repo", str(measured_copy), "--jobs", "0"])
    assert info.value.code == 2
    assert "--jobs: expected a whole number >= 1, not '0'" in capsys.readouterr().err


def test_an_empty_sql_query_is_2(measured_copy, capsys):
    assert main(["sql", "--repo", str(measured_copy), "  "]) == 2
    assert "empty SQL query" in _one_error_line(capsys)


def test_a_malformed_manifest_is_2_naming_the_file(measured_copy, capsys):
    (measured_copy / "repository.json").write_text('{"format": 1')
    for cmd in (["run", "--repo", str(measured_copy)], ["status", "--repo", str(measured_copy)],
                ["sql", "--repo", str(measured_copy), "SELECT 1"]):
        assert main(cmd) == 2
        assert "repository.json: not a readable repository manifest" in _one_error_line(capsys)


def test_a_truncated_skymap_is_2_naming_the_file(measured_copy, capsys):
    skymap = Repository(measured_copy).skymap_path()
    skymap.write_bytes(skymap.read_bytes()[:300])
    for cmd in ("run", "status"):
        assert main([cmd, "--repo", str(measured_copy)]) == 2
        assert "skymap.parquet" in _one_error_line(capsys)


def test_verbose_after_the_command_logs_each_quantum(measured_copy):
    from forcedphot.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["run", "--repo", "r", "-v"]).verbose and parse(["-v", "run", "--repo", "r"]).verbose
    assert not parse(["run", "--repo", "r"]).verbose
    proc = subprocess.run([sys.executable, "-m", "forcedphot", "run", "--repo", str(measured_copy), "--band", "r",
                           "-v"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(line for line in proc.stderr.splitlines() if line.startswith("INFO forcedphot.runner"))
    assert lines == [f"INFO forcedphot.runner: tract=0 patch={p} band=r: up to date" for p in range(4)]


def test_no_progress_bar_off_a_terminal(measured_copy, capsys):
    assert main(["run", "--repo", str(measured_copy), "--force", "--band", "g"]) == 0
    assert "forced photometry" not in capsys.readouterr().err  # stderr is not a terminal here
