"""Atomic repository writers: simulate swaps a complete repository in; run drops vanished quanta and sweeps."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.errors import InputError
from forcedphot.io.atomic import temp_path_for, writer_token
from forcedphot.repository import DataId, Repository
from forcedphot.sim import load_recipe, simulate

SMALL = dict(n_patch_x=1, n_patch_y=1, bands=["g"], ref_band="g", n_stars=20, n_galaxies=5, n_close_pairs=0)


def _dead_writer_name(path, kind="tmp"):
    """A temporary name of ``path`` whose writer (a process that has exited) is gone."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(proc.stdout)
    live = temp_path_for(path, kind).name
    return path.with_name(live.replace(f"-{writer_token().split('-')[-2]}-", f"-{pid}-", 1))


def test_a_killed_simulate_leaves_no_repository(tmp_path):
    target = tmp_path / "new"
    proc = subprocess.Popen([sys.executable, "-m", "forcedphot", "simulate", "--recipe", "tiny", "--repo",
                             str(target), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not list(tmp_path.glob(".new.w-*.tmpdir/skymap/skymap.parquet")):  # the survey is being written
        assert proc.poll() is None and time.monotonic() - t0 < 60, proc.stderr.read()
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not target.exists()
    assert main(["status", "--repo", str(target)]) == 2
    (leftover,) = tmp_path.glob(".new.w-*.tmpdir")
    simulate(load_recipe("tiny", **SMALL), target, progress=False)  # sweeps the killed writer's folder
    assert not leftover.exists()
    assert Repository(target).exists() and [p.name for p in tmp_path.iterdir()] == ["new"]


def test_overwrite_leaves_nothing_of_the_old_repository(measured_tiny_repo, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    # what `simulate --overwrite` calls, with a smaller survey (one patch, one band) than the old one
    simulate(load_recipe("tiny", **SMALL), root, progress=False)
    assert not (root / "forced_source").exists() and not (root / "runs").exists()
    patches = query.sql(Repository(root), "SELECT DISTINCT patch, band FROM forced_source").num_rows
    refs = query.sql(Repository(root), "SELECT DISTINCT patch FROM ref").to_pydict()["patch"]
    assert patches == 0 and refs == [0]
    assert sorted(p.name for p in (root / "coadd" / "tract=0").iterdir()) == ["patch=0"]


def test_simulate_refuses_a_folder_that_is_not_a_repository(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an empty folder or a forcedphot repository"):
        simulate(load_recipe("tiny", **SMALL), tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_run_removes_outputs_of_quanta_that_no_longer_exist(measured_tiny_repo, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    repo = Repository(root)
    for p in range(4):  # band z removed from the repository
        shutil.rmtree(repo.coadd_path(DataId(0, p, "z")).parent)
        shutil.rmtree(repo.footprints_path(DataId(0, p, "z")).parent)
    assert main(["run", "--repo", str(root), "-q"]) == 0
    captured = capsys.readouterr()
    assert "removed the outputs of 4 quanta that no longer exist" in captured.err
    assert "band=z" in captured.err and "12 up to date" in captured.out
    assert not list(root.glob("forced_source/*/*/band=z/*.parquet"))
    assert query.sql(repo, "SELECT DISTINCT band FROM forced_source ORDER BY band").to_pydict()["band"] == ["g", "i", "r"]


def test_run_sweeps_temporary_files_of_dead_writers_only(measured_tiny_repo, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    out = Repository(root).forced_source_path(DataId(0, 0, "g"))
    dead = _dead_writer_name(out)
    live = temp_path_for(out)  # this process: alive
    other_host = out.with_name(f".{out.name}.w-elsewhere.example-1-1-0123abcd.tmp")
    for p in (dead, live, other_host):
        p.write_bytes(b"PAR1 partial")
    dead_dir = _dead_writer_name(root / "runs" / "ledger", "tmpdir")
    dead_dir.mkdir(parents=True)
    assert main(["run", "--repo", str(root), "-q", "--band", "g"]) == 0
    assert not dead.exists() and not dead_dir.exists()
    assert live.exists() and other_host.exists()
    assert pq.read_table(out).num_rows > 0  # the final file is untouched
