"""Unforced galaxy-model fits on the reference band: the ellipses forced CModel holds fixed.

For each source, centroid fixed, three profiles (Rubin's CModel stages, in this order) are fitted
to its pixels, each a Gaussian mixture in units of its half-light ellipse Q (``forcedphot.profiles``:
initial = lux K3, exp = lux K6, dev = luv K8) convolved with the source's PSF mixture (covariances
add, :mod:`forcedphot.kernels.mixtures`), evaluated at pixel centres:

    m_i(Q) = sum_k sum_j w_k a_j N(X_i; (x, y) + mu_j, v_k Q + C_j),   model = alpha m(Q).

**Parameters.** Q = r^2 exp(H), H = [[eta1, eta2], [eta2, -eta1]]: conformal shear
(eta1, eta2), |eta| = ln(a/b), and r the *determinant* radius det(Q)^(1/4) (Rubin uses the
trace radius; both give the same ellipse). The nonlinear parameters are (eta1, eta2, ln r); the
amplitude alpha is solved linearly at every evaluation (alpha = max(0, S_md / S_mm)), so the
objective is the profiled chi2(theta) = S_dd - alpha S_md with S_ab = sum_i w_i a_i b_i.

**Weights** (Rubin's): the initial stage uses the pixels' inverse variances; exp and dev one
constant weight for all pixels, exp(-mean ln V_i) (Rubin's usePixelWeights = false).

**Optimiser.** Levenberg-Marquardt on the variable-projection (Kaufman) normal equations:
analytic derivatives dm/dQ (dN/dC = N (u u^T - C^-1) / 2, u = C^-1 (X - mu)) chained through
dQ/dtheta; a step solves (A + lambda diag A) d = -g, is accepted when chi2 drops (lambda x 0.3)
else lambda x 10. Converged when an accepted step lowers chi2 by <= TOL_ABS + TOL_REL chi2, or
when no step lowers it (lambda > 1e10); ``MAX_ITER`` otherwise. **Bounds** (no prior): a trial
step is projected onto r in [R_MIN, R_MAX_REGION x the region's semi-major axis] and
|eta| <= ETA_MAX, then accepted or rejected on its chi2; at a radius bound that the gradient pushes
against, ln r is held (active set). A star runs to the lower radius bound: the fit stops there with
a round ellipse (eta = 0; at r = R_MIN its shape does not change the model). **Point test**
(deliberate difference, Rubin has its prior): a fitted ellipse that does not lower chi2 by more
than POINT_DCHI2 = 9 (noise units, ~3 sigma for 3 parameters) below the point model's (round,
r = R_MIN) is replaced by the point (stage bit ``POINT``): faint stars' noise ellipses would
otherwise lift their forced CModel flux past extendedness's threshold.

**Shared ellipse** (deliberate difference, Rubin stores each profile's own fit): exp and dev are
fitted on the same pixels with the same weights, so their chi2 compare. When one profile fits worse
by more than SHARE_DCHI2 = 9 (noise units; both have 3 parameters), its stored ellipse is the better
profile's (stage bit ``SHARED``; its flux and chi2 stay those of its own fit). The forced joint fit
then mixes the two profiles at one ellipse: the wrong profile's own ellipse (dev on an exp galaxy
2-4 r_e, exp on a dev galaxy 0.4-0.7 r_e) extrapolates very differently beyond the fit region, so
the noise-driven, non-negative share it takes moved forced cModelFlux +3.6% (exp) and -5.2% (dev);
at one ellipse the share moves the total by ~0 (issue 21 item 7).

**Start** (Rubin's guessParametersFromMoments): D = S - P with D_xx, D_yy >= 0.01, D_xy = 0
if D is then not positive definite (``SMALL_SHAPE``), Q0 = D / 0.95473^2 (the lux moments-radius
factor); S the reference shape (observed moments), P the PSF mixture's moments; a missing shape
uses 1.5^2 P (``NO_SHAPE``). exp and dev start from the initial stage's ellipse.

**Fit region** (Rubin's PixelFitRegion): E0 = S scaled to determinant radius 1.5 R_K (Kron
radius); when that is impossible or its area is below psi = 16 area(P): 4-scaled P if psi > the
footprint area A_fp (or no footprint: ``USED_PSF_AREA``), else P scaled to area A_fp
(``USED_FOOTPRINT_AREA``); area > MAX_AREA sets ``MAX_AREA`` only. Pixels: centres inside the
ellipse (centred on the centroid), usable (the caller's plane: valid, no bad mask plane), on the
image. More than MAX_BAD_FRACTION of the pixel centres inside the ellipse unusable or off the
image (Rubin: of its area), or none usable: ``BAD_PIXELS``, no fit. After
the initial stage the region becomes E1 = alpha^2 D + 4P with D the initial half-light ellipse
and alpha (clamped to [1, 3]) solving det(alpha^2 D + 4P) = det E0 as Rubin's quadratic does
(a = det D, b = D_xx G_yy + D_yy G_xx - 2 D_xy G_xy, c = det G - det E0); exp and dev are fitted
on E1 (checked for bad pixels again).

Noise replacement: the source's own footprint's heavy values replace the noise image inside it
(:func:`forcedphot.kernels.pixels.insert_footprint`), as plugins see the deblended image.

Sources are fitted one per thread in fixed chunks, so results do not depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.pixels import insert_footprint

# stage flag bits (per stage)
FAILED = 1  # no fit (no region, no PSF, no flux, or a numeric error): ellipse NaN
MAX_ITER = 2  # the iteration limit was reached (ellipse kept)
NUMERIC_ERROR = 4  # a non-finite objective at the start
NO_FLUX = 8  # the best amplitude is 0 (no positive model correlates with the data)
POINT = 16  # the fitted ellipse did not beat the point model by POINT_DCHI2: the point kept (informative)
SHARED = 32  # exp or dev fitted worse than the other by SHARE_DCHI2: the other's ellipse stored (informative)
# region flag bits
MAX_AREA = 1  # the initial region's area exceeds MAX_AREA (informative only, as Rubin)
BAD_PIXELS = 2  # more than MAX_BAD_FRACTION of a region's pixels unusable or off the image, or none
USED_PSF_AREA = 4
USED_FOOTPRINT_AREA = 8
INITIAL_MIN = 16  # the final-region factor was clamped to 1
INITIAL_MAX = 32  # ... to 3
NO_SHAPE = 64  # no usable reference shape: 1.5^2 P used to start
SMALL_SHAPE = 128  # S - P not positive definite
NO_PSF = 256  # no usable PSF mixture or centroid: nothing fitted

N_STAGES = 3  # initial, exp, dev
MOMENTS_FACTOR = 0.95473  # lux: moments radius / half-light radius (Rubin)
N_KRON = 1.5
PSF_AREA_FACTOR = 16.0  # psi = 16 area(P): the PSF ellipse scaled by 4
MAX_AREA_PX = 100000.0
MAX_BAD_FRACTION = 0.1
SHAPE_FALLBACK = 1.5  # no shape: the PSF's ellipse scaled by 1.5
MIN_D = 0.01  # px^2, floor of D's diagonal
R_MIN = 0.01  # px, lower bound of the determinant radius
R_MAX_REGION = 2.0  # upper bound of the radius: this times the initial region's semi-major axis
ETA_MAX = 3.0  # axis ratio >= e^-3
POINT_DCHI2 = 9.0  # chi2 (noise units) a fitted ellipse must gain over the point model (r = R_MIN) to be kept
SHARE_DCHI2 = 9.0  # chi2 (noise units) by which exp or dev must fit worse than the other to get its ellipse
MAX_HALF = 300  # largest stamp half-size read (a larger region counts its outer pixels as unusable)
TOL_REL = 1e-9
TOL_ABS = 1e-4  # chi2 units (the weights are inverse variances, or their geometric mean): far below 1 sigma
MAX_ITERATIONS = 200
MAX_K = 8
CHUNK = 4  # sources per prange task (results do not depend on it)
TWO_PI = 2.0 * math.pi


@njit(cache=True, nogil=True, error_model="numpy")
def _quad(eta1, eta2, lnr, q, t):
    """Q (xx, yy, xy) of (eta1, eta2, ln r) into q; t[a, p] = dQ_a / dtheta_p (a: xx, yy, xy)."""
    r2 = math.exp(2.0 * lnr)
    e = math.sqrt(eta1 * eta1 + eta2 * eta2)
    c = math.cosh(e)
    if e < 1e-4:
        s = 1.0 + e * e / 6.0
        u = 1.0 / 3.0 + e * e / 30.0  # (e cosh e - sinh e) / e^3
    else:
        sh = math.sinh(e)
        s = sh / e
        u = (e * c - sh) / (e * e * e)
    q[0] = r2 * (c + s * eta1)
    q[1] = r2 * (c - s * eta1)
    q[2] = r2 * s * eta2
    t[0, 0] = r2 * (s * eta1 + s + eta1 * eta1 * u)
    t[0, 1] = r2 * (s * eta2 + eta1 * eta2 * u)
    t[1, 0] = r2 * (s * eta1 - s - eta1 * eta1 * u)
    t[1, 1] = r2 * (s * eta2 - eta1 * eta2 * u)
    t[2, 0] = r2 * eta1 * eta2 * u
    t[2, 1] = r2 * (s + eta2 * eta2 * u)
    for a in range(3):
        t[a, 2] = 2.0 * q[a]


@njit(cache=True, nogil=True, error_model="numpy")
def _params(qxx, qyy, qxy, p):
    """(eta1, eta2, ln r) of a positive-definite Q into p; False if it is not."""
    det = qxx * qyy - qxy * qxy
    if not (det > 0 and qxx > 0 and np.isfinite(det)):
        return False
    sd = math.sqrt(det)
    nxx = qxx / sd
    nyy = qyy / sd
    nxy = qxy / sd
    e = math.acosh(max(0.5 * (nxx + nyy), 1.0))
    f = 1.0 if e < 1e-8 else e / math.sinh(e)
    p[0] = 0.5 * f * (nxx - nyy)
    p[1] = f * nxy
    p[2] = 0.25 * math.log(det)
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _project(p, lnr_lo, lnr_hi):
    """Clip (eta1, eta2, ln r) to the bounds; False if not finite."""
    if not (np.isfinite(p[0]) and np.isfinite(p[1]) and np.isfinite(p[2])):
        return False
    e = math.sqrt(p[0] * p[0] + p[1] * p[1])
    if e > ETA_MAX:
        p[0] *= ETA_MAX / e
        p[1] *= ETA_MAX / e
    p[2] = min(max(p[2], lnr_lo), lnr_hi)
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _components(q, wk, vk, nk, amp, cen, cov, nm, comps):
    """comps[c] = (flux, mu_x, mu_y, Cinv_xx, Cinv_yy, Cinv_xy, norm, v_k) of the nk x nm convolved
    Gaussians; False if a covariance is not positive definite."""
    c = 0
    for k in range(nk):
        for j in range(nm):
            cxx = vk[k] * q[0] + cov[j, 0]
            cyy = vk[k] * q[1] + cov[j, 1]
            cxy = vk[k] * q[2] + cov[j, 2]
            det = cxx * cyy - cxy * cxy
            if not (det > 0 and cxx > 0 and np.isfinite(det)):
                return False
            f = wk[k] * amp[j]
            comps[c, 0] = f
            comps[c, 1] = cen[j, 0]
            comps[c, 2] = cen[j, 1]
            comps[c, 3] = cyy / det
            comps[c, 4] = cxx / det
            comps[c, 5] = -cxy / det
            comps[c, 6] = f / (TWO_PI * math.sqrt(det))
            comps[c, 7] = vk[k]
            c += 1
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _sums(px, n, comps, nc, deriv, acc):
    """Weighted sums over the n region pixels px[i] = (dx, dy, data, weight) of the unit-flux model m
    and (deriv) its derivatives g = dm/d(Qxx, Qyy, Qxy):
    acc[0..2] = S_mm, S_md, S_dd; acc[3..5] = S_gm; acc[6..8] = S_gd; acc[9..14] = S_gg (xx yy xy pairs:
    00 11 22 01 02 12)."""
    for a in range(15):
        acc[a] = 0.0
    for i in range(n):
        dx = px[i, 0]
        dy = px[i, 1]
        d = px[i, 2]
        w = px[i, 3]
        m = 0.0
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        for c in range(nc):
            ex = dx - comps[c, 1]
            ey = dy - comps[c, 2]
            ixx = comps[c, 3]
            iyy = comps[c, 4]
            ixy = comps[c, 5]
            v = comps[c, 6] * math.exp(-0.5 * (ixx * ex * ex + iyy * ey * ey + 2.0 * ixy * ex * ey))
            m += v
            if deriv:
                ux = ixx * ex + ixy * ey
                uy = ixy * ex + iyy * ey
                h = v * comps[c, 7]
                g0 += 0.5 * h * (ux * ux - ixx)
                g1 += 0.5 * h * (uy * uy - iyy)
                g2 += h * (ux * uy - ixy)
        acc[0] += w * m * m
        acc[1] += w * m * d
        acc[2] += w * d * d
        if deriv:
            acc[3] += w * g0 * m
            acc[4] += w * g1 * m
            acc[5] += w * g2 * m
            acc[6] += w * g0 * d
            acc[7] += w * g1 * d
            acc[8] += w * g2 * d
            acc[9] += w * g0 * g0
            acc[10] += w * g1 * g1
            acc[11] += w * g2 * g2
            acc[12] += w * g0 * g1
            acc[13] += w * g0 * g2
            acc[14] += w * g1 * g2


@njit(cache=True, nogil=True, error_model="numpy")
def _profiled(acc):
    """(alpha, chi2) of the sums: alpha = max(0, S_md / S_mm)."""
    if not acc[0] > 0:
        return 0.0, acc[2]
    alpha = max(acc[1] / acc[0], 0.0)
    return alpha, acc[2] - alpha * acc[1]


@njit(cache=True, nogil=True, error_model="numpy")
def _evaluate(p, px, n, wk, vk, nk, amp, cen, cov, nm, comps, q, t, acc, deriv):
    """(ok, alpha, chi2) at parameters p; with deriv, acc holds the sums for the normal equations."""
    _quad(p[0], p[1], p[2], q, t)
    if not _components(q, wk, vk, nk, amp, cen, cov, nm, comps):
        return False, 0.0, np.inf
    _sums(px, n, comps, nk * nm, deriv, acc)
    alpha, chi2 = _profiled(acc)
    return np.isfinite(chi2), alpha, chi2


@njit(cache=True, nogil=True, error_model="numpy")
def _normal(acc, alpha, t, a, g):
    """Variable-projection normal equations in theta: A = alpha^2 T^T (S_gg - S_gm S_gm^T / S_mm) T,
    g = alpha T^T (alpha S_gm - S_gd)."""
    gg = np.empty((3, 3))
    gg[0, 0] = acc[9]
    gg[1, 1] = acc[10]
    gg[2, 2] = acc[11]
    gg[0, 1] = gg[1, 0] = acc[12]
    gg[0, 2] = gg[2, 0] = acc[13]
    gg[1, 2] = gg[2, 1] = acc[14]
    for u in range(3):
        for v in range(3):
            gg[u, v] -= acc[3 + u] * acc[3 + v] / acc[0]
    for p_ in range(3):
        s = 0.0
        for u in range(3):
            s += t[u, p_] * (alpha * acc[3 + u] - acc[6 + u])
        g[p_] = alpha * s
        for r_ in range(3):
            s = 0.0
            for u in range(3):
                for v in range(3):
                    s += t[u, p_] * gg[u, v] * t[v, r_]
            a[p_, r_] = alpha * alpha * s


@njit(cache=True, nogil=True, error_model="numpy")
def _solve3(a, g, lam, step):
    """step = -(A + lam diag A)^-1 g (3 x 3, Cholesky); False if not positive definite."""
    mat = np.empty((3, 3))
    dmax = max(a[0, 0], max(a[1, 1], a[2, 2]))
    floor = 1e-12 * dmax if dmax > 0 else 1e-300
    for s in range(3):
        for r in range(3):
            mat[s, r] = a[s, r]
        mat[s, s] = a[s, s] + lam * max(a[s, s], floor)
    for s in range(3):
        d = mat[s, s]
        for r in range(s):
            d -= mat[s, r] * mat[s, r]
        if not d > 0:
            return False
        d = math.sqrt(d)
        mat[s, s] = d
        for r in range(s + 1, 3):
            e = mat[r, s]
            for u in range(s):
                e -= mat[r, u] * mat[s, u]
            mat[r, s] = e / d
    for s in range(3):
        e = -g[s]
        for r in range(s):
            e -= mat[s, r] * step[r]
        step[s] = e / mat[s, s]
    for s in range(2, -1, -1):
        e = step[s]
        for r in range(s + 1, 3):
            e -= mat[r, s] * step[r]
        step[s] = e / mat[s, s]
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _pin_radius(p, a, g, lnr_lo, lnr_hi):
    """At a radius bound with the gradient pointing out of it, hold ln r (an active bound): its row and
    column of A become the identity's, its gradient 0, so the step moves (eta1, eta2) only."""
    if (p[2] <= lnr_lo + 1e-12 and g[2] > 0) or (p[2] >= lnr_hi - 1e-12 and g[2] < 0):
        for s in range(3):
            a[2, s] = 0.0
            a[s, 2] = 0.0
        a[2, 2] = 1.0
        g[2] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def fit_stage(p, px, n, wk, vk, nk, amp, cen, cov, nm, lnr_lo, lnr_hi, max_iter):
    """:func:`fit_lm`, then the point test: unless the fitted ellipse lowers chi2 by more than
    POINT_DCHI2 below the point model's (round, r = R_MIN), the point is the answer (``POINT``).

    Without it (no prior) a star at S/N ~30-60 ends on an elongated noise ellipse of determinant
    radius ~0.1 px but trace ~0.3 px^2, which widens its model in one direction and lifts its forced
    CModel flux 2-3% above psfFlux: past extendedness's 1.5%. Rubin's prior pulls those to small
    radii; this keeps only ellipses the data resolve at ~3 sigma (3 parameters)."""
    fl, alpha, chi2, its = fit_lm(p, px, n, wk, vk, nk, amp, cen, cov, nm, lnr_lo, lnr_hi, max_iter)
    if (fl & FAILED) or p[2] <= lnr_lo + 1e-12:
        return fl, alpha, chi2, its
    pt = np.array([0.0, 0.0, lnr_lo])
    comps = np.empty((nk * nm, 8))
    ok, alpha_p, chi2_p = _evaluate(pt, px, n, wk, vk, nk, amp, cen, cov, nm, comps, np.empty(3),
                                    np.empty((3, 3)), np.empty(15), False)
    if ok and alpha_p > 0 and chi2_p - chi2 < POINT_DCHI2:
        for s in range(3):
            p[s] = pt[s]
        return fl | POINT, alpha_p, chi2_p, its
    return fl, alpha, chi2, its


