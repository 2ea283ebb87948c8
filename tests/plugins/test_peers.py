"""Agreement with the peers run side by side: SEP and photutils (test-only dependencies)."""

import numpy as np
import pytest

from forcedphot import query
from forcedphot.cutouts import PaddedCoadd
from forcedphot.io.coadd import read_coadd
from forcedphot.plugins.aperture_exact import exact_aperture_sums
from forcedphot.repository import DataId, Repository

sep = pytest.importorskip("sep")
photutils = pytest.importorskip("photutils")


def _coadd_and_positions(repo_root, n_edge=40):
    repo = Repository(repo_root)
    coadd = read_coadd(repo.coadd_path(DataId(0, 3, "r")))
    t = query.sql(repo, "SELECT centroid_x, centroid_y FROM forced_source "
                        "WHERE tract = 0 AND patch = 3 AND band = 'r' AND NOT centroid_flag").to_pandas()
    x = t.centroid_x.to_numpy() - coadd.bbox.min_x
    y = t.centroid_y.to_numpy() - coadd.bbox.min_y
    rng = np.random.default_rng(0)
    h, w = coadd.image.shape
    # plus positions on and near every edge, where apertures are truncated
    ex = np.r_[rng.uniform(-0.4, 3, n_edge // 2), rng.uniform(w - 4, w - 0.6, n_edge // 2)]
    ey = rng.uniform(0, h - 1, n_edge)
    return coadd, np.r_[x, ex, ey[: n_edge // 2]], np.r_[y, ey, rng.uniform(-0.4, 2, n_edge // 2)]


def _ours(coadd, x, y, r, squared):
    padded = PaddedCoadd(coadd, int(r) + 4)
    ix = np.floor(x + 0.5).astype(np.int64) + padded.pad
    iy = np.floor(y + 0.5).astype(np.int64) + padded.pad
    flux, var, _ = exact_aperture_sums(padded, ix, iy, x - np.floor(x + 0.5), y - np.floor(y + 0.5), r,
                                       squared_errors=squared)
    return flux, np.sqrt(var), padded


@pytest.mark.parametrize("r", [3.0, 5.0, 12.0])
def test_exact_apertures_equal_sep_subpix0(measured_tiny_repo, r):
    coadd, x, y = _coadd_and_positions(measured_tiny_repo)
    flux, err, padded = _ours(coadd, x, y, r, squared=False)  # SEP weights the variance linearly
    p = padded.pad
    image = np.ascontiguousarray(padded.image[p:-p, p:-p], dtype=np.float64)
    var = np.ascontiguousarray(padded.variance[p:-p, p:-p], dtype=np.float64)
    s_flux, s_err, s_flag = sep.sum_circle(image, x, y, r, var=var, subpix=0)
    np.testing.assert_allclose(flux, s_flux, rtol=1e-6, atol=1e-6 * np.abs(s_flux).max())
    np.testing.assert_allclose(err, s_err, rtol=1e-6)
    assert (s_flag & sep.APER_TRUNC).sum() > 0  # edges were exercised


@pytest.mark.parametrize("r", [3.0, 5.0, 12.0])
def test_exact_apertures_equal_photutils_exact(measured_tiny_repo, r):
    from photutils.aperture import CircularAperture, aperture_photometry

    import photutils
    from packaging.version import Version

    # photutils 2.x-3.0 weight each pixel's variance by its overlap fraction, 3.1 by its square (as ours)
    squared = Version(photutils.__version__) >= Version("3.1")
    coadd, x, y = _coadd_and_positions(measured_tiny_repo)
    flux, err, padded = _ours(coadd, x, y, r, squared=squared)
    p = padded.pad
    image = padded.image[p:-p, p:-p].astype(np.float64)
    error = np.sqrt(padded.variance[p:-p, p:-p].astype(np.float64))
    t = aperture_photometry(image, CircularAperture(np.c_[x, y], r), error=error, method="exact")
    np.testing.assert_allclose(flux, t["aperture_sum"], rtol=1e-6, atol=1e-6 * np.abs(flux).max())
    np.testing.assert_allclose(err, t["aperture_sum_err"], rtol=1e-6)


def test_psf_flux_equals_photutils_psfphotometry_with_fixed_positions(star_field_repo):
    from astropy.table import Table
    from photutils.psf import ImagePSF, PSFPhotometry

    repo = Repository(star_field_repo)
    data_id = DataId(0, 0, "r")
    coadd = read_coadd(repo.coadd_path(data_id))
    t = query.sql(repo, """SELECT f.centroid_x AS x, f.centroid_y AS y, f.psfFlux / f.psfFlux_apCorr AS flux
        FROM forced_source f JOIN truth t ON t.id = f.objectId AND t.band = f.band
        WHERE f.tract = 0 AND f.patch = 0 AND f.band = 'r' AND t.is_star AND t.n_neighbours = 0
          AND NOT f.psfFlux_flag LIMIT 40""").to_pandas()
    assert len(t) >= 30
    k = coadd.psf.size
    psf_images = coadd.psf.images_at(t.x.to_numpy(), t.y.to_numpy())
    image = np.where(np.isfinite(coadd.image), coadd.image, 0).astype(np.float64)
    ours = t.flux.to_numpy() / coadd.photo_calib  # back to image units, before aperture correction
    for i, row in enumerate(t.itertuples()):
        ix, iy = int(np.floor(row.x + 0.5)) - coadd.bbox.min_x, int(np.floor(row.y + 0.5)) - coadd.bbox.min_y
        model = ImagePSF(psf_images[i], flux=1.0, x_0=ix, y_0=iy, origin=(k // 2, k // 2))
        model.x_0.fixed = model.y_0.fixed = True
        phot = PSFPhotometry(model, (k, k))
        res = phot(image, init_params=Table({"x": [ix], "y": [iy], "flux": [ours[i] * 1.1]}))
        assert res["flux_fit"][0] == pytest.approx(ours[i], rel=1e-5)
