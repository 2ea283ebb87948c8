"""Slow, obviously-correct reference of the unforced model fits (forcedphot.kernels.model_fit).

Rubin's region rules written out with numpy 2x2 matrices; the model rendered one Gaussian at a
time with numpy's inverse and determinant; the fit is scipy's least_squares over a different
parametrisation (log semi-axes and position angle) with the amplitude profiled out, from the same
start, on the same pixels.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

MOMENTS_FACTOR = 0.95473


def mat(c) -> np.ndarray:
    return np.array([[c[0], c[2]], [c[2], c[1]]], float)


def vec(m) -> np.ndarray:
    return np.array([m[0, 0], m[1, 1], m[0, 1]])


def area(c) -> float:
    return float(np.pi * np.sqrt(np.linalg.det(mat(c))))


def psf_moments(amp, cen, cov) -> np.ndarray:
    """Second moments of the mixture about its centroid: sum a (C + mu mu^T) / sum a - mean mean^T."""
    a = np.asarray(amp, float)
    mu = (a[:, None] * cen).sum(0) / a.sum()
    s = sum(a[j] * (mat(cov[j]) + np.outer(cen[j], cen[j])) for j in range(a.size)) / a.sum()
    return vec(s - np.outer(mu, mu))


def initial_region(shape, kron, fp_area, pm) -> tuple[np.ndarray, str]:
    """(E0, which): Rubin's PixelFitRegion initial ellipse."""
    psi = 16 * area(pm)
    e0, which = None, "shape"
    if np.all(np.isfinite(shape)) and np.linalg.det(mat(shape)) > 0 and shape[0] > 0 and kron > 0:
        radius = np.linalg.det(mat(shape)) ** 0.25
        e0 = np.asarray(shape, float) * (1.5 * kron / radius) ** 2  # scale the ellipse to det radius 1.5 R_K
    if e0 is None or area(e0) < psi:
        if not fp_area > 0 or psi > fp_area:
            e0, which = 16 * np.asarray(pm, float), "psf"
        else:
            e0, which = np.asarray(pm, float) * fp_area / area(pm), "footprint"
    return e0, which