@njit(cache=True, nogil=True, error_model="numpy")
def fit_lm(p, px, n, wk, vk, nk, amp, cen, cov, nm, lnr_lo, lnr_hi, max_iter):
    """Levenberg-Marquardt of (eta1, eta2, ln r) from p (updated in place).

    Returns (flags, alpha, chi2, iterations)."""
    comps = np.empty((nk * nm, 8))
    q = np.empty(3)
    t = np.empty((3, 3))
    acc = np.empty(15)
    a = np.empty((3, 3))
    g = np.empty(3)
    step = np.empty(3)
    trial = np.empty(3)
    _project(p, lnr_lo, lnr_hi)
    ok, alpha, chi2 = _evaluate(p, px, n, wk, vk, nk, amp, cen, cov, nm, comps, q, t, acc, True)
    if not ok:
        return FAILED | NUMERIC_ERROR, np.nan, np.nan, 0
    if not alpha > 0:
        return FAILED | NO_FLUX, 0.0, chi2, 0
    _normal(acc, alpha, t, a, g)
    lam = 1e-3
    for it in range(max_iter):
        if p[2] <= lnr_lo + 1e-12 and g[2] >= 0:  # a point source: at the smallest radius its shape is moot
            p[0] = 0.0
            p[1] = 0.0
            ok, alpha, chi2 = _evaluate(p, px, n, wk, vk, nk, amp, cen, cov, nm, comps, q, t, acc, False)
            return 0, alpha, chi2, it + 1
        _pin_radius(p, a, g, lnr_lo, lnr_hi)
        if not _solve3(a, g, lam, step):
            lam *= 10.0
            if lam > 1e10:
                return 0, alpha, chi2, it + 1
            continue
        for s in range(3):
            trial[s] = p[s] + step[s]
        new = np.inf
        if _project(trial, lnr_lo, lnr_hi):
            okt, alpha_t, new = _evaluate(trial, px, n, wk, vk, nk, amp, cen, cov, nm, comps, q, t, acc, False)
            if not (okt and alpha_t > 0):
                new = np.inf
        if new < chi2:
            drop = chi2 - new
            for s in range(3):
                p[s] = trial[s]
            ok, alpha, chi2 = _evaluate(p, px, n, wk, vk, nk, amp, cen, cov, nm, comps, q, t, acc, True)
            _normal(acc, alpha, t, a, g)
            lam = max(lam * 0.3, 1e-15)
            if drop <= TOL_ABS + TOL_REL * chi2:
                return 0, alpha, chi2, it + 1
        else:
            lam *= 10.0
            if lam > 1e10:
                return 0, alpha, chi2, it + 1
    return MAX_ITER, alpha, chi2, max_iter


