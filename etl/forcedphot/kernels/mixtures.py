"""Gaussian mixtures: a few elliptical Gaussians fitted to each PSF image, and galaxy models
convolved with such a PSF rendered on pixel boxes.

A Gaussian of flux a, centre mu and covariance C (pixels^2) has, at pixel centre X,

    G(X) = a / (2 pi sqrt(det C)) exp(-1/2 (X - mu)^T C^-1 (X - mu)).

**Fit** (:func:`fit_psf_mixtures`): M = 1..3 Gaussians with one shared centre (x0, y0) are
fitted to each K x K PSF image by least squares over all its pixels, unweighted (a model image
has no noise), the model sampled at pixel centres (the PSF image is the pixel-convolved PSF, so
its samples are the pixel integrals). Parameters: x0, y0 and per component (ln a, u, v, w) with
C = L L^T, L = [[e^u, 0], [w, e^v]], so amplitudes stay positive and covariances positive
definite whatever the step. Start: the flux-weighted centroid and second moments S of the
image's positive pixels, component m with flux fraction f_m and covariance s_m S (``INITIAL``).
Levenberg-Marquardt with analytic derivatives and Marquardt's scaling: a step solves
(J^T J + lambda diag(J^T J)) d = -J^T r; accepted when it lowers chi2 (lambda x 0.3), else
lambda x 10. Converged when an accepted step lowers chi2 by less than ``tol`` of it, when a step
moves no parameter by more than ``XTOL`` of the largest (accepted, or rejected: a larger lambda only
shortens it; MINPACK's xtol), when chi2 is within the image values' own rounding (float32 PSF
images: sum (2^-24 image)^2), or when no step lowers it any more (lambda > 1e10: a minimum to
rounding); otherwise ``MAX_ITER``.
A step that would take a component's covariance eigenvalues out of [``MIN_VARIANCE``,
(``MAX_SIGMA_BOX`` K)^2] has them clipped to that range (same axes; a projected step), then is
accepted or rejected on its chi2: without that bound a spare component collapses between pixel
centres (zero size, unbounded flux) or spreads into a pedestal wider than the image (Rubin's
DoubleShapeletPsfApprox bounds its radii likewise: 0.25 px, 0.4 of the stamp). Components are
returned smallest first (by det C), so component m means the same at every node.

**Render** (:func:`convolved_images`): a galaxy profile given as a mixture in units of its
half-light ellipse Q (component k: weight w_k, covariance v_k Q) convolved with a source's PSF
mixture (a_j, mu_j, C_j) is the mixture of the K x M Gaussians (w_k a_j, x + mu_j, v_k Q + C_j):
covariances add. Each is evaluated at the centres of a pixel box; Q = 0 with one component of
weight 1 and variance 0 gives the PSF mixture itself (a point source).

Both kernels treat each node or source on one thread, in a fixed order, so results do not
depend on the thread count or on how sources are batched.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

OK = 0
FAILED = 1  # the image is not finite or has no positive flux; outputs NaN
MAX_ITER = 2  # the iteration limit was reached before convergence
MAX_COMPONENTS = 3
# (flux fractions, covariance scales relative to the image's second moments) of the starting components
INITIAL = {1: ((1.0,), (1.0,)), 2: ((0.85, 0.15), (0.6, 2.5)), 3: ((0.5, 0.4, 0.1), (0.4, 1.0, 3.0))}
TOL = 1e-10  # relative chi2 decrease of an accepted step that counts as converged
FLOAT32_ROUNDING = 2.0 ** -24  # the relative rounding of a float32 value
XTOL = 1e-8  # a step no parameter of which moves by more than XTOL (max |p| + XTOL) counts as converged
MIN_VARIANCE = 0.01  # pixels^2: the smallest covariance eigenvalue of a component (sigma 0.1 px)
MAX_SIGMA_BOX = 0.4  # the largest sigma of a component, as a fraction of the image's side K
MAX_ITERATIONS = 200
CHUNK = 16  # sources per prange task (results do not depend on it)
TWO_PI = 2.0 * math.pi


@njit(cache=True, nogil=True, error_model="numpy")
def _components(p, m, comp):
    """comp[c] = (a, e^-u, e^-v, w) of component c from the parameter vector p."""
    for c in range(m):
        b = 2 + 4 * c
        comp[c, 0] = math.exp(p[b])
        comp[c, 1] = math.exp(-p[b + 1])
        comp[c, 2] = math.exp(-p[b + 2])
        comp[c, 3] = p[b + 3]


@njit(cache=True, nogil=True, error_model="numpy")
def _eigenvalues(cxx, cyy, cxy):
    half_trace = 0.5 * (cxx + cyy)
    d = math.sqrt(max(0.25 * (cxx - cyy) ** 2 + cxy * cxy, 0.0))
    return half_trace - d, half_trace + d


@njit(cache=True, nogil=True, error_model="numpy")
def _set_covariance(p, b, cxx, cyy, cxy):
    """(u, v, w) at p[b + 1 .. b + 3] of the positive-definite covariance (cxx, cyy, cxy): C = L L^T."""
    l11 = math.sqrt(cxx)
    l21 = cxy / l11
    p[b + 1] = math.log(l11)
    p[b + 2] = 0.5 * math.log(cyy - l21 * l21)
    p[b + 3] = l21


@njit(cache=True, nogil=True, error_model="numpy")
def _project(p, m, min_var, max_var):
    """Clip every component's covariance eigenvalues to [min_var, max_var] (axes kept); False if not finite."""
    for c in range(m):
        b = 2 + 4 * c
        if not (np.isfinite(p[b]) and np.isfinite(p[b + 1]) and np.isfinite(p[b + 2]) and np.isfinite(p[b + 3])):
            return False
        eu = math.exp(p[b + 1])
        w = p[b + 3]
        cxx = eu * eu
        cyy = w * w + math.exp(2.0 * p[b + 2])
        cxy = w * eu
        lo, hi = _eigenvalues(cxx, cyy, cxy)
        if lo >= min_var and hi <= max_var:
            continue
        phi = 0.5 * math.atan2(2.0 * cxy, cxx - cyy)  # the major axis
        cs = math.cos(phi)
        sn = math.sin(phi)
        lo = min(max(lo, min_var), max_var)
        hi = min(max(hi, min_var), max_var)
        _set_covariance(p, b, hi * cs * cs + lo * sn * sn, hi * sn * sn + lo * cs * cs, (hi - lo) * sn * cs)
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _mixture_value(comp, m, dx, dy):
    """The mixture of ``m`` components (``_components`` form) at offset (dx, dy) from its centre."""
    f = 0.0
    for c in range(m):
        eu = comp[c, 1]
        ev = comp[c, 2]
        z1 = eu * dx
        z2 = ev * (dy - comp[c, 3] * z1)
        f += comp[c, 0] * eu * ev / TWO_PI * math.exp(-0.5 * (z1 * z1 + z2 * z2))
    return f


