"""The whole job on a tiny survey: simulate -> plan -> run -> write -> query, reruns and failures."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import MissingFootprintError
from forcedphot.io.coadd import read_coadd, write_coadd
from forcedphot.io.parquet import read_provenance
from forcedphot.plan import plan_quanta
from forcedphot.repository import DataId, Repository
from forcedphot.runner import run_all
from forcedphot.schema import load_schema
from forcedphot.task import ForcedPhotCoaddTask
from tests.tables import assert_same_values


def test_cli_end_to_end_on_tiny_survey(tiny_repo, capsys):
    assert main(["run", "--repo", str(tiny_repo), "-q"]) == 0
    out = capsys.readouterr().out
    assert "16 quanta measured" in out and "0 failed" in out
    repo = Repository(tiny_repo)
    n_ref = query.sql(repo, "SELECT count(*) AS n FROM ref").column("n")[0].as_py()
    rows = query.sql(repo, "SELECT band, count(*) AS n FROM forced_source GROUP BY band ORDER BY band").to_pydict()
    assert rows["band"] == ["g", "i", "r", "z"] and rows["n"] == [n_ref] * 4
    # every reference keeps its id; ids unpack to the quantum's tract and patch
    t = query.sql(repo, "SELECT objectId, tract, patch, band FROM forced_source").to_pydict()
    task = ForcedPhotCoaddTask(repo)
    unpacked = task.make_id_factory(None).unpack(np.array(t["objectId"]))
    assert (unpacked["patch"] == np.array(t["patch"])).all()
    assert main(["sql", "--repo", str(tiny_repo), "SELECT count(*) AS n FROM forced_source", "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == ["n", str(4 * n_ref)]
    assert main(["status", "--repo", str(tiny_repo)]) == 0
    assert "16 up-to-date" in capsys.readouterr().out


def test_outputs_carry_schema_version_and_provenance(measured_tiny_repo):
    repo = Repository(measured_tiny_repo)
    path = repo.forced_source_path(DataId(0, 1, "r"))
    meta = pq.read_schema(path).metadata
    assert meta[b"forcedphot.schema_version"] == load_schema("forced_source").version.encode()
    prov = read_provenance(path)
    assert prov["config_fingerprint"] == ForcedPhotConfig().fingerprint()
    assert set(prov["inputs"]) == {"ref", "footprints", "coadd"}
    assert prov["data_id"] == {"tract": 0, "patch": 1, "band": "r"}
    assert not [p for p in repo.root.rglob("*.tmp")]


def test_rerun_skips_done_quanta_and_reruns_exactly_the_changed_ones(tiny_repo):
    repo = Repository(tiny_repo)
    first = run_all(repo, progress=False)
    assert len(first.done) == 16
    again = run_all(repo, progress=False)
    assert (len(again.done), len(again.skipped)) == (0, 16)
    # change one coadd's pixels: only that quantum is stale
    changed = DataId(0, 2, "i")
    coadd_path = repo.coadd_path(changed)
    coadd = read_coadd(coadd_path)
    coadd.image = coadd.image.copy()
    coadd.image[100, 100] += 1.0
    write_coadd(coadd, coadd_path)
    third = run_all(repo, progress=False)
    assert [d for d, _, _ in third.done] == [str(changed)] and len(third.skipped) == 15
    # a config change re-runs everything
    fourth = run_all(repo, ForcedPhotConfig(aperture_radii=(3.0, 6.0)), progress=False)
    assert len(fourth.done) == 16
    row = pq.read_table(repo.forced_source_path(changed), columns=["ap03Flux", "ap04p5Flux"])
    assert row.column("ap04p5Flux").null_count == row.num_rows and row.column("ap03Flux").null_count == 0


def test_missing_footprint_fails_only_that_quantum_listing_the_ids(tiny_repo, capsys):
    repo = Repository(tiny_repo)
    victim = DataId(0, 1, "g")
    path = repo.footprints_path(victim)
    t = pq.read_table(path)
    dropped = t.column("id").to_pylist()[:3]
    kept = t.filter(~np.isin(t.column("id").to_numpy(), dropped))
    pq.write_table(kept.replace_schema_metadata(t.schema.metadata), path)
    quantum = next(q for q in plan_quanta(repo) if q.data_id == victim)
    with pytest.raises(LookupError) as info:
        ForcedPhotCoaddTask(repo).run_quantum(quantum)
    assert isinstance(info.value, MissingFootprintError)
    assert all(str(i) in str(info.value) for i in dropped) and "tract=0 patch=1 band=g" in str(info.value)
    assert main(["run", "--repo", str(tiny_repo), "-q"]) == 1
    captured = capsys.readouterr()
    assert "15 quanta measured" in captured.out and "1 failed" in captured.out
    assert f"FAILED {victim}" in captured.err
    assert not repo.forced_source_path(victim).exists()


def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["run", "--repo", str(tmp_path / "nowhere"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a forcedphot repository" in err and "nowhere" in err
    assert main(["simulate", "--recipe", "no-such-recipe", "--repo", str(tmp_path / "r")]) == 2
    assert "no-such-recipe" in capsys.readouterr().err


def test_corrupt_coadd_fails_its_quantum_with_the_file_named(tiny_repo, capsys):
    repo = Repository(tiny_repo)
    bad = repo.coadd_path(DataId(0, 3, "z"))
    bad.write_bytes(b"not arrow")
    assert main(["run", "--repo", str(tiny_repo), "-q", "--band", "z"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("FAILED") == 1


def test_parallel_runs_give_identical_tables(tiny_repo, tmp_path):
    """Local processes and a Dask LocalCluster produce the same bytes-for-values output as a serial run."""
    import shutil

    serial = Repository(tiny_repo)
    assert run_all(serial, progress=False, bands=["r"]).ok
    want = {p.relative_to(serial.root): pq.read_table(p) for p in serial.dataset_dir("forced_source").rglob("*.parquet")}
    for kw in ({"jobs": 2}, {"jobs": 2, "dask": "local"}):
        other = tmp_path / f"copy-{len(kw)}"
        shutil.copytree(tiny_repo, other)
        shutil.rmtree(other / "forced_source")
        summary = run_all(Repository(other), progress=False, bands=["r"], **kw)
        assert summary.ok and len(summary.done) == 4
        assert not list((other / "runs" / "locks").glob("*.cores*"))  # the run's core share is gone with it
        for rel, table in want.items():
            assert_same_values(pq.read_table(other / rel), table, str(rel))


def test_a_locked_quantum_is_left_to_its_run(tiny_repo):
    from filelock import FileLock

    from forcedphot.errors import QuantumError

    repo = Repository(tiny_repo)
    quantum = plan_quanta(repo, bands=["g"], patches=[0])[0]
    lock = repo.lock_path(quantum.data_id)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        with pytest.raises(QuantumError, match="locked by another run"):
            ForcedPhotCoaddTask(repo).run_quantum(quantum)
        summary = run_all(repo, bands=["g"], patches=[0], progress=False)
        assert summary.ok and summary.elsewhere == [str(quantum.data_id)] and not summary.done
    summary = run_all(repo, bands=["g"], patches=[0], progress=False)
    assert summary.ok and [d for d, _, _ in summary.done] == [str(quantum.data_id)]


def test_an_empty_patch_gives_an_empty_table(tiny_repo):
    repo = Repository(tiny_repo)
    for dataset_path in [repo.ref_path(0, 2)] + [repo.footprints_path(DataId(0, 2, b)) for b in "griz"]:
        t = pq.read_table(dataset_path)
        pq.write_table(t.slice(0, 0), dataset_path)
    summary = run_all(repo, patches=[2], progress=False)
    assert summary.ok and [n for _, n, _ in summary.done] == [0, 0, 0, 0]
    out = pq.read_table(repo.forced_source_path(DataId(0, 2, "r")))
    assert out.num_rows == 0 and out.schema.names == load_schema("forced_source").names


def test_files_of_an_older_minor_schema_version_are_read(tiny_repo):
    """A ref file written before kron_radius and externalId existed (1.0.0) still runs: Kron is flagged
    for its cause (no reference radius), not as an edge."""
    repo = Repository(tiny_repo)
    path = repo.ref_path(0, 1)
    t = pq.read_table(path).drop_columns(["kron_radius", "externalId"])
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"forcedphot.schema_version": b"1.0.0"}), path)
    assert run_all(repo, patches=[1], bands=["r"], progress=False).ok
    out = pq.read_table(repo.forced_source_path(DataId(0, 1, "r")),
                        columns=["kronFlux_flag_noRefRadius", "kronFlux_flag_edge", "externalId", "psfFlux"])
    assert all(out.column("kronFlux_flag_noRefRadius").to_pylist())
    assert not any(out.column("kronFlux_flag_edge").to_pylist())
    assert out.column("externalId").null_count == out.num_rows and out.column("psfFlux").null_count == 0


def test_cmodel_on_the_simulated_survey(measured_tiny_repo):
    """simulate (reference models fitted on the reference band) + run: the ref columns are filled or flagged,
    cModelFlux is measured for nearly all primary rows (the rest flagged as bad reference: no usable fit
    region there), extendedness comes from CModel and classifies the simulator's truth (stars at S/N > 30
    point sources, galaxies of half-light radius >= 0.5" extended), and galaxies' cModelFlux follows their
    true flux (medians printed)."""
    from forcedphot.sim import load_recipe
    from forcedphot.sim.survey import make_sources
    from forcedphot.skymap import Box, TractInfo

    repo = Repository(measured_tiny_repo)
    recipe = load_recipe("tiny")
    tract = TractInfo(0, recipe.ra, recipe.dec, recipe.pixel_scale, recipe.patch_inner, recipe.patch_border,
                      recipe.n_patch_x, recipe.n_patch_y)
    ps = tract.patches()
    region = Box(min(p.outer.min_x for p in ps), min(p.outer.min_y for p in ps), max(p.outer.max_x for p in ps),
                 max(p.outer.max_y for p in ps))
    src = make_sources(recipe, np.random.default_rng(recipe.seed), region)  # the simulator's sources (its seed)
    ref = query.sql(repo, "SELECT * FROM ref").to_pandas()
    null = ref.cModel_region_xx.isna() | ref.cModel_exp_xx.isna() | ref.cModel_dev_xx.isna()
    assert ref.cModel_ref_flag[null].all()
    assert (~null).mean() > 0.8
    d = query.sql(repo, "SELECT f.*, t.is_star, t.flux AS true_flux, t.source_id FROM forced_source f "
                        "JOIN truth t ON f.objectId = t.id AND f.band = t.band WHERE f.detect_isPrimary").to_pandas()
    bad_ref = set(ref.id[ref.cModel_ref_flag.astype(bool)])
    # a flagged CModel is always explained by its reference (no other failure on this survey)
    assert (d.cModel_flag == d.objectId.isin(bad_ref)).all()
    assert d.cModel_flag.mean() < 0.1
    assert not d.extendedness_flag_fallback[~d.cModel_flag].any()
    r_e = np.linalg.det(src.gal_cov[d.source_id.to_numpy()]) ** 0.25 * recipe.pixel_scale  # arcsec
    snr = d.psfFlux / d.psfFluxErr
    stars = d[d.is_star & (snr > 30)]
    galaxies = d[~d.is_star & (r_e >= 0.5)]
    s_ok, g_ok = stars[~stars.extendedness_flag], galaxies[~galaxies.extendedness_flag]
    point = float((s_ok.extendedness == 0).mean())
    extended = float((g_ok.extendedness == 1).mean())
    kind = src.gal_kind[d.source_id.to_numpy()]
    medians = {}
    for k in ("exp", "dev"):
        sel = (kind == k) & ~d.cModel_flag & (d.cModelFlux / d.cModelFluxErr > 50)
        medians[k] = (int(sel.sum()), float(np.median(d.cModelFlux[sel] / d.true_flux[sel])))
    print(f"\nprimary rows {len(d)}: cModel_flag {d.cModel_flag.mean():.3f} (bad reference); stars S/N > 30: "
          f"{point:.3f} point of {len(s_ok)} ({len(stars) - len(s_ok)} extendedness_flag); galaxies r_e >= 0.5\": "
          f"{extended:.3f} extended of {len(g_ok)} ({len(galaxies) - len(g_ok)} flagged); cModelFlux / true flux "
          f"median (S/N > 50): exp {medians['exp'][1]:.4f} (n={medians['exp'][0]}), dev {medians['dev'][1]:.4f} "
          f"(n={medians['dev'][0]})")
    assert len(s_ok) > 100 and len(g_ok) > 50
    assert point >= 0.98
    assert extended >= 0.95
    for n, med in medians.values():
        assert n >= 5 and abs(med - 1) < 0.1  # blended, simulator-rendered galaxies: a sanity bound, figures printed
