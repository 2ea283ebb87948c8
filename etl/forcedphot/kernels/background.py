"""Background kernels: sigma-clipped statistics, the local-background annulus and the local-variance ellipse.

Clipped statistics (afw MEANCLIP / STDEVCLIP, :mod:`forcedphot.clipped`): iteration 0 clips at
median +- n_sigma * 0.7413 * IQR (linearly interpolated quantiles of the finite values), later
ones at mean +- n_sigma * std of the previous iteration (unbiased variance, float64 sums).
Order statistics:

* a small sample (one source's annulus): an LSD radix sort of the float32 bits in per-block
  scratch, the clip intervals then bisections of the sorted values; a median (one source's
  ellipse): MSD radix selection;
* a whole image (the noise level of :class:`forcedphot.noise.NoiseReplacer`): radix selection
  on the float bits (16-bit digit histograms, integer counts, so any chunking gives the same
  answer), then numpy's own arithmetic - its quantile interpolation and its pairwise summation
  tree - so the mean and sigma equal ``np.quantile`` / ``ndarray.mean`` / ``ndarray.std`` bit
  for bit, computed threaded.

Per-source kernels compute each source independently (blocks of sources per ``prange``
iteration, scratch reused within a block), every sum in a fixed order: results do not depend
on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from forcedphot.kernels.pixels import insert_footprint

IQR_TO_SIGMA = 0.741301109252802


# -- clipped statistics and the median of a small sample (one source's pixels) --------------------

@njit(cache=True, nogil=True)
def sort32(a, n, keys, tmp, hist):
    """Sort the float32 values a[:n] in place (LSD radix sort on the float bits, 4 passes of 8 bits;
    a pass whose digit is the same for every value is skipped). keys, tmp: uint32 scratch of >= n;
    hist: (4, 256) int64 scratch. NaN must not occur (infinities sort at the ends)."""
    bits = a.view(np.uint32)
    hist[:, :] = 0
    for i in range(n):
        u = bits[i]
        k = (u ^ np.uint32(0xFFFFFFFF)) if (u & np.uint32(0x80000000)) != 0 else (u | np.uint32(0x80000000))
        keys[i] = k
        hist[0, np.int64(k & np.uint32(255))] += 1
        hist[1, np.int64((k >> np.uint32(8)) & np.uint32(255))] += 1
        hist[2, np.int64((k >> np.uint32(16)) & np.uint32(255))] += 1
        hist[3, np.int64(k >> np.uint32(24))] += 1
    src, dst = keys, tmp
    for p in range(4):
        shift = np.uint32(8 * p)
        if n == 0 or hist[p, np.int64((src[0] >> shift) & np.uint32(255))] == n:
            continue  # one digit value for all: this pass would not move anything
        total = 0
        for d in range(256):
            c = hist[p, d]
            hist[p, d] = total
            total += c
        for i in range(n):
            k = src[i]
            d = np.int64((k >> shift) & np.uint32(255))
            dst[hist[p, d]] = k
            hist[p, d] += 1
        src, dst = dst, src
    for i in range(n):
        k = src[i]
        bits[i] = (k ^ np.uint32(0x80000000)) if (k & np.uint32(0x80000000)) != 0 else (k ^ np.uint32(0xFFFFFFFF))


@njit(cache=True, nogil=True)
def _key32(u):
    return (u ^ np.uint32(0xFFFFFFFF)) if (u & np.uint32(0x80000000)) != 0 else (u | np.uint32(0x80000000))


@njit(cache=True, nogil=True)
def _float_bits32(k):
    return (k ^ np.uint32(0x80000000)) if (k & np.uint32(0x80000000)) != 0 else (k ^ np.uint32(0xFFFFFFFF))


@njit(cache=True, nogil=True)
def median32(a, n, keys, tmp, hist):
    """Median of the float32 values a[:n] (no NaN), as :func:`sorted_quantile` (q = 0.5) of them sorted.

    MSD radix selection on the float bits, 8-bit digits: each level keeps the values in the digit
    holding the middle rank (a level that would keep them all moves nothing). The next order
    statistic (even n) is then the middle value again or the smallest value above it. keys, tmp:
    uint32 scratch of >= n; hist: (4, 256) int64 scratch. NaN for n = 0.
    """
    if n == 0:
        return np.nan
    bits = a.view(np.uint32)
    for i in range(n):
        keys[i] = _key32(bits[i])
    pos = (n - 1) * 0.5
    rank = int(np.floor(pos))
    cur = keys
    nc = n
    prefix = np.uint32(0)
    count = n
    for level in range(4):
        shift = np.uint32(24 - 8 * level)
        for d in range(256):
            hist[0, d] = 0
        for i in range(nc):
            hist[0, np.int64((cur[i] >> shift) & np.uint32(255))] += 1
        d = 0
        below = 0
        while below + hist[0, d] <= rank:
            below += hist[0, d]
            d += 1
        rank -= below
        count = hist[0, d]
        prefix = (prefix << np.uint32(8)) | np.uint32(d)
        if level < 3 and count < nc:  # keep the digit's values (first from keys, then in place in tmp)
            k2 = 0
            for i in range(nc):
                k = cur[i]
                tmp[k2] = k
                k2 += ((k >> shift) & np.uint32(255)) == np.uint32(d)
            cur = tmp
            nc = k2
    lo = prefix
    frac = pos - np.floor(pos)
    if frac == 0 or rank + 1 < count:
        hi = lo  # odd n: the next value has weight 0; or it equals this one
    else:
        hi = np.uint32(0xFFFFFFFF)
        for i in range(n):
            k = keys[i]
            if k > lo and k < hi:
                hi = k
    v = np.empty(2, np.uint32)
    v[0], v[1] = _float_bits32(lo), _float_bits32(hi)
    f = v.view(np.float32)
    return np.float64(f[0]) + np.float64(f[1] - f[0]) * frac


@njit(cache=True, nogil=True)
def sorted_quantile(v, n, q):
    """Quantile q of the sorted v[:n], linear between order statistics as :mod:`forcedphot.clipped`
    evaluates it: a + (b - a) * frac with b - a in the values' type; n >= 1."""
    pos = (n - 1) * q
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    return np.float64(v[lo]) + np.float64(v[hi] - v[lo]) * (pos - lo)