@njit(cache=True, nogil=True, error_model="numpy")
def _chi2(img, p, m, comp):
    """sum over pixels of (model - image)^2."""
    k = img.shape[0]
    h = k // 2
    _components(p, m, comp)
    chi2 = 0.0
    for j in range(k):
        dy = j - h - p[1]
        for i in range(k):
            dx = i - h - p[0]
            f = _mixture_value(comp, m, dx, dy)
            r = f - img[j, i]
            chi2 += r * r
    return chi2


@njit(cache=True, nogil=True, error_model="numpy")
def _dot(x, y, n):
    """sum x[:n] y[:n] in four interleaved partial sums (vectorisable; a fixed order)."""
    s0 = s1 = s2 = s3 = 0.0
    n4 = n - n % 4
    for q in range(0, n4, 4):
        s0 += x[q] * y[q]
        s1 += x[q + 1] * y[q + 1]
        s2 += x[q + 2] * y[q + 2]
        s3 += x[q + 3] * y[q + 3]
    for q in range(n4, n):
        s0 += x[q] * y[q]
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, nogil=True, error_model="numpy")
def _normal_equations(img, p, m, comp, jac, a, g):
    """chi2 at p, and J^T J (upper triangle, in ``a``) and J^T r (``g``) of the residuals model - image.

    ``jac`` (2 + 4m + 1, K^2) scratch: the Jacobian's columns by parameter, then the residuals."""
    k = img.shape[0]
    h = k // 2
    npar = 2 + 4 * m
    n = k * k
    _components(p, m, comp)
    res = jac[npar]
    chi2 = 0.0
    q = 0
    for j in range(k):
        dy = j - h - p[1]
        for i in range(k):
            dx = i - h - p[0]
            f = 0.0
            gx = 0.0
            gy = 0.0
            for c in range(m):
                b = 2 + 4 * c
                eu = comp[c, 1]
                ev = comp[c, 2]
                w = comp[c, 3]
                z1 = eu * dx
                z2 = ev * (dy - w * z1)
                v = comp[c, 0] * eu * ev / TWO_PI * math.exp(-0.5 * (z1 * z1 + z2 * z2))
                f += v
                jac[b, q] = v  # d/d ln a
                jac[b + 1, q] = v * (z1 * z1 - w * ev * z1 * z2 - 1.0)  # d/du
                jac[b + 2, q] = v * (z2 * z2 - 1.0)  # d/dv
                jac[b + 3, q] = v * ev * z1 * z2  # d/dw
                gx += v * (z1 * eu - z2 * w * eu * ev)
                gy += v * z2 * ev
            jac[0, q] = gx
            jac[1, q] = gy
            r = f - img[j, i]
            res[q] = r
            chi2 += r * r
            q += 1
    for s in range(npar):
        js = jac[s]
        g[s] = _dot(js, res, n)
        for t in range(s, npar):
            a[s, t] = _dot(js, jac[t], n)
    return chi2


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_damped(a, g, lam, npar, mat, step):
    """step = -(A + lam diag(A))^-1 g by Cholesky (A's upper triangle); False when not positive definite."""
    dmax = 0.0
    for s in range(npar):
        dmax = max(dmax, a[s, s])
    floor = 1e-12 * dmax if dmax > 0 else 1e-300
    for s in range(npar):
        for t in range(s, npar):
            mat[t, s] = a[s, t]  # lower triangle
        mat[s, s] = a[s, s] + lam * max(a[s, s], floor)
    for s in range(npar):  # in-place Cholesky, lower triangle
        d = mat[s, s]
        for t in range(s):
            d -= mat[s, t] * mat[s, t]
        if not d > 0:
            return False
        d = math.sqrt(d)
        mat[s, s] = d
        for r in range(s + 1, npar):
            e = mat[r, s]
            for t in range(s):
                e -= mat[r, t] * mat[s, t]
            mat[r, s] = e / d
    for s in range(npar):  # forward: L y = -g
        e = -g[s]
        for t in range(s):
            e -= mat[s, t] * step[t]
        step[s] = e / mat[s, s]
    for s in range(npar - 1, -1, -1):  # back: L^T x = y
        e = step[s]
        for t in range(s + 1, npar):
            e -= mat[t, s] * step[t]
        step[s] = e / mat[s, s]
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _start(img, m, frac, scale, min_var, max_var, p):
    """Starting parameters from the positive pixels' centroid and second moments (each component's
    covariance brought within [2 min_var, max_var / 2]); False if there is no flux."""
    k = img.shape[0]
    h = k // 2
    total = 0.0
    sp = 0.0
    sx = 0.0
    sy = 0.0
    for j in range(k):
        for i in range(k):
            v = img[j, i]
            if not np.isfinite(v):
                return False
            total += v
            if v > 0:
                sp += v
                sx += v * (i - h)
                sy += v * (j - h)
    if not (total > 0 and sp > 0):
        return False
    xm = sx / sp
    ym = sy / sp
    ixx = 0.0
    iyy = 0.0
    ixy = 0.0
    for j in range(k):
        for i in range(k):
            v = img[j, i]
            if v > 0:
                dx = i - h - xm
                dy = j - h - ym
                ixx += v * dx * dx
                iyy += v * dy * dy
                ixy += v * dx * dy
    ixx /= sp
    iyy /= sp
    ixy /= sp
    if not (ixx > 0 and iyy > 0 and ixx * iyy - ixy * ixy > 1e-6 * ixx * iyy):
        ixx = max(ixx, 0.25)
        iyy = max(iyy, 0.25)
        ixy = 0.0
    p[0] = xm
    p[1] = ym
    for c in range(m):
        b = 2 + 4 * c
        cxx = scale[c] * ixx
        cyy = scale[c] * iyy
        cxy = scale[c] * ixy
        lo, hi = _eigenvalues(cxx, cyy, cxy)
        if hi > 0.5 * max_var:
            f = 0.5 * max_var / hi
            cxx *= f
            cyy *= f
            cxy *= f
            lo *= f
        if lo < 2.0 * min_var:
            cxx += 2.0 * min_var - lo
            cyy += 2.0 * min_var - lo
        p[b] = math.log(frac[c] * total)
        _set_covariance(p, b, cxx, cyy, cxy)
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def fit_one(img, m, frac, scale, min_var, max_var, max_iter, tol, p, comp, jac, a, g, mat, step, trial, floor=0.0):
    """Levenberg-Marquardt fit of ``m`` Gaussians to ``img`` (K x K) from _start; p holds the result.
    Converged also when chi2 <= ``floor`` (the image's own rounding: a closer fit means nothing).

    Returns (status, iterations, chi2)."""
    npar = 2 + 4 * m
    if not _start(img, m, frac, scale, min_var, max_var, p):
        return FAILED, 0, np.nan
    chi2 = _normal_equations(img, p, m, comp, jac, a, g)
    lam = 1e-3
    for it in range(max_iter):
        if not _solve_damped(a, g, lam, npar, mat, step):
            lam *= 10.0
            if lam > 1e10:
                return OK, it + 1, chi2
            continue
        smax = 0.0
        pmax = 0.0
        for s in range(npar):
            trial[s] = p[s] + step[s]
            smax = max(smax, abs(step[s]))
            pmax = max(pmax, abs(p[s]))
        tiny = smax <= XTOL * (pmax + XTOL)
        new = _chi2(img, trial, m, comp) if _project(trial, m, min_var, max_var) else np.inf
        if new < chi2:  # False for NaN
            drop = chi2 - new
            for s in range(npar):
                p[s] = trial[s]
            chi2 = _normal_equations(img, p, m, comp, jac, a, g)
            lam = max(lam * 0.3, 1e-15)
            if drop <= tol * (chi2 + drop) or tiny or chi2 <= floor:
                return OK, it + 1, chi2
        elif tiny:  # a larger lambda only shortens the step: p is a minimum to rounding
            return OK, it + 1, chi2
        else:
            lam *= 10.0
            if lam > 1e10:
                return OK, it + 1, chi2
    return MAX_ITER, max_iter, chi2


