"""Slow, obviously-correct references of the Gaussian-mixture kernels (forcedphot.kernels.mixtures).

Every Gaussian is evaluated from its covariance with numpy's 2x2 inverse and determinant, one
pixel and one component at a time; the PSF-mixture fit is scipy's least_squares over a different
parametrisation (log variances and a correlation) from a moments start of its own.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares


def gaussian(x, y, flux, mx, my, cov) -> float:
    """flux N((x, y); (mx, my), cov) with cov a 2x2 matrix."""
    d = np.array([x - mx, y - my])
    return float(flux * np.exp(-0.5 * d @ np.linalg.inv(cov) @ d) / (2 * np.pi * np.sqrt(np.linalg.det(cov))))


def cov_matrix(c) -> np.ndarray:
    """(xx, yy, xy) -> 2x2."""
    return np.array([[c[0], c[2]], [c[2], c[1]]], float)


def mixture_image(amp, centre, cov, k: int) -> np.ndarray:
    """K x K image (pixel (K//2, K//2) the origin) of Gaussians amp[m] at centre (shared (2,) or (M, 2)),
    covariances cov (M, 3)."""
    h = k // 2
    centre = np.broadcast_to(np.asarray(centre, float), (len(amp), 2))
    yy, xx = np.mgrid[0:k, 0:k] - h
    out = np.zeros((k, k))
    for m in range(len(amp)):  # one component at a time, over all pixels
        c = cov_matrix(cov[m])
        inv = np.linalg.inv(c)
        dx, dy = xx - centre[m][0], yy - centre[m][1]
        out += amp[m] * np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy)) / (
            2 * np.pi * np.sqrt(np.linalg.det(c)))
    return out


def convolved_images(x, y, q, weights, variances, psf_amp, psf_centre, psf_cov, x0, y0, width, height) -> list:
    """One (height, width) image per source: sum_k sum_j w_k a_j N(X; (x, y) + mu_j, v_k Q + C_j) at pixel centres."""
    out = []
    for s in range(len(x)):
        img = np.zeros((height[s], width[s]))
        comps = [(weights[k] * psf_amp[s][j], x[s] + psf_centre[s][j][0], y[s] + psf_centre[s][j][1],
                  variances[k] * cov_matrix(q[s]) + cov_matrix(psf_cov[s][j]))
                 for k in range(len(weights)) for j in range(len(psf_amp[s]))]
        if any(not (np.linalg.det(c) > 0 and c[0, 0] > 0) for *_, c in comps):
            out.append(np.full((height[s], width[s]), np.nan))
            continue
        for r in range(height[s]):
            for c in range(width[s]):
                img[r, c] = sum(gaussian(x0[s] + c, y0[s] + r, f, mx, my, cv) for f, mx, my, cv in comps)
        out.append(img)
    return out


def _vector_model(p, m, k):
    h = k // 2
    yy, xx = np.mgrid[0:k, 0:k] - h
    dx, dy = xx - p[0], yy - p[1]
    out = np.zeros((k, k))
    for c in range(m):
        la, lsx, lsy, t = p[2 + 4 * c: 6 + 4 * c]
        sxx, syy = np.exp(lsx), np.exp(lsy)
        rho = np.tanh(t)
        sxy = rho * np.sqrt(sxx * syy)
        det = sxx * syy - sxy * sxy
        qf = (syy * dx * dx - 2 * sxy * dx * dy + sxx * dy * dy) / det
        out += np.exp(la) * np.exp(-0.5 * qf) / (2 * np.pi * np.sqrt(det))
    return out


def fit_mixture(image: np.ndarray, m: int):
    """scipy least_squares fit of m Gaussians with one centre; returns (amp, centre, cov (M, 3), chi2)."""
    k = image.shape[0]
    h = k // 2
    yy, xx = np.mgrid[0:k, 0:k] - h
    w = np.clip(image, 0, None)
    s = w.sum()
    mx, my = (w * xx).sum() / s, (w * yy).sum() / s
    ixx = (w * (xx - mx) ** 2).sum() / s
    iyy = (w * (yy - my) ** 2).sum() / s
    fracs = {1: [1.0], 2: [0.7, 0.3], 3: [0.45, 0.45, 0.1]}[m]
    scales = {1: [1.0], 2: [0.5, 2.0], 3: [0.3, 0.9, 2.5]}[m]
    p0 = [mx, my]
    for f, sc in zip(fracs, scales):
        p0 += [np.log(f * image.sum()), np.log(sc * ixx), np.log(sc * iyy), 0.0]
    res = least_squares(lambda p: (_vector_model(p, m, k) - image).ravel(), np.array(p0), method="lm",
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=200000)
    p = res.x
    amp, cov = [], []
    for c in range(m):
        la, lsx, lsy, t = p[2 + 4 * c: 6 + 4 * c]
        sxx, syy = np.exp(lsx), np.exp(lsy)
        amp.append(np.exp(la))
        cov.append([sxx, syy, np.tanh(t) * np.sqrt(sxx * syy)])
    order = np.argsort([c[0] * c[1] - c[2] ** 2 for c in cov], kind="stable")
    return np.array(amp)[order], p[:2], np.array(cov)[order], float(np.sum(res.fun ** 2))
