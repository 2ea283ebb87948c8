"""Gaussian-weighted moments kernels: SDSS adaptive moments (SdssShape) and fixed-weight flux (GaussianFlux).

Each source is measured on its own image, the noise image with its own heavy footprint put back
on valid pixels, invalid and off-coadd pixels 0: the adaptive iteration on a stamp
(:func:`own_stamp`, read to the size the weight reaches), single-pass sums straight from the
planes plus w (heavy - image) over the source's own footprint. Every source is computed alone in
per-block scratch with a fixed summation order, so results do not depend on the thread count;
sources are visited in a spatial order (:func:`spatial_order`), which changes no result.

A Gaussian weight is w = exp(-q / 2), q = x^T W^-1 x (evaluated as ``ia*dx*dx + 2*ib*dx*dy +
ic*dy*dy``, the numpy expression), zero where q > MAX_EXPONENT (as afw). The weighted pixels
of a row are one run, found by solving q = 14 and testing its ends exactly (:func:`row_run`).
exp is the expensive part, so weights follow multiplicative recurrences: along a row w(x+1) =
w(x) r(x), r(x+1) = r(x) exp(-W^-1_xx); in the adaptive iteration a walker carries the weight
from one row's first pixel to the next (:func:`moment_sums`). Every recurrence restarts from an
exact exp at least every RESTART steps: weights equal exp(-q/2) to ~1e-13 relative.

numba caches a kernel on its own source file: :mod:`forcedphot.kernels.centroid` calls
:func:`own_stamp_variance`, so clear its cache after editing the helpers here.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.footprints import EXCLUDED
from forcedphot.kernels.pixels import insert_footprint

MAX_EXPONENT = 14.0  # pixels with x^T W^-1 x > 14 get no weight
RESTART = 32  # exact exp at least every RESTART steps of a recurrence
RECURRENCE_MAX_A = 20.0  # W^-1_xx above this: exact exp per pixel along rows (steep weights)
BLOCK = 16  # sources per scratch allocation (the unit of the parallel loop)
FIRST_HALF = 10  # adaptive moments: first stamp half-size read (grown on demand up to the limit)

# status bits of the adaptive iteration
UNWEIGHTED = 1
MAX_ITER = 2

# adaptive iteration state (a float64 array, so that the iteration can resume on a larger stamp)
_IT, _W00, _W01, _W11, _CX, _CY, _E1, _E2, _S11, _WSUM, _NITER, _UNW, _DONE = range(13)
STATE_SIZE = 13


def spatial_order(cx: np.ndarray, cy: np.ndarray, strip: int = 64) -> np.ndarray:
    """Sources sorted by strips of ``strip`` rows, then by column: the order kernels visit them in."""
    return np.lexsort((cx, cy // strip)).astype(np.int64)


def read_only(*planes):
    """Read-only views of the planes: the noise image (a writable copy) and the coadd's memory-mapped
    planes then type alike, so each kernel compiles one signature."""
    out = []
    for p in planes:
        v = p.view()
        v.setflags(write=False)
        out.append(v)
    return tuple(out)


@njit(cache=True, nogil=True)
def own_stamp(image, valid, fp, src, cy, cx, half, img, ok):
    """The source's own image around local pixel (cx, cy) into img[:2h+1, :2h+1] (float64), validity into ok.

    As :func:`forcedphot.kernels.pixels.source_stamp` without the variance and mask planes:
    valid pixels read the image plane, then the source's own heavy values go back on them;
    invalid and off-coadd pixels are 0 with ok = 0.
    """
    h, w = image.shape
    size = 2 * half + 1
    x_lo = min(size, max(0, half - cx))  # stamp columns inside the coadd
    x_hi = max(x_lo, min(size, w - cx + half))
    for j in range(size):
        y = cy - half + j
        if 0 <= y < h and x_lo < x_hi:
            for i in range(x_lo):
                img[j, i] = 0.0
                ok[j, i] = 0
            for i in range(x_lo, x_hi):
                x = cx - half + i
                if valid[y, x]:
                    img[j, i] = image[y, x]
                    ok[j, i] = 1
                else:
                    img[j, i] = 0.0
                    ok[j, i] = 0
            for i in range(x_hi, size):
                img[j, i] = 0.0
                ok[j, i] = 0
        else:
            for i in range(size):
                img[j, i] = 0.0
                ok[j, i] = 0
    insert_footprint(fp, src, cy, cx, half, img, ok)


@njit(cache=True, nogil=True)
def own_stamp_variance(image, variance, valid, fp, src, cy, cx, half, img, var, ok):
    """:func:`own_stamp` plus the variance plane (0 on invalid and off-coadd pixels) into var."""
    h, w = image.shape
    size = 2 * half + 1
    x_lo = min(size, max(0, half - cx))
    x_hi = max(x_lo, min(size, w - cx + half))
    for j in range(size):
        y = cy - half + j
        if 0 <= y < h and x_lo < x_hi:
            for i in range(x_lo):
                img[j, i] = 0.0
                var[j, i] = 0.0
                ok[j, i] = 0
            for i in range(x_lo, x_hi):
                x = cx - half + i
                if valid[y, x]:
                    img[j, i] = image[y, x]
                    var[j, i] = variance[y, x]
                    ok[j, i] = 1
                else:
                    img[j, i] = 0.0
                    var[j, i] = 0.0
                    ok[j, i] = 0
            for i in range(x_hi, size):
                img[j, i] = 0.0
                var[j, i] = 0.0
                ok[j, i] = 0
        else:
            for i in range(size):
                img[j, i] = 0.0
                var[j, i] = 0.0
                ok[j, i] = 0
    insert_footprint(fp, src, cy, cx, half, img, ok)


@njit(cache=True, nogil=True, error_model="numpy")
def subsampled_gaussian(dx, dy, a, b, c, sub, q_max):
    """The mean over the sub-pixel samples (dx + sub[u], dy + sub[v]) of exp(-q / 2), q = a x^2 + 2 b x y + c y^2,
    each sample with q > q_max counted as 0: a Gaussian weight on a pixel the grid under-samples."""
    n = sub.size
    w = 0.0
    for u in range(n):
        for v in range(n):
            x = dx + sub[u]
            y = dy + sub[v]
            q = a * x * x + 2 * b * x * y + c * y * y
            if q <= q_max:
                w += math.exp(-0.5 * q)
    return w / (n * n)


@njit(cache=True, nogil=True, error_model="numpy")
def inverse_sym(a, b, c):
    """(inverse xx, xy, yy, determinant) of the symmetric matrix [[a, b], [b, c]]."""
    det = a * c - b ** 2
    return c / det, -b / det, a / det, det


@njit(cache=True, nogil=True)
def positive_definite_sym(xx, yy, xy):
    """Rubin's safe-shape test: finite, xx > 0, yy > 0 and xx yy >= (1 + 1e-6) xy^2."""
    return (np.isfinite(xx) and np.isfinite(yy) and np.isfinite(xy) and xx > 0 and yy > 0
            and xx * yy >= (1 + 1e-6) * xy * xy)