@njit(cache=True, nogil=True, error_model="numpy")
def _store(img, p, m, comp, order, dets, n, amp, centre, cov, residual):
    """Write node n's fit (components smallest first) and its residual fraction sum|r| / sum|img|."""
    _components(p, m, comp)
    for c in range(m):
        dets[c] = 1.0 / (comp[c, 1] * comp[c, 2]) ** 2  # det C = e^(2u + 2v)
    for c in range(m):  # insertion sort of the component order by det C (stable)
        order[c] = c
    for c in range(1, m):
        t = order[c]
        d = c
        while d > 0 and dets[order[d - 1]] > dets[t]:
            order[d] = order[d - 1]
            d -= 1
        order[d] = t
    for c in range(m):
        o = order[c]
        eu = 1.0 / comp[o, 1]
        ev = 1.0 / comp[o, 2]
        w = comp[o, 3]
        amp[n, c] = comp[o, 0]
        cov[n, c, 0] = eu * eu  # xx
        cov[n, c, 1] = w * w + ev * ev  # yy
        cov[n, c, 2] = w * eu  # xy
    centre[n, 0] = p[0]
    centre[n, 1] = p[1]
    k = img.shape[0]
    h = k // 2
    num = 0.0
    den = 0.0
    for j in range(k):
        dy = j - h - p[1]
        for i in range(k):
            dx = i - h - p[0]
            f = _mixture_value(comp, m, dx, dy)
            num += abs(f - img[j, i])
            den += abs(img[j, i])
    residual[n] = num / den


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def psf_mixture_kernel(images, m, frac, scale, min_var, max_var, max_iter, tol, rounding):
    """See :func:`fit_psf_mixtures`."""
    n = images.shape[0]
    npar = 2 + 4 * m
    amp = np.full((n, m), np.nan)
    centre = np.full((n, 2), np.nan)
    cov = np.full((n, m, 3), np.nan)
    residual = np.full(n, np.nan)
    chi2 = np.full(n, np.nan)
    iterations = np.zeros(n, np.int32)
    status = np.full(n, FAILED, np.int32)
    for node in prange(n):
        p = np.empty(npar)
        comp = np.empty((m, 4))
        jac = np.empty((npar + 1, images.shape[1] * images.shape[2]))
        a = np.empty((npar, npar))
        g = np.empty(npar)
        mat = np.empty((npar, npar))
        step = np.empty(npar)
        trial = np.empty(npar)
        order = np.empty(m, np.int64)
        dets = np.empty(m)
        img = images[node]
        floor = 0.0  # chi2 of the image's own rounding
        for j in range(img.shape[0]):
            for i in range(img.shape[1]):
                floor += (rounding * img[j, i]) ** 2
        st, its, c2 = fit_one(img, m, frac, scale, min_var, max_var, max_iter, tol, p, comp, jac, a, g, mat, step,
                              trial, floor)
        status[node] = st
        iterations[node] = its
        if st != FAILED:
            chi2[node] = c2
            _store(img, p, m, comp, order, dets, node, amp, centre, cov, residual)
    return amp, centre, cov, residual, chi2, iterations, status


