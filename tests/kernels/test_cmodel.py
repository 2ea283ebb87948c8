"""forcedphot.kernels.cmodel against its numpy reference, and its independence of threads and order."""

import numba
import numpy as np
import pytest

from forcedphot.kernels import cmodel as K
from forcedphot.kernels.moments import read_only
from forcedphot.profiles import DEV, EXP
from tests.kernels.reference_cmodel import model, nnls_two, reference_cmodel

BAD = 4  # the mask bit left out in these tests


def _footprints(boxes, image, rng):
    """fp tuple (kernels.pixels layout): source i uses footprint i, a box with its own heavy values."""
    span_off, sy, sx0, sx1, val_off, values = [0], [], [], [], [0], []
    for (x0, x1, y0, y1) in boxes:
        for y in range(y0, y1 + 1):
            sy.append(y)
            sx0.append(x0)
            sx1.append(x1)
            values.extend((image[y, x0:x1 + 1] + rng.normal(0, 0.5, x1 - x0 + 1)).tolist())
        span_off.append(len(sy))
        val_off.append(len(values))
    i32 = lambda a: np.array(a, np.int32)  # noqa: E731
    return (np.arange(len(boxes), dtype=np.int64), np.array(span_off, np.int64), i32(sy), i32(sx0), i32(sx1),
            np.array(val_off, np.int64), np.array(values, np.float32))


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(5)
    h, w = 64, 72
    n = 12
    xl = rng.uniform(8, w - 8, n)
    yl = rng.uniform(8, h - 8, n)
    xl[0], yl[0] = 3.0, 30.2  # region over the coadd's edge (a few pixels off)
    m = 3
    amp = np.tile([0.5, 0.35, 0.15], (n, 1))
    centre = rng.normal(0, 0.05, (n, m, 2))
    cov = np.tile([[1.2, 1.0, 0.1], [3.0, 2.6, 0.3], [9.0, 8.0, -0.5]], (n, 1, 1))
    q_exp = np.stack([rng.uniform(1, 8, n), rng.uniform(1, 8, n), rng.uniform(-0.5, 0.5, n)], axis=1)
    q_dev = q_exp * rng.uniform(0.5, 1.5, (n, 1))
    region = 4.0 * (q_exp + cov[:, 1])
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    image = rng.normal(0, 1.0, (h, w))
    flux = rng.uniform(50, 400, n)
    flux[3] = -300.0  # a negative source: the joint fit's amplitudes go to 0
    for s in range(n):
        image += flux[s] * (0.6 * model(xx, yy, xl[s], yl[s], q_exp[s], EXP.weights, EXP.variances, amp[s], centre[s],
                                        cov[s])
                            + 0.4 * model(xx, yy, xl[s], yl[s], q_dev[s], DEV.weights, DEV.variances, amp[s],
                                          centre[s], cov[s]))
    variance = np.full((h, w), 1.0) + rng.uniform(0, 0.5, (h, w))
    mask = np.zeros((h, w), np.int32)
    valid = np.ones((h, w), np.uint8)
    sx, sy = int(round(xl[1])), int(round(yl[1]))
    mask[sy:sy + 2, sx:sx + 2] = BAD  # a few bad pixels: left out
    valid[((xx - xl[2]) ** 2 + (yy - yl[2]) ** 2 <= 25) & (xx <= xl[2])] = 0  # half the region invalid: maxBadPixelFraction
    region[0] = [16.5, 16.5, 0.0]
    region[4] = [0.2, 0.2, 0.0]  # a region holding no pixel centre, perhaps: n_good = 0 or 1
    region[5] = [np.nan, np.nan, np.nan]  # no reference region
    stage_ok = np.ones((n, 2), np.uint8)
    stage_ok[7, 1] = 0  # no dev reference: exp stage only, final fit failed
    boxes = [(max(int(x) - 6, 0), min(int(x) + 6, w - 1), max(int(y) - 6, 0), min(int(y) + 6, h - 1))
             for x, y in zip(xl, yl)]
    image = image.astype(np.float32)
    fp = _footprints(boxes, image, rng)
    cx, cy = np.floor(xl + 0.5).astype(np.int64), np.floor(yl + 0.5).astype(np.int64)
    args = dict(image=image, variance=variance.astype(np.float32), mask=mask, valid=valid, fp=fp, cx=cx, cy=cy,
                fx=xl - cx, fy=yl - cy, region=region, q_exp=q_exp, q_dev=q_dev, stage_ok=stage_ok, psf_amp=amp,
                psf_centre=centre, psf_cov=cov)
    return args


def _run(a, order=None):
    image, variance, mask, valid = read_only(a["image"], a["variance"], a["mask"], a["valid"])
    n = a["cx"].size
    return K.cmodel(image, variance, mask, valid, a["fp"], a["cx"], a["cy"], a["fx"], a["fy"], np.ones(n, np.uint8),
                    a["region"], a["q_exp"], a["q_dev"], a["stage_ok"], a["psf_amp"], a["psf_centre"], a["psf_cov"],
                    np.ones(n, np.uint8), EXP.weights, EXP.variances, DEV.weights, DEV.variances, BAD, order=order)


