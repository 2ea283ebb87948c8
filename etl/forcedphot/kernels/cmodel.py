"""Forced CModel: fixed exp and dev galaxy models, linear amplitudes, and their non-negative sum.

Per source (Rubin's modelfit_CModel in forced mode, meas_modelfit CModel.cc _applyForcedImpl):

**Region.** The pixels whose centres lie inside the reference's final region ellipse R (tract
pixels^2, centred on the forced centroid): d^T R^-1 d <= 1. Pixels off the coadd (``EDGE`` bit
of the flags), invalid ones (NO_DATA, non-finite image or variance) and those with a ``bad_bits``
mask bit (EDGE, SAT, BAD, NO_DATA) are left out. With n_in pixels inside and n_good kept, the
fit is abandoned (``REGION_MAX_BAD``) when n_good = 0 (``NO_GOOD`` too) or n_in - n_good >
``max_bad_fraction`` n_in (Rubin compares with the ellipse's analytic area; the pixel count is the
same thing for large regions and stays meaningful for regions of a few pixels). A region whose
area pi sqrt(det R) exceeds ``max_area`` or whose bounding box exceeds 4 ``max_area`` pixels is
not fitted (``REGION_MAX_AREA``; Rubin only flags it): that bounds the per-source scratch.

**Models.** Stage s (exp, dev) is the profile mixture (weights w_k, covariances v_k Q_s, Q_s the
reference half-light ellipse) convolved with the source's PSF mixture (a_j, mu_j, C_j): the
Gaussians (w_k a_j, centroid + mu_j, v_k Q_s + C_j), evaluated at pixel centres
(:func:`forcedphot.kernels.mixtures._combine`). Its total flux is T_s = sum_k sum_j w_k a_j.

**Stage fits** (no positivity, as Rubin's forced stages): with m the stage's model over the kept
pixels, d the (noise-replaced) image and V the variance,

    alpha = sum(m d) / sum(m^2)        flux = alpha T_s
    fluxErr = T_s sqrt(sum(m^2 V)) / sum(m^2)
    flux_inner = alpha sum(m)          (Rubin's n sum(m d) with n = sum(m) / sum(m^2))

fluxErr is Rubin's flux sqrt(sum m^2 V) / sum(m d) written without dividing by the data (the same
number when alpha != 0, finite when alpha = 0). A stage fails when its reference ellipse is
missing (``BAD_REF``-like stage failure), its model is not finite, or flux_inner is 0.

**Final fit**: minimise ||d - M alpha||^2 over alpha = (alpha_exp, alpha_dev) >= 0 with M the two
models' columns (unweighted, as Rubin). Rubin's TruncatedGaussian takes the unconstrained
minimum mu when both are >= 0, 0 when both are < 0, and otherwise the other component's
single fit b_f / H_ff **without checking its sign**. Here the exact two-variable NNLS: of the
candidates {mu (if H is not singular, det H > 1e-12 H_ee H_dd), (b_e/H_ee, 0), (0, b_d/H_dd),
(0, 0)} the feasible (all >= 0) one with the smallest objective. It agrees with Rubin wherever
Rubin's answer is feasible and gives the right non-negative answer (possibly 0) where Rubin's
single fit would be negative; a singular H (identical exp and dev models, e.g. point-like
references) is no failure: the single fits remain. Then

    flux = alpha_exp T_exp + alpha_dev T_dev       fracDev = alpha_dev T_dev / flux
    fluxErr = flux sqrt(alpha^T W alpha) / (alpha^T H alpha)   (W_ab = sum(m_a m_b V))
    flux_inner = sum(M alpha)                      objective = 1/2 sum (d - M alpha)^2

(alpha^T H alpha = alpha . b at the NNLS solution, so this is Rubin's flux sqrt(sum m^2 V) /
sum(m d) with m = M alpha.) flux = 0 (both amplitudes 0) sets ``NO_FLUX`` and fails, as Rubin.

Every source is computed alone with a fixed summation order, in blocks of sources visited in a
spatial order, so results do not depend on the thread count or on the chunking.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.mixtures import _combine
from forcedphot.kernels.pixels import insert_footprint_box

BLOCK = 8  # sources per parallel task

# flag bits (per source)
FAILED = 1  # the final fit failed (cModel_flag)
BAD_REF = 2  # no usable reference region or ellipse (or reference flagged)
REGION_MAX_AREA = 4
REGION_MAX_BAD = 8
EDGE = 16  # region pixels off the coadd
NO_GOOD = 32
NO_PSF = 64  # no PSF mixture
NO_FLUX = 128  # the final fit's flux is 0 / not finite
EXP_FAILED = 256
DEV_FAILED = 512
NOT_USABLE = 1024  # no usable centroid

# output value columns
EXP_FLUX, EXP_ERR, EXP_INNER, DEV_FLUX, DEV_ERR, DEV_INNER, FLUX, ERR, INNER, FRAC_DEV, OBJECTIVE, N_GOOD = range(12)
N_VALUES = 12


@njit(cache=True, nogil=True, error_model="numpy")
def _region_box(rxx, ryy, rxy, fx, fy):
    """Half-extents (hx, hy) in whole pixels of the ellipse around offset (fx, fy) from the centre pixel."""
    hx = int(math.ceil(math.sqrt(rxx) + abs(fx))) + 1
    hy = int(math.ceil(math.sqrt(ryy) + abs(fy))) + 1
    return hx, hy


@njit(cache=True, nogil=True, error_model="numpy")
def _fill(image, variance, mask, valid, fp, src, cx, cy, hx, hy, bad_bits, img, var, status):
    """The source's own image over the box [cx-hx, cx+hx] x [cy-hy, cy+hy]: img, var (float64) and
    status (0 good, 1 off the coadd, 2 invalid or with a bad mask bit)."""
    h, w = image.shape
    ny = 2 * hy + 1
    nx = 2 * hx + 1
    for j in range(ny):
        y = cy - hy + j
        for i in range(nx):
            x = cx - hx + i
            if 0 <= y < h and 0 <= x < w:
                if valid[y, x] and (mask[y, x] & bad_bits) == 0:
                    img[j, i] = image[y, x]
                    var[j, i] = variance[y, x]
                    status[j, i] = 0
                else:
                    img[j, i] = 0.0
                    var[j, i] = 0.0
                    status[j, i] = 2
            else:
                img[j, i] = 0.0
                var[j, i] = 0.0
                status[j, i] = 1
    insert_footprint_box(fp, src, cy, cx, hy, hx, img, status, True)  # its own heavy values on good pixels


@njit(cache=True, nogil=True, error_model="numpy")
def _model_value(comps, nc, x, y):
    v = 0.0
    for c in range(nc):
        dx = x - comps[c, 1]
        dy = y - comps[c, 2]
        v += comps[c, 6] * math.exp(-0.5 * (comps[c, 3] * dx * dx + comps[c, 4] * dy * dy + 2.0 * comps[c, 5] * dx * dy))
    return v


@njit(cache=True, nogil=True, error_model="numpy")
def _model_row(comps, nc, x0, y, nx, out):
    """out[i] = the model (``nc`` Gaussians of :func:`forcedphot.kernels.mixtures._combine`) at pixel
    centre (x0 + i, y) for i < nx, as :func:`_model_value` but with 3 exps per Gaussian and row.

    Along a row the exponent q(dx) = A dx^2 + 2 B dx dy + C dy^2 grows by A (2 dx + 1) + 2 B dy per
    pixel, and that step by 2 A: each Gaussian starts at the pixel nearest its row maximum (clamped
    to the row) and is carried outwards by two multiplications per pixel, on values that only
    decrease (no overflow; what underflows is below 1e-308 of the peak). Rounding grows by ~1e-16 per
    pixel. Components are added in the same order as _model_value."""
    for i in range(nx):
        out[i] = 0.0
    for c in range(nc):
        a = comps[c, 3]
        b = comps[c, 5]
        dy = y - comps[c, 2]
        dx0 = x0 - comps[c, 1]
        ip = int(math.floor(-b * dy / a - dx0 + 0.5))
        ip = min(max(ip, 0), nx - 1)
        dx = dx0 + ip
        g = comps[c, 6] * math.exp(-0.5 * (a * dx * dx + comps[c, 4] * dy * dy + 2.0 * b * dx * dy))
        out[ip] += g
        step = math.exp(-a)
        if ip + 1 < nx:
            rho = math.exp(-0.5 * (a * (2.0 * dx + 1.0) + 2.0 * b * dy))
            v = g
            for i in range(ip + 1, nx):
                v *= rho
                out[i] += v
                rho *= step
        if ip > 0:
            rho = math.exp(-0.5 * (a * (1.0 - 2.0 * dx) - 2.0 * b * dy))
            v = g
            for i in range(ip - 1, -1, -1):
                v *= rho
                out[i] += v
                rho *= step


@njit(cache=True, nogil=True, error_model="numpy")
def _stage_fit(out, flags, s, col, failed, hmm, bm, wm, sm, total):
    """One stage's linear fit (columns col, col + 1, col + 2: flux, error, inner flux) from sum(m^2) ``hmm``,
    sum(m d) ``bm``, sum(m^2 V) ``wm``, sum(m) ``sm`` and the model's total flux; False (and the stage's
    ``failed`` bit and FAILED) when sum(m^2) is not positive and finite."""
    if not (hmm > 0 and np.isfinite(hmm)):
        flags[s] |= failed | FAILED
        return False
    a = bm / hmm
    out[s, col] = a * total
    out[s, col + 1] = total * math.sqrt(wm) / hmm
    out[s, col + 2] = a * sm
    if not (a * sm != 0 and np.isfinite(a * sm)):
        flags[s] |= failed
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _objective(a, b, hee, hdd, hed, be, bd):
    """sum(M alpha)^2 - 2 alpha.b (the objective without sum d^2, times 2)."""
    return a * a * hee + b * b * hdd + 2.0 * a * b * hed - 2.0 * (a * be + b * bd)


@njit(cache=True, nogil=True, error_model="numpy")
def nnls2(hee, hdd, hed, be, bd):
    """Exact non-negative least squares of two columns from H = M^T M and b = M^T d: (alpha_e, alpha_d)."""
    best_a = 0.0
    best_b = 0.0
    best = 0.0  # the objective of (0, 0)
    if hee > 0:
        a = be / hee
        if a > 0:
            o = _objective(a, 0.0, hee, hdd, hed, be, bd)
            if o < best:
                best, best_a, best_b = o, a, 0.0
    if hdd > 0:
        b = bd / hdd
        if b > 0:
            o = _objective(0.0, b, hee, hdd, hed, be, bd)
            if o < best:
                best, best_a, best_b = o, 0.0, b
    det = hee * hdd - hed * hed
    if det > 1e-12 * hee * hdd:
        a = (hdd * be - hed * bd) / det
        b = (hee * bd - hed * be) / det
        if a >= 0 and b >= 0:
            o = _objective(a, b, hee, hdd, hed, be, bd)
            if o < best:
                best, best_a, best_b = o, a, b
    return best_a, best_b


@njit(cache=True, nogil=True, error_model="numpy")
def _one(image, variance, mask, valid, fp, s, cx, cy, xl, yl, fx, fy, region, q_exp, q_dev, stage_ok, psf_amp,
         psf_centre, psf_cov, exp_w, exp_v, dev_w, dev_v, bad_bits, max_area, max_bad_fraction, out, flags,
         comps_e, comps_d):
    rxx, ryy, rxy = region[s, 0], region[s, 1], region[s, 2]
    det_r = rxx * ryy - rxy * rxy
    if not (np.isfinite(rxx) and np.isfinite(ryy) and np.isfinite(rxy) and rxx > 0 and det_r > 0):
        flags[s] |= BAD_REF | FAILED | EXP_FAILED | DEV_FAILED
        return
    has_e = stage_ok[s, 0] != 0
    has_d = stage_ok[s, 1] != 0
    if not (has_e and has_d):
        flags[s] |= BAD_REF | FAILED
    if not has_e:
        flags[s] |= EXP_FAILED
    if not has_d:
        flags[s] |= DEV_FAILED
    ne = exp_w.size * psf_amp.shape[1]
    nd = dev_w.size * psf_amp.shape[1]
    if has_e and not _combine(s, q_exp, exp_w, exp_v, psf_amp, psf_centre, psf_cov, xl, yl, comps_e):
        has_e = False
        flags[s] |= EXP_FAILED | FAILED
    if has_d and not _combine(s, q_dev, dev_w, dev_v, psf_amp, psf_centre, psf_cov, xl, yl, comps_d):
        has_d = False
        flags[s] |= DEV_FAILED | FAILED
    if not (has_e or has_d):
        return
    hx, hy = _region_box(rxx, ryy, rxy, fx[s], fy[s])
    area = math.pi * math.sqrt(det_r)
    if area > max_area or (2 * hx + 1) * (2 * hy + 1) > 4 * max_area:
        flags[s] |= REGION_MAX_AREA | FAILED | EXP_FAILED | DEV_FAILED
        return
    img = np.empty((2 * hy + 1, 2 * hx + 1))
    var = np.empty((2 * hy + 1, 2 * hx + 1))
    status = np.empty((2 * hy + 1, 2 * hx + 1), np.uint8)
    _fill(image, variance, mask, valid, fp, s, cx[s], cy[s], hx, hy, bad_bits, img, var, status)
    ia = ryy / det_r
    ic = rxx / det_r
    ib = -rxy / det_r
    n_in = 0
    n_good = 0
    hee = hdd = hed = 0.0  # sum m_a m_b
    wee = wdd = wed = 0.0  # sum m_a m_b V
    be = bd = 0.0  # sum m_a d
    se = sd = 0.0  # sum m_a
    dd = 0.0
    off = False
    nx = 2 * hx + 1
    row_e = np.zeros(nx)
    row_d = np.zeros(nx)
    for j in range(2 * hy + 1):
        dy = j - hy - fy[s]
        y = np.float64(cy[s] - hy + j)
        # the row's columns that can be inside the region (one pixel of margin; the test below decides)
        disc = (ib * dy) ** 2 - ia * (ic * dy * dy - 1.0)  # ia (1 - the row's smallest q)
        if disc < -1e-9 * ia:  # every centre of the row is clearly outside (q > 1 + 1e-9)
            continue
        root = math.sqrt(max(disc, 0.0))
        i0 = max(0, int(math.floor((-ib * dy - root) / ia + hx + fx[s])) - 1)
        i1 = min(nx - 1, int(math.ceil((-ib * dy + root) / ia + hx + fx[s])) + 1)
        if i1 < i0:
            continue
        if has_e:
            _model_row(comps_e, ne, np.float64(cx[s] - hx + i0), y, i1 - i0 + 1, row_e)
        if has_d:
            _model_row(comps_d, nd, np.float64(cx[s] - hx + i0), y, i1 - i0 + 1, row_d)
        for i in range(i0, i1 + 1):
            dx = i - hx - fx[s]
            if ia * dx * dx + 2.0 * ib * dx * dy + ic * dy * dy > 1.0:
                continue
            n_in += 1
            st = status[j, i]
            if st != 0:
                if st == 1:
                    off = True
                continue
            n_good += 1
            d = img[j, i]
            v = var[j, i]
            me = row_e[i - i0]
            md = row_d[i - i0]
            hee += me * me
            hdd += md * md
            hed += me * md
            wee += me * me * v
            wdd += md * md * v
            wed += me * md * v
            be += me * d
            bd += md * d
            se += me
            sd += md
            dd += d * d
    out[s, N_GOOD] = n_good
    if off:
        flags[s] |= EDGE
    if n_good == 0:
        flags[s] |= NO_GOOD | REGION_MAX_BAD | FAILED | EXP_FAILED | DEV_FAILED
        return
    if n_in - n_good > max_bad_fraction * n_in:
        flags[s] |= REGION_MAX_BAD | FAILED | EXP_FAILED | DEV_FAILED
        return
    te = 0.0
    td = 0.0
    for c in range(ne):
        te += comps_e[c, 0]
    for c in range(nd):
        td += comps_d[c, 0]
    if has_e:
        has_e = _stage_fit(out, flags, s, EXP_FLUX, EXP_FAILED, hee, be, wee, se, te)
    if has_d:
        has_d = _stage_fit(out, flags, s, DEV_FLUX, DEV_FAILED, hdd, bd, wdd, sd, td)
    if not (has_e and has_d):
        return
    ae, ad = nnls2(hee, hdd, hed, be, bd)
    flux = ae * te + ad * td
    mhm = ae * ae * hee + ad * ad * hdd + 2.0 * ae * ad * hed
    mvm = ae * ae * wee + ad * ad * wdd + 2.0 * ae * ad * wed
    out[s, OBJECTIVE] = 0.5 * (dd - 2.0 * (ae * be + ad * bd) + mhm)
    if not (flux > 0 and np.isfinite(flux) and mhm > 0):
        flags[s] |= NO_FLUX | FAILED
        out[s, FLUX] = flux
        out[s, INNER] = ae * se + ad * sd
        return
    out[s, FLUX] = flux
    out[s, ERR] = flux * math.sqrt(mvm) / mhm
    out[s, INNER] = ae * se + ad * sd
    out[s, FRAC_DEV] = ad * td / flux


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def cmodel_kernel(image, variance, mask, valid, fp, cx, cy, fx, fy, usable, region, q_exp, q_dev, stage_ok, psf_amp,
                  psf_centre, psf_cov, psf_ok, exp_w, exp_v, dev_w, dev_v, bad_bits, max_area, max_bad_fraction,
                  order):
    """See :func:`cmodel`."""
    n = cx.size
    out = np.full((n, N_VALUES), np.nan)
    flags = np.zeros(n, np.int32)
    xl = np.empty(n)
    yl = np.empty(n)
    for s in range(n):
        xl[s] = cx[s] + fx[s]
        yl[s] = cy[s] + fy[s]
    m = psf_amp.shape[1]
    for b in prange((n + BLOCK - 1) // BLOCK):
        comps_e = np.empty((exp_w.size * m, 7))
        comps_d = np.empty((dev_w.size * m, 7))
        for t in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            s = order[t]
            if not usable[s]:
                flags[s] = NOT_USABLE | FAILED | EXP_FAILED | DEV_FAILED
                continue
            if not psf_ok[s]:
                flags[s] = NO_PSF | FAILED | EXP_FAILED | DEV_FAILED
                continue
            _one(image, variance, mask, valid, fp, s, cx, cy, xl, yl, fx, fy, region, q_exp, q_dev, stage_ok,
                 psf_amp, psf_centre, psf_cov, exp_w, exp_v, dev_w, dev_v, bad_bits, max_area, max_bad_fraction,
                 out, flags, comps_e, comps_d)
    return out, flags


def cmodel(image, variance, mask, valid, fp, cx, cy, fx, fy, usable, region, q_exp, q_dev, stage_ok, psf_amp,
           psf_centre, psf_cov, psf_ok, exp_w, exp_v, dev_w, dev_v, bad_bits, max_area=100000.0,
           max_bad_fraction=0.1, order=None):
    """Forced CModel of N sources (see the module docstring).

    image, variance (H, W) float32, mask (H, W) int32, valid (H, W) uint8 (nonzero: valid), fp the own
    footprints (:mod:`forcedphot.kernels.pixels`); cx, cy (N,) int64 nearest coadd-local pixel and fx, fy
    (N,) the offset from it (:class:`forcedphot.stages.ForcedCentres`); usable (N,) uint8; region, q_exp,
    q_dev (N, 3) ellipses (xx, yy, xy), pixels^2; stage_ok (N, 2) uint8: the exp / dev reference is
    usable; psf_amp (N, M), psf_centre (N, M, 2), psf_cov (N, M, 3), psf_ok (N,) uint8; the profiles'
    weights and variances; bad_bits: mask bits left out; order: the visiting order (none changes a result).

    Returns (values (N, N_VALUES) float64, flags (N,) int32 of the bits above).
    """
    # the per-source and profile arrays are copied (small): writable and C-contiguous whatever the caller
    # holds (e.g. the read-only profile tables), so one compiled signature serves every call
    f64 = lambda a: np.array(a, np.float64, order="C")  # noqa: E731
    i64 = lambda a: np.array(a, np.int64, order="C")  # noqa: E731
    u8 = lambda a: np.array(a, np.uint8, order="C")  # noqa: E731
    n = np.asarray(cx).size
    if order is None:
        order = np.arange(n, dtype=np.int64)
    return cmodel_kernel(image, variance, mask, valid, fp, i64(cx), i64(cy), f64(fx), f64(fy), u8(usable),
                         f64(region).reshape(n, 3), f64(q_exp).reshape(n, 3), f64(q_dev).reshape(n, 3),
                         u8(stage_ok).reshape(n, 2), f64(psf_amp).reshape(n, -1), f64(psf_centre).reshape(n, -1, 2),
                         f64(psf_cov).reshape(n, -1, 3), u8(psf_ok), f64(exp_w), f64(exp_v), f64(dev_w), f64(dev_v),
                         np.int32(bad_bits), np.float64(max_area), np.float64(max_bad_fraction), i64(order))


def _warm():
    from forcedphot.kernels.moments import _warm_planes, read_only

    image, variance, valid, fp = _warm_planes()
    image, variance, valid = read_only(image, variance, valid)
    mask = np.zeros(image.shape, np.int32)
    mask = read_only(mask)[0]
    one_i, one_f = np.full(1, 4, np.int64), np.zeros(1)
    ell = np.array([[2.0, 2.0, 0.0]])
    for m in (2, 3):
        cmodel(image, variance, mask, valid, fp, one_i, one_i, one_f, one_f, np.ones(1, np.uint8), ell * 4, ell, ell,
               np.ones((1, 2), np.uint8), np.full((1, m), 1.0 / m), np.zeros((1, m, 2)),
               np.tile([1.0, 1.0, 0.0], (1, m, 1)), np.ones(1, np.uint8), np.ones(2) / 2, np.ones(2), np.ones(2) / 2,
               np.ones(2), 0)


# the signatures the pipeline compiles (see forcedphot.compile)
WARMUP = [_warm]
