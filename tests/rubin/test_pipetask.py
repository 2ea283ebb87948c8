"""forcedphot under Rubin's middleware: `export butler`, `pipetask run -j 2` and SimplePipelineExecutor give
forced_source and object tables equal, value for value, to `forcedphot run`'s on the same data.

The Rubin packages are imported at module level (no importorskip): a venv without the `rubin` extra fails
these tests rather than skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lsst.daf.butler import Butler  # noqa: F401  (required: the test extra installs it)
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.io.coadd import read_coadd
from forcedphot.query import load_object
from forcedphot.repository import DataId, Repository
from forcedphot.rubin import PIPELINE, ForcedPhotCoaddConfig, ForcedPhotCoaddTask
from forcedphot.rubin import datasets as ds
from forcedphot.rubin.config import OPTION_NAMES, to_forcedphot
from forcedphot.rubin.export import INPUT_RUN, INSTRUMENT

PIPETASK = Path(sys.executable).with_name("pipetask")
BANDS = ("g", "i", "r", "z")


def assert_same_table(got: pa.Table, want: pa.Table) -> None:
    """Same columns in the same order, same types, same nulls and bit-identical values (NaN where NaN)."""
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows > 0
    for name in want.column_names:
        a, b = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        assert a.type == b.type, name
        assert a.is_null().to_pylist() == b.is_null().to_pylist(), name
        if pa.types.is_floating(b.type):
            x, y = a.fill_null(0).to_numpy(), b.fill_null(0).to_numpy()
            assert np.array_equal(x.view(np.uint32 if x.itemsize == 4 else np.uint64),
                                  y.view(np.uint32 if y.itemsize == 4 else np.uint64)), name  # bit for bit
        else:
            assert a.to_pylist() == b.to_pylist(), name


@pytest.fixture(scope="module")
def butler_repo(measured_tiny_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("butler") / "butler"
    assert main(["export", "butler", "--repo", str(measured_tiny_repo), "--butler", str(root)]) == 0
    return root


def _expected_forced_source(repo, tract, patch, band) -> pa.Table:
    return pq.read_table(Repository(repo).forced_source_path(DataId(tract, patch, band))).replace_schema_metadata(None)


def _expected_object(repo, tract, patch) -> pa.Table:
    return load_object(repo, tract=tract, patch=patch, primary_only=False).to_arrow()


def test_export_butler_dimensions_and_datasets(measured_tiny_repo, butler_repo):
    butler = Butler.from_config(str(butler_repo))
    skymap = Repository(measured_tiny_repo).read_skymap()
    (sm,) = butler.registry.queryDimensionRecords("skymap")
    assert sm.name == skymap.name and sm.tract_max == skymap.n_tracts
    patches = list(butler.registry.queryDimensionRecords("patch", skymap=skymap.name))
    assert len(patches) == sum(t.n_patches for t in skymap.tracts)
    filters = {r.name: r.band for r in butler.registry.queryDimensionRecords("physical_filter", instrument=INSTRUMENT)}
    assert filters == {b: b for b in BANDS}
    # each patch region holds its references' positions (and a patch's box centre is in no other patch's inner box)
    from lsst.sphgeom import LonLat, UnitVector3d

    for rec in patches:
        ref = butler.get(ds.REF, skymap=skymap.name, tract=rec.tract, patch=rec.id, collections=INPUT_RUN)
        ra, dec = ref.column("coord_ra").to_numpy(), ref.column("coord_dec").to_numpy()
        assert ref.num_rows > 0
        assert all(rec.region.contains(UnitVector3d(LonLat.fromDegrees(r, d))) for r, d in zip(ra, dec))
        assert ref.equals(pq.read_table(Repository(measured_tiny_repo).ref_path(rec.tract, rec.id)))
    # the coadd comes back from MaskedImageV2 + PSF + calib tables pixel for pixel, mask planes by name
    data_id = DataId(0, 1, "r")
    want = read_coadd(Repository(measured_tiny_repo).coadd_path(data_id))
    keys = dict(skymap=skymap.name, tract=0, patch=1, band="r", collections=INPUT_RUN)
    mi = butler.get(ds.COADD, **keys)
    assert (mi.bbox.x.start, mi.bbox.y.start) == (want.bbox.min_x, want.bbox.min_y)
    assert np.array_equal(mi.mask.get("NO_DATA"), (want.mask >> want.mask_planes.bits["NO_DATA"] & 1).astype(bool))
    got = ds.coadd_from_datasets(mi, butler.get(ds.COADD_PSF, **keys), butler.get(ds.COADD_CALIB, **keys))
    for name in ("image", "mask", "variance"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert np.array_equal(got.psf.images, want.psf.images) and np.array_equal(got.psf.x, want.psf.x)
    assert got.photo_calib == want.photo_calib and got.mask_planes == want.mask_planes
    assert (got.ap_corr is None) == (want.ap_corr is None)


def test_pipetask_run_equals_forcedphot_run(measured_tiny_repo, butler_repo):
    """`pipetask run -j 2` as a subprocess on two bands of one patch (2 band quanta and the patch's object quantum:
    the object table of those bands, whose columns equal those of forcedphot's object view over every band)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    cmd = [str(PIPETASK), "run", "-b", str(butler_repo), "-i", INPUT_RUN, "-o", "forcedphot/pipetask",
           "-p", PIPELINE, "-j", "2", "--register-dataset-types", "-d", "tract = 0 AND patch = 0 AND band IN ('g', 'r')"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Executed 3 quanta successfully" in proc.stderr + proc.stdout
    butler = Butler.from_config(str(butler_repo), collections=["forcedphot/pipetask"])
    skymap = butler.registry.queryDimensionRecords("skymap").__iter__().__next__().name
    for band in ("g", "r"):
        got = butler.get(ds.FORCED_SOURCE, skymap=skymap, tract=0, patch=0, band=band)
        assert_same_table(got, _expected_forced_source(measured_tiny_repo, 0, 0, band))
    got = butler.get(ds.OBJECT, skymap=skymap, tract=0, patch=0)
    want = _expected_object(measured_tiny_repo, 0, 0)
    assert {"g_psfFlux", "r_cModelFlux", "g_r_psfColor"} <= set(got.column_names) < set(want.column_names)
    assert not any(c.startswith(("i_", "z_")) for c in got.column_names)
    assert_same_table(got, want.select(got.column_names))


def test_simple_pipeline_executor_equals_forcedphot_run(measured_tiny_repo, butler_repo):
    """In process (SimplePipelineExecutor from the shipped pipeline.yaml), on another patch and two bands."""
    butler = SimplePipelineExecutor.prep_butler(str(butler_repo), inputs=[INPUT_RUN], output="forcedphot/simple")
    executor = SimplePipelineExecutor.from_pipeline_filename(
        PIPELINE, where="tract = 0 AND patch = 3 AND band IN ('g', 'r')", butler=butler)
    quanta = executor.run(register_dataset_types=True)
    assert len(quanta) == 3  # two bands and the object table
    assert {q.dataId["band"] for q in quanta if "band" in q.dataId.dimensions.names} == {"g", "r"}
    skymap = next(iter(butler.registry.queryDimensionRecords("skymap"))).name
    out = Butler.from_config(str(butler_repo), collections=["forcedphot/simple"])
    for band in ("g", "r"):
        got = out.get(ds.FORCED_SOURCE, skymap=skymap, tract=0, patch=3, band=band)
        assert_same_table(got, _expected_forced_source(measured_tiny_repo, 0, 3, band))
    got = out.get(ds.OBJECT, skymap=skymap, tract=0, patch=3)
    assert "g_psfFlux" in got.column_names and "i_psfFlux" not in got.column_names  # the bands it was given
    assert_same_table(got, _expected_object(measured_tiny_repo, 0, 3).select(got.column_names))


def test_config_override_reaches_the_engine(measured_tiny_repo, butler_repo, tmp_path):
    """Options set through pex_config give what `forcedphot run` gives with the same options."""
    import shutil

    from forcedphot.runner import run_all

    config = ForcedPhotCoaddConfig()
    config.aperture_radii = [3.0, 6.0]
    config.noise_seed_multiplier = 3
    butler = SimplePipelineExecutor.prep_butler(str(butler_repo), inputs=[INPUT_RUN], output="forcedphot/config")
    executor = SimplePipelineExecutor.from_task_class(ForcedPhotCoaddTask, config=config, butler=butler,
                                                      where="tract = 0 AND patch = 2 AND band = 'i'")
    assert len(executor.run(register_dataset_types=True)) == 1
    skymap = next(iter(butler.registry.queryDimensionRecords("skymap"))).name
    got = Butler.from_config(str(butler_repo), collections=["forcedphot/config"]).get(
        ds.FORCED_SOURCE, skymap=skymap, tract=0, patch=2, band="i")
    repo = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, repo)
    options = ForcedPhotConfig(aperture_radii=(3.0, 6.0), noise_seed_multiplier=3)
    assert run_all(Repository(repo), options, tracts=[0], patches=[2], bands=["i"], progress=False).ok
    assert_same_table(got, _expected_forced_source(repo, 0, 2, "i"))
    assert got.column("ap09Flux").null_count == got.num_rows  # the radius left out
    default = _expected_forced_source(measured_tiny_repo, 0, 2, "i")
    assert not np.array_equal(got.column("psfFlux").to_numpy(), default.column("psfFlux").to_numpy(),
                              equal_nan=True)  # another noise seed: other numbers


