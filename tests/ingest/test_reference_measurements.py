"""Catalogs without shapes or Kron radii: the ingest measures them on the reference band.

A synthetic field of elliptical Gaussian galaxies (known moments and fluxes, PSF-convolved
analytically) in g, r, i, given to the ingest as positions only: the ref shapes must match the
truth moments, the Kron radii a slow numpy reference of Rubin's first moment (and the analytic
sqrt(pi/2) det^(1/4) of a Gaussian), and the forced Gaussian and Kron fluxes the truth in every
band. A star whose 6-sigma ellipse leaves the image and a position on blank (zero) sky show the
failure flags at ingest and their causes at run time.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from forcedphot.ingest import BandSpec, CatalogSpec, ingest_fits
from forcedphot.ingest.grid import make_tan
from forcedphot.io.parquet import write_parquet
from forcedphot.query import sql
from forcedphot.repository import Repository
from forcedphot.runner import run_all
from forcedphot.schema import load_schema
from tests.ingest.synth import covariance, elliptical_gaussian_image

SHAPE = (96, 128)
FWHM = 3.0
SIGMA_PSF = FWHM / (2 * np.sqrt(2 * np.log(2)))
GALAXIES = [(2.5, 1.5, 0.3), (3.0, 3.0, 0.0), (2.0, 1.2, 1.2), (3.5, 2.0, -0.7), (1.0, 1.0, 0.0), (2.8, 1.8, 2.0)]
GX = np.array([24.3, 63.8, 104.1, 24.45, 64.0, 103.7])
GY = np.array([28.1, 28.25, 27.6, 68.0, 68.3, 68.2])
EDGE_STAR = (5.0, 48.0)  # 6 sigma_PSF = 7.6 px reaches off the image; the 2.5 R_K Kron ellipse does not
BLANK = (119.0, 87.0)  # on a zeroed corner: the adaptive moments and the Kron integral fail
NOISE = 0.01
KRON_FRACTION = 1 - np.exp(-(2.5 * np.sqrt(np.pi / 2)) ** 2 / 2)  # of a Gaussian inside 2.5 R_K


def slow_kron_radius(image, x, y, s, n_sigma=6.0):
    """Rubin's R_K by a plain loop over pixels: sum(r I)/sum(I) in d^T (n^2 S)^-1 d <= 1, r along the major
    axis (the central pixel's r combined with <r> of a square pixel), times sqrt(b/a)."""
    w, v = np.linalg.eigh(s)  # ascending: b^2, a^2
    b, a = np.sqrt(w)
    major, minor = v[:, 1], v[:, 0]
    inv = np.linalg.inv(s * n_sigma ** 2)
    s0 = s1 = 0.0
    for py in range(image.shape[0]):
        for px in range(image.shape[1]):
            d = np.array([px - x, py - y])
            if d @ inv @ d > 1:
                continue
            r = np.hypot(d @ major, (d @ minor) * a / b)
            if np.hypot(*d) < 0.5:
                r = np.hypot(r, 0.38259771140356325 * (1 + np.hypot(*d) / np.sqrt(2)))
            s0 += image[py, px]
            s1 += r * image[py, px]
    return s1 / s0 * np.sqrt(b / a)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("refmeasure")
    x = np.r_[GX, EDGE_STAR[0], BLANK[0]]
    y = np.r_[GY, EDGE_STAR[1], BLANK[1]]
    n_gal = len(GALAXIES)
    truth = np.array([covariance(a, b, t) + SIGMA_PSF ** 2 * np.eye(2) for a, b, t in GALAXIES]
                     + [SIGMA_PSF ** 2 * np.eye(2)])
    tan = make_tan(SHAPE, 0.2, ra=150.1, dec=2.2)
    rng = np.random.default_rng(7)
    bands, flux, images = [], {}, {}
    for band in ("g", "r", "i"):
        flux[band] = rng.uniform(2000, 6000, n_gal + 1)
        img = elliptical_gaussian_image(SHAPE, x[:-1], y[:-1], flux[band], truth) + rng.normal(0, NOISE, SHAPE)
        img[78:, 110:] = 0.0  # blank sky around BLANK
        images[band] = img.astype(np.float32)
        path = root / f"{band}.fits"
        fits.HDUList([fits.PrimaryHDU(images[band], header=tan.to_header()),
                      fits.ImageHDU(np.full(SHAPE, NOISE ** 2, np.float32), name="VARIANCE")]).writeto(path)
        bands.append(BandSpec(name=band, image=f"{path}:0", variance=f"{path}:VARIANCE", psf_fwhm=f"{FWHM}px",
                              zero_point=31.4))
    ra, dec = tan.all_pix2world(x, y, 0)
    ids = np.arange(1, x.size + 1)
    pacsv.write_csv(pa.table({"id": ids, "ra": ra, "dec": dec}), root / "positions.csv")
    return dict(root=root, x=x, y=y, truth=truth, flux=flux, images=images, bands=bands, ids=ids, ra=ra, dec=dec)


@pytest.fixture(scope="module")
def measured(field):
    """The positions-only catalog ingested (default reference band) and run in every band."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("forcedphot.ingest.refmeasure")
    logger.addHandler(handler)
    try:
        repo = ingest_fits(field["root"] / "repo", field["bands"], CatalogSpec(path=field["root"] / "positions.csv"))
    finally:
        logger.removeHandler(handler)
    assert run_all(repo, progress=False).ok
    return repo, [r.getMessage() for r in records]


def _ref(repo):
    return sql(repo, "SELECT * FROM ref ORDER BY externalId").to_pandas()


def test_ingest_says_what_it_measured_in_one_line(measured):
    _, messages = measured
    assert len(messages) == 1
    msg = messages[0]
    assert "reference band i" in msg and "shapes (adaptive moments) for 8 rows, 1 failed" in msg
    assert "Kron radii for 8 rows, 2 failed (1 at the image edge" in msg


def test_shapes_match_the_truth_moments(measured, field):
    ref = _ref(measured[0])
    assert (ref.refBand == "i").all()  # Rubin's priority: i among g, r, i
    got = ref[["shape_xx", "shape_yy", "shape_xy"]].to_numpy()[:-1]  # galaxies and the star
    want = field["truth"][:, [0, 1, 0], [0, 1, 1]]
    scale = np.sqrt(want[:, 0] * want[:, 1])
    np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=0.01)
    np.testing.assert_allclose(got[:, 2] / scale, want[:, 2] / scale, atol=0.01)
    assert not ref.shape_flag[:-1].astype(bool).any()


def test_kron_radii_match_a_slow_reference_and_the_gaussian_value(measured, field):
    ref = _ref(measured[0])
    n_gal = len(GALAXIES)
    s = ref[["shape_xx", "shape_xy", "shape_xy", "shape_yy"]].to_numpy().reshape(-1, 2, 2)
    slow = [slow_kron_radius(field["images"]["i"].astype(float), field["x"][k], field["y"][k], s[k])
            for k in range(n_gal)]
    np.testing.assert_allclose(ref.kron_radius[:n_gal], slow, rtol=1e-9)
    gaussian = np.sqrt(np.pi / 2) * np.linalg.det(field["truth"][:n_gal]) ** 0.25
    np.testing.assert_allclose(ref.kron_radius[:n_gal], gaussian, rtol=0.01)
    assert not ref.kron_radius_flag[:n_gal].astype(bool).any()


def test_forced_gaussian_and_kron_fluxes_recover_the_truth_in_every_band(measured, field):
    out = sql(measured[0], """SELECT f.band, f.externalId, f.gaussianFlux, f.gaussianFlux_flag, f.kronFlux,
                                     f.kronFlux_flag
                              FROM forced_source f ORDER BY f.band, f.externalId""").to_pandas()
    n_gal = len(GALAXIES)
    for band in ("g", "r", "i"):
        o = out[out.band == band].iloc[:n_gal]
        np.testing.assert_allclose(o.gaussianFlux, field["flux"][band][:n_gal], rtol=0.005)
        np.testing.assert_allclose(o.kronFlux, KRON_FRACTION * field["flux"][band][:n_gal], rtol=0.01)
        assert not o.gaussianFlux_flag.any() and not o.kronFlux_flag.any()


def test_failed_measurements_carry_flags_and_their_causes(measured, field):
    repo = measured[0]
    ref = _ref(repo)
    star, blank = ref.iloc[-2], ref.iloc[-1]
    # the edge star: shape fine, no Kron radius (6 sigma off the image), flagged
    assert not star.shape_flag and star.kron_radius_flag and np.isnan(star.kron_radius)
    # blank sky: the PSF's moments and its Kron radius stand in, both flagged
    psf = SIGMA_PSF ** 2 + 1 / 12  # the Gaussian PSF image is pixel-integrated
    assert blank.shape_flag and blank.kron_radius_flag
    np.testing.assert_allclose([blank.shape_xx, blank.shape_yy, blank.shape_xy], [psf, psf, 0], rtol=0.02, atol=1e-6)
    np.testing.assert_allclose(blank.kron_radius, np.sqrt(np.pi / 2 * psf), rtol=0.02)
    out = sql(repo, """SELECT externalId, kronFlux, kronFlux_flag, kronFlux_flag_edge, kronFlux_flag_noRefRadius,
                              gaussianFlux, gaussianFlux_flag, shape_flag
                       FROM forced_source WHERE band = 'r' ORDER BY externalId""").to_pandas()
    s, b = out.iloc[-2], out.iloc[-1]
    assert s.kronFlux_flag_noRefRadius and s.kronFlux_flag and not s.kronFlux_flag_edge and np.isnan(s.kronFlux)
    assert not out.kronFlux_flag_noRefRadius.iloc[:-2].any()
    assert b.shape_flag and b.gaussianFlux_flag and np.isfinite(b.gaussianFlux)  # a value, flagged (Rubin)
    assert b.kronFlux_flag and np.isfinite(b.kronFlux)  # the PSF's stand-in radius: a value, flagged


def test_catalog_with_shapes_measures_only_the_kron_radii(field, tmp_path):
    n_gal = len(GALAXIES)
    t = field["truth"][:n_gal] * 1.1  # not what the image would give: must be kept as given
    pacsv.write_csv(pa.table({"ra": field["ra"][:n_gal], "dec": field["dec"][:n_gal], "shape_xx": t[:, 0, 0],
                              "shape_yy": t[:, 1, 1], "shape_xy": t[:, 0, 1]}), tmp_path / "shapes.csv")
    repo = ingest_fits(tmp_path / "repo", field["bands"], CatalogSpec(path=tmp_path / "shapes.csv"), ref_band="r")
    ref = sql(repo, "SELECT * FROM ref ORDER BY coord_ra").to_pandas()
    order = np.argsort(field["ra"][:n_gal])
    np.testing.assert_array_equal(ref.shape_xx, t[order, 0, 0])
    assert ref.shape_flag.isna().all() and (ref.kron_radius_flag == False).all()  # noqa: E712
    slow = [slow_kron_radius(field["images"]["r"].astype(float), field["x"][k], field["y"][k], t[k]) for k in order]
    np.testing.assert_allclose(ref.kron_radius, slow, rtol=1e-9)


def test_a_reference_without_a_shape_is_flagged_noRefShape_at_run(measured, tmp_path):
    repo = Repository(shutil.copytree(measured[0].root, tmp_path / "repo"))
    path = repo.ref_path(0, 0)
    t = pq.read_table(path)
    first = pc.equal(t.column("externalId"), 1)
    for c in ("shape_xx", "shape_yy", "shape_xy"):
        i = t.schema.get_field_index(c)
        t = t.set_column(i, c, pc.if_else(first, pa.scalar(None, pa.float64()), t.column(c)))
    write_parquet(t, path, load_schema("ref"))  # a writer that records a fresh checksum
    assert run_all(repo, bands=["i"], force=True, progress=False).ok
    out = sql(repo, """SELECT externalId, gaussianFlux, gaussianFlux_flag, gaussianFlux_flag_noRefShape,
                              kronFlux, kronFlux_flag_noRefShape, kronFlux_flag_edge
                       FROM forced_source WHERE band = 'i' ORDER BY externalId""").to_pandas()
    row, rest = out.iloc[0], out.iloc[1:]
    assert row.gaussianFlux_flag_noRefShape and row.gaussianFlux_flag and np.isnan(row.gaussianFlux)
    assert row.kronFlux_flag_noRefShape and not row.kronFlux_flag_edge and np.isnan(row.kronFlux)
    assert not rest.gaussianFlux_flag_noRefShape.any() and not rest.kronFlux_flag_noRefShape.any()
