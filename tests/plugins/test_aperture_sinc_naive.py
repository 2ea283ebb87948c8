"""Sinc apertures against analytic enclosed fluxes; naive apertures against a pixel-centre loop."""

import numpy as np
import pytest

from forcedphot.cutouts import CutoutBatch, PaddedCoadd
from forcedphot.plugins.aperture_naive import naive_aperture_sums
from forcedphot.plugins.aperture_sinc import sinc_aperture_sums, sinc_coefficients, sinc_width

from tests.plugins.test_aperture_exact import _coadd


def test_sinc_widths_and_normalisation():
    assert [sinc_width(r) for r in (3.0, 4.5, 6.0, 9.0, 12.0)] == [15, 31, 31, 63, 63]
    c = sinc_coefficients(6.0, np.array([0.0, 0.31]), np.array([0.0, -0.42]))
    np.testing.assert_allclose(c.sum(axis=(1, 2)), np.pi * 36, rtol=1e-12)


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_sinc_apertures_recover_enclosed_flux_of_gaussians(sigma):
    """Point-sampled, well-sampled Gaussians: sum(c I) = flux * (1 - exp(-r^2 / 2 sigma^2))."""
    rng = np.random.default_rng(int(sigma * 10))
    h = w = 160
    xs = rng.uniform(60, 100, 6)
    ys = rng.uniform(60, 100, 6)
    yy, xx = np.mgrid[0:h, 0:w]
    for x0, y0 in zip(xs, ys):
        img = (np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / sigma**2) / (2 * np.pi * sigma**2)).astype(np.float64)
        padded = PaddedCoadd(_coadd(img.astype(np.float32), np.ones_like(img, np.float32)), pad=40)
        padded.image = np.pad(img, 40)  # keep float64 pixels for a 1e-4 comparison
        ix = np.array([int(np.floor(x0 + 0.5)) + 40])
        iy = np.array([int(np.floor(y0 + 0.5)) + 40])
        fx = np.array([x0 - np.floor(x0 + 0.5)])
        fy = np.array([y0 - np.floor(y0 + 0.5)])
        results = sinc_aperture_sums(lambda h: CutoutBatch(padded, ix, iy, h), fx, fy, (3.0, 4.5, 6.0, 9.0, 12.0))
        for r, (flux, var, invalid, truncated) in results.items():
            want = 1 - np.exp(-0.5 * r * r / sigma**2)
            assert abs(flux[0] - want) < 1e-4, (sigma, r, flux[0], want)
            assert not truncated[0] and invalid[0] == 0


def test_naive_apertures_equal_a_pixel_centre_loop():
    rng = np.random.default_rng(2)
    h, w = 50, 70
    image = rng.normal(10, 3, (h, w)).astype(np.float32)
    variance = rng.uniform(1, 2, (h, w)).astype(np.float32)
    padded = PaddedCoadd(_coadd(image, variance), pad=20)
    x = np.r_[rng.uniform(18, 52, 10), 35.0, 35.5]
    y = np.r_[rng.uniform(18, 32, 10), 25.0, 25.5]
    for r in (3.0, 4.5, 17.0):
        flux, var, invalid = naive_aperture_sums(padded, x + 20, y + 20, r)
        for k in range(x.size):
            yy, xx = np.mgrid[0:h, 0:w]
            inside = (xx - x[k]) ** 2 + (yy - y[k]) ** 2 <= r * r
            assert flux[k] == pytest.approx(image[inside].astype(float).sum(), rel=1e-9)
            assert var[k] == pytest.approx(variance[inside].astype(float).sum(), rel=1e-9)
            assert invalid[k] == 0