@njit(cache=True, nogil=True, error_model="numpy")
def row_span(ia, ib, ic, cx, dy, box, lo, hi):
    """(x0, x1): offsets px in [lo, hi] of row dy that may have weight, a one-pixel-wide superset of
    q <= 14 and |px - cx| <= box (x1 < x0: none). (ia, ib, ic) = W^-1, weight centre cx."""
    x0f = float(lo)
    x1f = float(hi)
    if ia > 0.0 and ia < np.inf:
        bdy = ib * dy
        disc = bdy * bdy - ia * (ic * dy * dy - MAX_EXPONENT)
        if disc < -1e-6 * ia:
            return 0, -1
        if disc == disc:
            hw = math.sqrt(max(disc, 0.0)) / ia
            xc = cx - bdy / ia
            a = np.floor(xc - hw) - 1.0
            b = np.ceil(xc + hw) + 1.0
            if a > x0f:
                x0f = a
            if b < x1f:
                x1f = b
    a = np.floor(cx - box) - 1.0
    b = np.ceil(cx + box) + 1.0
    if a > x0f:
        x0f = a
    if b < x1f:
        x1f = b
    if not x0f <= x1f:
        return 0, -1
    return int(x0f), int(x1f)


@njit(cache=True, nogil=True, error_model="numpy")
def row_weights(ia, ib, ic, cx, dy, box, lo, hi, wrow):
    """Gaussian weights of the pixels of one row, offsets px in [lo, hi] from the stamp centre.

    (ia, ib, ic) = W^-1; the weight centre is at offset cx, the row at dy = py - cy from it.
    Returns (x0, x1): wrow[px - x0] holds the weight of px for x0 <= px <= x1 (0 where q > 14
    or |px - cx| > box); pixels outside [x0, x1] have no weight (x1 < x0: none in this row).
    """
    x0, x1 = row_span(ia, ib, ic, cx, dy, box, lo, hi)
    rec = 0.0 < ia <= RECURRENCE_MAX_A
    g = math.exp(-ia) if rec else 0.0
    bdy = ib * dy
    have = False
    run = 0
    w = 0.0
    r = 0.0
    for px in range(x0, x1 + 1):
        dx = px - cx
        q = ia * dx * dx + 2 * ib * dx * dy + ic * dy * dy
        if q <= MAX_EXPONENT and abs(dx) <= box:
            if have and run < RESTART:
                w *= r
                r *= g
                run += 1
            else:
                w = math.exp(-0.5 * q)
                r = math.exp(-0.5 * (ia * (2.0 * dx + 1.0) + 2.0 * bdy))
                run = 1
                have = rec
            wrow[px - x0] = w
        else:
            wrow[px - x0] = 0.0
            have = False
    return x0, x1


