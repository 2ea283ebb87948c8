"""GaapFlux validated against truth it did not render: analytic Gaussians and GalSim galaxies.

- A Gaussian galaxy (covariance S) through a Gaussian PSF has the closed form
  F_W = F sqrt(det W / det(W + S)) = F / sqrt(det(1 + S W^-1)) (the integral of F N(0, S) times
  exp(-x^T W^-1 x / 2)); every aperture is checked to 1e-3.
- GalSim renders exponential and de Vaucouleurs galaxies of several sizes in two bands whose
  Moffat PSFs differ by 30% in FWHM (pixel response included): the colours of the circular
  apertures (the same pre-seeing W in both bands) equal the true colour to 0.01 mag, and a point
  source's GAaP fluxes are its flux.
- Noisy images against their noiseless twin (variance = sky + source/gain per pixel): pulls of every
  GAaP flux have std 1 +- 0.1 and mean 0 +- 0.1.
"""

from __future__ import annotations

import numpy as np
import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.flags import MaskPlanes
from forcedphot.io.coadd import Coadd
from forcedphot.plugins.base import MeasurementContext
from forcedphot.plugins.gaap import APERTURES, SIGMAS, GaapFlux, base_name
from forcedphot.psf import PsfGrid
from forcedphot.skymap import Box, TractInfo
from forcedphot.stages import SourcePixels

SCALE = 0.2  # arcsec / pixel
SPACING = 180  # pixels between sources (the 3 arcsec aperture's weight reaches ~80 px)
K = 33  # PSF image size
CIRCULAR = [base_name(f"{s:.1f}".replace(".", "p")) for s in SIGMAS]


def _coadd(image, variance, psf_image):
    h, w = image.shape
    tract = TractInfo(0, 10.0, 0.0, SCALE, w, 0, 1, 1)
    assert h == w
    return Coadd(0, 0, "r", Box(0, 0, w - 1, h - 1), image.astype(np.float32), np.zeros(image.shape, np.int32),
                 variance.astype(np.float32), tract.wcs, PsfGrid([0.0], [0.0], psf_image[None, None]), 1.0, MaskPlanes())


def _measure(image, variance, psf_image, x, y, shape):
    coadd = _coadd(image, variance, psf_image)
    n = x.size
    ctx = MeasurementContext(coadd, ForcedPhotConfig(), {"id": np.arange(n)}, x=x, y=y, usable=np.ones(n, bool),
                             shape=shape, shape_ok=np.ones(n, bool))
    ctx.pixels = SourcePixels.build(coadd, n)
    return {k: np.asarray(v) for k, v in GaapFlux(ctx.config).measure(ctx).items()}


def _grid(n_side, rng):
    c = (np.arange(n_side) + 0.5) * SPACING
    x, y = (v.ravel() + rng.uniform(-0.5, 0.5, n_side * n_side) for v in np.meshgrid(c, c))
    return x, y, n_side * SPACING


def _gaussian_image(size, x, y, flux, cov):
    """Sum of Gaussians sampled at pixel centres (no pixel integration, as the Gaussian PSF image)."""
    img = np.zeros((size, size))
    r = np.arange(-60, 61)
    for xi, yi, f, c in zip(x, y, flux, cov):
        cx, cy = int(round(xi)), int(round(yi))
        dy, dx = np.meshgrid(r + cy - yi, r + cx - xi, indexing="ij")
        inv = np.linalg.inv(c)
        q = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
        img[cy - 60:cy + 61, cx - 60:cx + 61] += f * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(c)))
    return img