@njit(cache=True, nogil=True, error_model="numpy")
def psf_moments(amp, cen, cov, nm, out):
    """out = (Pxx, Pyy, Pxy) of the mixture about its own centroid; False if unusable."""
    tot = 0.0
    mx = 0.0
    my = 0.0
    for j in range(nm):
        tot += amp[j]
        mx += amp[j] * cen[j, 0]
        my += amp[j] * cen[j, 1]
    if not tot > 0:
        return False
    mx /= tot
    my /= tot
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for j in range(nm):
        sxx += amp[j] * (cov[j, 0] + cen[j, 0] * cen[j, 0])
        syy += amp[j] * (cov[j, 1] + cen[j, 1] * cen[j, 1])
        sxy += amp[j] * (cov[j, 2] + cen[j, 0] * cen[j, 1])
    out[0] = sxx / tot - mx * mx
    out[1] = syy / tot - my * my
    out[2] = sxy / tot - mx * my
    det = out[0] * out[1] - out[2] * out[2]
    return det > 0 and out[0] > 0 and np.isfinite(det)


@njit(cache=True, nogil=True, error_model="numpy")
def initial_region(s, kron, fp_area, pm, e0):
    """E0 (Rubin's initial fit region) into e0 from shape s (3,) (NaN: none), Kron radius, footprint area
    and PSF moments pm; returns region flag bits."""
    flags = 0
    area_p = math.pi * math.sqrt(pm[0] * pm[1] - pm[2] * pm[2])
    psi = PSF_AREA_FACTOR * area_p
    det_s = s[0] * s[1] - s[2] * s[2]
    area = 0.0
    if det_s > 0 and s[0] > 0 and np.isfinite(det_s) and kron > 0 and np.isfinite(kron):
        f = (N_KRON * kron) ** 2 / math.sqrt(det_s)
        for a in range(3):
            e0[a] = s[a] * f
        area = math.pi * (N_KRON * kron) ** 2
    if not area >= psi:
        if not (fp_area > 0) or psi > fp_area:  # NaN footprint area: the PSF's
            for a in range(3):
                e0[a] = PSF_AREA_FACTOR * pm[a]
            area = psi
            flags |= USED_PSF_AREA
        else:
            for a in range(3):
                e0[a] = pm[a] * fp_area / area_p
            area = fp_area
            flags |= USED_FOOTPRINT_AREA
    if area > MAX_AREA_PX:
        flags |= MAX_AREA
    return flags


