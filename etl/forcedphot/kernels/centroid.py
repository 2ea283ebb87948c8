"""SdssCentroid kernel: the PSF-smoothed image at the centre pixel and its four neighbours.

Per source: its own stamp (:func:`forcedphot.kernels.moments.own_stamp_variance`) of half-size k + 1,
a normalised circular Gaussian kernel of the source's sigma over (2k + 1)^2 pixels, and the
smoothed values (and their variances) at the offsets the SDSS parabola uses.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.moments import own_stamp_variance

BLOCK = 64  # sources per scratch allocation (the unit of the parallel loop)


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def smoothed_cross(image, variance, valid, fp, cx, cy, usable, sigma, khalf, order):
    """Smoothed image around each usable source's nearest pixel (cx, cy).

    ``sigma`` (n,) kernel width, ``khalf`` (n,) kernel half-size k, ``order`` the visiting order
    (any permutation: results do not depend on it). Returns

    sx (n, 3): smoothed values at offsets x = -1, 0, +1 (y = 0); sy (n, 3): at y = -1, 0, +1
    (x = 0); vx, vy (n, 3): their variances (sum of kernel^2 V); edge (n,) uint8: some pixel of
    the (2k + 3)^2 stamp is invalid or off the coadd. Unusable sources: NaN, edge 0.
    """
    n = cx.size
    sx = np.full((n, 3), np.nan)
    sy = np.full((n, 3), np.nan)
    vx = np.full((n, 3), np.nan)
    vy = np.full((n, 3), np.nan)
    edge = np.zeros(n, np.uint8)
    kmax = 0
    for s in range(n):
        kmax = max(kmax, khalf[s])
    size = 2 * kmax + 3
    n_blocks = (n + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        img = np.empty((size, size))
        var = np.empty((size, size))
        ok = np.empty((size, size), np.uint8)
        table = np.empty((kmax + 1, kmax + 1))
        for t in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            s = order[t]
            if not usable[s]:
                continue
            k = khalf[s]
            h = k + 1
            own_stamp_variance(image, variance, valid, fp, s, cy[s], cx[s], h, img, var, ok)
            e = 0
            for j in range(2 * h + 1):
                for i in range(2 * h + 1):
                    if not ok[j, i]:
                        e = 1
            edge[s] = e
            s2 = sigma[s] ** 2
            for a in range(k + 1):
                for c in range(k + 1):
                    table[a, c] = math.exp(-0.5 * float(a * a + c * c) / s2)
            ksum = 0.0
            for ky in range(-k, k + 1):
                for kx in range(-k, k + 1):
                    ksum += table[abs(ky), abs(kx)]
            for a in range(k + 1):
                for c in range(k + 1):
                    table[a, c] = table[a, c] / ksum  # the normalised kernel
            left = 0.0
            mid = 0.0
            right = 0.0
            down = 0.0
            up = 0.0
            v_left = 0.0
            v_right = 0.0
            v_down = 0.0
            v_up = 0.0
            for ky in range(-k, k + 1):
                j = h + ky
                for kx in range(-k, k + 1):
                    i = h + kx
                    kn = table[abs(ky), abs(kx)]
                    k2 = kn * kn
                    left += kn * img[j, i - 1]
                    mid += kn * img[j, i]
                    right += kn * img[j, i + 1]
                    down += kn * img[j - 1, i]
                    up += kn * img[j + 1, i]
                    v_left += k2 * var[j, i - 1]
                    v_right += k2 * var[j, i + 1]
                    v_down += k2 * var[j - 1, i]
                    v_up += k2 * var[j + 1, i]
            sx[s, 0], sx[s, 1], sx[s, 2] = left, mid, right
            sy[s, 0], sy[s, 1], sy[s, 2] = down, mid, up
            vx[s, 0], vx[s, 2] = v_left, v_right
            vy[s, 0], vy[s, 2] = v_down, v_up
    return sx, sy, vx, vy, edge


def _warm():
    from forcedphot.kernels.moments import _warm_planes

    image, variance, valid, fp = _warm_planes()
    one_i = np.full(1, 4, np.int64)
    smoothed_cross(image, variance, valid, fp, one_i, one_i, np.ones(1, np.uint8), np.ones(1), np.full(1, 2, np.int64),
                   np.zeros(1, np.int64))


# the signature the pipeline compiles (see forcedphot.compile)
WARMUP = [_warm]
