"""Gaussian-weighted and adaptive second moments of stamps, vectorised over sources.

Shared by GaussianFlux (fixed weight from the reference shape), SdssShape (adaptive
moments, the SDSS algorithm as in Rubin's SdssShape) and the PSF model (moments of the PSF
images). A moment matrix is (N, 2, 2) [[xx, xy], [xy, yy]] in pixel^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_EXPONENT = 14.0  # pixels with x^T W^-1 x > 14 get no weight (as afw)


def inverse_2x2(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inverse, determinant) of (N, 2, 2) symmetric matrices."""
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2
    inv = np.empty_like(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv[:, 0, 0] = m[:, 1, 1] / det
        inv[:, 1, 1] = m[:, 0, 0] / det
        inv[:, 0, 1] = inv[:, 1, 0] = -m[:, 0, 1] / det
    return inv, det


def positive_definite(m: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """Safe-shape test of Rubin: finite, xx > 0 and xx*yy >= (1 + eps) xy^2."""
    xx, yy, xy = m[:, 0, 0], m[:, 1, 1], m[:, 0, 1]
    return np.isfinite(xx) & np.isfinite(yy) & np.isfinite(xy) & (xx > 0) & (yy > 0) & (xx * yy >= (1 + eps) * xy * xy)


def offsets(half: int) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) integer pixel offsets of a (2 half + 1)^2 stamp, as (S, S) arrays."""
    ar = np.arange(-half, half + 1, dtype=float)
    dy, dx = np.meshgrid(ar, ar, indexing="ij")
    return dx, dy


def gaussian_weights(dx: np.ndarray, dy: np.ndarray, winv: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
    """exp(-x^T W^-1 x / 2) for offsets (N, S, S) from each centre; zero beyond the exponent cut or box."""
    q = (winv[:, 0, 0, None, None] * dx * dx + 2 * winv[:, 0, 1, None, None] * dx * dy
         + winv[:, 1, 1, None, None] * dy * dy)
    keep = q <= MAX_EXPONENT
    if box is not None:
        keep &= (np.abs(dx) <= box[:, None, None]) & (np.abs(dy) <= box[:, None, None])
    return np.where(keep, np.exp(-0.5 * np.minimum(q, MAX_EXPONENT)), 0.0)


@dataclass
class AdaptiveMoments:
    moments: np.ndarray  # (N, 2, 2) adaptive moments (the converged Gaussian weight)
    dx: np.ndarray  # (N,) centroid offset from the start position
    dy: np.ndarray
    flux: np.ndarray  # 2 sum(w I) with the final weight
    weighted_sum: np.ndarray  # sum(w I)
    n_iter: np.ndarray
    flag_unweighted: np.ndarray
    flag_unweighted_bad: np.ndarray
    flag_shift: np.ndarray
    flag_max_iter: np.ndarray


def adaptive_moments(image: np.ndarray, fx: np.ndarray, fy: np.ndarray, *, max_iter: int = 100,
                     tol1: float = 1e-5, tol2: float = 1e-4, max_shift: float = 2.0,
                     initial: float = 1.5) -> AdaptiveMoments:
    """SDSS adaptive moments of stamps (N, S, S) centred on each source's nearest pixel.

    ``fx, fy``: start position relative to the stamp's central pixel. Each iteration
    measures Gaussian-weighted moments M and centroid, then sets the next weight to
    (M^-1 - W^-1)^-1; a source stops when the ellipticity and size change by less than the
    tolerances. Sources iterate in a shrinking active set (no per-source Python loop).
    """
    n, s, _ = image.shape
    half = s // 2
    gx, gy = offsets(half)
    img = image.astype(np.float64, copy=False)
    w_mom = np.tile(np.eye(2) * initial, (n, 1, 1))
    cx, cy = fx.astype(float).copy(), fy.astype(float).copy()
    e1_old = np.full(n, np.inf)
    e2_old = np.full(n, np.inf)
    s11_old = np.full(n, np.inf)
    done = np.zeros(n, bool)
    n_iter = np.zeros(n, int)
    flag_unweighted = np.zeros(n, bool)
    wsum = np.full(n, np.nan)
    active = np.arange(n)
    for it in range(max_iter):
        if active.size == 0:
            break
        a = active
        winv, det = inverse_2x2(w_mom[a])
        box = np.minimum(4 * np.sqrt(np.maximum(w_mom[a, 0, 0], w_mom[a, 1, 1])), half)
        dx = gx[None] - cx[a, None, None]
        dy = gy[None] - cy[a, None, None]
        w = gaussian_weights(dx, dy, winv, box)
        wi = w * img[a]
        s0 = wi.sum(axis=(1, 2))
        sx = (wi * dx).sum(axis=(1, 2))
        sy = (wi * dy).sum(axis=(1, 2))
        sxx = (wi * dx * dx).sum(axis=(1, 2))
        syy = (wi * dy * dy).sum(axis=(1, 2))
        sxy = (wi * dx * dy).sum(axis=(1, 2))
        n_iter[a] = it + 1
        wsum[a] = s0
        bad = ~(s0 > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mx, my = sx / s0, sy / s0
            mxx = sxx / s0 - mx * mx
            myy = syy / s0 - my * my
            mxy = sxy / s0 - mx * my
            e1 = (mxx - myy) / (mxx + myy)
            e2 = 2 * mxy / (mxx + myy)
        cx[a] += np.where(bad, 0, mx)
        cy[a] += np.where(bad, 0, my)
        m = np.stack([np.stack([mxx, mxy], -1), np.stack([mxy, myy], -1)], -2)
        converged = (np.abs(e1 - e1_old[a]) < tol1) & (np.abs(e2 - e2_old[a]) < tol1) & \
            (np.abs(w_mom[a, 0, 0] / s11_old[a] - 1) < tol2)
        minv, _ = inverse_2x2(m)
        nxt, _ = inverse_2x2(minv - winv)
        ok = ~bad & positive_definite(m) & positive_definite(nxt)
        stop = converged | ~ok
        flag_unweighted[a[~ok & ~converged]] = True
        e1_old[a], e2_old[a], s11_old[a] = e1, e2, w_mom[a, 0, 0]
        upd = a[ok & ~converged]
        w_mom[upd] = nxt[ok & ~converged]
        done[a[stop]] = True
        active = a[~stop]
    flag_max_iter = ~done
    flag_shift = np.hypot(cx - fx, cy - fy) > max_shift
    # unweighted fallback where the adaptive iteration failed: plain second moments of the stamp
    flag_bad = np.zeros(n, bool)
    fb = np.flatnonzero(flag_unweighted | flag_max_iter)
    if fb.size:
        im = img[fb]
        s0 = im.sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            mx = (im * gx).sum(axis=(1, 2)) / s0
            my = (im * gy).sum(axis=(1, 2)) / s0
            mxx = (im * gx * gx).sum(axis=(1, 2)) / s0 - mx * mx
            myy = (im * gy * gy).sum(axis=(1, 2)) / s0 - my * my
            mxy = (im * gx * gy).sum(axis=(1, 2)) / s0 - mx * my
        m = np.stack([np.stack([mxx, mxy], -1), np.stack([mxy, myy], -1)], -2)
        good = (s0 > 0) & positive_definite(m)
        w_mom[fb] = np.where(good[:, None, None], m, np.where((s0 > 0)[:, None, None], np.eye(2) / 12, np.nan))
        flag_bad[fb] = ~good
        flag_unweighted[fb] = True
    with np.errstate(invalid="ignore"):
        flux = 2 * wsum
    return AdaptiveMoments(w_mom, cx - fx, cy - fy, flux, wsum, n_iter, flag_unweighted, flag_bad, flag_shift,
                           flag_max_iter)
