"""Background, noise and PSF estimated from the image, and supplied PSFs brought to the image's scale.

Synthetic fields with a known background, Gaussian noise and PSF (Gaussian or Moffat, pixel
integrated) check the estimates against the truth; the Spitzer GLIMPSE mosaic checks the
estimated PSF against the published 4.5 micron fluxes (skipped when the real data are absent).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling.models import Moffat2D
from astropy.table import Table

from forcedphot.cli import main
from forcedphot.errors import InputError
from forcedphot.ingest import BandSpec, CatalogSpec, ingest_fits
from forcedphot.ingest.estimate import clipped_std_factor, estimate_background
from forcedphot.ingest.grid import make_tan
from forcedphot.ingest.psfimage import header_pixel_scale, match_pixel_scale
from forcedphot.query import sql
from tests.conftest import REAL_DATA
from tests.ingest.synth import gaussian_image

SCALE = 0.2  # arcsec per pixel
ZP = 31.4  # image units are nJy


def _lattice(shape, spacing, rng, *, margin):
    """Star positions on a jittered lattice (isolated by ~spacing) at random sub-pixel phases."""
    h, w = shape
    gx, gy = np.meshgrid(np.arange(margin, w - margin, spacing), np.arange(margin, h - margin, spacing))
    x = gx.ravel() + rng.uniform(-0.2, 0.2, gx.size) * spacing
    y = gy.ravel() + rng.uniform(-0.2, 0.2, gy.size) * spacing
    return x, y


def moffat_image(shape, x, y, flux, fwhm, beta, *, sub=5, half=20) -> np.ndarray:
    """Moffat stars integrated over each pixel (sub x sub samples per pixel), unit-flux profile x flux."""
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    img = np.zeros(shape)
    o = (np.arange(sub) + 0.5) / sub - 0.5
    for xi, yi, fi in zip(x, y, flux):
        cx, cy = int(round(xi)), int(round(yi))
        py, px = np.mgrid[cy - half:cy + half + 1, cx - half:cx + half + 1]
        sy = py[:, :, None, None] + o[None, None, :, None]
        sx = px[:, :, None, None] + o[None, None, None, :]
        m = Moffat2D(1.0, xi, yi, alpha, beta)(sx, sy).mean(axis=(2, 3))
        total = np.pi * alpha ** 2 / (beta - 1)  # the profile's integral (amplitude 1)
        img[cy - half:cy + half + 1, cx - half:cx + half + 1] += fi * m / total
    return img


def _write(root, name, img, *, extra_cards=None):
    root.mkdir(parents=True, exist_ok=True)
    header = make_tan(img.shape, SCALE, ra=150.0, dec=2.0).to_header()
    path = root / f"{name}.fits"
    fits.writeto(path, img.astype(np.float32), header=header, overwrite=True)
    return path


def _catalog(root, shape, x, y):
    ra, dec = make_tan(shape, SCALE, ra=150.0, dec=2.0).all_pix2world(x, y, 0)
    path = root / "cat.csv"
    Table({"id": np.arange(1, x.size + 1), "ra": ra, "dec": dec}).write(path, overwrite=True)
    return path


def _forced(repo, band):
    """(externalId - 1, psfFlux, psfFluxErr) of the unflagged catalog rows of one band."""
    t = sql(repo, f"SELECT externalId, psfFlux, psfFluxErr FROM forced_source WHERE band = '{band}' "
                  "AND deblend_nChild = 0 AND NOT psfFlux_flag ORDER BY externalId").to_pandas()
    return t.externalId.to_numpy() - 1, t.psfFlux.to_numpy(), t.psfFluxErr.to_numpy()


# -- background and noise ------------------------------------------------------------------
def test_clipping_factor_matches_a_clipped_gaussian():
    from astropy.stats import sigma_clip

    z = np.random.default_rng(0).normal(size=400_000)
    assert np.std(sigma_clip(z, sigma=3, maxiters=None).compressed()) == pytest.approx(clipped_std_factor(), abs=2e-3)


@pytest.mark.parametrize("kind", ["constant", "gradient"])
def test_background_and_sigma_estimates_match_the_truth(kind):
    rng = np.random.default_rng(11)
    shape, sigma, fwhm = (192, 224), 2.0, 3.0
    yy, xx = np.indices(shape)
    truth = np.full(shape, 40.0) if kind == "constant" else 40.0 + 0.06 * xx - 0.04 * yy  # ~10 sigma across
    x, y = _lattice(shape, 24, rng, margin=10)
    flux = rng.uniform(200, 20000, x.size)
    img = truth + gaussian_image(shape, x, y, flux, fwhm) + rng.normal(0, sigma, shape)
    bad = np.zeros(shape, bool)
    b = estimate_background(img, bad, fwhm=fwhm, x=x, y=y, label="synthetic")
    err = (b.background - truth) / sigma
    print(f"{kind}: background - truth median {np.median(err):+.4f} sigma, rms {np.sqrt(np.mean(err ** 2)):.4f} "
          f"sigma, max {np.abs(err).max():.3f}; estimated sigma / truth median {np.median(b.rms) / sigma:.4f}; "
          f"box {b.box}, masked {b.masked:.2f}")
    # the level to within 3% of the noise; per pixel, the box estimates scatter by ~0.1 sigma (SExtractor mode of
    # ~600 pixels) and, on a gradient, by where the unmasked pixels of a box lie
    assert abs(np.median(err)) < 0.03 and np.sqrt(np.mean(err ** 2)) < 0.15
    assert np.median(b.rms) == pytest.approx(sigma, rel=0.05)
    assert np.percentile(b.rms, 5) > 0.9 * sigma and np.percentile(b.rms, 95) < 1.1 * sigma  # per-box noise ~3%


def test_background_box_option_is_checked(tmp_path):
    with pytest.raises(InputError, match="--background-box 2 must be an integer"):
        estimate_background(np.zeros((40, 40)), np.zeros((40, 40), bool), fwhm=2, box=2, label="band g (x.fits)")
    with pytest.raises(InputError, match="--background-box applies to --background estimate"):
        BandSpec(name="g", image="x.fits", sigma="1", psf_fwhm="2px", background_box=20)
    with pytest.raises(InputError, match="use --sigma estimate"):
        BandSpec(name="g", image="x.fits", variance="estimate", psf_fwhm="2px")


def test_sigma_estimate_gives_unit_pulls(tmp_path, caplog):
    """Forced psfFlux with --sigma/--background estimate on isolated stars: pull std ~1, recorded in repository.json."""
    rng = np.random.default_rng(5)
    shape, sigma, fwhm = (240, 240), 1.5, 3.0
    x, y = _lattice(shape, 20, rng, margin=12)
    yy, xx = np.indices(shape)
    truth = {}
    bands = []
    for band in ("g", "r"):  # two noise realisations of the same field: 242 pulls
        truth[band] = rng.uniform(30, 300, x.size)  # S/N 2..20 per star: the background noise dominates
        img = 25.0 + 0.02 * xx + gaussian_image(shape, x, y, truth[band], fwhm) + rng.normal(0, sigma, shape)
        path = _write(tmp_path / "in", band, img)
        bands.append(BandSpec(name=band, image=str(path), sigma="estimate", background="estimate",
                              psf_fwhm=f"{fwhm}px", zero_point=ZP))
    cat = _catalog(tmp_path / "in", shape, x, y)
    with caplog.at_level(logging.WARNING, logger="forcedphot.ingest"):
        ingest_fits(tmp_path / "repo", bands, CatalogSpec(path=str(cat), deblend="none"))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("background estimated with photutils Background2D" in m for m in lines) == 2
    assert sum("noise sigma estimated as the background RMS" in m and "Poisson" in m for m in lines) == 2
    record = json.loads((tmp_path / "repo" / "repository.json").read_text())["ingest"]["bands"]["g"]
    assert record["noise"]["sigma"]["estimate"]["method"] == "photutils.Background2D"
    assert record["background"]["estimate"]["box"] == 30 and record["psf"] == {"gaussian_fwhm_px": 3.0}
    assert main(["run", "--repo", str(tmp_path / "repo"), "-q"]) == 0
    pulls = []
    for band in ("g", "r"):
        rows, flux, err = _forced(tmp_path / "repo", band)
        assert rows.size == x.size
        pulls.append((flux - truth[band][rows]) / err)
    pulls = np.concatenate(pulls)
    print(f"pulls: mean {pulls.mean():+.3f}, std {pulls.std():.3f} over {pulls.size} stars")
    assert abs(pulls.mean()) < 0.15 and 0.9 < pulls.std() < 1.1


# -- PSF estimate -----------------------------------------------------------------------------
def _fit_fwhm(psf):
    from photutils.psf import fit_fwhm

    k = psf.shape[0] // 2
    return float(fit_fwhm(psf, xypos=(k, k), fit_shape=min(psf.shape[0], 15))[0])


def test_psf_estimate_recovers_a_moffat_psf(tmp_path, caplog):
    rng = np.random.default_rng(8)
    shape, sigma, fwhm, beta = (310, 310), 1.0, 3.0, 3.5
    x, y = _lattice(shape, 30, rng, margin=25)  # 81 stars
    truth = 10 ** rng.uniform(3.3, 4.5, x.size)  # peak S/N ~ 200..3000
    img = moffat_image(shape, x, y, truth, fwhm, beta, half=16) + rng.normal(0, sigma, shape)  # 99.97% of the flux
    path = _write(tmp_path / "in", "g", img)
    cat = _catalog(tmp_path / "in", shape, x, y)
    band = BandSpec(name="g", image=str(path), sigma=str(sigma), psf="estimate", zero_point=ZP)
    with caplog.at_level(logging.WARNING, logger="forcedphot.ingest"):
        ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=str(cat), deblend="none"))
    line = next(r.getMessage() for r in caplog.records if "PSF estimated with photutils EPSFBuilder" in r.getMessage())
    psf_file = tmp_path / "repo" / "ingest" / "psf_g.fits"
    assert str(psf_file) in line
    with fits.open(psf_file) as h:
        built, n_stars = h[0].data.astype(float), h[0].header["NSTARS"]
    record = json.loads((tmp_path / "repo" / "repository.json").read_text())["ingest"]["bands"]["g"]["psf"]
    assert record["estimate"]["stars"] == n_stars and n_stars >= 40 and record["estimate"]["file"] == "ingest/psf_g.fits"
    assert built.sum() == pytest.approx(1.0, abs=1e-5)
    k = built.shape[0] // 2
    true_psf = moffat_image(built.shape, [k], [k], [1.0], fwhm, beta, half=k)  # the same, centred on a pixel
    got, want = _fit_fwhm(built), _fit_fwhm(true_psf)
    print(f"estimated PSF from {n_stars} stars: FWHM {got:.4f} px vs truth {want:.4f} px; peak {built.max():.4f} vs "
          f"{true_psf.max():.4f}")
    assert got == pytest.approx(want, rel=0.03)
    assert main(["run", "--repo", str(tmp_path / "repo"), "-q"]) == 0
    rows, flux, _ = _forced(tmp_path / "repo", "g")
    ratio = flux / truth[rows]
    print(f"psfFlux / truth: median {np.median(ratio):.4f}, scatter {np.std(ratio):.4f} over {rows.size} stars")
    assert rows.size == x.size and np.median(ratio) == pytest.approx(1.0, abs=0.01)


def test_psf_estimate_needs_enough_stars(tmp_path):
    rng = np.random.default_rng(2)
    shape = (96, 96)
    x, y = np.array([20.3, 70.8, 45.1, 20.0, 74.4, 46.0]), np.array([20.6, 22.1, 50.2, 74.9, 73.3, 90.0])
    img = gaussian_image(shape, x, y, np.full(x.size, 5000.0), 3.0) + rng.normal(0, 1.0, shape)
    path = _write(tmp_path / "in", "g", img)
    cat = _catalog(tmp_path / "in", shape, x, y)
    band = BandSpec(name="g", image=str(path), sigma="1", psf="estimate", zero_point=ZP)
    with pytest.raises(InputError, match=r"band g \(.*g.fits\): --psf estimate needs at least 10 bright isolated stars; "
                                         r"5 of 6 catalog objects qualified \(1 near an edge"):
        ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=str(cat), deblend="none"))
    assert not (tmp_path / "repo").exists()


# -- a supplied PSF's pixel scale --------------------------------------------------------------
def _gaussian_samples(n, fwhm):
    """A Gaussian sampled at pixel centres (a model PSF at its own pixel scale)."""
    s = fwhm / (2 * np.sqrt(2 * np.log(2)))
    o = np.arange(n) - (n - 1) / 2
    g = np.exp(-0.5 * (o / s) ** 2)
    return np.outer(g, g) / np.outer(g, g).sum()


def test_header_pixel_scale_keywords():
    h = fits.Header
    assert header_pixel_scale(h({"SECPIX": 0.30325})) == (0.30325, 0.30325, "SECPIX")
    assert header_pixel_scale(h({"PIXSCALE": 0.1})) == (0.1, 0.1, "PIXSCALE")
    assert header_pixel_scale(h({"PIXSCAL1": -0.11, "PIXSCAL2": 0.11})) == (0.11, 0.11, "PIXSCAL1/2")
    sx, sy, key = header_pixel_scale(h({"CDELT1": -1e-5, "CDELT2": 1e-5}))
    assert (sx, sy, key) == (pytest.approx(0.036), pytest.approx(0.036), "CDELT1/2")
    sx, _, key = header_pixel_scale(h({"CD1_1": 0.0, "CD1_2": 2e-5, "CD2_1": -2e-5, "CD2_2": 0.0}))
    assert (sx, key) == (pytest.approx(0.072), "CD matrix")
    assert header_pixel_scale(h({"CDELT1": 1.0, "CDELT2": 1.0})) is None  # a plain pixel axis, not degrees
    assert header_pixel_scale(h({"CDELT1": 0.05, "CDELT2": 0.05, "CUNIT1": "arcsec", "CUNIT2": "arcsec"}))[0] == 0.05
    assert header_pixel_scale(h()) is None


def test_psf_scale_match_oversampling_and_resampling(caplog):
    psf = _gaussian_samples(81, 8.0)
    same, f, rec = match_pixel_scale(psf, fits.Header({"SECPIX": 0.3}), image_scale=1.2, oversampling=None, label="p")
    assert same is psf and f == 4 and "resampled_zoom" not in rec  # the oversampling comes from the header
    with caplog.at_level(logging.WARNING):
        out, f, rec = match_pixel_scale(psf, fits.Header({"SECPIX": 0.30325}), image_scale=1.2, oversampling=4,
                                        label="p")
    assert f == 4 and rec["resampled_zoom"][0] == pytest.approx(1.01083, rel=1e-4)
    assert out.shape[0] % 8 == 4 and out.sum() == pytest.approx(1.0)  # k x 4 pixels, k odd: no half-pixel shift
    assert "differs from the image's 1.2 arcsec/px by 1.1%; resampled" in caplog.text
    with pytest.raises(InputError, match=r"p: PSF pixel scale 0.3 arcsec \(SECPIX\) x oversampling 4 = 1.2 arcsec "
                                         r"differs from the image's 1.25 arcsec/px by 4.0%; resample the PSF"):
        match_pixel_scale(psf, fits.Header({"SECPIX": 0.3}), image_scale=1.25, oversampling=4, mode="refuse",
                          label="p")
    with pytest.raises(InputError, match="more than 2x coarser than the image's, too coarse to resample"):
        match_pixel_scale(psf, fits.Header({"SECPIX": 0.9}), image_scale=0.3, oversampling=None, label="p")
    kept, f, _ = match_pixel_scale(psf, fits.Header({"SECPIX": 0.9}), image_scale=0.3, oversampling=2, mode="ignore",
                                   label="p")
    assert kept is psf and f == 2


def test_psf_twice_coarser_is_resampled_and_fluxes_are_right(tmp_path, capsys, caplog):
    rng = np.random.default_rng(4)
    shape, sigma, fwhm = (200, 200), 0.5, 8.0
    x, y = _lattice(shape, 40, rng, margin=32)  # >= 24 px from the edges: the 43 px PSF box fits
    truth = rng.uniform(2e4, 5e4, x.size)
    img = gaussian_image(shape, x, y, truth, fwhm) + rng.normal(0, sigma, shape)
    path = _write(tmp_path / "in", "g", img)
    cat = _catalog(tmp_path / "in", shape, x, y)
    psf_path = tmp_path / "in" / "psf.fits"
    fits.writeto(psf_path, _gaussian_samples(21, fwhm / 2).astype(np.float32), header=fits.Header({"SECPIX": 2 * SCALE}))
    argv = ["ingest", "fits", "--repo", str(tmp_path / "repo"), "--band", "g", "--image", str(path), "--sigma",
            str(sigma), "--psf", str(psf_path), "--zero-point", str(ZP), "--catalog", str(cat), "--deblend", "none"]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "PSF pixel scale 0.4 arcsec (SECPIX) differs from the image's 0.2 arcsec/px by 100.0%; resampled by 2" \
        in caplog.text
    assert main(["run", "--repo", str(tmp_path / "repo"), "-q"]) == 0
    rows, flux, _ = _forced(tmp_path / "repo", "g")
    ratio = flux / truth[rows]
    print(f"resampled PSF: psfFlux / truth median {np.median(ratio):.4f} over {rows.size} stars")
    assert rows.size == x.size and np.median(ratio) == pytest.approx(1.0, abs=0.01)
    # the same PSF refused when asked not to resample: one line naming both scales, no repository
    capsys.readouterr()
    assert main([*argv[:3], str(tmp_path / "refused"), *argv[4:], "--psf-scale-mismatch", "refuse"]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "PSF pixel scale 0.4 arcsec (SECPIX) differs from the image's 0.2 arcsec/px" in err
    assert "resample the PSF" in err
    assert not (tmp_path / "refused").exists()


# -- the Spitzer GLIMPSE mosaic ----------------------------------------------------------------
SPITZER = REAL_DATA / "spitzer"


@pytest.mark.realdata
@pytest.mark.skipif(not (SPITZER / "spitzer_example_image.fits").is_file(),
                    reason=f"Spitzer test data not found in {SPITZER}")
def test_spitzer_estimated_psf_matches_published_fluxes(tmp_path, caplog):
    """psfFlux / f4_5 with the PSF estimated from the mosaic vs the supplied in-flight PSF (issue: -15%).

    The GLIMPSE catalog (l/b, no ids) goes in as it is; rows are matched back by position.
    """
    from astropy.coordinates import SkyCoord

    t = Table.read(SPITZER / "spitzer_example_catalog.xml")
    published = SkyCoord(t["l"], t["b"], frame="galactic")
    f45 = np.asarray(t["f4_5"], float)  # mJy
    common = ["--band", "i2", "--image", str(SPITZER / "spitzer_example_image.fits"), "--sigma", "estimate",
              "--background", "estimate"]
    psfs = {"estimated": ["--psf", "estimate"],
            "supplied": ["--psf", str(SPITZER / "irac_ch2_flight.fits"), "--psf-oversampling", "4"]}
    stats = {}
    for name, opts in psfs.items():
        repo = tmp_path / name
        with caplog.at_level(logging.WARNING):
            assert main(["ingest", "fits", "--repo", str(repo), *common, *opts, "--catalog",
                         str(SPITZER / "spitzer_example_catalog.xml"), "--deblend", "none"]) == 0
        assert main(["run", "--repo", str(repo), "-q"]) == 0
        f = sql(repo, "SELECT coord_ra, coord_dec, psfFlux FROM forced_source WHERE NOT psfFlux_flag").to_pandas()
        idx, sep, _ = SkyCoord(f.coord_ra.to_numpy(), f.coord_dec.to_numpy(), unit="deg").match_to_catalog_sky(published)
        assert sep.arcsec.max() < 0.01
        ratio = f.psfFlux.to_numpy() / 1e6 / f45[idx]  # nJy -> mJy
        med = float(np.median(ratio))
        stats[name] = (med, 1.4826 * float(np.median(np.abs(ratio - med))), ratio.size)
    err = caplog.text
    assert "irac_ch2_flight.fits: PSF pixel scale 0.30325 arcsec (SECPIX) x oversampling 4" in err
    assert "PSF estimated with photutils EPSFBuilder" in err and str(tmp_path / "estimated" / "ingest") in err
    for name, (med, scatter, n) in stats.items():
        print(f"Spitzer {name} PSF: psfFlux / f4_5 median {med:.4f}, scatter (MAD) {scatter:.4f}, {n} stars")
    est, sup = stats["estimated"][0], stats["supplied"][0]
    assert abs(est - 1) < abs(sup - 1)
    assert abs(est - 1) < 0.05 and stats["estimated"][2] >= 200


def test_psf_estimate_ignores_detection_planes_but_not_defects(tmp_path, caplog):
    """A Rubin coadd's mask sets DETECTED on every source: that marks no defect, so every star stays a candidate;
    a BAD pixel in a cutout still rejects its star."""
    rng = np.random.default_rng(9)
    shape, sigma, fwhm, beta = (250, 250), 1.0, 3.0, 3.5
    x, y = _lattice(shape, 30, rng, margin=25)
    truth = 10 ** rng.uniform(3.5, 4.5, x.size)
    img = moffat_image(shape, x, y, truth, fwhm, beta, half=16) + rng.normal(0, sigma, shape)
    path = _write(tmp_path / "in", "g", img)
    cat = _catalog(tmp_path / "in", shape, x, y)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    near = np.min([(xx - xi) ** 2 + (yy - yi) ** 2 for xi, yi in zip(x, y)], axis=0) < 6 ** 2
    mask = np.where(near, 1 << 5, 0).astype(np.int32)  # bit 5 = DETECTED: around every star
    bad = [0, 1, 2]
    for i in bad:  # bit 0 = BAD: one pixel next to three stars
        mask[int(round(y[i])), int(round(x[i])) + 2] |= 1
    mpath = tmp_path / "in" / "mask.fits"
    fits.writeto(mpath, mask)
    band = BandSpec(name="g", image=str(path), sigma=str(sigma), psf="estimate", zero_point=ZP, mask=str(mpath),
                    mask_bits="BAD=0,DETECTED=5")
    with caplog.at_level(logging.WARNING, logger="forcedphot.ingest"):
        ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=str(cat), deblend="none"))
    record = json.loads((tmp_path / "repo" / "repository.json").read_text())["ingest"]["bands"]["g"]["psf"]
    n = record["estimate"]["stars"]
    print(f"{n} stars of {x.size} (3 with a BAD pixel, DETECTED around all)")
    assert n == x.size - len(bad)  # before: DETECTED made every star unusable (fewer than 10: an error)