def fit_psf_mixtures(images: np.ndarray, n_components: int = MAX_COMPONENTS, *, max_iter: int = MAX_ITERATIONS,
                     tol: float = TOL, rounding: float | None = None):
    """Fit ``n_components`` (1-3) Gaussians to each of the (N, K, K) PSF images (K odd; pixel (K//2, K//2)
    is the origin, x along the last axis).

    ``rounding``: the relative precision of the image values (default: 2^-24 for float32 images, as
    coadds store their PSF, else 0). A fit whose chi2 is within sum (rounding image)^2 has converged:
    closer than the values' own rounding means nothing (on the bench grid this stops the fit after
    ~12 iterations instead of ~50 spent in the rounding noise, residual sum|r| / sum|image| <= 1.5e-7).

    Returns (amp (N, M), centre (N, 2) = (x0, y0) offsets from the central pixel, cov (N, M, 3) =
    (Cxx, Cyy, Cxy), residual (N,) = sum|model - image| / sum|image|, chi2 (N,) = sum (model - image)^2,
    iterations (N,), status (N,): OK, MAX_ITER or FAILED (outputs NaN)). Components smallest first.
    """
    if rounding is None:
        rounding = FLOAT32_ROUNDING if np.asarray(images).dtype == np.float32 else 0.0
    images = np.ascontiguousarray(images, np.float64)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] % 2 == 0:
        raise ValueError(f"PSF images must be (N, K, K) with odd K; got {images.shape}")
    m = int(n_components)
    if m not in INITIAL:
        raise ValueError(f"n_components must be 1..{MAX_COMPONENTS}, not {n_components}")
    frac, scale = (np.array(v, np.float64) for v in INITIAL[m])
    max_var = (MAX_SIGMA_BOX * images.shape[1]) ** 2
    return psf_mixture_kernel(images, np.int64(m), frac, scale, np.float64(MIN_VARIANCE), np.float64(max_var),
                              np.int64(max_iter), np.float64(tol), np.float64(rounding))