def final_region(d, pm, e0) -> np.ndarray:
    """E1 = alpha^2 D + 4P, alpha from Rubin's quadratic, clamped to [1, 3]."""
    g = 4 * np.asarray(pm, float)
    a = np.linalg.det(mat(d))
    b = d[0] * g[1] + d[1] * g[0] - 2 * d[2] * g[2]
    c = np.linalg.det(mat(g)) - np.linalg.det(mat(e0))
    alpha = (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
    alpha = float(np.clip(alpha, 1.0, 3.0)) if np.isfinite(alpha) else 1.0
    return alpha ** 2 * np.asarray(d, float) + g


def region_mask(shape_hw, x, y, e) -> np.ndarray:
    """Pixels whose centre (x along columns) is inside ellipse e centred on (x, y)."""
    yy, xx = np.mgrid[0:shape_hw[0], 0:shape_hw[1]]
    d = np.stack([xx - x, yy - y], -1)
    inv = np.linalg.inv(mat(e))
    return np.einsum("...i,ij,...j->...", d, inv, d) <= 1.0


def lattice_count(x, y, e) -> int:
    """Integer pixel centres inside ellipse e centred on (x, y), on or off any image."""
    r = int(np.ceil(np.sqrt(max(e[0], e[1])))) + 2
    yy, xx = np.mgrid[int(np.floor(y)) - r:int(np.floor(y)) + r + 1, int(np.floor(x)) - r:int(np.floor(x)) + r + 1]
    d = np.stack([xx - x, yy - y], -1)
    return int((np.einsum("...i,ij,...j->...", d, np.linalg.inv(mat(e)), d) <= 1.0).sum())


def start(shape, pm) -> np.ndarray:
    """Rubin's starting half-light ellipse from the moments."""
    d = np.array([max(shape[0] - pm[0], 0.01), max(shape[1] - pm[1], 0.01), shape[2] - pm[2]])
    if np.linalg.det(mat(d)) <= 0:
        d[2] = 0.0
    return d / MOMENTS_FACTOR ** 2


def model(q, weights, variances, amp, cen, cov, dx, dy) -> np.ndarray:
    """Unit-flux profile (half-light ellipse q) convolved with the PSF mixture at offsets (dx, dy)."""
    out = np.zeros(dx.size)
    d = np.stack([dx, dy], -1)
    for w, v in zip(weights, variances):
        for j in range(len(amp)):
            c = v * mat(q) + mat(cov[j])
            e = d - cen[j]
            inv = np.linalg.inv(c)
            out += w * amp[j] * np.exp(-0.5 * np.einsum("ni,ij,nj->n", e, inv, e)) / (2 * np.pi * np.sqrt(
                np.linalg.det(c)))
    return out


def profiled(q, prof, psf, dx, dy, data, weight) -> tuple[float, float, np.ndarray]:
    """(alpha, chi2, weighted residual vector) with alpha = max(0, best amplitude)."""
    m = model(q, prof.weights, prof.variances, *psf, dx, dy)
    alpha = max(np.sum(weight * m * data) / np.sum(weight * m * m), 0.0)
    r = np.sqrt(weight) * (alpha * m - data)
    return alpha, float(r @ r), r


def _q_of(p) -> np.ndarray:
    """Q of (ln a, ln b, theta): semi-axes a, b at angle theta."""
    a2, b2 = np.exp(2 * p[0]), np.exp(2 * p[1])
    c, s = np.cos(p[2]), np.sin(p[2])
    return np.array([a2 * c * c + b2 * s * s, a2 * s * s + b2 * c * c, (a2 - b2) * c * s])


def fit(q0, prof, psf, dx, dy, data, weight) -> tuple[np.ndarray, float, float]:
    """(Q, alpha, chi2) minimising the profiled chi2 from Q0 (scipy least_squares, no bounds)."""
    w, v = np.linalg.eigh(mat(q0))
    p0 = np.array([0.5 * np.log(w[1]), 0.5 * np.log(w[0]), np.arctan2(v[1, 1], v[0, 1])])
    res = least_squares(lambda p: profiled(_q_of(p), prof, psf, dx, dy, data, weight)[2], p0, xtol=1e-12,
                        ftol=1e-12, gtol=1e-12, max_nfev=2000)
    q = _q_of(res.x)
    alpha, chi2, _ = profiled(q, prof, psf, dx, dy, data, weight)
    # the point test: an ellipse not resolved by more than 9 in chi2 over the point (r = 0.01 px) is the point
    q_point = np.array([1e-4, 1e-4, 0.0])
    alpha_p, chi2_p, _ = profiled(q_point, prof, psf, dx, dy, data, weight)
    if alpha_p > 0 and chi2_p - chi2 < 9.0:
        return q_point, alpha_p, chi2_p
    return q, alpha, chi2


def fit_source(image, variance, usable, x, y, shape, kron, fp_area, psf):
    """The three stages on one source as the kernel does them: dict of e0, e1, (ellipse, flux, chi2) per stage
    (the stored ellipse: the better profile's for the ``shared`` one), ``own`` the exp and dev fits' own
    ellipses, ``shared`` the stage that took the other's ellipse (None)."""
    from forcedphot.profiles import DEV, EXP, INITIAL

    pm = psf_moments(*psf)
    e0, _ = initial_region(shape, kron, fp_area, pm)
    out = {"e0": e0}
    sel = region_mask(image.shape, x, y, e0) & (usable != 0)
    yy, xx = np.nonzero(sel)
    dx, dy = xx - x, yy - y
    data = image[sel].astype(float)
    var = variance[sel].astype(float)
    q, alpha, chi2 = fit(start(shape, pm), INITIAL, psf, dx, dy, data, 1 / var)
    out["n0"] = int(sel.sum())
    out["initial"] = (q, alpha, chi2)
    e1 = final_region(q, pm, e0)
    out["e1"] = e1
    sel = region_mask(image.shape, x, y, e1) & (usable != 0)
    yy, xx = np.nonzero(sel)
    dx, dy = xx - x, yy - y
    data = image[sel].astype(float)
    var = variance[sel].astype(float)
    weight = np.full(data.size, np.exp(-np.mean(np.log(var))))
    out["n1"] = int(sel.sum())
    for name, prof in (("exp", EXP), ("dev", DEV)):
        out[name] = fit(q, prof, psf, dx, dy, data, weight)
    # the shared-ellipse rule: the profile fitting worse by more than 9 in chi2 stores the other's ellipse
    out["own"] = {name: out[name][0] for name in ("exp", "dev")}
    out["shared"] = None
    (q_e, a_e, c_e), (q_d, a_d, c_d) = out["exp"], out["dev"]
    if c_d - c_e > 9.0:
        out["dev"], out["shared"] = (q_e, a_d, c_d), "dev"
    elif c_e - c_d > 9.0:
        out["exp"], out["shared"] = (q_d, a_e, c_e), "exp"
    return out
