"""Excluded pixels (a bad mask plane) in the aperture, Kron and Gaussian kernels, against numpy loops.

The kernels read the pixel classes (0 invalid, 1 valid, 2 excluded: footprints.pixel_classes) as
their validity plane: excluded pixels are summed like valid ones (every flux bit-identical to
the plain validity plane) and the kernels report how much of each aperture lies on them.
"""

import numpy as np
import pytest

from forcedphot.kernels.apertures import ellipse_sums, exact_fluxes
from forcedphot.kernels.footprints import EXCLUDED, pixel_classes
from forcedphot.kernels.moments import MAX_EXPONENT, gaussian_flux, read_only, spatial_order
from forcedphot.kernels.pixels import no_footprints
from forcedphot.plugins.aperture_exact import pixel_overlap
from forcedphot.kernels.aperture_naive import naive_apertures
from forcedphot.kernels.aperture_sinc import sinc_apertures, sinc_width

H, W = 90, 110
RADII = (3.0, 4.5, 6.0, 9.0)


@pytest.fixture(scope="module")
def planes():
    """Noise image, variance, classes with a masked column, a masked row segment, scattered masked
    pixels and an invalid box; sources near all of them."""
    rng = np.random.default_rng(5)
    image = rng.normal(0, 1, (H, W)).astype(np.float32)
    variance = rng.uniform(1, 2, (H, W)).astype(np.float32)
    mask = np.zeros((H, W), np.int32)
    mask[:, 40] |= 1  # a bad column (bit 0)
    mask[60, 70:90] |= 2  # a saturated streak (bit 1)
    mask[rng.integers(0, H, 40), rng.integers(0, W, 40)] |= 1
    mask[10:14, 90:95] |= 4  # NO_DATA: invalid
    valid = np.ones((H, W), np.uint8)
    valid[10:14, 90:95] = 0
    classes = pixel_classes(valid, mask, np.int32(3))
    n = 60
    x = np.r_[rng.uniform(20, 90, n - 4), 40.0, 40.4, 46.2, 80.3]
    y = np.r_[rng.uniform(20, 70, n - 4), 45.0, 30.6, 50.0, 60.2]
    return image, variance, valid, classes, x, y


def test_pixel_classes(planes):
    _, _, valid, classes, _, _ = planes
    assert set(np.unique(classes)) == {0, 1, EXCLUDED}
    assert (classes[:, 40][valid[:, 40] == 1] == EXCLUDED).all() and (classes[10:14, 90:95] == 0).all()


def _centres(x, y):
    cx = np.floor(x + 0.5).astype(np.int64)
    cy = np.floor(y + 0.5).astype(np.int64)
    return cx, cy, x - cx, y - cy