@njit(cache=True, nogil=True, error_model="numpy")
def _combine(s, q, weights, variances, psf_amp, psf_centre, psf_cov, x, y, comps):
    """comps[c] = (flux, centre x, centre y, inverse covariance xx, yy, xy, norm) of the K x M convolved
    Gaussians of source s; False when a covariance is not positive definite or a number not finite."""
    nk = weights.size
    nm = psf_amp.shape[1]
    c = 0
    for k in range(nk):
        for j in range(nm):
            cxx = variances[k] * q[s, 0] + psf_cov[s, j, 0]
            cyy = variances[k] * q[s, 1] + psf_cov[s, j, 1]
            cxy = variances[k] * q[s, 2] + psf_cov[s, j, 2]
            det = cxx * cyy - cxy * cxy
            flux = weights[k] * psf_amp[s, j]
            if not (det > 0 and cxx > 0 and np.isfinite(det) and np.isfinite(flux)):
                return False
            comps[c, 0] = flux
            comps[c, 1] = x[s] + psf_centre[s, j, 0]
            comps[c, 2] = y[s] + psf_centre[s, j, 1]
            comps[c, 3] = cyy / det
            comps[c, 4] = cxx / det
            comps[c, 5] = -cxy / det
            comps[c, 6] = flux / (TWO_PI * math.sqrt(det))
            if not (np.isfinite(comps[c, 1]) and np.isfinite(comps[c, 2])):
                return False
            c += 1
    return True


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def convolved_image_kernel(x, y, q, weights, variances, psf_amp, psf_centre, psf_cov, x0, y0, width, height,
                           offsets):
    """See :func:`convolved_images`."""
    n = x.size
    out = np.empty(offsets[n])
    nc = weights.size * psf_amp.shape[1]
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        comps = np.empty((nc, 7))
        for s in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            o = offsets[s]
            w = width[s]
            ok = _combine(s, q, weights, variances, psf_amp, psf_centre, psf_cov, x, y, comps)
            for row in range(height[s]):
                yy = y0[s] + row
                for col in range(w):
                    if not ok:
                        out[o + row * w + col] = np.nan
                        continue
                    xx = x0[s] + col
                    v = 0.0
                    for c in range(nc):
                        dx = xx - comps[c, 1]
                        dy = yy - comps[c, 2]
                        v += comps[c, 6] * math.exp(-0.5 * (comps[c, 3] * dx * dx + comps[c, 4] * dy * dy
                                                             + 2.0 * comps[c, 5] * dx * dy))
                    out[o + row * w + col] = v
    return out