@njit(cache=True, nogil=True, error_model="numpy")
def final_region(d, pm, e0, e1):
    """E1 = alpha^2 D + 4P (Rubin's quadratic for alpha, clamped to [1, 3]) into e1; returns flag bits."""
    gxx = 4.0 * pm[0]
    gyy = 4.0 * pm[1]
    gxy = 4.0 * pm[2]
    qa = d[0] * d[1] - d[2] * d[2]
    qb = d[0] * gyy + d[1] * gxx - 2.0 * d[2] * gxy
    qc = gxx * gyy - gxy * gxy - (e0[0] * e0[1] - e0[2] * e0[2])
    disc = qb * qb - 4.0 * qa * qc
    alpha = (-qb + math.sqrt(disc)) / (2.0 * qa) if (qa > 0 and disc >= 0) else np.nan
    flags = 0
    if not alpha >= 1.0:  # NaN included
        alpha = 1.0
        flags |= INITIAL_MIN
    elif alpha > 3.0:
        alpha = 3.0
        flags |= INITIAL_MAX
    e1[0] = alpha * alpha * d[0] + gxx
    e1[1] = alpha * alpha * d[1] + gyy
    e1[2] = alpha * alpha * d[2] + gxy
    return flags


@njit(cache=True, nogil=True, error_model="numpy")
def region_pixels(image, variance, usable, fp, src, x, y, e, px):
    """The usable pixels (``usable``, finite image, finite positive variance) whose centres lie in ellipse e
    (centred on (x, y), image pixel coordinates),
    the source's own footprint values put in (noise replacement), as px[i] = (dx, dy, data, variance).

    Returns (n, ok): ok False when none, or more than MAX_BAD_FRACTION of the pixel centres inside the
    ellipse are unusable or off the image (counted against the centres inside, not Rubin's area(e), so
    that a small ellipse is not flagged for how the pixel lattice falls)."""
    h, w = image.shape
    det = e[0] * e[1] - e[2] * e[2]
    area = math.pi * math.sqrt(det)
    cx = int(math.floor(x + 0.5))
    cy = int(math.floor(y + 0.5))
    half = min(int(math.ceil(math.sqrt(max(e[0], e[1])))) + 1, MAX_HALF)
    size = 2 * half + 1
    img = np.zeros((size, size))
    ok = np.zeros((size, size), np.uint8)
    for j in range(size):
        yy = cy - half + j
        for i in range(size):
            xx = cx - half + i
            if 0 <= yy < h and 0 <= xx < w and usable[yy, xx] and variance[yy, xx] > 0 and \
                    np.isfinite(variance[yy, xx]) and np.isfinite(image[yy, xx]):
                img[j, i] = image[yy, xx]
                ok[j, i] = 1
    insert_footprint(fp, src, cy, cx, half, img, ok)
    ixx = e[1] / det
    iyy = e[0] / det
    ixy = -e[2] / det
    n = 0
    inside = 0  # pixel centres inside the ellipse, usable or not, on the image or off
    for j in range(size):
        dy = cy - half + j - y
        for i in range(size):
            dx = cx - half + i - x
            if ixx * dx * dx + iyy * dy * dy + 2.0 * ixy * dx * dy <= 1.0:
                inside += 1
                if not ok[j, i]:
                    continue
                px[n, 0] = dx
                px[n, 1] = dy
                px[n, 2] = img[j, i]
                px[n, 3] = variance[cy - half + j, cx - half + i]
                n += 1
    if half == MAX_HALF:  # the stamp may not hold the whole ellipse
        inside = max(inside, int(area))
    good = n > 0 and not (inside - n > MAX_BAD_FRACTION * inside)
    return n, good


