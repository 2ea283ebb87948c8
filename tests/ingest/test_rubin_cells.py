"""`ingest rubin` of an lsst.images ``CellCoadd``: pixels, planes by name and the per-cell PSFs as forcedphot's
spatially varying PSF grid.

The cell PSFs are GalSim Moffat profiles (the independent renderer) whose FWHM rises across the patch; each star is
drawn at its cell's centre with that cell's PSF (Rubin's cell-coadd model: one PSF per cell). The lsst.images
packages are imported at module level: a venv without the `rubin` extra fails these tests rather than skipping them.
"""

from __future__ import annotations

import astropy.units as u
import galsim
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from lsst.images import Box, Image, Mask, MaskPlane, MaskSchema, SkyProjection, TractFrame
from lsst.images import YX
from lsst.images.cells import CellCoadd, CellGrid, CellGridBounds, CellIJ, CellPointSpreadFunction, PatchDefinition

from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot.flags import DEFAULT_MASK_PLANES
from forcedphot.io.coadd import read_coadd
from forcedphot.ingest.rubin import cell_psf_grid, ingest_rubin, is_cell_coadd, read_cell_coadd
from forcedphot.repository import DataId, Repository
from forcedphot.runner import run_all

CELL = 61  # odd: cell centres are pixel centres, where the stars sit
NCELL = 3
K = 25  # PSF kernel images K x K
X0, Y0 = 300, 500  # tract pixel of the coadd's first pixel
FLUX = 5000.0  # nJy per star
SIGMA = 1.0  # nJy per pixel
PSF_CONFIG = ForcedPhotConfig(plugins=("TransformedCentroid", "PixelFlags", "PsfFlux"))


def fwhm(i: int, j: int) -> float:
    """FWHM (pixels) of cell (row i, column j): 3.4 to 4.0 px across the patch, 3.7 in the middle cell."""
    return 3.4 + 0.2 * j + 0.1 * i


def moffat(fw: float) -> np.ndarray:
    img = galsim.Moffat(beta=3.5, fwhm=fw).drawImage(nx=K, ny=K, scale=1.0).array.astype(np.float64)
    return img / img.sum()


def cell_centre(i: int, j: int) -> tuple[int, int]:
    """(x, y) tract pixel of the cell's centre."""
    return X0 + j * CELL + CELL // 2, Y0 + i * CELL + CELL // 2


def tract_wcs() -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [X0 + 90.0, Y0 + 95.0]  # 1-based tract pixel
    w.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600
    return w