@njit(cache=True, nogil=True)
def _first_at_least(v, lo, hi, centre, bound):
    """First i in [lo, hi) with float64(v[i]) - centre >= bound (v sorted), else hi."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.float64(v[mid]) - centre >= bound:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, nogil=True)
def _first_above(v, lo, hi, centre, bound):
    """First i in [lo, hi) with float64(v[i]) - centre > bound (v sorted), else hi."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.float64(v[mid]) - centre > bound:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, nogil=True)
def _shifted_sums(v, lo, hi, shift):
    """(sum of y, sum of y^2) over v[lo:hi] with y = v - shift (float64); four interleaved
    accumulators, a fixed order."""
    s0 = s1 = s2 = s3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    i = lo
    while i + 4 <= hi:
        y0, y1 = np.float64(v[i]) - shift, np.float64(v[i + 1]) - shift
        y2, y3 = np.float64(v[i + 2]) - shift, np.float64(v[i + 3]) - shift
        s0 += y0
        s1 += y1
        s2 += y2
        s3 += y3
        q0 += y0 * y0
        q1 += y1 * y1
        q2 += y2 * y2
        q3 += y3 * y3
        i += 4
    while i < hi:
        y0 = np.float64(v[i]) - shift
        s0 += y0
        q0 += y0 * y0
        i += 1
    return (s0 + s1) + (s2 + s3), (q0 + q1) + (q2 + q3)