def test_config_is_generated_from_forcedphot_config():
    config = ForcedPhotCoaddConfig()
    assert set(OPTION_NAMES) <= set(config.keys())
    assert to_forcedphot(config) == ForcedPhotConfig()
    config.aperture_method = "exact"
    config.aperture_radii = [3.0, 6.0]
    config.undeblended = ["PsfFlux"]
    assert to_forcedphot(config) == ForcedPhotConfig(aperture_method="exact", aperture_radii=(3.0, 6.0),
                                                     undeblended=("PsfFlux",))
    with pytest.raises(Exception, match="aperture_method"):
        config.aperture_method = "fancy"  # a ChoiceField from the Literal
    with pytest.raises(Exception, match="undeblended"):
        config.undeblended = ["GaussianFlux"]  # a ListField checked against the Literal's values
    config.max_sinc_radius = 20.0
    with pytest.raises(Exception, match="max_sinc_radius"):
        config.validate()  # pydantic's range, through forcedphot's one-line error


def test_export_butler_refuses_a_foreign_folder(measured_tiny_repo, butler_repo, tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("tex")
    assert main(["export", "butler", "--repo", str(measured_tiny_repo), "--butler", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"forcedphot: error: {mine}: not a butler repository (no butler.yaml); refusing to overwrite it"
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    # an existing butler is added to, but not into an existing input collection
    assert main(["export", "butler", "--repo", str(measured_tiny_repo), "--butler", str(butler_repo)]) == 2
    assert capsys.readouterr().err.strip() == (f"forcedphot: error: {butler_repo}: collection {INPUT_RUN!r} exists "
                                               "already; pass another --run")