def test_kernel_matches_the_numpy_reference(case):
    a = case
    values, flags = _run(a)
    xl, yl = a["cx"] + a["fx"], a["cy"] + a["fy"]
    ref = reference_cmodel(a["image"], a["variance"], a["mask"], a["valid"], a["fp"], xl, yl, a["region"], a["q_exp"],
                           a["q_dev"], a["stage_ok"], a["psf_amp"], a["psf_centre"], a["psf_cov"], EXP.weights,
                           EXP.variances, DEV.weights, DEV.variances, BAD)
    cols = {"exp_flux": K.EXP_FLUX, "exp_err": K.EXP_ERR, "exp_inner": K.EXP_INNER, "dev_flux": K.DEV_FLUX,
            "dev_err": K.DEV_ERR, "dev_inner": K.DEV_INNER, "flux": K.FLUX, "err": K.ERR, "inner": K.INNER,
            "frac_dev": K.FRAC_DEV, "objective": K.OBJECTIVE}
    for name, col in cols.items():
        np.testing.assert_allclose(values[:, col], ref[name], rtol=1e-8, atol=1e-9, equal_nan=True, err_msg=name)
    bits = {"bad_ref": K.BAD_REF, "edge": K.EDGE, "no_good": K.NO_GOOD, "max_bad": K.REGION_MAX_BAD,
            "no_flux": K.NO_FLUX, "exp_failed": K.EXP_FAILED, "dev_failed": K.DEV_FAILED, "failed": K.FAILED}
    for name, bit in bits.items():
        np.testing.assert_array_equal((flags & bit) != 0, ref[name], err_msg=name)
    # the cases the fixture sets up happened
    assert flags[1] & K.REGION_MAX_BAD == 0 and np.isfinite(values[1, K.FLUX])  # 4 bad pixels left out
    assert flags[0] & K.EDGE and np.isfinite(values[0, K.FLUX])
    assert flags[2] & K.REGION_MAX_BAD and flags[2] & K.FAILED
    assert flags[3] & K.NO_FLUX and values[3, K.FLUX] == 0 and values[3, K.EXP_FLUX] < 0  # stages keep their sign
    assert flags[5] & K.BAD_REF and np.isnan(values[5, K.FLUX])
    assert flags[7] & K.BAD_REF and np.isfinite(values[7, K.EXP_FLUX]) and np.isnan(values[7, K.FLUX])
    good = (flags & K.FAILED) == 0
    assert good.sum() >= 6
    assert np.all((values[good, K.FRAC_DEV] >= 0) & (values[good, K.FRAC_DEV] <= 1))


def test_results_do_not_depend_on_threads_or_order(case):
    n = case["cx"].size
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        v1, f1 = _run(case)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        v2, f2 = _run(case, order=np.arange(n)[::-1].copy())
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(f1, f2)


@pytest.mark.parametrize("seed", range(20))
def test_nnls_of_two_matches_the_active_set_search(seed):
    """The compiled two-variable NNLS against every active set tried with lstsq (incl. Rubin's unchecked case)."""
    rng = np.random.default_rng(seed)
    m = np.abs(rng.normal(size=(30, 2))) + 0.1
    m[:, 1] = m[:, 0] * rng.uniform(0.9, 1.1) + rng.normal(0, 0.05, 30) * (seed % 3)  # nearly collinear at times
    d = m @ rng.normal(0, 1, 2) + rng.normal(0, 0.3, 30)
    h = m.T @ m
    b = m.T @ d
    got = np.array(K.nnls2(h[0, 0], h[1, 1], h[0, 1], b[0], b[1]))
    want = nnls_two(m, d)
    assert np.all(got >= 0)
    np.testing.assert_allclose(np.sum((d - m @ got) ** 2), np.sum((d - m @ want) ** 2), rtol=1e-9, atol=1e-9)


def test_model_rows_equal_the_gaussians_evaluated_one_by_one():
    """_model_row (3 exps per Gaussian and row, then multiplications) against _model_value (one exp per
    Gaussian and pixel) on rows through, beside and far from the Gaussians, whose row maxima fall
    inside, left and right of the row (clamped), with compact, wide and strongly tilted covariances."""
    from forcedphot.kernels.mixtures import _combine

    rng = np.random.default_rng(11)
    worst = 0.0
    for trial in range(40):
        m = 3
        amp = rng.uniform(0.1, 1.0, (1, m))
        centre = rng.normal(0, 0.3, (1, m, 2))
        sig = rng.uniform(0.6, 3.0, (1, m, 2)) ** 2
        rho = rng.uniform(-0.9, 0.9, (1, m))
        cov = np.stack([sig[..., 0], sig[..., 1], rho * np.sqrt(sig[..., 0] * sig[..., 1])], -1)
        q = np.array([[rng.uniform(0.5, 40), rng.uniform(0.5, 40), 0.0]])
        q[0, 2] = rng.uniform(-0.9, 0.9) * np.sqrt(q[0, 0] * q[0, 1])
        prof = EXP if trial % 2 else DEV
        xs, ys = np.array([rng.uniform(-5, 5)]), np.array([rng.uniform(-5, 5)])
        nc = prof.weights.size * m
        comps = np.empty((nc, 7))
        assert K._combine is _combine and _combine(0, q, prof.weights, prof.variances, amp, centre, cov, xs, ys, comps)
        for y in (ys[0] + 0.3, ys[0] - 7.6, ys[0] + 25.0, ys[0] - 60.0):
            for x0, nx in ((np.floor(xs[0]) - 20, 41), (np.floor(xs[0]) + 6, 15), (np.floor(xs[0]) - 45, 12)):
                row = np.empty(nx)
                K._model_row(comps, nc, float(x0), float(y), nx, row)
                direct = np.array([K._model_value(comps, nc, float(x0 + i), float(y)) for i in range(nx)])
                err = np.abs(row - direct)
                # both carry the rounding of exponents up to ~1e3 (~1e-13 relative) far out in the tails
                assert np.all(err <= 1e-12 * direct + 1e-15 * comps[:, 6].sum()), (trial, y, x0)
                near = direct > 1e-6 * comps[:, 6].sum()
                if near.any():
                    worst = max(worst, (err[near] / direct[near]).max())
                    assert (err[near] <= 1e-12 * direct[near]).all(), (trial, y, x0)
    assert worst > 0  # the rows are not computed by the same exps
