"""The built wheel works on its own: installed (not editable) into a fresh venv and run from another folder.

The venv reuses the dependencies already installed for the test interpreter through a ``.pth`` line
(a directory named in a ``.pth`` file is added to ``sys.path`` but its own ``.pth`` files, such as the
editable install's finder, are not run), so forcedphot itself can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "etl", "sql", "schemas", "datasets")
IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info")


def _run(cmd, *, cwd, env, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """(forcedphot executable, python executable, environment) of a fresh venv holding only the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    source = root / "source"  # a clean copy: an in-tree build would leave build/ (and stale files) in the project
    source.mkdir()
    for name in BUILD_INPUTS:
        if (PROJECT / name).is_dir():
            shutil.copytree(PROJECT / name, source / name, ignore=IGNORED)
        else:
            shutil.copy2(PROJECT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", source], cwd=root, env=env)
    [wheel] = (root / "dist").glob("forcedphot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("forcedphot/sql/views.sql", "forcedphot/sql/examples/star_pulls.sql",
                    "forcedphot/schemas/forced_source.yaml", "forcedphot/datasets/tiny.toml",
                    "forcedphot/schemas/migrations/forced_source.yaml",
                    "forcedphot/schemas/history/1.4.0/forced_source.yaml",
                    "forcedphot/datasets/real/hsc_npz_to_fits.py", "forcedphot/datasets/real/eso_vs_sextractor.sql",
                    "forcedphot/rubin/pipeline.yaml"):
        assert shipped in names, f"{wheel.name} lacks {shipped}"

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=root, env=env)
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=root, env=env).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv / "bin" / "forcedphot", python, env


def test_installed_wheel_runs_every_command_from_another_folder(wheel_venv, measured_tiny_repo, tmp_path):
    forcedphot, python, env = wheel_venv
    where = _run([python, "-c", "import forcedphot, forcedphot.resources as r; print(forcedphot.__file__); "
                  "print(r.SQL_DIR)"], cwd=tmp_path, env=env).stdout.split()
    assert all(not Path(p).is_relative_to(PROJECT) for p in where), where  # not the source tree
    assert all(Path(p).is_relative_to(python.parents[1]) for p in where), where  # the venv's copy

    sim = _run([forcedphot, "simulate", "--recipe", "tiny", "--repo", "sim", "-q"], cwd=tmp_path, env=env)
    assert "simulated recipe 'tiny'" in sim.stdout
    status = _run([forcedphot, "status", "--repo", "sim"], cwd=tmp_path, env=env)
    assert "quanta: " in status.stdout and "new" in status.stdout

    shutil.copytree(measured_tiny_repo, tmp_path / "measured")
    run = _run([forcedphot, "run", "--repo", "measured", "-q"], cwd=tmp_path, env=env)
    assert run.stdout.startswith("0 quanta measured (0 rows), ") and " 0 failed" in run.stdout
    assert "median_psf_snr" in run.stdout  # sql/band_summary.sql

    one = _run([forcedphot, "sql", "--repo", "measured", "--format", "json", "select 1 AS one"], cwd=tmp_path, env=env)
    assert json.loads(one.stdout) == {"one": 1}
    count = _run([forcedphot, "sql", "--repo", "measured", "--format", "csv",
                  "SELECT count(*) AS n FROM forced_source WHERE band = 'g'"], cwd=tmp_path, env=env)
    n_g = int(count.stdout.split()[1])
    assert n_g > 0
    depth = _run([forcedphot, "sql", "--repo", "measured", "--format", "json", "--example", "depth_5sigma"],
                 cwd=tmp_path, env=env)  # sql/examples/ ships too
    assert {json.loads(line)["band"] for line in depth.stdout.splitlines()} == {"g", "r", "i", "z"}

    loader = _run([python, "-c", "from forcedphot.query import load_forced_source; "
                   "print(load_forced_source('measured', band='g').height)"], cwd=tmp_path, env=env)
    assert int(loader.stdout) == n_g

    recipe = _run([python, "-m", "forcedphot.datasets.real.hsc_npz_to_fits", "--help"], cwd=tmp_path, env=env)
    assert "usage:" in recipe.stdout  # the real-data recipes' scripts ship too