@njit(cache=True, nogil=True, error_model="numpy")
def clipped_sorted(v, n, n_sigma, n_iter):
    """(mean, std, n_used) of the n finite values v[:n], sorted ascending.

    The clipping of :func:`forcedphot.clipped.clipped_mean_std`: |x - centre| <= half is an interval
    of the sorted values (x - centre rounds monotonically), found by bisection. Each iteration sums
    y = x - centre and y^2 (float64) over its interval: mean = centre + sum y / n and variance
    (sum y^2 - (sum y)^2 / n) / (n - 1), well conditioned as the centre (the median, then the
    previous mean) is within a few sigma of the mean. An empty sample gives (NaN, -0.0, 0), as
    numpy's 0/0 and 0/-1 do.
    """
    if n == 0:
        return np.nan, np.sqrt(0.0 / -1.0), 0
    centre = sorted_quantile(v, n, 0.5)
    half = n_sigma * IQR_TO_SIGMA * (sorted_quantile(v, n, 0.75) - sorted_quantile(v, n, 0.25))
    mean = np.nan
    std = np.nan
    used = 0
    for _ in range(n_iter):
        a = _first_at_least(v, np.int64(0), n, centre, -half)  # a literal 0 would compile it once more
        b = max(a, _first_above(v, a, n, centre, half))
        used = b - a
        if used == 0:
            mean, std = np.nan, np.sqrt(0.0 / -1.0)
        else:
            sy, sy2 = _shifted_sums(v, a, b, centre)
            mean = centre + sy / used
            std = np.nan if used == 1 else np.sqrt(max(sy2 - sy * sy / used, 0.0) / (used - 1))  # 1: 0/0
        centre = mean
        half = n_sigma * std
    return mean, std, used


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def clipped_rows(values, n_sigma, n_iter):
    """(mean, std, n_used) of every row of a float32 (R, K) array; non-finite values are excluded."""
    r, k = values.shape
    mean = np.empty(r)
    std = np.empty(r)
    used = np.empty(r, np.int64)
    for i in prange(r):
        vals = np.empty(k, np.float32)
        keys = np.empty(k, np.uint32)
        tmp = np.empty(k, np.uint32)
        hist = np.empty((4, 256), np.int64)
        n = np.int64(0)
        for j in range(k):
            if np.isfinite(values[i, j]):
                vals[n] = values[i, j]
                n += 1
        sort32(vals, n, keys, tmp, hist)
        mean[i], std[i], used[i] = clipped_sorted(vals, n, n_sigma, n_iter)
    return mean, std, used


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def clipped_rows64(values, n_sigma, n_iter):
    """clipped_rows of a float64 (R, K) array."""
    r, k = values.shape
    mean = np.empty(r)
    std = np.empty(r)
    used = np.empty(r, np.int64)
    for i in prange(r):
        vals = np.empty(k)
        n = np.int64(0)
        for j in range(k):
            if np.isfinite(values[i, j]):
                vals[n] = values[i, j]
                n += 1
        srt = np.sort(vals[:n])
        mean[i], std[i], used[i] = clipped_sorted(srt, n, n_sigma, n_iter)
    return mean, std, used


@njit(cache=True, parallel=True, nogil=True)
def median_rows(values):
    """Median of the finite values of every row of a float32 (R, K) array (NaN for none)."""
    r, k = values.shape
    out = np.full(r, np.nan)
    for i in prange(r):
        vals = np.empty(k, np.float32)
        keys = np.empty(k, np.uint32)
        tmp = np.empty(k, np.uint32)
        hist = np.empty((4, 256), np.int64)
        n = np.int64(0)
        for j in range(k):
            if np.isfinite(values[i, j]):
                vals[n] = values[i, j]
                n += 1
        if n:
            out[i] = median32(vals, n, keys, tmp, hist)
    return out


@njit(cache=True, parallel=True, nogil=True)
def median_rows64(values):
    """median_rows of a float64 (R, K) array."""
    r, k = values.shape
    out = np.full(r, np.nan)
    for i in prange(r):
        vals = np.empty(k)
        n = np.int64(0)
        for j in range(k):
            if np.isfinite(values[i, j]):
                vals[n] = values[i, j]
                n += 1
        if n:
            out[i] = sorted_quantile(np.sort(vals[:n]), n, 0.5)
    return out


# -- the local background: clipped statistics in an annulus of the source's own image ------------

N_BLOCKS = 256  # sources are dealt in this many contiguous blocks, each reusing its scratch
RING_EPS = 1e-9  # relative margin of the squared-radius test (hypot decides inside it)


@njit(cache=True, nogil=True)
def _ring_test(dx, dy, r_in, r_out):
    """r_in <= hypot(dx, dy) <= r_out, with the squared radius deciding away from both edges."""
    d2 = dx * dx + dy * dy
    if d2 > r_in * r_in * (1 + RING_EPS) and d2 < r_out * r_out * (1 - RING_EPS):
        return True
    if d2 < r_in * r_in * (1 - RING_EPS) or d2 > r_out * r_out * (1 + RING_EPS):
        return False
    r = np.hypot(dx, dy)
    return r >= r_in and r <= r_out