def test_gaussian_galaxies_through_a_gaussian_psf_match_the_closed_form():
    rng = np.random.default_rng(3)
    x, y, size = _grid(5, rng)
    n = x.size
    sigma_psf = 1.6
    r = np.arange(K) - K // 2
    psf = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma_psf ** 2)
    psf /= psf.sum()
    # intrinsic galaxy covariances (pixels^2): points, round and elliptical, up to larger than the apertures
    s_xx = rng.uniform(0.0, 60.0, n)
    e = rng.uniform(0.0, 0.5, n)
    theta = rng.uniform(0, np.pi, n)
    rot = np.stack([np.stack([np.cos(theta), -np.sin(theta)], -1), np.stack([np.sin(theta), np.cos(theta)], -1)], -2)
    diag = np.zeros((n, 2, 2))
    diag[:, 0, 0] = s_xx
    diag[:, 1, 1] = s_xx * (1 - e) / (1 + e)
    s = rot @ diag @ np.swapaxes(rot, 1, 2)
    s[:3] = 0.0  # point sources
    flux = rng.uniform(1e3, 1e4, n)
    image = _gaussian_image(size, x, y, flux, s + sigma_psf ** 2 * np.eye(2))
    out = _measure(image, np.ones_like(image), psf, x, y, s + sigma_psf ** 2 * np.eye(2))
    assert not out["gaapFlux_flag"].any() and not out["gaapFlux_flag_gaussianization"].any()
    p = 1.15 * sigma_psf  # the adaptive moments of a sampled Gaussian are its sigma^2 to < 1e-4
    w_all = {"gaapPsfFlux": 2 * p * p * np.eye(2)}
    for name, sig in zip(CIRCULAR, SIGMAS):
        w_all[name] = (sig / SCALE) ** 2 * np.eye(2)
    checked = 0
    for name, w in w_all.items():
        ok = ~out[f"{name}_flag"]
        expect = flux * np.sqrt(np.linalg.det(w) / np.linalg.det(w + s))
        if name != "gaapPsfFlux":
            assert (ok == ~out[f"{name}_flag_bigPsf"]).all()
        if ok.any():
            np.testing.assert_allclose(out[name][ok], expect[ok], rtol=1e-3, err_msg=name)
            checked += 1
    assert checked >= 6
    # uniform variance: the exact error sqrt(sum W'^2 V) / sum(W' P) equals Rubin's eps formula
    # 1/2 sqrt(det W / det Q) eps 2 sqrt(V pi sqrt(det Q)), eps^2 = sum_r C(r) exp(-r^T Q^-1 r / 4), C = K's
    # autocorrelation (here V = 1 and the Gaussianization is exact)
    from scipy.signal import correlate2d

    from tests.kernels.reference_gaap import gaussianization_kernel

    sigk = max(sigma_psf * np.sqrt(1.15 ** 2 - 1), 0.7)
    kernel, resid = gaussianization_kernel(psf, p, sigk, 10)
    assert resid < 1e-4
    auto = correlate2d(kernel, kernel, mode="full")
    rr = np.arange(auto.shape[0]) - auto.shape[0] // 2
    for name, w in w_all.items():
        q = w - p * p * np.eye(2)
        if np.linalg.det(q) <= 0 or q[0, 0] <= 0:
            continue
        qi = np.linalg.inv(q)
        eps2 = (auto * np.exp(-0.25 * (qi[0, 0] * rr[None, :] ** 2 + qi[1, 1] * rr[:, None] ** 2))).sum()
        rubin = 0.5 * np.sqrt(np.linalg.det(w) / np.linalg.det(q)) * np.sqrt(eps2) * 2 * np.sqrt(np.pi * np.sqrt(np.linalg.det(q)))
        ok = ~out[f"{name}_flag"]
        np.testing.assert_allclose(out[f"{name}Err"][ok], rubin, rtol=2e-3, err_msg=name)
    # Optimal: W = the (forced) shape + PSF moments
    w_opt = s + 2 * sigma_psf ** 2 * np.eye(2)
    expect = flux * np.sqrt(np.linalg.det(w_opt) / np.linalg.det(w_opt + s))
    ok = ~out["gaapOptimalFlux_flag"]
    assert ok.sum() == n
    np.testing.assert_allclose(out["gaapOptimalFlux"], expect, rtol=2e-3)


def _galsim_scene(fwhm, profiles, x, y, size, flux, rng_seed):
    import galsim

    psf = galsim.Moffat(beta=3.0, fwhm=fwhm)
    psf_image = psf.drawImage(nx=K, ny=K, scale=SCALE).array.astype(float)
    psf_image /= psf_image.sum()
    image = galsim.ImageD(size, size, scale=SCALE)
    for gal, xi, yi, f in zip(profiles, x, y, flux):
        stamp = galsim.ImageD(2 * 85 + 1, 2 * 85 + 1, scale=SCALE)
        cx, cy = int(round(xi)), int(round(yi))
        galsim.Convolve(gal.withFlux(f), psf).drawImage(stamp, offset=(xi - cx, yi - cy), add_to_image=True)
        image.array[cy - 85:cy + 86, cx - 85:cx + 86] += stamp.array
    return image.array, psf_image


