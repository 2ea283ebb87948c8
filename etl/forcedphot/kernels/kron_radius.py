"""Kron radius kernel: Rubin's first moment of the elliptical radius (unforced ext_photometryKron_KronFlux).

For a source of adaptive moments S at (x, y), the pixels whose centres lie in the ellipse
d^T (n^2 S)^-1 d <= 1 (n = nSigmaForRadius, 6; the rows of :func:`forcedphot.kernels.apertures._ellipse_run`,
afw's PixelRegion) give R_K = sum(r I) / sum(I), with r the elliptical radius along the major
axis, hypot(u, v a/b), times sqrt(b/a) (so R_K is a sqrt(ab) radius). As Rubin's
FootprintFindMoment the pixel within 0.5 px of the centre takes r = hypot(r, eR (1 + d / sqrt 2)),
eR = 0.38259771140356325 (<r> of a square pixel about its centre). Invalid pixels are left out.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.apertures import _ellipse_run

E_R = 0.38259771140356325  # <r> of one square pixel about its centre (Rubin's eR)

# status of one source
OK = 0
EDGE = 1  # the ellipse reaches beyond the image
BAD = 2  # sum(I) <= 0 or sum(r I) <= 0 (Rubin's BadKronException "bad integral")


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def kron_radius_kernel(image, valid, x, y, sxx, sxy, syy, n_sigma):
    """(R_K (n,), status (n,) int8) of sources at image pixels (x, y) with moments [[sxx, sxy], [sxy, syy]]."""
    n = x.size
    radius = np.full(n, np.nan)
    status = np.zeros(n, np.int8)
    h, w = image.shape
    for s in prange(n):
        xx, xy, yy = sxx[s], sxy[s], syy[s]
        det = xx * yy - xy * xy
        k2 = n_sigma * n_sigma
        qa, qb, qc = yy / (det * k2), -xy / (det * k2), xx / (det * k2)  # (n^2 S)^-1
        # axes of S: a >= b, theta of the major axis from +x
        tr = 0.5 * (xx + yy)
        dif = math.sqrt(max(0.25 * (xx - yy) ** 2 + xy * xy, 0.0))
        a = math.sqrt(tr + dif)
        b = math.sqrt(max(tr - dif, 0.0))
        theta = 0.5 * math.atan2(2.0 * xy, xx - yy)
        ct, st = math.cos(theta), math.sin(theta)
        ab = a / b
        half = int(math.ceil(n_sigma * math.sqrt(yy))) + 1
        iy0 = int(np.floor(y[s] + 0.5))
        s0 = 0.0
        s1 = 0.0
        edge = False
        for dy in range(-half, half + 1):
            row = iy0 + dy
            lo, hi = _ellipse_run(x[s], y[s], qa, qb, qc, row)
            if hi <= lo:
                continue
            if row < 0 or row >= h or lo < 0 or hi > w:
                edge = True
                break
            ddy = row - y[s]
            for px in range(lo, hi):
                if not valid[row, px]:
                    continue
                ddx = px - x[s]
                du = ddx * ct + ddy * st
                dv = -ddx * st + ddy * ct
                r = math.hypot(du, dv * ab)
                d = math.hypot(ddx, ddy)
                if d < 0.5:
                    r = math.hypot(r, E_R * (1.0 + d / math.sqrt(2.0)))
                v = np.float64(image[row, px])
                s0 += v
                s1 += r * v
        if edge:
            status[s] = EDGE
        elif not (s0 > 0 and s1 > 0):
            status[s] = BAD
        else:
            radius[s] = s1 / s0 * math.sqrt(b / a)
    return radius, status


def kron_radii(image, valid, x, y, shape, *, n_sigma: float = 6.0):
    """:func:`kron_radius_kernel` for (n,) positions and (n, 2, 2) positive-definite moments."""
    f64 = [np.ascontiguousarray(v, np.float64) for v in (x, y, shape[:, 0, 0], shape[:, 0, 1], shape[:, 1, 1])]
    return kron_radius_kernel(image, valid, *f64, float(n_sigma))


def _warm():
    image = np.zeros((16, 16), np.float32)
    image[8, 8] = 1.0
    kron_radii(image, np.ones((16, 16), np.uint8), np.full(1, 8.0), np.full(1, 8.0), np.eye(2)[None])


WARMUP = [_warm]