@njit(cache=True, nogil=True, error_model="numpy")
def _q(ia, ib, ic, dx, dy):
    return ia * dx * dx + 2 * ib * dx * dy + ic * dy * dy


@njit(cache=True, nogil=True, error_model="numpy")
def _weighted(ia, ib, ic, cx, dy, cyy, box, px):
    """Pixel px of row dy has weight: q <= 14 (cyy = ic dy dy, q evaluated as everywhere) and |px - cx| <= box."""
    dx = px - cx
    return ia * dx * dx + 2 * ib * dx * dy + cyy <= MAX_EXPONENT and abs(dx) <= box


@njit(cache=True, nogil=True, error_model="numpy")
def row_run(ia, ib, ic, cx, dy, box, lo, hi):
    """(a, b): the first and last offsets px in [lo, hi] of row dy with weight (q <= 14, |px - cx| <= box),
    each tested exactly; b < a: none. The weighted pixels of a row are the interval [a, b]
    (an ellipse and a box are convex)."""
    cyy = ic * dy * dy
    a = lo
    b = hi
    if ia > 0.0 and ia < np.inf:  # start from the solution of q = 14, then test the ends exactly
        bdy = ib * dy
        disc = bdy * bdy - ia * (cyy - MAX_EXPONENT)
        if disc < -1e-6 * ia:
            return 0, -1
        if disc == disc:
            hw = math.sqrt(max(disc, 0.0)) / ia
            xc = cx - bdy / ia
            fa = max(np.ceil(xc - hw), np.ceil(cx - box))
            fb = min(np.floor(xc + hw), np.floor(cx + box))
            a = lo if not fa > lo else (hi + 1 if fa > hi else int(fa))
            b = hi if not fb < hi else (lo - 1 if fb < lo else int(fb))
            while a > lo and _weighted(ia, ib, ic, cx, dy, cyy, box, a - 1):
                a -= 1
            while b < hi and _weighted(ia, ib, ic, cx, dy, cyy, box, b + 1):
                b += 1
            if b < a:  # no integer in the solution and neither neighbour has weight: none further out
                return 0, -1
    while a <= b and not _weighted(ia, ib, ic, cx, dy, cyy, box, a):
        a += 1
    while b >= a and not _weighted(ia, ib, ic, cx, dy, cyy, box, b):
        b -= 1
    return a, b


@njit(cache=True, nogil=True, error_model="numpy")
def moment_sums(img, ch, avail, cx, cy, w00, w11, ia, ib, ic, box, wrow, sums):
    """sums[:] = sum of w I [x^2, xy, y^2, x, y, 1] over offsets |x|, |y| <= avail of the stamp centred on
    img[ch, ch] (x, y integer offsets); w = exp(-q/2) centred at (cx, cy), zero beyond the box or q > 14.

    (w00, w11): the diagonal of W (bounds the rows), (ia, ib, ic) = W^-1. The weights come from
    a walker (w, r, t: the weight at the first weighted pixel of a row, its ratio to the next
    pixel of the row and to the pixel below) that moves from row to row with constant factors
    (exp(-ia), exp(-ib), exp(-ic)); it restarts from exact exps every RESTART rows and along a
    row every RESTART pixels. A weight too steep for that (W^-1 entries above 200) takes an
    exp per run of pixels.
    """
    for k in range(6):
        sums[k] = 0.0
    ey = min(box, math.sqrt(MAX_EXPONENT * w11)) + 1.0
    if not ey == ey:
        ey = box + 1.0
    y0 = -avail
    y1 = avail
    if ey < 2 * avail:
        y0 = max(-avail, int(np.floor(cy - ey)))
        y1 = min(avail, int(np.ceil(cy + ey)))
    rec = 0.0 < ia <= 200.0 and 0.0 < ic <= 200.0 and abs(ib) <= 200.0
    g = gi = ec = eb = ebi = 0.0
    if rec:
        g = math.exp(-ia)
        gi = 1.0 / g
        ec = math.exp(-ic)
        eb = math.exp(-ib)
        ebi = 1.0 / eb
    have = False
    wa = ra = ta = 0.0  # the walker, at pixel (xa, ya)
    xa = ya = y_exact = 0
    for py in range(y0, y1 + 1):
        dy = py - cy
        if not abs(dy) <= box:
            continue
        a, b = row_run(ia, ib, ic, cx, dy, box, -avail, avail)
        if b < a:
            continue
        row = ch + py
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        if rec:
            if not have or py - y_exact >= RESTART:
                dx = a - cx
                wa = math.exp(-0.5 * _q(ia, ib, ic, dx, dy))
                ra = math.exp(-0.5 * (ia * (2.0 * dx + 1.0) + 2.0 * ib * dy))
                ta = math.exp(-0.5 * (2.0 * ib * dx + ic * (2.0 * dy + 1.0)))
                have = True
                y_exact = py
            else:
                while ya < py:  # down
                    wa *= ta
                    ta *= ec
                    ra *= eb
                    ya += 1
                while xa < a:  # right
                    wa *= ra
                    ra *= g
                    ta *= eb
                    xa += 1
                while xa > a:  # left
                    ra *= gi
                    wa /= ra
                    ta *= ebi
                    xa -= 1
            xa = a
            ya = py
            w = wa
            r = ra
            start = a
            while start <= b:
                end = min(b, start + RESTART - 1)
                if start > a:
                    dx = start - cx
                    w = math.exp(-0.5 * _q(ia, ib, ic, dx, dy))
                    r = math.exp(-0.5 * (ia * (2.0 * dx + 1.0) + 2.0 * ib * dy))
                for px in range(start, end + 1):
                    v = w * img[row, ch + px]
                    fx = float(px)
                    s0 += v
                    s1 += v * fx
                    s2 += v * (fx * fx)
                    w *= r
                    r *= g
                start = end + 1
        else:
            x0, x1 = row_weights(ia, ib, ic, cx, dy, box, a, b, wrow)
            for px in range(x0, x1 + 1):
                v = wrow[px - x0] * img[row, ch + px]
                fx = float(px)
                s0 += v
                s1 += v * fx
                s2 += v * (fx * fx)
        fy = float(py)
        sums[0] += s2
        sums[1] += s1 * fy
        sums[2] += s0 * (fy * fy)
        sums[3] += s1
        sums[4] += s0 * fy
        sums[5] += s0