def _profiles(n):
    import galsim

    out = []
    for i in range(n):
        kind = i % 3
        hlr = (0.25, 0.5, 1.0)[(i // 3) % 3]
        if kind == 0:
            gal = galsim.Gaussian(sigma=1e-3)  # a point source
        elif kind == 1:
            gal = galsim.Exponential(half_light_radius=hlr)
        else:
            gal = galsim.DeVaucouleurs(half_light_radius=hlr, trunc=8 * hlr)
        if kind:
            gal = gal.shear(q=0.6, beta=(37.0 * i) * galsim.degrees)
        out.append(gal)
    return out


@pytest.fixture(scope="module")
def two_bands():
    rng = np.random.default_rng(11)
    x, y, size = _grid(6, rng)
    n = x.size
    profiles = _profiles(n)
    flux_r = rng.uniform(2e4, 5e4, n)
    colour = 0.4  # g - r, magnitudes
    bands = {}
    for band, fwhm, flux in (("r", 0.7, flux_r), ("g", 0.91, flux_r * 10 ** (-0.4 * colour))):
        image, psf = _galsim_scene(fwhm, profiles, x, y, size, flux, 1)
        bands[band] = (image, psf, flux)
    shape = np.tile(np.eye(2) * 9.0, (n, 1, 1))  # Optimal is not tested here (its W holds each band's PSF)
    return x, y, bands, shape, colour


def test_gaap_colours_of_galsim_galaxies_are_the_true_colour_across_a_30pc_psf_change(two_bands):
    x, y, bands, shape, colour = two_bands
    out = {b: _measure(img, np.ones_like(img), psf, x, y, shape) for b, (img, psf, _) in bands.items()}
    stars = np.arange(x.size) % 3 == 0
    n_checked = 0
    for name in CIRCULAR:
        ok = ~out["g"][f"{name}_flag"] & ~out["r"][f"{name}_flag"]
        if name in ("gaap0p5Flux",):
            continue  # 0.5 arcsec: not larger than the g band's Gaussianized PSF (bigPsf)
        assert ok.all(), name
        # aperture correction as ApCorr makes it: each band's fluxes divided by the stars' measured / true
        # (the Moffat wings beyond the 33 px PSF model: 0.12% of the flux in r, 0.33% in g)
        corr = {b: np.median(out[b][name][stars] / bands[b][2][stars]) for b in "gr"}
        c = -2.5 * np.log10((out["g"][name] / corr["g"]) / (out["r"][name] / corr["r"]))
        print(f"{name}: colour - truth max |{np.abs(c - colour).max():.4f}| median {np.median(c - colour):+.4f}")
        assert np.abs(c - colour).max() < 0.01, name
        n_checked += 1
    assert n_checked == 5
    assert out["g"]["gaap0p5Flux_flag_bigPsf"].all()
    # point sources: every GAaP aperture measures the flux within the PSF model's box (99.67% of it in g)
    for b in "gr":
        for name in ["gaapPsfFlux"] + CIRCULAR[1:]:
            ratio = out[b][name][stars] / bands[b][2][stars]
            assert np.abs(ratio - 1).max() < 0.005, (b, name, ratio)
            assert np.ptp(ratio) < 1e-3, (b, name, ratio)


def test_gaap_pulls_against_the_noiseless_twin(two_bands):
    x, y, bands, shape, _ = two_bands
    rng = np.random.default_rng(5)
    sky, gain = 200.0, 2.0
    pulls = {ap: [] for ap in APERTURES}
    for band, (img, psf, _) in bands.items():
        variance = sky + img / gain
        twin = _measure(img, variance, psf, x, y, shape)
        for _ in range(8):
            noisy = img + rng.normal(0.0, np.sqrt(variance))
            out = _measure(noisy, variance, psf, x, y, shape)
            for ap in APERTURES:
                b = base_name(ap)
                ok = ~out[f"{b}_flag"]
                pulls[ap].append(((out[b] - twin[b]) / out[f"{b}Err"])[ok])
                np.testing.assert_allclose(out[f"{b}Err"][ok], twin[f"{b}Err"][ok], rtol=1e-6)  # variance is given
    for ap in APERTURES:
        p = np.concatenate(pulls[ap])
        print(f"{ap}: n={p.size} mean {p.mean():+.3f} std {p.std(ddof=1):.3f}")
        assert p.size >= (250 if ap == "0p5" else 500)  # 0.5 arcsec: bigPsf in g
        assert abs(p.mean()) < 0.1
        assert abs(p.std(ddof=1) - 1) < 0.1