@njit(cache=True, nogil=True, error_model="numpy")
def _weights(px, n, pixel_weights):
    """px[:, 3] variance -> the fit weight: 1/V (pixel_weights) or exp(-mean ln V) for every pixel."""
    if pixel_weights:
        for i in range(n):
            px[i, 3] = 1.0 / px[i, 3]
        return
    s = 0.0
    for i in range(n):
        s += math.log(px[i, 3])
    c = math.exp(-s / n)
    for i in range(n):
        px[i, 3] = c


@njit(cache=True, nogil=True, error_model="numpy")
def _capacity(e):
    half = min(int(math.ceil(math.sqrt(max(e[0], e[1])))) + 1, MAX_HALF)
    return (2 * half + 1) ** 2


@njit(cache=True, nogil=True, error_model="numpy")
def fit_source(image, variance, usable, fp, s_idx, x, y, shape, kron, fp_area, amp, cen, cov, prof_w, prof_v,
               prof_n, max_iter, ell, region, flux, chi2, iters, sflags):
    """All stages of one source; writes ell (3, 3), region (3,), flux, chi2, iters, sflags (3,);
    returns the region flags."""
    nm = amp.size
    pm = np.empty(3)
    for st in range(N_STAGES):
        sflags[st] = FAILED
    if not (np.isfinite(x) and np.isfinite(y)) or not psf_moments(amp, cen, cov, nm, pm):
        return NO_PSF
    for j in range(nm):
        if not (np.isfinite(amp[j]) and np.isfinite(cen[j, 0]) and np.isfinite(cen[j, 1])):
            return NO_PSF
    e0 = np.empty(3)
    rflags = initial_region(shape, kron, fp_area, pm, e0)
    px = np.empty((_capacity(e0), 4))
    n, good = region_pixels(image, variance, usable, fp, s_idx, x, y, e0, px)
    if not good:
        return rflags | BAD_PIXELS
    # start (Rubin's guessParametersFromMoments)
    sm = np.empty(3)
    det_s = shape[0] * shape[1] - shape[2] * shape[2]
    if det_s > 0 and shape[0] > 0 and np.isfinite(det_s):
        for a in range(3):
            sm[a] = shape[a]
    else:
        rflags |= NO_SHAPE
        for a in range(3):
            sm[a] = SHAPE_FALLBACK ** 2 * pm[a]
    dxx = max(sm[0] - pm[0], MIN_D)
    dyy = max(sm[1] - pm[1], MIN_D)
    dxy = sm[2] - pm[2]
    if not dxx * dyy - dxy * dxy > 0:
        dxy = 0.0
        rflags |= SMALL_SHAPE
    p = np.empty(3)
    f = 1.0 / (MOMENTS_FACTOR * MOMENTS_FACTOR)
    _params(dxx * f, dyy * f, dxy * f, p)
    lnr_lo = math.log(R_MIN)
    lo, hi = 0.5 * (e0[0] + e0[1]), math.sqrt(0.25 * (e0[0] - e0[1]) ** 2 + e0[2] * e0[2])
    lnr_hi = math.log(R_MAX_REGION * math.sqrt(lo + hi))
    q = np.empty(3)
    t = np.empty((3, 3))
    p1 = p.copy()
    for st in range(N_STAGES):
        if st == 1:  # the final region from the initial stage's ellipse (its start if that failed)
            _quad(p[0], p[1], p[2], q, t)
            e1 = np.empty(3)
            rflags |= final_region(q, pm, e0, e1)
            for a in range(3):
                region[a] = e1[a]
            px = np.empty((_capacity(e1), 4))
            n, good = region_pixels(image, variance, usable, fp, s_idx, x, y, e1, px)
            if not good:
                for a in range(3):
                    region[a] = np.nan
                return rflags | BAD_PIXELS
            _weights(px, n, False)
            for a in range(3):
                p1[a] = p[a]
        elif st == 0:
            _weights(px, n, True)
        k = prof_n[st]
        ps = p.copy() if st == 0 else p1.copy()
        fl, alpha, c2, its = fit_stage(ps, px, n, prof_w[st, :k], prof_v[st, :k], k, amp, cen, cov, nm,
                                       lnr_lo, lnr_hi, max_iter[st])
        sflags[st] = fl
        iters[st] = its
        if fl & FAILED:
            continue
        _quad(ps[0], ps[1], ps[2], q, t)
        for a in range(3):
            ell[st, a] = q[a]
        flux[st] = alpha
        chi2[st] = c2
        if st == 0:
            for a in range(3):
                p[a] = ps[a]
    share_ellipse(ell, chi2, sflags)
    return rflags