@njit(cache=True, nogil=True)
def adaptive_start(state, fx, fy, initial):
    """A fresh iteration state: weight ``initial`` x identity at offset (fx, fy) from the stamp centre."""
    state[_IT] = 0
    state[_W00] = initial
    state[_W01] = 0.0
    state[_W11] = initial
    state[_CX] = fx
    state[_CY] = fy
    state[_E1] = np.inf
    state[_E2] = np.inf
    state[_S11] = np.inf
    state[_WSUM] = np.nan
    state[_NITER] = 0
    state[_UNW] = 0
    state[_DONE] = 0


@njit(cache=True, nogil=True, error_model="numpy")
def adaptive_run(img, ch, avail, lim, max_iter, tol1, tol2, state, wrow, sums):
    """Run the SDSS adaptive iteration of ``state`` on a stamp (centre pixel img[ch, ch], read to half-size
    ``avail``); ``lim``: the measurement's stamp half-size (box and pixels cut at it).

    Each iteration measures the Gaussian-weighted moments M and centroid, then sets the next
    weight to (M^-1 - W^-1)^-1; it stops when the ellipticity and size change by less than the
    tolerances, or fails (non-positive sum, M or the next weight not positive-definite).
    Returns 0 when finished, or the stamp half-size the next iteration needs when that exceeds
    ``avail`` (read a larger stamp and call again: the iteration resumes where it stopped).
    """
    w00 = state[_W00]
    w01 = state[_W01]
    w11 = state[_W11]
    cx = state[_CX]
    cy = state[_CY]
    e1o = state[_E1]
    e2o = state[_E2]
    s11o = state[_S11]
    need = 0
    it = int(state[_IT])
    while it < max_iter:
        ia, ib, ic, _ = inverse_sym(w00, w01, w11)
        box = min(4 * math.sqrt(max(w00, w11)), float(lim))
        reach = np.ceil(box + max(abs(cx), abs(cy))) + 1.0
        if not reach <= lim:
            reach = float(lim)
        if reach > avail:
            need = int(reach)
            break
        moment_sums(img, ch, avail, cx, cy, w00, w11, ia, ib, ic, box, wrow, sums)
        s0 = sums[5]
        state[_NITER] = it + 1
        state[_WSUM] = s0
        bad = not s0 > 0
        ux = sums[3] / s0
        uy = sums[4] / s0
        mxx = sums[0] / s0 - ux * ux
        myy = sums[2] / s0 - uy * uy
        mxy = sums[1] / s0 - ux * uy
        e1 = (mxx - myy) / (mxx + myy)
        e2 = 2 * mxy / (mxx + myy)
        if not bad:
            cx = ux
            cy = uy
        converged = abs(e1 - e1o) < tol1 and abs(e2 - e2o) < tol1 and abs(w00 / s11o - 1) < tol2
        mi00, mi01, mi11, _ = inverse_sym(mxx, mxy, myy)
        n00, n01, n11, _ = inverse_sym(mi00 - ia, mi01 - ib, mi11 - ic)
        ok = (not bad) and positive_definite_sym(mxx, myy, mxy) and positive_definite_sym(n00, n11, n01)
        if not ok and not converged:
            state[_UNW] = 1
        e1o = e1
        e2o = e2
        s11o = w00
        if ok and not converged:
            w00 = n00
            w01 = n01
            w11 = n11
        it += 1
        if converged or not ok:
            state[_DONE] = 1
            break
    state[_IT] = it
    state[_W00] = w00
    state[_W01] = w01
    state[_W11] = w11
    state[_CX] = cx
    state[_CY] = cy
    state[_E1] = e1o
    state[_E2] = e2o
    state[_S11] = s11o
    return need