def write_cell_coadd(path, *, missing=(), extra_plane: str | None = None, seed: int = 3) -> dict:
    """A CellCoadd of NCELL x NCELL cells, one star at each cell centre drawn with its cell's PSF, noise SIGMA.
    Returns the truth: cell PSFs, star positions (tract pixels), sky positions."""
    rng = np.random.default_rng(seed)
    n = NCELL * CELL
    psfs = np.array([[moffat(fwhm(i, j)) for j in range(NCELL)] for i in range(NCELL)])
    image = rng.normal(0.0, SIGMA, (n, n))
    stars = []
    for i in range(NCELL):
        for j in range(NCELL):
            x, y = cell_centre(i, j)
            ly, lx = y - Y0, x - X0
            image[ly - K // 2:ly + K // 2 + 1, lx - K // 2:lx + K // 2 + 1] += FLUX * psfs[i, j]
            stars.append((x, y))
    arr = psfs.copy()
    for i, j in missing:
        arr[i, j] = np.nan
    grid = CellGrid(bbox=Box.factory[Y0:Y0 + n, X0:X0 + n], cell_shape=YX(y=CELL, x=CELL))
    psf = CellPointSpreadFunction(arr, CellGridBounds(grid=grid, bbox=grid.bbox,
                                                      missing=frozenset(CellIJ(i=i, j=j) for i, j in missing)))
    planes = [MaskPlane("BAD", "bad"), MaskPlane("SATURATED", "saturated"), MaskPlane("NO_DATA", "no data"),
              MaskPlane("STREAK", "Rubin-only plane")]
    if extra_plane:
        planes.append(MaskPlane(extra_plane, "not Rubin's"))
    img = Image(image.astype(np.float32), yx0=(Y0, X0), unit=u.nJy)
    mask = Mask(0, schema=MaskSchema(planes), bbox=img.bbox)
    sat = np.zeros((n, n), bool)
    sat[5:8, 100:104] = True  # away from the stars
    mask.set("SATURATED", sat)
    streak = np.zeros((n, n), bool)
    streak[150, :] = True
    mask.set("STREAK", streak)
    variance = Image(np.full((n, n), SIGMA**2, np.float32), yx0=(Y0, X0), unit=u.nJy**2)
    frame = TractFrame(skymap="cells", tract=9, bbox=Box.factory[0:4000, 0:4000])
    wcs = tract_wcs()
    proj = SkyProjection.from_fits_wcs(wcs, frame, pixel_bounds=frame.bbox)
    patch = PatchDefinition(id=7, index=YX(y=2, x=1), inner_bbox=grid.bbox, cells=grid)
    CellCoadd(img, mask=mask, variance=variance, sky_projection=proj, band="r", psf=psf, patch=patch).write(str(path))
    xs = np.array([s[0] for s in stars], float)
    ys = np.array([s[1] for s in stars], float)
    sky = proj.pixel_to_sky(x=xs, y=ys)  # lsst.images' projection: the catalog's positions
    return {"psfs": psfs, "x": xs, "y": ys, "ra": np.asarray(sky.ra.deg, float), "dec": np.asarray(sky.dec.deg, float),
            "sat": sat}


def object_table(path, truth) -> None:
    n = truth["x"].size
    pq.write_table(pa.table({"objectId": np.arange(1000, 1000 + n, dtype=np.int64), "coord_ra": truth["ra"],
                             "coord_dec": truth["dec"], "refBand": ["r"] * n}), path)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    d = tmp_path_factory.mktemp("cells")
    truth = write_cell_coadd(d / "cell_coadd_r.fits")
    object_table(d / "object.parquet", truth)
    return d, truth


def test_sky_positions_are_the_wcs_truth(cells):
    """The catalog's sky positions are those of the stars (the fixture's projection and WCS agree)."""
    _, truth = cells
    ra, dec = tract_wcs().all_pix2world(truth["x"], truth["y"], 0)
    assert np.allclose(ra, truth["ra"], atol=1e-9) and np.allclose(dec, truth["dec"], atol=1e-9)


def test_read_cell_coadd_pixels_planes_and_psf_grid(cells):
    d, truth = cells
    path = d / "cell_coadd_r.fits"
    assert is_cell_coadd(path)
    cc = CellCoadd.read(str(path))
    rc = read_cell_coadd(path)
    assert (rc.band, rc.tract, rc.patch, rc.x0, rc.y0, rc.kind) == ("r", 9, 7, X0, Y0, "CellCoadd")
    assert np.array_equal(rc.image, cc.image.array) and np.array_equal(rc.variance, cc.variance.array)
    # lsst.images' SATURATED is afw's (forcedphot's) SAT; Rubin-only STREAK is left out with its pixel count
    assert np.array_equal((rc.mask >> DEFAULT_MASK_PLANES["SAT"]) & 1, truth["sat"].astype(np.int32))
    assert rc.planes == {"STREAK": NCELL * CELL}
    # the sky: the FITS form of the projection of the array's own pixels
    ra, dec = rc.wcs.all_pix2world(truth["x"] - X0, truth["y"] - Y0, 0)
    assert np.allclose(ra, truth["ra"], atol=1e-10) and np.allclose(dec, truth["dec"], atol=1e-10)
    # one node per cell, at its centre, holding that cell's PSF (float32, unit sum)
    g = rc.cell_psf
    centres = np.array([cell_centre(0, j)[0] for j in range(NCELL)], float)
    assert np.array_equal(g.x, centres)
    assert np.array_equal(g.y, np.array([cell_centre(i, 0)[1] for i in range(NCELL)], float))
    assert np.array_equal(g.images, truth["psfs"].astype(np.float32))
    # and lsst.images' own evaluation of the cell PSF agrees at each centre
    for i in range(NCELL):
        for j in range(NCELL):
            x, y = cell_centre(i, j)
            assert np.array_equal(cc.psf.compute_kernel_image(x=x, y=y).array.astype(np.float32), g.images[i, j])


def test_missing_cells_take_the_nearest_cells_psf(tmp_path):
    truth = write_cell_coadd(tmp_path / "holes.fits", missing=[(0, 0), (2, 1)])
    g = read_cell_coadd(tmp_path / "holes.fits").cell_psf
    want = truth["psfs"].astype(np.float32)
    assert np.array_equal(g.images[1, 1], want[1, 1])
    assert np.array_equal(g.images[0, 0], want[0, 1]) or np.array_equal(g.images[0, 0], want[1, 0])
    assert np.isfinite(g.images).all()


def test_cell_psf_grid_in_another_frame(cells):
    d, truth = cells
    cc = CellCoadd.read(str(d / "cell_coadd_r.fits"))
    g = cell_psf_grid(cc.psf, x0=X0, y0=Y0)
    assert g.x[0] == CELL // 2 and g.y[-1] == (NCELL - 1) * CELL + CELL // 2


def test_unknown_mask_plane_is_refused_naming_the_hdu(tmp_path, capsys):
    truth = write_cell_coadd(tmp_path / "odd.fits", extra_plane="MY_PLANE")
    object_table(tmp_path / "object.parquet", truth)
    args = ["ingest", "rubin", "--repo", str(tmp_path / "repo"), "--coadd", str(tmp_path / "odd.fits"),
            "--catalog", str(tmp_path / "object.parquet")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"forcedphot: error: {tmp_path / 'odd.fits'}[2 MASK]: mask plane(s) MY_PLANE ")
    assert len(err.splitlines()) == 1
    assert main(args + ["--drop-mask-plane", "MY_PLANE", "--psf-fwhm", "3.7px"]) == 0  # with the plane left out
    assert "ingested 1 CellCoadd file(s) of band(s) r (tract pixel = repository pixel + (300, 500))" in \
        capsys.readouterr().out


def test_ingest_cell_coadd_psf_varies_as_the_cells_say(cells, tmp_path):
    """Ingest the CellCoadd (PSF from its cells) and, for contrast, the same file with one PSF (the middle cell's);
    measure PSF fluxes. The grid reproduces each cell's PSF at its centre, and psfFlux recovers the true flux within
    its errors; the single PSF is off by 2.5-8% in every other cell (18-60 sigma)."""
    d, truth = cells
    cell_repo = ingest_rubin(tmp_path / "cells", [d / "cell_coadd_r.fits"], d / "object.parquet")
    psf_file = tmp_path / "psf_mid.fits"
    fits.writeto(psf_file, truth["psfs"][1, 1])
    one_repo = ingest_rubin(tmp_path / "one", [d / "cell_coadd_r.fits"], d / "object.parquet",
                            psf={"r": str(psf_file)})
    meta = cell_repo.metadata()["ingest"]
    assert meta["bands"]["r"]["psf"]["cell_coadd"] == [f"{d / 'cell_coadd_r.fits'}[PSF]"]
    assert meta["rubin"]["xy0"] == [X0, Y0] and meta["rubin"]["coadds"]["r"][0]["kind"] == "CellCoadd"
    # the coadd's PSF grid: nodes at the cell centres (repository pixels = tract pixels - xy0), images the cells'
    (q,) = [DataId(0, p, "r") for p in range(cell_repo.read_skymap().tracts[0].n_patches)]
    coadd = read_coadd(cell_repo.coadd_path(q))
    got = coadd.psf.images_at(truth["x"] - X0, truth["y"] - Y0)
    want = truth["psfs"].reshape(-1, K, K)
    assert np.abs(got - want).max() <= 1e-7 * want.max()  # float32 storage
    one = read_coadd(one_repo.coadd_path(q)).psf
    assert one.x.size == one.y.size == 1

    fluxes = {}
    for name, repo in (("cells", cell_repo), ("one", one_repo)):
        assert run_all(Repository(repo.root), PSF_CONFIG, progress=False).ok
        t = pq.read_table(Repository(repo.root).forced_source_path(q)).to_pandas()
        t = t[t["externalId"].notna()].sort_values("externalId")
        assert len(t) == truth["x"].size and not t["psfFlux_flag"].any()
        fluxes[name] = (t["psfFlux"].to_numpy(), t["psfFluxErr"].to_numpy())
    flux, err = fluxes["cells"]
    assert np.all(np.abs(flux - FLUX) < 5 * err), (flux - FLUX) / err
    assert np.all(err < 0.005 * FLUX)
    one_flux, one_err = fluxes["one"]
    ratio = one_flux / FLUX
    middle = NCELL * NCELL // 2
    others = np.arange(NCELL * NCELL) != middle
    # every other cell's FWHM differs from the middle one's by 0.1-0.3 px: 2.5-8% off, 18-60 sigma
    assert np.all(np.abs(ratio[others] - 1) > 0.02), ratio
    assert ratio[0] > 1.05 and ratio[-1] < 0.95, ratio  # the narrowest corner high, the widest low
    assert np.all(np.abs(one_flux[others] - FLUX) > 10 * one_err[others])
    assert abs(one_flux[middle] - FLUX) < 5 * one_err[middle]  # the middle cell: its own PSF
    print(f"\ncell PSFs: psfFlux/true {np.round(flux / FLUX, 5)}, (flux-true)/err {np.round((flux - FLUX) / err, 2)}; "
          f"one PSF: psfFlux/true {np.round(ratio, 4)}")


def test_several_patches_cells_merge_by_the_nearest_box_centre():
    """Two patches whose outer boxes overlap by two cells: nodes at the union of the cell centres, each from the
    patch whose box centre is nearest (the pixels' rule); nodes that no patch has (misaligned grids) take the nearest
    node's PSF."""
    from types import SimpleNamespace

    from forcedphot.ingest.rubin import _mosaic_psf
    from forcedphot.psf import PsfGrid

    def patch(x0, value, cell=CELL, n=NCELL, y0=0):
        xs = x0 + np.arange(n) * cell + cell // 2
        ys = y0 + np.arange(n) * cell + cell // 2
        images = np.zeros((n, n, 5, 5), np.float32)
        images[..., 2, 2] = 1.0
        images[..., 0, 0] = value  # tells the patches apart
        return SimpleNamespace(cell_psf=PsfGrid(xs, ys, images), x0=x0, y0=y0, shape=(n * cell, n * cell), band="r")

    a, b = patch(0, 0.1), patch(2 * CELL, 0.2)  # b's first cell is a's last
    g = _mosaic_psf([a, b], 0, 0)
    assert np.array_equal(g.x, np.arange(5) * CELL + CELL // 2) and np.array_equal(g.y, a.cell_psf.y)
    assert np.allclose(g.images[:, :, 0, 0], [[0.1, 0.1, 0.1, 0.2, 0.2]] * NCELL)  # the shared column: a tie, a's
    g = _mosaic_psf([a, b], 10, 20)  # the mosaic's own frame
    assert g.x[0] == CELL // 2 - 10 and g.y[0] == CELL // 2 - 20
    c = patch(2 * CELL, 0.3, y0=CELL // 2)  # rows not on a's grid: the nodes no file has take the nearest node's PSF
    g = _mosaic_psf([a, c], 0, 0)
    assert g.y.size == 2 * NCELL and np.isin(g.images[:, :, 0, 0], np.float32([0.1, 0.3])).all()
