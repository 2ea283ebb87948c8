"""Atomic repository writers: simulate writes a new repository whole, or only the changed inputs of an existing
one (its outputs and runs kept; nothing it did not write touched); run drops vanished quanta and sweeps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from forcedphot import query, repository_inputs
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


def _input_bytes(root):
    """Every input file of a repository (relative path -> bytes); outputs and run history left out."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in ("forced_source", "runs")}


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _runs(root):
    return query.sql(Repository(root), "SELECT run_id, n_done, n_up_to_date FROM runs ORDER BY started").to_pylist()


def test_simulate_into_a_repository_replaces_its_inputs_and_keeps_its_outputs(measured_tiny_repo, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    outputs = {p.relative_to(root): p.read_bytes() for p in (root / "forced_source").rglob("*.parquet")}
    # a smaller survey (one patch, one band) than the old one: its inputs, exactly; the outputs are kept
    simulate(load_recipe("tiny", **SMALL), root, progress=False)
    fresh = tmp_path / "fresh"
    simulate(load_recipe("tiny", **SMALL), fresh, progress=False)
    assert _input_bytes(root) == _input_bytes(fresh)
    assert sorted(p.name for p in (root / "coadd" / "tract=0").iterdir()) == ["patch=0"]  # no empty folder left
    assert {p.relative_to(root): p.read_bytes() for p in (root / "forced_source").rglob("*.parquet")} == outputs
    assert len(_runs(root)) == 1
    # the next run drops the outputs of the 15 quanta that are gone and re-measures the one whose inputs changed
    assert main(["run", "--repo", str(root), "-q"]) == 0
    out = capsys.readouterr()
    assert "removed the outputs of 15 quanta that no longer exist" in out.err
    assert "1 quanta measured" in out.out and "0 up to date" in out.out
    assert [p.relative_to(root).as_posix() for p in (root / "forced_source").rglob("*.parquet")] == [
        "forced_source/tract=0/patch=0/band=g/forced_source.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "repo"]  # no staging folder left


def test_simulating_the_same_survey_again_keeps_every_output_up_to_date(measured_tiny_repo, tmp_path, capsys):
    """A second `make demo`: the inputs are byte-identical, so nothing is replaced and no quantum re-measured."""
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    before = _tree(root)
    assert main(["simulate", "--recipe", "tiny", "--repo", str(root), "--overwrite", "-q"]) == 0
    assert "its 49 input files are unchanged: outputs and run history kept" in capsys.readouterr().out
    assert _tree(root) == before
    assert main(["run", "--repo", str(root), "-q"]) == 0
    assert "0 quanta measured (0 rows), 16 up to date" in capsys.readouterr().out
    runs = _runs(root)
    assert [(r["n_done"], r["n_up_to_date"]) for r in runs] == [(16, 0), (0, 16)]  # the first run is kept


def test_simulate_with_a_changed_recipe_remeasures_exactly_the_quanta_whose_inputs_changed(measured_tiny_repo,
                                                                                           tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    kept = {b: (root / f"forced_source/tract=0/patch=0/band={b}/forced_source.parquet").read_bytes() for b in "gz"}
    # another zero point in band z: its coadds and footprints change, and the deblender models' spectra
    # (not read by a heavy-footprint run); nothing else
    zero_point = {"g": 27.0, "r": 27.2, "i": 27.1, "z": 27.3}
    before = _input_bytes(root)
    simulate(load_recipe("tiny", zero_point=zero_point), root, progress=False)
    after = _input_bytes(root)
    assert sorted(before) == sorted(after)
    assert sorted(r for r in after if after[r] != before[r]) == sorted(
        [f"{d}/tract=0/patch={p}/band=z/{d}.{'arrow' if d == 'coadd' else 'parquet'}"
         for d in ("coadd", "footprints") for p in range(4)]
        + [f"scarlet_models/tract=0/patch={p}/sources.parquet" for p in range(4)])
    assert main(["status", "--repo", str(root)]) == 0
    assert "16 quanta: 4 stale, 12 up-to-date" in capsys.readouterr().out
    assert main(["run", "--repo", str(root), "-q"]) == 0
    assert "4 quanta measured" in capsys.readouterr().out
    assert (root / "forced_source/tract=0/patch=0/band=g/forced_source.parquet").read_bytes() == kept["g"]
    assert (root / "forced_source/tract=0/patch=0/band=z/forced_source.parquet").read_bytes() != kept["z"]
    # and another seed: every quantum changes
    assert main(["simulate", "--recipe", "tiny", "--seed", "8", "--repo", str(root), "--overwrite", "-q"]) == 0
    assert "0 removed" in capsys.readouterr().out
    assert main(["run", "--repo", str(root), "-q"]) == 0
    assert "16 quanta measured" in capsys.readouterr().out
    assert [(r["n_done"], r["n_up_to_date"]) for r in _runs(root)] == [(16, 0), (4, 12), (16, 0)]


def test_an_interrupted_update_is_refused_by_readers_until_simulate_completes_it(measured_tiny_repo, tmp_path,
                                                                                 monkeypatch, capsys):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    real_replace, moved = os.replace, []

    def dying_replace(src, dst):  # the process dies after 5 of the 48 files of another seed are in place
        if len(moved) == 6:
            raise KeyboardInterrupt
        moved.append(dst)
        real_replace(src, dst)

    real_apply = repository_inputs._apply

    def apply_then_die(*args):  # the staged survey is complete: die while it is moved into the repository
        monkeypatch.setattr(os, "replace", dying_replace)
        real_apply(*args)

    monkeypatch.setattr(repository_inputs, "_apply", apply_then_die)
    with pytest.raises(KeyboardInterrupt):
        simulate(load_recipe("tiny", seed=8), root, progress=False)
    monkeypatch.undo()
    assert len(moved) == 6  # the manifest's "updating" mark, then 5 inputs
    for argv in (["run", "--repo", str(root)], ["status", "--repo", str(root)],
                 ["sql", "--repo", str(root), "SELECT count(*) FROM ref"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "`forcedphot simulate` was interrupted" in err and "run it again" in err, err
    # a rerun completes the update: the inputs are those of the new seed, the outputs and history kept
    simulate(load_recipe("tiny", seed=8), root, progress=False)
    fresh = tmp_path / "fresh"
    simulate(load_recipe("tiny", seed=8), fresh, progress=False)
    assert _input_bytes(root) == _input_bytes(fresh)
    assert len(_runs(root)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "repo"]


@pytest.mark.parametrize("intruder", ["thesis.tex", "sub/repository.json", "coadd/notes.txt",
                                      "ref/tract=0/patch=0/my_ref.csv"])
def test_simulate_overwrite_refuses_a_repository_holding_what_forcedphot_did_not_write(
        measured_tiny_repo, tmp_path, capsys, intruder):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    (root / intruder).parent.mkdir(parents=True, exist_ok=True)
    (root / intruder).write_text("mine")
    before = _tree(root)
    assert main(["simulate", "--recipe", "tiny", "--seed", "8", "--repo", str(root), "--overwrite", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    shown = intruder.split("/")[0] if intruder.startswith(("thesis", "sub")) else intruder
    assert err == (f"forcedphot: error: {root}: holds {shown}, which forcedphot did not write; "
                   "refusing to overwrite it")
    assert _tree(root) == before and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_simulate_refuses_a_folder_that_is_not_a_repository(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an empty folder or a forcedphot repository"):
        simulate(load_recipe("tiny", **SMALL), tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("tex")
    (folder / "sub" / "data.csv").write_text("1,2")
    assert main(["simulate", "--recipe", "tiny", "--repo", str(folder), "--overwrite", "-q"]) == 2
    assert "not an empty folder or a forcedphot repository" in capsys.readouterr().err
    assert _tree(folder) == {"sub/data.csv": b"1,2", "thesis.tex": b"tex"}


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