@njit(cache=True, nogil=True)
def adaptive_status(state):
    """UNWEIGHTED | MAX_ITER bits of a finished iteration (before the unweighted fallback)."""
    return (UNWEIGHTED if state[_UNW] != 0 else 0) | (0 if state[_DONE] != 0 else MAX_ITER)


@njit(cache=True, nogil=True, error_model="numpy")
def _set_moments(state, s0, sx, sy, sxx, syy, sxy):
    """The unweighted moments from the sums into the state's weight; True when usable (positive sum,
    positive-definite), else 1/12 (one pixel's moments) for a positive sum, or NaN."""
    mx = sx / s0
    my = sy / s0
    mxx = sxx / s0 - mx * mx
    myy = syy / s0 - my * my
    mxy = sxy / s0 - mx * my
    good = s0 > 0 and positive_definite_sym(mxx, myy, mxy)
    if good:
        state[_W00], state[_W01], state[_W11] = mxx, mxy, myy
    elif s0 > 0:
        state[_W00], state[_W01], state[_W11] = 1.0 / 12, 0.0, 1.0 / 12
    else:
        state[_W00], state[_W01], state[_W11] = np.nan, np.nan, np.nan
    return good


@njit(cache=True, nogil=True, error_model="numpy")
def unweighted_stamp(img, ch, half, state):
    """Plain second moments of the whole (2 half + 1)^2 stamp centred on img[ch, ch] (where the iteration
    failed) into the state's weight; see :func:`_set_moments` for the return value."""
    s0 = sx = sy = sxx = syy = sxy = 0.0
    for j in range(-half, half + 1):
        gy = float(j)
        r0 = r1 = r2 = 0.0
        for i in range(-half, half + 1):
            gx = float(i)
            v = img[ch + j, ch + i]
            r0 += v
            r1 += v * gx
            r2 += v * (gx * gx)
        s0 += r0
        sx += r1
        sy += r0 * gy
        sxx += r2
        syy += r0 * (gy * gy)
        sxy += r1 * gy
    return _set_moments(state, s0, sx, sy, sxx, syy, sxy)


@njit(cache=True, nogil=True, error_model="numpy")
def unweighted_planes(image, valid, fp, src, cy, cx, half, state):
    """:func:`unweighted_stamp` of the source's own (2 half + 1)^2 image around pixel (cx, cy), read from the
    planes: sums over the image plane's valid pixels, plus (heavy - image) on the valid pixels of
    the source's own footprint (no stamp: the fallback reads the largest window)."""
    h, w = image.shape
    s0 = sx = sy = sxx = syy = sxy = 0.0
    i0 = max(-half, -cx)
    i1 = min(half, w - 1 - cx)
    for j in range(max(-half, -cy), min(half, h - 1 - cy) + 1):
        y = cy + j
        gy = float(j)
        r0 = r1 = r2 = 0.0
        for i in range(i0, i1 + 1):
            if valid[y, cx + i]:
                gx = float(i)
                v = np.float64(image[y, cx + i])
                r0 += v
                r1 += v * gx
                r2 += v * (gx * gx)
        s0 += r0
        sx += r1
        sy += r0 * gy
        sxx += r2
        syy += r0 * (gy * gy)
        sxy += r1 * gy
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    f = used[src]
    if f >= 0:
        k = val_off[f]
        for sp in range(span_off[f], span_off[f + 1]):
            y, x0, x1 = span_y[sp], span_x0[sp], span_x1[sp]
            j = y - cy
            if -half <= j <= half and 0 <= y < h:
                gy = float(j)
                for x in range(max(x0, cx + i0), min(x1, cx + i1) + 1):
                    if valid[y, x]:
                        gx = float(x - cx)
                        d = np.float64(values[k + x - x0]) - np.float64(image[y, x])
                        s0 += d
                        sx += d * gx
                        sy += d * gy
                        sxx += d * (gx * gx)
                        syy += d * (gy * gy)
                        sxy += d * (gx * gy)
            k += x1 - x0 + 1
    return _set_moments(state, s0, sx, sy, sxx, syy, sxy)