@njit(cache=True, nogil=True)
def _ring_columns(fx, dy, r_in, r_out, half):
    """Stamp columns (lo0, hi0, lo1, hi1) that can hold annulus pixels in a row at offset dy (one pixel
    of slack on each side; lo1 > hi1 when the row needs one range)."""
    wo2 = r_out * r_out - dy * dy
    if wo2 < 0:
        wo2 = 0.0
    wo = np.sqrt(wo2)
    lo = max(int(np.floor(fx - wo)) - 1, -half)
    hi = min(int(np.ceil(fx + wo)) + 1, half)
    wi2 = r_in * r_in - dy * dy
    if wi2 <= 0:
        return lo + half, hi + half, 1, 0
    wi = np.sqrt(wi2)
    a = int(np.ceil(fx - wi)) + 1  # columns strictly inside the inner circle on both sides of fx
    b = int(np.floor(fx + wi)) - 1
    if a > b:
        return lo + half, hi + half, 1, 0
    return lo + half, a - 1 + half, b + 1 + half, hi + half


@njit(cache=True, nogil=True)
def _footprint_inside(fp, src, cx, cy, fx, fy, r):
    """True when every pixel of the source's footprint lies closer than r to its centroid (or it has none)."""
    used, span_off, span_y, span_x0, span_x1, _, _ = fp
    f = used[src]
    if f < 0:
        return True
    r2 = r * r * (1 - RING_EPS)
    for s in range(span_off[f], span_off[f + 1]):
        dy = (span_y[s] - cy) - fy
        dx = max(abs((span_x0[s] - cx) - fx), abs((span_x1[s] - cx) - fx))
        if dx * dx + dy * dy >= r2:
            return False
    return True


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def annulus_clipped_stats(image, valid, mask, bits, fp, cx, cy, fx, fy, inner, outer, ok, n_sigma, n_iter):
    """(mean, std) of the pixels with inner <= r <= outer (r from the centroid to pixel centres, per source).

    Pixels are the source's own image (``image`` plus its own footprint, kernels.pixels); only
    pixels on the coadd that are ``valid`` and have none of the mask ``bits`` count (tested here,
    pixel by pixel: no plane-wide good-pixel plane is held for it).
    Sources with ``ok`` 0 get NaN. The statistics are :func:`clipped_sorted` of the sorted pixel
    values (an annulus holds ~1000 pixels: a radix sort beats selection here). A source whose footprint
    stays inside the inner radius reads the annulus straight from ``image``; otherwise its pixels go
    through a stamp that takes the footprint. Sources are dealt in contiguous blocks (neighbours
    share cached rows), each block reusing its scratch.
    """
    n_src = cx.size
    h, w = image.shape
    mean = np.full(n_src, np.nan)
    std = np.full(n_src, np.nan)
    n_blocks = min(n_src, N_BLOCKS)
    for blk in prange(n_blocks):
        first, last = blk * n_src // n_blocks, (blk + 1) * n_src // n_blocks
        cap = 1
        for src in range(first, last):
            if ok[src]:
                cap = max(cap, 2 * (int(np.ceil(outer[src])) + 1) + 1)
        img = np.empty((cap, cap), np.float32)
        use = np.empty((cap, cap), np.uint8)
        cols = np.empty((cap, 4), np.int64)
        vals = np.empty(cap * cap + 1, np.float32)
        keys = np.empty(cap * cap, np.uint32)
        tmp = np.empty(cap * cap, np.uint32)
        hist = np.empty((4, 256), np.int64)
        for src in range(first, last):
            if not ok[src]:
                continue
            r_in, r_out = inner[src], outer[src]
            half = int(np.ceil(r_out)) + 1
            size = 2 * half + 1
            x0, y0 = cx[src] - half, cy[src] - half
            sfx, sfy = fx[src], fy[src]
            direct = _footprint_inside(fp, src, cx[src], cy[src], sfx, sfy, r_in)
            n = np.int64(0)
            for j in range(size):  # the annulus pixels of each row
                y = y0 + j
                dy = (j - half) - sfy
                lo0, hi0, lo1, hi1 = _ring_columns(sfx, dy, r_in, r_out, half)
                cols[j, 0], cols[j, 1], cols[j, 2], cols[j, 3] = lo0, hi0, lo1, hi1
                if y < 0 or y >= h:
                    if not direct:
                        use[j, lo0:hi0 + 1] = 0
                        use[j, lo1:hi1 + 1] = 0
                    continue
                for part in range(2):
                    lo, hi = (lo0, hi0) if part == 0 else (lo1, hi1)
                    for i in range(lo, hi + 1):
                        x = x0 + i
                        u = (0 <= x < w and valid[y, x] != 0 and (mask[y, x] & bits) == 0
                             and _ring_test((i - half) - sfx, dy, r_in, r_out))
                        if direct:  # valid pixels are finite
                            vals[n] = image[y, x] if 0 <= x < w else 0.0
                            n += u
                        else:
                            use[j, i] = u
                            if u:
                                img[j, i] = image[y, x]
            if not direct:
                insert_footprint(fp, src, cy[src], cx[src], half, img, use)  # its own heavy values
                for j in range(size):
                    for part in range(2):
                        for i in range(cols[j, 2 * part], cols[j, 2 * part + 1] + 1):
                            if use[j, i] and np.isfinite(img[j, i]):
                                vals[n] = img[j, i]
                                n += 1
            sort32(vals, n, keys, tmp, hist)
            mean[src], std[src], _ = clipped_sorted(vals, n, n_sigma, n_iter)
    return mean, std


