"""Sinc apertures against analytic enclosed fluxes; naive apertures against a pixel-centre loop."""

import numpy as np
import pytest

from forcedphot.kernels.pixels import no_footprints
from forcedphot.kernels.aperture_naive import naive_apertures
from forcedphot.kernels.aperture_sinc import sinc_apertures, sinc_coefficients, sinc_width


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
    radii = (3.0, 4.5, 6.0, 9.0, 12.0)
    ones = np.ones((h, w))
    valid = np.ones((h, w), np.uint8)
    for x0, y0 in zip(xs, ys):
        img = np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / sigma**2) / (2 * np.pi * sigma**2)  # float64 pixels
        cx = np.array([int(np.floor(x0 + 0.5))])
        cy = np.array([int(np.floor(y0 + 0.5))])
        flux, _, var, invalid, truncated, _ = sinc_apertures(img, img, ones, valid, no_footprints(1), cx, cy, x0 - cx,
                                                          y0 - cy, np.ones((1, len(radii))), radii)
        for k, r in enumerate(radii):
            want = 1 - np.exp(-0.5 * r * r / sigma**2)
            assert abs(flux[0, k] - want) < 1e-4, (sigma, r, flux[0, k], want)
            assert not truncated[0, k] and invalid[0, k] == 0


def test_naive_apertures_equal_a_pixel_centre_loop():
    rng = np.random.default_rng(2)
    h, w = 50, 70
    image = rng.normal(10, 3, (h, w)).astype(np.float32)
    variance = rng.uniform(1, 2, (h, w)).astype(np.float32)
    valid = np.ones((h, w), np.uint8)
    x = np.r_[rng.uniform(18, 52, 10), 35.0, 35.5]
    y = np.r_[rng.uniform(18, 32, 10), 25.0, 25.5]
    for r in (3.0, 4.5, 17.0):
        flux, _, var, invalid, _ = naive_apertures(image, image, variance, valid, no_footprints(x.size), x, y,
                                                np.ones((x.size, 1)), [r])
        flux, var, invalid = flux[:, 0], var[:, 0], invalid[:, 0]
        for k in range(x.size):
            yy, xx = np.mgrid[0:h, 0:w]
            inside = (xx - x[k]) ** 2 + (yy - y[k]) ** 2 <= r * r
            assert flux[k] == pytest.approx(image[inside].astype(float).sum(), rel=1e-9)
            assert var[k] == pytest.approx(variance[inside].astype(float).sum(), rel=1e-9)
            assert invalid[k] == 0