def test_naive_exact_sinc_count_the_excluded_pixels_they_reach(planes):
    image, variance, valid, classes, x, y = planes
    n = x.size
    cx, cy, fx, fy = _centres(x, y)
    fp = no_footprints(n)
    todo = np.ones((n, len(RADII)), np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    excluded = classes == EXCLUDED
    naive = naive_apertures(image, image, variance, classes, fp, x, y, todo, RADII)
    plain = naive_apertures(image, image, variance, valid, fp, x, y, todo, RADII)
    exact = exact_fluxes(image, image, variance, classes, fp, cx, cy, fx, fy, todo, np.array(RADII))
    exact_plain = exact_fluxes(image, image, variance, valid, fp, cx, cy, fx, fy, todo, np.array(RADII))
    sinc = sinc_apertures(image, image, variance, classes, fp, cx, cy, fx, fy, todo, RADII)
    sinc_plain = sinc_apertures(image, image, variance, valid, fp, cx, cy, fx, fy, todo, RADII)
    for got, want in ((naive, plain), (exact, exact_plain), (sinc, sinc_plain)):  # fluxes, variances, invalid
        for a, b in zip(got[:4], want[:4]):
            assert np.array_equal(a, b, equal_nan=True)
    assert np.array_equal(sinc[4], sinc_plain[4])  # coefficients truncated only by invalid pixels
    touched = 0
    for k, r in enumerate(RADII):
        for s in range(n):
            d2 = (xx - x[s]) ** 2 + (yy - y[s]) ** 2
            assert naive[4][s, k] == (excluded & (d2 <= r * r)).sum()
            near = excluded & (np.abs(xx - x[s]) < r + 1) & (np.abs(yy - y[s]) < r + 1)
            overlap = pixel_overlap(xx[near] - x[s], yy[near] - y[s], r).sum()
            assert exact[4][s, k] == pytest.approx(overlap, abs=1e-9)
            h = sinc_width(r) // 2
            box = (np.abs(xx - cx[s]) <= h) & (np.abs(yy - cy[s]) <= h)
            assert sinc[5][s, k] == (excluded & box & (d2 <= (r + 0.5) ** 2)).sum()
            touched += naive[4][s, k] > 0
    assert 0 < touched < n * len(RADII)  # some apertures reach excluded pixels, some do not


def test_kron_ellipses_count_the_excluded_pixels_inside(planes):
    image, variance, valid, classes, x, y = planes
    n = x.size
    cx, cy, _, _ = _centres(x, y)
    rng = np.random.default_rng(1)
    a, c = rng.uniform(0.02, 0.1, n), rng.uniform(0.02, 0.1, n)
    b = rng.uniform(-0.5, 0.5, n) * np.sqrt(a * c)
    half = np.full(n, 12, np.int64)
    todo = np.ones(n, np.uint8)
    got = ellipse_sums(image, image, variance, classes, no_footprints(n), cx, cy, x, y, a, b, c, half, todo)
    plain = ellipse_sums(image, image, variance, valid, no_footprints(n), cx, cy, x, y, a, b, c, half, todo)
    for u, v in zip(got[:4], plain[:4]):
        assert np.array_equal(u, v, equal_nan=True)
    yy, xx = np.mgrid[0:H, 0:W]
    for s in range(n):
        dx, dy = xx - x[s], yy - y[s]
        inside = (a[s] * dx * dx + 2 * b[s] * dx * dy + c[s] * dy * dy <= 1) & (np.abs(yy - cy[s]) <= half[s])
        assert got[4][s] == ((classes == EXCLUDED) & inside).sum()
    assert 0 < (got[4] > 0).sum() < n


def test_gaussian_flux_flags_weight_on_excluded_pixels(planes):
    image, variance, valid, classes, x, y = planes
    n = x.size
    cx, cy, fx, fy = _centres(x, y)
    sigma = np.random.default_rng(2).uniform(1.0, 2.5, n)
    ia = ic = 1 / sigma**2
    ib = np.zeros(n)
    half = np.ceil(4 * sigma).astype(np.int64)
    small = np.zeros(n, np.uint8)
    sub = (np.arange(4) - 1.5) / 4
    order = spatial_order(cx, cy)
    img, var, cls, val = read_only(image, variance, classes, valid)
    flux, err, invalid, excluded = gaussian_flux(img, var, cls, no_footprints(n), cx, cy, fx, fy, ia, ib, ic, half,
                                                 small, sub, order)
    plain = gaussian_flux(img, var, val, no_footprints(n), cx, cy, fx, fy, ia, ib, ic, half, small, sub, order)
    assert np.array_equal(flux, plain[0]) and np.array_equal(err, plain[1]) and np.array_equal(invalid, plain[2])
    assert not plain[3].any()
    yy, xx = np.mgrid[0:H, 0:W]
    for s in range(n):
        q = ((xx - x[s]) ** 2 + (yy - y[s]) ** 2) / sigma[s] ** 2
        box = (np.abs(xx - cx[s]) <= half[s]) & (np.abs(yy - cy[s]) <= half[s]) & (q <= MAX_EXPONENT)
        w = np.where(box, np.exp(-0.5 * q), 0.0)
        share = w[(classes == EXCLUDED)].sum() / w.sum()
        if abs(share - 1e-3) > 1e-6:  # clear of the threshold's rounding
            assert bool(excluded[s]) == (share > 1e-3), (s, share)
    assert 0 < excluded.sum() < n
