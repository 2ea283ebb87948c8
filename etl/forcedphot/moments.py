"""Second-moment helpers and the SDSS adaptive moments of stamp arrays.

A moment matrix is (N, 2, 2) [[xx, xy], [xy, yy]] in pixel^2. :func:`adaptive_moments` (the
PSF model's moments of its grid images, ingest) runs the compiled kernel of
:mod:`forcedphot.kernels.moments`, which SdssShape and GaussianFlux use on the coadd planes.
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


def adaptive_moments(image, fx: np.ndarray, fy: np.ndarray, *, max_iter: int = 100,
                     tol1: float = 1e-5, tol2: float = 1e-4, max_shift: float = 2.0,
                     initial: float = 1.5, half: int | None = None) -> AdaptiveMoments:
    """SDSS adaptive moments of sources centred on their nearest pixel.

    ``image`` is an (N, S, S) stamp array (odd S), or a provider ``f(rows, c) -> (n, 2c+1, 2c+1)``
    of the pixels around sources ``rows`` (then ``half`` is the stamp half-size). ``fx, fy``:
    start position relative to each source's central pixel. Each iteration measures
    Gaussian-weighted moments M and centroid, then sets the next weight to (M^-1 - W^-1)^-1;
    a source stops when the ellipticity and size change by less than the tolerances; where
    it fails, the unweighted moments of the stamp are used. Runs the compiled kernel
    :func:`forcedphot.kernels.moments.adaptive_moments_stamps` (the plugin SdssShape reads the
    coadd planes directly with :func:`forcedphot.kernels.moments.sdss_shape`).
    """
    from forcedphot.kernels.moments import MAX_ITER, UNWEIGHTED, adaptive_moments_stamps

    fx = np.asarray(fx, float)
    fy = np.asarray(fy, float)
    if callable(image):
        image = image(np.arange(fx.size), int(half))
    stamps = np.ascontiguousarray(image, dtype=np.float64)
    res, status, bad = adaptive_moments_stamps(stamps, np.ascontiguousarray(fx), np.ascontiguousarray(fy),
                                               int(max_iter), float(tol1), float(tol2), float(initial))
    m = np.empty((fx.size, 2, 2))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = res[:, 0], res[:, 1], res[:, 1], res[:, 2]
    dx, dy = res[:, 3] - fx, res[:, 4] - fy
    with np.errstate(invalid="ignore"):
        flux = 2 * res[:, 5]
    return AdaptiveMoments(m, dx, dy, flux, res[:, 5], res[:, 6].astype(int), (status & UNWEIGHTED) != 0,
                           bad.astype(bool), np.hypot(dx, dy) > max_shift, (status & MAX_ITER) != 0)
