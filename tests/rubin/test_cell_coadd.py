"""forcedphot's PipelineTask on a CellCoadd: `export_butler(cell_coadd=True)` puts each coadd of the simulated
survey as an lsst.images CellCoadd (pixels, planes, per-cell PSFs), the task with ``use_cell_coadd`` measures it, and
the result equals `forcedphot run` on the same pixels with the same PSF grid (one node per cell centre) bit for bit.

The simulator's PSF grid (nodes 123.5 px apart) is not a cell grid: each cell's PSF is the grid's bilinear blend at
the cell centre, so against the simulator's own grid the PSF is resampled; that difference is measured and bounded.
"""

from __future__ import annotations

import contextlib
import io
import shutil

import astropy.units as u
import numpy as np
import pyarrow.parquet as pq
import pytest
from lsst.daf.butler import Butler
from lsst.images import Box as LBox
from lsst.images import Image
from lsst.images.cells import CellCoadd, CellGrid, CellGridBounds, CellPointSpreadFunction
from lsst.images import YX
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.ingest.rubin import cell_psf_grid
from forcedphot.io.coadd import read_coadd, write_coadd
from forcedphot.psf import PsfGrid
from forcedphot.repository import DataId, Repository
from forcedphot.rubin import ForcedPhotCoaddConfig, ForcedPhotCoaddTask
from forcedphot.rubin import datasets as ds
from forcedphot.rubin.export import INPUT_RUN
from forcedphot.runner import run_all
from forcedphot.skymap import Box

from tests.rubin.test_pipetask import assert_same_table

CELL = 62  # 4 x 4 cells on the tiny survey's 248 x 248 px patches
QUANTUM = DataId(0, 1, "r")


@pytest.fixture(scope="module")
def cell_butler(measured_tiny_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("cell-butler") / "butler"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["export", "butler", "--repo", str(measured_tiny_repo), "--butler", str(root),
                     "--cell-coadd", str(CELL)]) == 0
    out = stdout.getvalue()  # skymap, refs, per quantum: cell coadd, calib, footprints
    assert out.startswith(f"put {1 + 4 + 16 * 3} datasets of 16 quanta") and "use_cell_coadd=True" in out
    return root