# -- the local variance: median of the variance plane in an ellipse -------------------------------

@njit(cache=True, parallel=True, nogil=True)
def ellipse_median(plane, valid, mask, bits, cx, cy, fx, fy, qi_xx, qi_xy, qi_yy, half):
    """Median of ``plane`` over the pixels with d^T Qinv d <= 1 (d from the centroid to pixel centres).

    Only on-image pixels that are ``valid`` and have none of the mask ``bits`` count; ``half`` (per source)
    bounds the ellipse's pixel offsets, negative to skip the source (NaN). NaN where no pixel is
    left. Each row is scanned over the ellipse's chord, the exact test deciding near its ends.
    """
    n_src = cx.size
    h, w = plane.shape
    out = np.full(n_src, np.nan)
    n_blocks = min(n_src, N_BLOCKS)
    for blk in prange(n_blocks):
        first, last = blk * n_src // n_blocks, (blk + 1) * n_src // n_blocks
        cap = 1
        for src in range(first, last):
            cap = max(cap, (2 * half[src] + 1) ** 2)
        vals = np.empty(cap + 1, np.float32)
        keys = np.empty(cap, np.uint32)
        tmp = np.empty(cap, np.uint32)
        hist = np.empty((4, 256), np.int64)
        for src in range(first, last):
            hs = half[src]
            if hs < 0:
                continue
            a, b, c = qi_xx[src], qi_xy[src], qi_yy[src]
            size = 2 * hs + 1
            n = np.int64(0)
            x_first, x_last = max(0, cx[src] - hs), min(w - 1, cx[src] + hs)  # image columns of the stamp
            for j in range(size):
                y = cy[src] - hs + j
                if y < 0 or y >= h:
                    continue
                dy = (j - hs) - fy[src]
                # chord of a dx^2 + 2 b dy dx + c dy^2 <= 1 (dx = column offset - fx): the exact test runs
                # within 2 columns of its ends, the columns between are inside
                disc = (b * dy) ** 2 - a * (c * dy * dy - 1.0)
                mid = -b * dy / a + fx[src]
                hw = np.sqrt(disc) / a if disc > 0 else 0.0
                lo = max(cx[src] + int(np.floor(mid - hw)) - 1, x_first)
                hi = min(cx[src] + int(np.ceil(mid + hw)) + 1, x_last)
                lo_in = max(cx[src] + int(np.ceil(mid - hw)) + 2, lo)
                hi_in = min(cx[src] + int(np.floor(mid + hw)) - 2, hi)
                if hi_in < lo_in:
                    lo_in, hi_in = hi + 1, hi
                for part in range(2):  # the two ends, tested
                    for x in range(lo, lo_in) if part == 0 else range(max(hi_in + 1, lo), hi + 1):
                        dx = (x - cx[src]) - fx[src]
                        vals[n] = plane[y, x]
                        n += (valid[y, x] != 0 and (mask[y, x] & bits) == 0
                              and a * dx * dx + 2 * b * dx * dy + c * dy * dy <= 1.0)
                for x in range(lo_in, hi_in + 1):  # the columns between: inside
                    vals[n] = plane[y, x]
                    n += valid[y, x] != 0 and (mask[y, x] & bits) == 0
            if n:
                out[src] = median32(vals, n, keys, tmp, hist)
    return out


