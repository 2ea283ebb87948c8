"""The adaptive-moments kernels (SdssShape, forcedphot.moments.adaptive_moments) against the numpy references."""

import numba
import numpy as np
import pytest

from forcedphot.moments import adaptive_moments
from forcedphot.plugins.sdss_shape import SdssShape
from tests.kernels.context import quantum_context
from tests.kernels.reference_moments import adaptive_moments as reference_adaptive_moments
from tests.kernels.reference_moments import invalid_pixels_read_zero
from tests.kernels.reference_sdss_shape import ReferenceSdssShape

QUANTA = (1, 2)  # patch 1: the most blends; patch 2: blends and invalid pixels (NO_DATA, bad columns)
MOMENTS = ("sdssShape_xx", "sdssShape_yy", "sdssShape_xy")


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    return {i: quantum_context(tiny_repo_master, index=i)[0] for i in QUANTA}


def _columns(values):
    return {k: np.asarray(v) for k, v in values.items()}


def compare_shape(new, old):
    """Flags equal; fluxes to 1e-3 of their error, errors to 1e-6, moments and centroids to 1e-9 of the size."""
    for c in SdssShape.columns(None):
        a, b = new[c.name], old[c.name]
        if c.kind == "flag":
            np.testing.assert_array_equal(a, b, err_msg=c.name)
        else:
            np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b), err_msg=c.name)
    fin = np.isfinite(old["sdssShape_flux"]) & (old["sdssShape_fluxErr"] > 0)
    pull = np.abs(new["sdssShape_flux"] - old["sdssShape_flux"])[fin] / old["sdssShape_fluxErr"][fin]
    assert pull.max(initial=0) <= 1e-3
    for name in ("sdssShape_fluxErr", "sdssShape_xxErr", "sdssShape_yyErr", "sdssShape_xyErr"):
        np.testing.assert_allclose(new[name], old[name], rtol=1e-6, atol=0, err_msg=name)
    size = np.abs(old["sdssShape_xx"]) + np.abs(old["sdssShape_yy"])
    for name in MOMENTS:
        assert np.nanmax(np.abs(new[name] - old[name]) / size, initial=0) <= 1e-9, name
    for name in ("sdssShape_x", "sdssShape_y", "sdssShape_psf_xx", "sdssShape_psf_yy", "sdssShape_psf_xy"):
        np.testing.assert_allclose(new[name], old[name], rtol=0, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("index", QUANTA)
def test_sdss_shape_matches_the_numpy_reference(contexts, index):
    ctx = contexts[index]
    new = _columns(SdssShape(ctx.config).measure(ctx))
    # the reference reads invalid pixels of a source's own footprint as 0 too (the kernels' noise replacement)
    old = _columns(ReferenceSdssShape(ctx.config).measure(invalid_pixels_read_zero(ctx)))
    compare_shape(new, old)
    assert np.isfinite(new["sdssShape_xx"]).sum() > 0.9 * ctx.n
    if index == 1:  # no invalid pixels: the reference exactly as it was
        compare_shape(new, _columns(ReferenceSdssShape(ctx.config).measure(ctx)))


def test_sdss_shape_is_bit_identical_for_any_thread_count(contexts):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    ctx = contexts[2]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _columns(SdssShape(ctx.config).measure(ctx))
        numba.set_num_threads(2)
        two = _columns(SdssShape(ctx.config).measure(ctx))
    finally:
        numba.set_num_threads(before)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)


def _gaussian_stamps(rng, n, half=12):
    ar = np.arange(-half, half + 1.0)
    sig_x, sig_y, rho = rng.uniform(0.6, 4.0, n), rng.uniform(0.6, 4.0, n), rng.uniform(-0.6, 0.6, n)
    x0, y0 = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    dx = ar[None, None, :] - x0[:, None, None]
    dy = ar[None, :, None] - y0[:, None, None]
    zx, zy = dx / sig_x[:, None, None], dy / sig_y[:, None, None]
    img = np.exp(-0.5 * (zx * zx - 2 * rho[:, None, None] * zx * zy + zy * zy) / (1 - rho[:, None, None] ** 2))
    return img + rng.normal(0, 0.01, img.shape) * rng.uniform(0, 3, n)[:, None, None]


def test_adaptive_moments_of_stamps_match_the_numpy_reference():
    rng = np.random.default_rng(5)
    stamps = _gaussian_stamps(rng, 300)
    stamps[0] = 0.0  # no flux: both fail (unweightedBad)
    stamps[1] = -stamps[1]  # negative: the iteration fails at once
    stamps[2, 12, 12] = 50.0  # one hot pixel
    fx, fy = rng.uniform(-0.5, 0.5, 300), rng.uniform(-0.5, 0.5, 300)
    new = adaptive_moments(stamps, fx, fy)
    old = reference_adaptive_moments(stamps, fx, fy)
    for name in ("n_iter", "flag_unweighted", "flag_unweighted_bad", "flag_shift", "flag_max_iter"):
        np.testing.assert_array_equal(getattr(new, name), getattr(old, name), err_msg=name)
    np.testing.assert_allclose(new.moments, old.moments, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.flux, old.flux, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.dx, old.dx, rtol=0, atol=1e-10)
    np.testing.assert_allclose(new.dy, old.dy, rtol=0, atol=1e-10)
    assert new.flag_unweighted_bad[0] and new.flag_unweighted[1]
    assert (~new.flag_unweighted).sum() > 250


def test_row_runs_are_the_exactly_tested_weighted_pixels():
    from forcedphot.kernels.moments import row_run, row_weights

    rng = np.random.default_rng(1)
    wrow = np.empty(200)
    for _ in range(3000):
        s1, s2, rho = *rng.uniform(0.3, 30, 2), rng.uniform(-0.95, 0.95)
        ia, ib, ic = np.linalg.inv([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]])[[0, 0, 1], [0, 1, 1]]
        cx, dy = rng.uniform(-3, 3), rng.uniform(-40, 40)
        box = np.inf if rng.random() < 0.5 else rng.uniform(1, 60)
        lo, hi = -int(rng.integers(1, 64)), int(rng.integers(1, 64))
        px = np.arange(lo, hi + 1)
        dx = px - cx
        q = ia * dx * dx + 2 * ib * dx * dy + ic * dy * dy
        keep = (q <= 14) & (np.abs(dx) <= box)
        a, b = row_run(ia, ib, ic, cx, dy, box, lo, hi)
        if keep.any():
            assert (a, b) == (px[keep][0], px[keep][-1])
        else:
            assert b < a
        x0, x1 = row_weights(ia, ib, ic, cx, dy, box, lo, hi, wrow)
        w = np.zeros(px.size)
        if x1 >= x0:
            w[x0 - lo:x1 - lo + 1] = wrow[:x1 - x0 + 1]
        np.testing.assert_allclose(w, np.where(keep, np.exp(-0.5 * q), 0), rtol=1e-12, atol=0)