def test_cells_on_the_grid_nodes_reproduce_the_grid_exactly():
    """A PSF grid whose nodes are the cell centres goes through cells and back unchanged."""
    rng = np.random.default_rng(1)
    k, cell = 9, 61
    nodes = rng.random((2, 3, k, k)).astype(np.float32)
    nodes /= nodes.sum(axis=(2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    x = 100 + np.arange(3) * cell + cell // 2
    y = 40 + np.arange(2) * cell + cell // 2
    grid = PsfGrid(x, y, nodes)
    box = Box(100, 40, 100 + 3 * cell - 1, 40 + 2 * cell - 1)
    images = ds.cell_psf_images(grid, box, cell)
    assert np.array_equal(images, nodes.astype(np.float64))
    cg = CellGrid(bbox=LBox.factory[40:40 + 2 * cell, 100:100 + 3 * cell], cell_shape=YX(y=cell, x=cell))
    back = cell_psf_grid(CellPointSpreadFunction(images, CellGridBounds(grid=cg, bbox=cg.bbox)))
    assert np.array_equal(back.x, x) and np.array_equal(back.y, y)
    assert np.allclose(back.images, nodes, rtol=2e-7, atol=0)  # renormalised: float32 rounding at most


def test_cell_coadd_in_the_butler_holds_the_coadd(measured_tiny_repo, cell_butler):
    skymap = Repository(measured_tiny_repo).read_skymap().name
    keys = dict(skymap=skymap, tract=QUANTUM.tract, patch=QUANTUM.patch, band=QUANTUM.band, collections=INPUT_RUN)
    butler = Butler.from_config(str(cell_butler))
    cc = butler.get(ds.CELL_COADD, **keys)
    want = read_coadd(Repository(measured_tiny_repo).coadd_path(QUANTUM))
    got = ds.coadd_from_cell_coadd(cc, butler.get(ds.COADD_CALIB, **keys))
    for name in ("image", "mask", "variance"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert got.photo_calib == want.photo_calib and got.mask_planes == want.mask_planes
    assert (got.psf.x.size, got.psf.y.size) == (4, 4)
    assert np.array_equal(got.psf.x, want.bbox.min_x + np.arange(4) * CELL + (CELL - 1) / 2)
    # each cell's PSF is the simulator's grid blended at the cell centre (no sub-pixel shift)
    w = want.psf
    ix, tx = w._weights(got.psf.x, w.x)
    iy, ty = w._weights(got.psf.y, w.y)
    n = w.node_images()
    blend = ((1 - ty[1]) * (1 - tx[2]) * n[iy[1], ix[2]] + (1 - ty[1]) * tx[2] * n[iy[1], ix[2] + 1]
             + ty[1] * (1 - tx[2]) * n[iy[1] + 1, ix[2]] + ty[1] * tx[2] * n[iy[1] + 1, ix[2] + 1])
    assert np.allclose(got.psf.images[1, 2], blend / blend.sum(), rtol=0, atol=2e-7 * blend.max())
    assert cc.unit == u.adu  # the survey's image units (photo_calib != 1)
    # a CellCoadd in nJy must agree with the calib table's photo_calib
    njy = CellCoadd(Image(cc.image.array, yx0=(cc.bbox.y.start, cc.bbox.x.start), unit=u.nJy), mask=cc.mask,
                    variance=Image(cc.variance.array, yx0=(cc.bbox.y.start, cc.bbox.x.start), unit=u.nJy**2),
                    sky_projection=cc.sky_projection, band=cc.band, psf=cc.psf)
    with pytest.raises(ValueError, match="nJy"):
        ds.coadd_from_cell_coadd(njy, butler.get(ds.COADD_CALIB, **keys))


def test_task_on_a_cell_coadd_equals_forcedphot_run(measured_tiny_repo, cell_butler, tmp_path):
    """The task with use_cell_coadd, under SimplePipelineExecutor, equals `forcedphot run` on a copy of the repository
    whose coadd has the cells' PSF grid, bit for bit; against the simulator's own grid, psfFlux moves by the
    resampling only."""
    config = ForcedPhotCoaddConfig()
    config.use_cell_coadd = True
    butler = SimplePipelineExecutor.prep_butler(str(cell_butler), inputs=[INPUT_RUN], output="forcedphot/cells")
    executor = SimplePipelineExecutor.from_task_class(
        ForcedPhotCoaddTask, config=config, butler=butler,
        where=f"tract = {QUANTUM.tract} AND patch = {QUANTUM.patch} AND band = '{QUANTUM.band}'")
    assert len(executor.run(register_dataset_types=True)) == 1
    skymap = Repository(measured_tiny_repo).read_skymap().name
    keys = dict(skymap=skymap, tract=QUANTUM.tract, patch=QUANTUM.patch, band=QUANTUM.band)
    got = Butler.from_config(str(cell_butler), collections=["forcedphot/cells"]).get(ds.FORCED_SOURCE, **keys)

    repo = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, repo)
    path = Repository(repo).coadd_path(QUANTUM)
    coadd = read_coadd(path)
    cc = Butler.from_config(str(cell_butler)).get(ds.CELL_COADD, **keys, collections=INPUT_RUN)
    coadd.psf = cell_psf_grid(cc.psf)
    write_coadd(coadd, path)
    assert run_all(Repository(repo), ForcedPhotConfig(), tracts=[0], patches=[QUANTUM.patch], bands=[QUANTUM.band],
                   force=True, progress=False).ok
    want = pq.read_table(Repository(repo).forced_source_path(QUANTUM)).replace_schema_metadata(None)
    assert_same_table(got, want)

    sim = pq.read_table(Repository(measured_tiny_repo).forced_source_path(QUANTUM)).to_pandas()
    cells = got.to_pandas()
    assert (sim["objectId"].to_numpy() == cells["objectId"].to_numpy()).all()
    ok = ~(sim["psfFlux_flag"] | cells["psfFlux_flag"]).to_numpy() & (sim["psfFlux"] / sim["psfFluxErr"] > 20)
    a, b, err = (np.asarray(v, float)[ok] for v in (cells["psfFlux"], sim["psfFlux"], sim["psfFluxErr"]))
    assert ok.sum() > 20
    assert not np.array_equal(a, b)  # the task used the cells' PSF, not the simulator's grid
    rel = np.abs(a / b - 1)
    sig = np.abs(a - b) / err
    print(f"\ncells vs the simulator's grid, {ok.sum()} rows S/N > 20: |psfFlux ratio - 1| median {np.median(rel):.2e} "
          f"max {rel.max():.2e}; |difference|/err median {np.median(sig):.3f} max {sig.max():.3f}")
    # measured: median 4.4e-6, max 6.7e-4 (0.19 sigma): the cells' bilinear resampling of a PSF varying by ~4%
    assert np.median(rel) < 1e-4 and rel.max() < 3e-3 and sig.max() < 0.5