@njit(cache=True, nogil=True, error_model="numpy")
def share_ellipse(ell, chi2, sflags):
    """The shared-ellipse rule (module docstring): when exp and dev both fitted and one's chi2 exceeds the
    other's by more than SHARE_DCHI2, the worse one's ellipse ell[k] becomes the better one's (bit SHARED)."""
    if (sflags[1] & FAILED) or (sflags[2] & FAILED):
        return
    d = chi2[2] - chi2[1]
    worse, better = (2, 1) if d > 0 else (1, 2)
    if abs(d) > SHARE_DCHI2:
        for a in range(3):
            ell[worse, a] = ell[better, a]
        sflags[worse] |= SHARED


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def model_fit_kernel(image, variance, usable, fp, x, y, shape, kron, fp_area, psf_amp, psf_centre, psf_cov,
                     prof_w, prof_v, prof_n, max_iter):
    """See :func:`fit_models`."""
    n = x.size
    ell = np.full((n, N_STAGES, 3), np.nan)
    region = np.full((n, 3), np.nan)
    flux = np.full((n, N_STAGES), np.nan)
    chi2 = np.full((n, N_STAGES), np.nan)
    iters = np.zeros((n, N_STAGES), np.int32)
    sflags = np.full((n, N_STAGES), FAILED, np.int32)
    rflags = np.zeros(n, np.int32)
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        for s in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            rflags[s] = fit_source(image, variance, usable, fp, s, x[s], y[s], shape[s], kron[s], fp_area[s],
                                   psf_amp[s], psf_centre[s], psf_cov[s], prof_w, prof_v, prof_n, max_iter,
                                   ell[s], region[s], flux[s], chi2[s], iters[s], sflags[s])
    return ell, region, flux, chi2, iters, sflags, rflags


