"""Slow reference (tests only): the numpy moments module as it was before the numba kernels.

A verbatim, self-contained copy of forcedphot.moments at commit 9e039fc: the vectorised adaptive
iteration (shrinking active set, crops in size groups) and its helpers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_EXPONENT = 14.0  # pixels with x^T W^-1 x > 14 get no weight (as afw)


def inverse_2x2(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inverse, determinant) of (N, 2, 2) symmetric matrices."""
    inv = np.empty_like(m)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2
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


_CROPS = np.array([4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 1 << 30])


def _weighted_sums(pixels, c, cx, cy, winv, box) -> np.ndarray:
    """(n, 6) sums of w I times [x^2, xy, y^2, x, y, 1] over (n, 2c+1, 2c+1) pixels around each centre."""
    ar = np.arange(-c, c + 1, dtype=float)
    dx = ar[None, None, :] - cx[:, None, None]
    dy = ar[None, :, None] - cy[:, None, None]
    q = (winv[:, 0, 0, None, None] * dx * dx + 2 * winv[:, 0, 1, None, None] * dx * dy
         + winv[:, 1, 1, None, None] * dy * dy)
    keep = (q <= MAX_EXPONENT) & (np.abs(dx) <= box[:, None, None]) & (np.abs(dy) <= box[:, None, None])
    wi = (np.where(keep, np.exp(-0.5 * np.minimum(q, MAX_EXPONENT)), 0.0) * pixels).reshape(cx.size, -1)
    gy, gx = np.meshgrid(ar, ar, indexing="ij")
    px, py = gx.ravel(), gy.ravel()
    return wi @ np.stack([px * px, px * py, py * py, px, py, np.ones_like(px)], axis=1)


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


def stamps_from_array(image: np.ndarray):
    """A stamp provider over an (N, S, S) array: rows, c -> the central (2c+1)^2 pixels."""
    half = image.shape[-1] // 2

    def provide(rows, c):
        sl = slice(half - c, half + c + 1)
        return image[rows, sl, sl]

    return provide, half


def adaptive_moments(image, fx: np.ndarray, fy: np.ndarray, *, max_iter: int = 100,
                     tol1: float = 1e-5, tol2: float = 1e-4, max_shift: float = 2.0,
                     initial: float = 1.5, half: int | None = None) -> AdaptiveMoments:
    """SDSS adaptive moments of sources centred on their nearest pixel.

    ``image`` is an (N, S, S) stamp array, or a provider ``f(rows, c) -> (n, 2c+1, 2c+1)``
    of the pixels around sources ``rows`` (then ``half`` bounds c). ``fx, fy``: start
    position relative to each source's central pixel. Each iteration measures
    Gaussian-weighted moments M and centroid, then sets the next weight to (M^-1 - W^-1)^-1;
    a source stops when the ellipticity and size change by less than the tolerances. Sources
    iterate in a shrinking active set and are cropped to what their weight reaches.
    """
    if callable(image):
        provide = image
    else:
        provide, half = stamps_from_array(np.asarray(image, float))
    n = fx.size
    gx, gy = offsets(half)
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
        ca, cb = cx[a], cy[a]
        sums = np.empty((a.size, 6))
        # crop each source's stamp to what its weight can reach, in a few size groups
        reach = np.minimum(np.ceil(box + np.maximum(np.abs(ca), np.abs(cb))) + 1, half).astype(int)
        for c in np.unique(np.minimum(_CROPS[np.searchsorted(_CROPS, reach)], half)):
            g = np.flatnonzero(np.minimum(_CROPS[np.searchsorted(_CROPS, reach)], half) == c)
            sums[g] = _weighted_sums(provide(a[g], int(c)), int(c), ca[g], cb[g], winv[g], box[g])
        s0 = sums[:, 5]
        n_iter[a] = it + 1
        wsum[a] = s0
        bad = ~(s0 > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ux, uy = sums[:, 3] / s0, sums[:, 4] / s0  # weighted centroid, stamp frame
            mxx = sums[:, 0] / s0 - ux * ux
            myy = sums[:, 2] / s0 - uy * uy
            mxy = sums[:, 1] / s0 - ux * uy
            e1 = (mxx - myy) / (mxx + myy)
            e2 = 2 * mxy / (mxx + myy)
        cx[a] = np.where(bad, ca, ux)
        cy[a] = np.where(bad, cb, uy)
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
        im = np.asarray(provide(fb, half), float)
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



class _InvalidReadZero:
    """Noise corrections whose corrected stamps are 0 on invalid pixels (see :func:`invalid_pixels_read_zero`)."""

    def __init__(self, corrections, padded):
        self._corrections = corrections
        self._padded = padded

    def apply_to_stamps(self, stamps, rows, cx, cy, half):
        from numpy.lib.stride_tricks import sliding_window_view

        stamps = self._corrections.apply_to_stamps(stamps, rows, cx, cy, half)
        p = self._padded.pad  # (cx, cy): image-array pixels of the centres
        size = 2 * half + 1
        valid = sliding_window_view(self._padded.valid, (size, size))[cy + p - half, cx + p - half]
        stamps[~valid] = 0.0
        return stamps

    def __getattr__(self, name):
        return getattr(self._corrections, name)


def invalid_pixels_read_zero(ctx):
    """A copy of a noise-replaced context on which invalid pixels read 0 in every source's stamp.

    The noise corrections add heavy - noise on every on-image pixel of a source's own footprint,
    so an invalid pixel there (zeroed in the padded planes) reads heavy - noise, NaN where the
    heavy is NaN; the kernels read invalid pixels as 0. The slow references measure the
    kernels' image on this copy (it serves ``apply_to_stamps`` only).
    """
    import dataclasses

    if ctx.noise is None:
        return ctx
    return dataclasses.replace(ctx, noise=_InvalidReadZero(ctx.noise, ctx.padded), cache=dict(ctx.cache))