# -- clipped statistics of a whole image ----------------------------------------------------------

N_CHUNKS = 256  # fixed split of the pixels for counts and compaction (results do not depend on it)
N_DIGIT = 65536


@njit(cache=True, nogil=True)
def _sortable(u, sign, ones):
    """Unsigned key ordered as the float whose bits are ``u`` (positive: set the sign; negative: flip all)."""
    return np.uint64(u ^ ones) if (u & sign) != 0 else np.uint64(u | sign)


@njit(cache=True, parallel=True, nogil=True)
def _digit_counts(bits, sign, ones, exp_mask, shift, prefixes, lut, top, parts):
    """Histograms (len(prefixes), 65536) of key digit ``shift`` of the finite values, one per key prefix.

    ``bits``: the float sample viewed as unsigned integers. A value counts for prefix p when its key's
    bits above the digit equal prefixes[p] (every finite value when ``top``); ``lut`` (65536,) maps
    16-bit prefixes to p (-1: none), or is empty for longer prefixes. One histogram per part
    (``parts``: the thread count), merged by integer sums: the counts do not depend on it.
    """
    n = bits.size
    n_pre = prefixes.size
    counts = np.zeros((parts, n_pre, N_DIGIT), np.int64)
    above = shift + np.uint64(16)
    short = lut.size > 0
    for c in prange(parts):
        for i in range(c * n // parts, (c + 1) * n // parts):
            u = bits[i]
            if (u & exp_mask) == exp_mask:  # inf or NaN
                continue
            k = _sortable(u, sign, ones)
            d = np.int64((k >> shift) & np.uint64(0xFFFF))
            if top:
                counts[c, 0, d] += 1
            elif short:
                p = lut[np.int64(k >> above)]
                if p >= 0:
                    counts[c, p, d] += 1
            else:
                kp = k >> above
                for p in range(n_pre):
                    if kp == prefixes[p]:
                        counts[c, p, d] += 1
                        break
    out = counts[0].copy()
    for c in range(1, parts):
        out += counts[c]
    return out


class _Keys:
    """The float sample as sortable unsigned keys (float32: 2 digits of 16 bits, float64: 4)."""

    def __init__(self, values: np.ndarray):
        nbits = values.dtype.itemsize * 8
        self.dtype = values.dtype
        self.utype = np.uint32 if nbits == 32 else np.uint64
        self.bits = values.reshape(-1).view(self.utype)
        self.sign = self.utype(1 << (nbits - 1))
        self.ones = self.utype((1 << nbits) - 1)
        self.exp_mask = self.utype(0x7F800000 if nbits == 32 else 0x7FF0000000000000)
        self.nbits = nbits

    def counts(self, shift: int, prefixes=None) -> np.ndarray:
        top = prefixes is None
        pre = np.zeros(1, np.uint64) if top else np.asarray(prefixes, np.uint64)
        lut = np.zeros(0, np.int64)
        if not top and shift + 32 == self.nbits:  # the prefix is the top digit
            lut = np.full(N_DIGIT, -1, np.int64)
            lut[pre.astype(np.int64)] = np.arange(pre.size)
        return _digit_counts(self.bits, self.sign, self.ones, self.exp_mask, np.uint64(shift), pre, lut, top,
                             get_num_threads())

    def select(self, top_counts: np.ndarray, ranks) -> list:
        """Value of each rank in the sorted finite values (ranks < their count), as float64."""
        shift = self.nbits - 16
        counts, where = top_counts[None], [0] * len(ranks)
        prefix, residual = [0] * len(ranks), [int(r) for r in ranks]
        while True:
            for t, r in enumerate(residual):  # the digit holding each rank, and its rank among that digit's
                cum = np.cumsum(counts[where[t]])
                d = int(np.searchsorted(cum, r, side="right"))
                residual[t] = r - (int(cum[d - 1]) if d else 0)
                prefix[t] = (prefix[t] << 16) | d
            if shift == 0:
                break
            shift -= 16
            distinct = sorted(set(prefix))
            where = [distinct.index(p) for p in prefix]
            counts = self.counts(shift, distinct)
        keys = np.array(prefix, np.uint64)
        sign = np.uint64(self.sign)
        raw = np.where((keys & sign) == 0, ~keys, keys ^ sign).astype(self.utype)
        return raw.view(self.dtype).astype(np.float64).tolist()


@njit(cache=True, parallel=True, nogil=True)
def _clip_compact(values, centre, half, out):
    """Copy the finite values with |v - centre| <= half to out[:m], in order; returns m."""
    n = values.size
    counts = np.zeros(N_CHUNKS + 1, np.int64)
    for c in prange(N_CHUNKS):
        m = 0
        for i in range(c * n // N_CHUNKS, (c + 1) * n // N_CHUNKS):
            x = values[i]
            if np.isfinite(x) and abs(np.float64(x) - centre) <= half:
                m += 1
        counts[c + 1] = m
    for c in range(N_CHUNKS):
        counts[c + 1] += counts[c]
    for c in prange(N_CHUNKS):
        k = counts[c]
        for i in range(c * n // N_CHUNKS, (c + 1) * n // N_CHUNKS):
            x = values[i]
            if np.isfinite(x) and abs(np.float64(x) - centre) <= half:
                out[k] = x
                k += 1
    return counts[N_CHUNKS]


@njit(cache=True, nogil=True)
def _term(a, i, mean, squared):
    x = np.float64(a[i])
    if squared:
        x -= mean
        return x * x
    return x


@njit(cache=True, nogil=True)
def _pairwise_block(a, lo, n, mean, squared):
    """A leaf of numpy's pairwise sum (n <= 128): 8 accumulators, then the remainder in order."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += _term(a, i, mean, squared)
        return res
    r0, r1, r2, r3 = _term(a, lo, mean, squared), _term(a, lo + 1, mean, squared), \
        _term(a, lo + 2, mean, squared), _term(a, lo + 3, mean, squared)
    r4, r5, r6, r7 = _term(a, lo + 4, mean, squared), _term(a, lo + 5, mean, squared), \
        _term(a, lo + 6, mean, squared), _term(a, lo + 7, mean, squared)
    end = lo + n - n % 8
    i = lo + 8
    while i < end:
        r0 += _term(a, i, mean, squared)
        r1 += _term(a, i + 1, mean, squared)
        r2 += _term(a, i + 2, mean, squared)
        r3 += _term(a, i + 3, mean, squared)
        r4 += _term(a, i + 4, mean, squared)
        r5 += _term(a, i + 5, mean, squared)
        r6 += _term(a, i + 6, mean, squared)
        r7 += _term(a, i + 7, mean, squared)
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < lo + n:
        res += _term(a, i, mean, squared)
        i += 1
    return res


@njit(cache=True, nogil=True)
def _pairwise(a, lo, n, mean, squared):
    """numpy's pairwise sum (pairwise_sum_DOUBLE) of a[lo:lo+n] as float64, or of (a - mean)^2 when
    ``squared``: halves (rounded down to a multiple of 8) summed recursively down to blocks of <= 128.
    Evaluated with an explicit stack (numba's cache does not hold recursive functions safely)."""
    if n <= 128:
        return _pairwise_block(a, lo, n, mean, squared)
    s_lo = np.empty(128, np.int64)
    s_n = np.empty(128, np.int64)
    s_phase = np.zeros(128, np.int64)
    vals = np.empty(128)
    top, v = 0, 0
    s_lo[0], s_n[0] = lo, n
    while top >= 0:
        l, m = s_lo[top], s_n[top]
        if m <= 128:
            vals[v] = _pairwise_block(a, l, m, mean, squared)
            v += 1
            top -= 1
            continue
        n2 = m // 2
        n2 -= n2 % 8
        phase = s_phase[top]
        if phase == 2:  # both halves done: left + right
            vals[v - 2] = vals[v - 2] + vals[v - 1]
            v -= 1
            top -= 1
            continue
        s_phase[top] = phase + 1
        top += 1
        s_phase[top] = 0
        if phase == 0:
            s_lo[top], s_n[top] = l, n2
        else:
            s_lo[top], s_n[top] = l + n2, m - n2
    return vals[0]


@njit(cache=True, parallel=True, nogil=True)
def pairwise_sum(a, n, mean, squared):
    """_pairwise over a[:n], its top 5 levels of subtrees summed in parallel (the same tree, the same bits)."""
    depth = 5
    leaves = 1 << depth
    if n < leaves * 512:
        return _pairwise(a, np.int64(0), n, mean, squared)  # not 0: see _first_at_least's call
    start = np.zeros(leaves, np.int64)
    length = np.zeros(leaves, np.int64)
    length[0] = n
    for level in range(depth):
        width = 1 << level
        stride = leaves // width
        for k in range(width - 1, -1, -1):
            s, m = start[k * stride], length[k * stride]
            n2 = m // 2
            n2 -= n2 % 8
            start[k * stride], length[k * stride] = s, n2
            start[k * stride + stride // 2], length[k * stride + stride // 2] = s + n2, m - n2
    sums = np.empty(leaves)
    for k in prange(leaves):
        sums[k] = _pairwise(a, start[k], length[k], mean, squared)
    width = leaves
    while width > 1:
        width //= 2
        for k in range(width):
            sums[k] = sums[2 * k] + sums[2 * k + 1]
    return sums[0]


def clipped_stats_flat(values: np.ndarray, *, n_sigma: float = 3.0, n_iter: int = 3) -> tuple[float, float]:
    """Clipped (mean, std) of a large float32/float64 sample, equal to the numpy recipe
    (np.quantile, then ``kept.mean()`` / ``kept.std(ddof=1)`` of the kept values) bit for bit."""
    values = np.ascontiguousarray(values).reshape(-1)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    keys = _Keys(values)
    top = keys.counts(keys.nbits - 16)
    n = int(top.sum())
    if n < 2:
        return float("nan"), float("nan")
    quant, ranks = [], []
    for q in (0.25, 0.5, 0.75):  # numpy's 'linear' method: virtual index (n - 1) q, neighbours floor and +1
        virtual = (n - 1) * q
        prev = int(np.floor(virtual))
        quant.append((virtual, prev))
        ranks += [prev, prev + 1]
    stats = keys.select(top, ranks)
    q = []
    for t, (virtual, prev) in enumerate(quant):
        a, b = np.float64(stats[2 * t]), np.float64(stats[2 * t + 1])
        gamma = np.float64(virtual - prev)
        diff = b - a
        q.append(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)  # numpy's _lerp
    q25, q50, q75 = q
    centre, half = q50, n_sigma * IQR_TO_SIGMA * (q75 - q25)
    mean = std = float("nan")
    kept = np.empty(n, values.dtype)
    for _ in range(n_iter):
        m = int(_clip_compact(values, np.float64(centre), np.float64(half), kept))
        if m < 2:
            break
        mean = float(np.float64(pairwise_sum(kept, m, 0.0, False)) / m)
        std = float(np.sqrt(np.float64(pairwise_sum(kept, m, mean, True)) / (m - 1)))
        centre, half = mean, n_sigma * std
    return mean, std


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # as the memory-mapped planes the pipeline passes
    return a


def _warm_flat():
    """The noise replacement's clipped statistics of the (read-only) image."""
    clipped_stats_flat(_frozen(np.linspace(-1, 1, 64, dtype=np.float32)))


def _warm_annulus():
    from forcedphot.kernels.pixels import no_footprints

    one_i, one_f = np.full(1, 8, np.int64), np.zeros(1)
    annulus_clipped_stats(_frozen(np.zeros((16, 16), np.float32)), np.ones((16, 16), np.uint8),
                          _frozen(np.zeros((16, 16), np.int32)), np.int32(0), no_footprints(1), one_i, one_i, one_f,
                          one_f, one_f + 2, one_f + 4, np.ones(1, np.uint8), 3.0, 3)


def _warm_ellipse():
    one_i, one_f = np.full(1, 8, np.int64), np.zeros(1)
    ellipse_median(_frozen(np.ones((16, 16), np.float32)), np.ones((16, 16), np.uint8),
                   _frozen(np.zeros((16, 16), np.int32)), np.int32(0), one_i, one_i, one_f, one_f, one_f + 1, one_f,
                   one_f + 1, np.full(1, 2, np.int64))


# the signatures the pipeline compiles (see forcedphot.compile); clipped_rows and
# median_rows (forcedphot.clipped) are compiled by their first use
WARMUP = [_warm_flat, _warm_annulus, _warm_ellipse]