def box_offsets(width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """(N + 1,) start of each source's box in the flat output (row-major, width x height pixels)."""
    sizes = np.asarray(width, np.int64) * np.asarray(height, np.int64)
    if np.any(np.asarray(width) < 0) or np.any(np.asarray(height) < 0):
        raise ValueError("box sizes must be >= 0")
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def convolved_images(x, y, q, weights, variances, psf_amp, psf_centre, psf_cov, x0, y0, width, height):
    """Unit-flux galaxy models convolved with each source's PSF mixture, at the pixel centres of a box per source.

    x, y (N,): the model centre of each source; q (N, 3): its half-light ellipse (Qxx, Qyy, Qxy), pixels^2;
    weights, variances (K,): the profile's mixture (component k: flux fraction w_k, covariance v_k Q);
    psf_amp (N, M), psf_centre (N, M, 2) (offsets from (x, y)), psf_cov (N, M, 3): the PSF mixtures;
    x0, y0 (N,) int: the box's first pixel; width, height (N,) int: its size. All coordinates in one
    pixel frame (pixel centres at integers).

    Returns (flat, offsets): source n's image is ``flat[offsets[n]:offsets[n + 1]].reshape(height[n], width[n])``
    (rows along y), the sum of sum_k sum_j w_k a_j N(X; (x, y) + mu_j, v_k Q + C_j) at each pixel centre X;
    NaN for a source whose combined covariances are not positive definite or whose inputs are not finite.
    """
    f64 = lambda a: np.ascontiguousarray(a, np.float64)  # noqa: E731
    i64 = lambda a: np.ascontiguousarray(a, np.int64)  # noqa: E731
    x, y = f64(x).reshape(-1), f64(y).reshape(-1)
    n = x.size
    q = f64(q).reshape(n, 3)
    psf_amp = f64(psf_amp).reshape(n, -1)
    m = psf_amp.shape[1]
    width, height = i64(width).reshape(n), i64(height).reshape(n)
    offsets = box_offsets(width, height)
    flat = convolved_image_kernel(x, y, q, f64(weights).reshape(-1), f64(variances).reshape(-1), psf_amp,
                                  f64(psf_centre).reshape(n, m, 2), f64(psf_cov).reshape(n, m, 3),
                                  i64(x0).reshape(n), i64(y0).reshape(n), width, height, offsets)
    return flat, offsets


def _warm():
    k = 9
    r = np.arange(k) - k // 2
    img = np.exp(-0.5 * (r[None, :] ** 2 + r[:, None] ** 2) / 2.0)[None] / (2 * np.pi * 2.0)
    for m in (2, 3):
        fit_psf_mixtures(img, m, max_iter=3)
    one = np.zeros(1)
    ones = np.ones(1, np.int64)
    for m in (2, 3):
        convolved_images(one, one, np.ones((1, 3)), np.ones(1), np.ones(1), np.ones((1, m)), np.zeros((1, m, 2)),
                         np.tile([1.0, 1.0, 0.0], (1, m, 1)), ones, ones, ones, ones)


# the signatures the pipeline compiles (see forcedphot.compile)
WARMUP = [_warm]