@njit(cache=True, nogil=True, error_model="numpy")
def shape_errors(variance, valid, cxp, cyp, lim, ccx, ccy, m00, m01, m11, s0, err):
    """Linearised errors of the adaptive flux and moments from the variance plane around pixel (cxp, cyp).

    w is the Gaussian of the final moments M centred at offset (ccx, ccy) (q <= 14, offsets
    within ``lim``), V the variance (0 on invalid and off-coadd pixels); with u = w^2 V:
    err = [2 sqrt(sum u), and for the moment terms t = dx^2, dy^2, dx dy:
    2 sqrt(sum u (t - M/2)^2) / |s0|] (flux, xx, yy, xy). Non-finite M: no pixel has weight
    (flux error 0, moment errors NaN).
    """
    if not (np.isfinite(m00) and np.isfinite(m01) and np.isfinite(m11)):
        err[0] = 0.0
        err[1] = np.nan
        err[2] = np.nan
        err[3] = np.nan
        return
    ia, ib, ic, _ = inverse_sym(m00, m01, m11)
    h, w = variance.shape
    hxx = m00 / 2
    hyy = m11 / 2
    hxy = m01 / 2
    sf = sxx = syy = sxy = 0.0
    ext = math.sqrt(MAX_EXPONENT * m11) + 1.0
    y0 = max(-lim, int(np.floor(ccy - ext)) - 1) if ext < 2 * lim else -lim
    y1 = min(lim, int(np.ceil(ccy + ext)) + 1) if ext < 2 * lim else lim
    rec = 0.0 < ia <= RECURRENCE_MAX_A
    g = math.exp(-ia) if rec else 0.0
    for py in range(max(y0, -cyp), min(y1, h - 1 - cyp) + 1):  # rows on the coadd
        dy = py - ccy
        y = cyp + py
        lo, hi = row_run(ia, ib, ic, ccx, dy, np.inf, max(-lim, -cxp), min(lim, w - 1 - cxp))
        su = 0.0
        start = lo
        while start <= hi:  # segments of RESTART pixels, each from an exact exp
            end = min(hi, start + RESTART - 1)
            dx = start - ccx
            wt = math.exp(-0.5 * _q(ia, ib, ic, dx, dy))
            r = math.exp(-0.5 * (ia * (2.0 * dx + 1.0) + 2.0 * ib * dy))
            for px in range(start, end + 1):
                dx = px - ccx
                if not rec:
                    wt = math.exp(-0.5 * _q(ia, ib, ic, dx, dy))
                x = cxp + px
                if valid[y, x]:
                    u = wt * wt * variance[y, x]
                    su += u
                    d = dx * dx - hxx
                    sxx += u * d * d
                    d = dx * dy - hxy
                    sxy += u * d * d
                wt *= r
                r *= g
            start = end + 1
        sf += su
        d = dy * dy - hyy
        syy += su * d * d
    err[0] = 2 * math.sqrt(sf)
    err[1] = 2 * math.sqrt(sxx) / abs(s0)
    err[2] = 2 * math.sqrt(syy) / abs(s0)
    err[3] = 2 * math.sqrt(sxy) / abs(s0)


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def sdss_shape(image, variance, valid, fp, cx, cy, fx, fy, usable, order, lim, max_iter, tol1, tol2, max_shift,
               initial):
    """Adaptive moments of every usable source on its own image, with their linearised errors.

    Planes and ``fp`` as :func:`forcedphot.kernels.pixels.source_stamp`; (cx, cy) nearest local
    pixel, (fx, fy) sub-pixel start offset; ``order`` the visiting order (any permutation:
    results do not depend on it); ``lim`` the stamp half-size (weights, the unweighted
    fallback and the errors stop there). The iteration runs on a stamp read to the size its
    weight reaches (grown on demand). Returns

    moments (n, 3) [xx, xy, yy], shift (n, 2) [dx, dy] from the start, wsum (n,) sum(w I) of the
    last iteration, n_iter (n,), flags (n, 4) uint8 [unweighted, unweightedBad, shift, maxIter],
    errors (n, 4) [flux, xx, yy, xy]. Unusable sources: NaN and zero flags.
    """
    n = cx.size
    moments = np.full((n, 3), np.nan)
    shift = np.full((n, 2), np.nan)
    wsum = np.full(n, np.nan)
    n_iter = np.zeros(n, np.int64)
    flags = np.zeros((n, 4), np.uint8)
    errors = np.full((n, 4), np.nan)
    size = 2 * lim + 1
    n_blocks = (n + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        img = np.empty((size, size))
        ok = np.empty((size, size), np.uint8)
        wrow = np.empty(size + 4)
        sums = np.empty(6)
        state = np.empty(STATE_SIZE)
        err = np.empty(4)
        for t in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            s = order[t]
            if not usable[s]:
                continue
            half = min(FIRST_HALF, lim)
            own_stamp(image, valid, fp, s, cy[s], cx[s], half, img, ok)
            adaptive_start(state, fx[s], fy[s], initial)
            while True:
                need = adaptive_run(img, half, half, lim, max_iter, tol1, tol2, state, wrow, sums)
                if need == 0:
                    break
                half = min(lim, need + need // 2 + 2)
                own_stamp(image, valid, fp, s, cy[s], cx[s], half, img, ok)
            status = adaptive_status(state)
            bad = False
            if status != 0:  # the unweighted moments of the whole stamp
                bad = not unweighted_planes(image, valid, fp, s, cy[s], cx[s], lim, state)
            dx = state[_CX] - fx[s]
            dy = state[_CY] - fy[s]
            shape_errors(variance, valid, cx[s], cy[s], lim, fx[s] + dx, fy[s] + dy, state[_W00], state[_W01],
                         state[_W11], state[_WSUM], err)
            moments[s, 0] = state[_W00]
            moments[s, 1] = state[_W01]
            moments[s, 2] = state[_W11]
            shift[s, 0] = dx
            shift[s, 1] = dy
            wsum[s] = state[_WSUM]
            n_iter[s] = int(state[_NITER])
            flags[s, 0] = status != 0
            flags[s, 1] = bad
            flags[s, 2] = math.hypot(dx, dy) > max_shift
            flags[s, 3] = (status & MAX_ITER) != 0
            for k in range(4):
                errors[s, k] = err[k]
    return moments, shift, wsum, n_iter, flags, errors


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def adaptive_moments_stamps(stamps, fx, fy, max_iter, tol1, tol2, initial):
    """Adaptive moments of (n, S, S) stamps (odd S) started at offsets (fx, fy) from their central pixel.

    Returns res (n, 7) [wxx, wxy, wyy, cx, cy, wsum, n_iter] (cx, cy the final centroid,
    stamp frame), status (n,) bits UNWEIGHTED | MAX_ITER and bad (n,) uint8; where the
    iteration failed (status != 0, UNWEIGHTED set) the moments are the unweighted ones of the
    stamp, bad where those failed too.
    """
    n, size, _ = stamps.shape
    lim = size // 2
    avail = (size - 1) // 2
    res = np.full((n, 7), np.nan)
    status = np.zeros(n, np.int64)
    bad = np.zeros(n, np.uint8)
    for s in prange(n):
        wrow = np.empty(size + 4)
        sums = np.empty(6)
        state = np.empty(STATE_SIZE)
        img = stamps[s]
        adaptive_start(state, fx[s], fy[s], initial)
        adaptive_run(img, lim, avail, lim, max_iter, tol1, tol2, state, wrow, sums)
        st = adaptive_status(state)
        if st != 0:
            bad[s] = not unweighted_stamp(img, lim, avail, state)
            st |= UNWEIGHTED
        res[s, 0] = state[_W00]
        res[s, 1] = state[_W01]
        res[s, 2] = state[_W11]
        res[s, 3] = state[_CX]
        res[s, 4] = state[_CY]
        res[s, 5] = state[_WSUM]
        res[s, 6] = state[_NITER]
        status[s] = st
    return res, status, bad


@njit(cache=True, nogil=True, error_model="numpy")
def _run_weights(ia, ib, ic, cx, dy, lo, hi, wrow):
    """Weights exp(-q/2) of the offsets [lo, hi] of row dy (all weighted: a sub-interval of the row's run)
    into wrow[0:hi - lo + 1]: an exact exp every RESTART pixels, the recurrence in between."""
    rec = 0.0 < ia <= RECURRENCE_MAX_A
    g = math.exp(-ia) if rec else 0.0
    w = r = 0.0
    for px in range(lo, hi + 1):
        k = px - lo
        dx = px - cx
        if not rec or k % RESTART == 0:
            w = math.exp(-0.5 * _q(ia, ib, ic, dx, dy))
            r = math.exp(-0.5 * (ia * (2.0 * dx + 1.0) + 2.0 * ib * dy))
        wrow[k] = w
        w *= r
        r *= g


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def gaussian_flux(image, variance, valid, fp, cx, cy, fx, fy, ia, ib, ic, half, small, sub, order):
    """Flux in fixed Gaussian weights exp(-x^T Q^-1 x / 2) (q <= 14) on each source's own image.

    (ia, ib, ic) = Q^-1 per source; the sums run over the offsets within ``half`` (< 0: not
    measured, NaN); ``small``: weight averaged over the sub-pixel sample offsets ``sub`` (each
    axis, on a stamp). Other sources read the planes along each row's run of weighted pixels,
    then add w (heavy - image) over the valid pixels of their own footprint. Returns flux
    2 sum(w I), err 2 sqrt(sum(w^2 V)), invalid (uint8: weight on invalid or off-coadd
    pixels above 1e-3 of the total) and excluded (uint8: the same for the EXCLUDED pixels of
    ``valid`` as pixel classes, footprints.pixel_classes, which are summed like the others).
    """
    n = cx.size
    flux = np.full(n, np.nan)
    err = np.full(n, np.nan)
    invalid = np.zeros(n, np.uint8)
    excluded = np.zeros(n, np.uint8)
    hsub = 0
    for s in range(n):
        if small[s]:
            hsub = max(hsub, half[s])
    size = 2 * hsub + 1
    n_blocks = (n + BLOCK - 1) // BLOCK
    height, width = image.shape
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    for b in prange(n_blocks):
        img = np.empty((size, size))
        var = np.empty((size, size))
        ok = np.empty((size, size), np.uint8)
        hb = 0  # this block's largest half-size
        for t in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            hb = max(hb, half[order[t]])
        wst = np.empty((2 * hb + 1, 2 * hb + 1))  # each row's weights, from its run start
        run_lo = np.empty(2 * hb + 1, np.int64)
        run_hi = np.empty(2 * hb + 1, np.int64)
        for t in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            s = order[t]
            h = half[s]
            if h < 0:
                continue
            a, bb, c = ia[s], ib[s], ic[s]
            sf = sv = sw = sbad = sexc = 0.0
            if small[s]:  # 4 x 4 sub-pixel samples, each with its own exponent cut, on a stamp
                own_stamp_variance(image, variance, valid, fp, s, cy[s], cx[s], h, img, var, ok)
                for py in range(-h, h + 1):
                    dy = py - fy[s]
                    for px in range(-h, h + 1):
                        dx = px - fx[s]
                        wt = subsampled_gaussian(dx, dy, a, bb, c, sub, MAX_EXPONENT)
                        j, i = py + h, px + h
                        sf += wt * img[j, i]
                        sv += wt * wt * var[j, i]
                        sw += wt
                        if not ok[j, i]:
                            sbad += wt
                        elif valid[cy[s] + py, cx[s] + px] == EXCLUDED:
                            sexc += wt
            else:
                for py in range(-h, h + 1):
                    dy = py - fy[s]
                    lo, hi = row_run(a, bb, c, fx[s], dy, np.inf, -h, h)
                    run_lo[py + h] = lo
                    run_hi[py + h] = hi
                    if hi < lo:
                        continue
                    wrow = wst[py + h]
                    _run_weights(a, bb, c, fx[s], dy, lo, hi, wrow)
                    y = cy[s] + py
                    if 0 <= y < height:
                        for px in range(lo, hi + 1):
                            wt = wrow[px - lo]
                            x = cx[s] + px
                            cls = valid[y, x] if 0 <= x < width else 0
                            if cls:
                                sf += wt * image[y, x]
                                sv += wt * wt * variance[y, x]
                                if cls == EXCLUDED:
                                    sexc += wt
                            else:
                                sbad += wt
                            sw += wt
                    else:
                        for px in range(lo, hi + 1):
                            sbad += wrow[px - lo]
                            sw += wrow[px - lo]
                f = used[s]
                if f >= 0:  # the source's own heavy values on the valid pixels of its footprint
                    k = val_off[f]
                    for sp in range(span_off[f], span_off[f + 1]):
                        y, x0, x1 = span_y[sp], span_x0[sp], span_x1[sp]
                        py = y - cy[s]
                        if -h <= py <= h and 0 <= y < height:
                            lo = run_lo[py + h]
                            wrow = wst[py + h]
                            p0 = max(lo, x0 - cx[s], -cx[s])  # the span within the row's run, on the coadd
                            p1 = min(run_hi[py + h], x1 - cx[s], width - 1 - cx[s])
                            for px in range(p0, p1 + 1):
                                x = cx[s] + px
                                if valid[y, x]:
                                    sf += wrow[px - lo] * (np.float64(values[k + x - x0]) - np.float64(image[y, x]))
                        k += x1 - x0 + 1
            flux[s] = 2 * sf
            err[s] = 2 * math.sqrt(sv)
            invalid[s] = sbad > 1e-3 * sw
            excluded[s] = sexc > 1e-3 * sw
    return flux, err, invalid, excluded


def _warm_planes():
    """Tiny planes with the dtypes and flags the plugins pass (:func:`read_only`)."""
    from forcedphot.kernels.pixels import no_footprints

    image, variance, valid = read_only(np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32),
                                       np.ones((8, 8), np.uint8))
    return image, variance, valid, no_footprints(1)


def _warm_shape():
    image, variance, valid, fp = _warm_planes()
    one_i, one_f = np.full(1, 4, np.int64), np.zeros(1)
    sdss_shape(image, variance, valid, fp, one_i, one_i, one_f, one_f, np.ones(1, np.uint8), np.zeros(1, np.int64),
               64, 100, 1e-5, 1e-4, 2.0, 1.5)


def _warm_gaussian():
    image, variance, valid, fp = _warm_planes()
    one_i, one_f = np.full(1, 4, np.int64), np.zeros(1)
    gaussian_flux(image, variance, valid, fp, one_i, one_i, one_f, one_f, np.ones(1), one_f, np.ones(1),
                  np.full(1, 4, np.int64), np.zeros(1, np.uint8), (np.arange(4) - 1.5) / 4, np.zeros(1, np.int64))


# the signatures the pipeline compiles (see forcedphot.compile)
WARMUP = [
    _warm_shape, _warm_gaussian,
    lambda: adaptive_moments_stamps(np.zeros((1, 5, 5)), np.zeros(1), np.zeros(1), 100, 1e-5, 1e-4, 1.5),
]
