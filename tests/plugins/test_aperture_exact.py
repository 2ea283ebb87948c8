"""Exact circular apertures against a slow, obviously-correct reference (numerical integration)."""

import numpy as np
import pytest
from scipy import integrate

from forcedphot.cutouts import PaddedCoadd
from forcedphot.flags import MaskPlanes
from forcedphot.io.coadd import Coadd
from forcedphot.plugins.aperture import aperture_name
from forcedphot.plugins.aperture_exact import exact_aperture_sums, pixel_overlap
from forcedphot.psf import PsfGrid
from forcedphot.skymap import Box, TractInfo


def overlap_by_quadrature(cx, cy, r):
    """Area of the unit pixel centred at (cx, cy) inside the circle of radius r at the origin."""
    x0, x1, y0, y1 = cx - 0.5, cx + 0.5, cy - 0.5, cy + 0.5
    corners = np.hypot([x0, x1, x0, x1], [y0, y0, y1, y1])
    if corners.max() <= r:
        return 1.0
    if np.hypot(np.clip(0, x0, x1), np.clip(0, y0, y1)) >= r:
        return 0.0

    def height(u):
        s = np.sqrt(max(r * r - u * u, 0.0))
        return max(0.0, min(y1, s) - max(y0, -s))

    kinks = [-r, r] + [sg * np.sqrt(r * r - v * v) for v in (y0, y1) if abs(v) < r for sg in (-1, 1)]
    edges = [x0] + sorted(k for k in kinks if x0 < k < x1) + [x1]
    return sum(integrate.quad(height, a, b, epsabs=1e-13, epsrel=1e-12)[0] for a, b in zip(edges[:-1], edges[1:]))


def slow_aperture(image, variance, x, y, r, squared=True):
    """Loop over every pixel of the image near (x, y): sum w*I and w^2*V (or w*V)."""
    h, w = image.shape
    flux = var = 0.0
    for j in range(max(0, int(y - r) - 2), min(h, int(y + r) + 3)):
        for i in range(max(0, int(x - r) - 2), min(w, int(x + r) + 3)):
            wt = overlap_by_quadrature(i - x, j - y, r)
            flux += wt * image[j, i]
            var += (wt * wt if squared else wt) * variance[j, i]
    return flux, var


def test_pixel_overlap_matches_quadrature():
    rng = np.random.default_rng(5)
    for r in (0.7, 3.0, 4.5, 12.0, 70.0):
        dx = rng.uniform(-r - 1.5, r + 1.5, 400)
        dy = rng.uniform(-r - 1.5, r + 1.5, 400)
        fast = pixel_overlap(dx, dy, r)
        slow = np.array([overlap_by_quadrature(a, b, r) for a, b in zip(dx, dy)])
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


def test_weights_sum_to_circle_area():
    for r in (3.0, 4.5, 17.0):
        m = int(r) + 3
        yy, xx = np.mgrid[-m:m + 1, -m:m + 1].astype(float)
        assert pixel_overlap(xx - 0.37, yy + 0.21, r).sum() == pytest.approx(np.pi * r * r, rel=1e-12)


def _coadd(image, variance):
    h, w = image.shape
    tract = TractInfo(0, 10.0, 0.0, 0.2, 100, 0, 1, 1)
    return Coadd(0, 0, "r", Box(0, 0, w - 1, h - 1), image, np.zeros(image.shape, np.int32), variance, tract.wcs,
                 PsfGrid([0.0], [0.0], np.ones((1, 1, 3, 3)) / 9), 1.0, MaskPlanes())


@pytest.mark.parametrize("squared", [True, False])
def test_exact_apertures_equal_slow_reference_including_edges(squared):
    rng = np.random.default_rng(17)
    h, w = 48, 61
    image = rng.normal(100.0, 20.0, (h, w)).astype(np.float32)
    variance = rng.uniform(1.0, 5.0, (h, w)).astype(np.float32)
    padded = PaddedCoadd(_coadd(image, variance), pad=16)
    # interior, near every edge and corner, on pixel edges (x.5) and centres
    x = np.r_[rng.uniform(0, w - 1, 8), 0.0, w - 1.0, 2.5, w - 3.5, 30.5, 0.2, w - 1.3]
    y = np.r_[rng.uniform(0, h - 1, 8), 0.0, h - 1.0, 20.0, 1.5, h - 2.5, h - 0.6, 0.4]
    ix = np.floor(x + 0.5).astype(np.int64) + padded.pad
    iy = np.floor(y + 0.5).astype(np.int64) + padded.pad
    fx, fy = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
    for r in (3.0, 4.5, 12.0):
        flux, var, invalid = exact_aperture_sums(padded, ix, iy, fx, fy, r, squared_errors=squared)
        slow = np.array([slow_aperture(image.astype(float), variance.astype(float), a, b, r, squared)
                         for a, b in zip(x, y)])
        np.testing.assert_allclose(flux, slow[:, 0], rtol=1e-6)
        np.testing.assert_allclose(var, slow[:, 1], rtol=1e-6)
        # off-image pixels are "invalid" weight: zero only for apertures that stay on the image
        inside = (x - r >= -0.5) & (x + r <= w - 0.5) & (y - r >= -0.5) & (y + r <= h - 0.5)
        assert (invalid[inside] < 1e-9).all() and (invalid[~inside] > 0).all()


def test_aperture_names_follow_rubin():
    assert [aperture_name(r) for r in (3.0, 4.5, 12.0, 70.0)] == ["ap03", "ap04p5", "ap12", "ap70"]