def profile_tables(profiles):
    """(weights (3, MAX_K), variances (3, MAX_K), sizes (3,)) of the initial, exp and dev mixtures, each
    given as (weights, variances) (``forcedphot.profiles``: INITIAL, EXP, DEV)."""
    w = np.zeros((N_STAGES, MAX_K))
    v = np.ones((N_STAGES, MAX_K))
    k = np.zeros(N_STAGES, np.int64)
    for st, (pw, pv) in enumerate(profiles):
        k[st] = len(pw)
        w[st, :k[st]] = pw
        v[st, :k[st]] = pv
    return w, v, k


def fit_models(image, variance, usable, fp, x, y, shape, kron, fp_area, psf_amp, psf_centre, psf_cov, profiles,
               max_iter=(MAX_ITERATIONS, MAX_ITERATIONS, MAX_ITERATIONS)):
    """Fit the initial, exp and dev profiles to every source (see the module docstring).

    image, variance (H, W) float32; usable (H, W) uint8 (nonzero: a pixel the fit may use); fp the
    footprints tuple (:mod:`forcedphot.kernels.pixels`; ``no_footprints(N)`` for none); x, y (N,) the
    centroids in image pixels (0-based centres); shape (N, 3) the reference moments (xx, yy, xy; NaN:
    none); kron (N,) Kron radii (NaN: none); fp_area (N,) footprint areas (NaN: none); psf_amp (N, M),
    psf_centre (N, M, 2) (offsets from the centroid), psf_cov (N, M, 3): the PSF mixtures; profiles: the
    (weights, variances) of the initial, exp and dev mixtures (``forcedphot.refmodels.PROFILES``).

    Returns (ell (N, 3, 3) half-light ellipses (Qxx, Qyy, Qxy) of initial, exp, dev (NaN: FAILED; the
    better-fitting one's for a ``SHARED`` stage),
    region (N, 3) the final fit region E1 (NaN: none), flux (N, 3) the amplitudes (total flux of the
    truncated mixture, image units), chi2 (N, 3) the objective at the fit (fit weights), iterations
    (N, 3), stage flags (N, 3) and region flags (N,) int32 (bits above)).
    """
    f64 = lambda a: np.ascontiguousarray(a, np.float64)  # noqa: E731
    x = f64(x).reshape(-1)
    n = x.size
    psf_amp = f64(psf_amp).reshape(n, -1)
    m = psf_amp.shape[1]
    w, v, k = profile_tables(profiles)
    return model_fit_kernel(np.ascontiguousarray(image, np.float32), np.ascontiguousarray(variance, np.float32),
                            np.ascontiguousarray(usable, np.uint8), fp, x, f64(y).reshape(n), f64(shape).reshape(n, 3),
                            f64(kron).reshape(n), f64(fp_area).reshape(n), psf_amp, f64(psf_centre).reshape(n, m, 2),
                            f64(psf_cov).reshape(n, m, 3), w, v, k, np.asarray(max_iter, np.int64).reshape(3))


def _warm():
    from forcedphot.kernels.pixels import no_footprints

    k = 15
    r = np.arange(k) - k // 2
    img = np.exp(-0.5 * (r[None, :] ** 2 + r[:, None] ** 2) / 3.0).astype(np.float32)
    one = np.ones(1)
    fit_models(img, np.ones_like(img), np.ones((k, k), np.uint8), no_footprints(1), one * 7, one * 7,
               np.array([[3.0, 3.0, 0.0]]), one * 2, one * np.nan, np.ones((1, 3)) / 3, np.zeros((1, 3, 2)),
               np.tile([1.0, 1.0, 0.0], (1, 3, 1)), [([0.5, 0.5], [0.3, 1.0])] * N_STAGES, max_iter=(2, 2, 2))


# the signatures the pipeline compiles (see forcedphot.compile)
WARMUP = [_warm]
