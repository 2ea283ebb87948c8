"""ConvolvedFlux kernel: aperture fluxes on the image PSF-matched to Gaussian targets, without convolving it.

Rubin's ConvolvedFlux convolves the image with a normalised, sampled Gaussian kernel K (half-width
r = int(4 sigma_K + 0.5)) and sums an aperture A on the result. As K is symmetric,

    sum_q A(q) (K * I)(q) = sum_p W'(p) I(p),   W' = K * A   (discrete convolution),

so each source's aperture weights are convolved instead (a (2h+1)^2 box grows to (2h+2r+1)^2,
separably: rows then columns), and summed over the original pixels. Independent pixels give the
exact error err^2 = sum W'^2 V. Circular apertures carry the sinc coefficients of
CircularApertureFlux (:mod:`forcedphot.kernels.aperture_sinc`: the disk band-limited at Nyquist,
shifted exactly to the sub-pixel centre, W x W), as Rubin's ConvolvedFlux; the Kron ellipse the
naive pixel-centre rows of :func:`forcedphot.kernels.apertures._ellipse_run` (as kronFlux).

Under noise replacement the sums run over the noise image B and add sum(W' (heavy - B)) over the
source's own valid footprint pixels. Invalid or off-image pixels read as 0 and add |W'| to the
invalid weight; EXCLUDED pixels (a bad mask plane) are summed and add |W'| to the excluded weight
when their centre lies within R + 0.5 + r of the source's (the convolved aperture's reach; the sinc
coefficients ring beyond it at a few per cent; all of the Kron ellipse's box counts).
Every source is measured on its own, summing in a fixed order: results do not depend on the thread
count or on which other sources are in the call.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.aperture_sinc import sinc_tables
from forcedphot.kernels.apertures import BLOCK, _ellipse_run, _own_deltas, _rotations, read_only, spatial_order
from forcedphot.kernels.footprints import EXCLUDED
from forcedphot.kernels.pixels import no_footprints


@njit(cache=True, nogil=True, error_model="numpy")
def _sinc_weights(fx, fy, wd, dq, tc, ts, ca, sa, ax, tt, out):
    """The sinc coefficients C = Ay D' Ax^T of one radius shifted by (fx, fy), into out[:wd, :wd] (element
    [wd // 2, wd // 2] is the nearest pixel), as :func:`forcedphot.kernels.apertures.sinc_coefficient_images`
    makes them: Ax[b, x] = cos(2 pi b (x - h - fx) / W) by angle addition on the tables tc, ts."""
    nf = wd // 2 + 1
    _rotations(fx, wd, nf, ca, sa)
    for b in range(nf):
        for x in range(wd):
            ax[b, x] = tc[b, x] * ca[b] + ts[b, x] * sa[b]
    for a in range(nf):  # tt = D' Ax^T
        for x in range(wd):
            tt[a, x] = 0.0
        for b in range(nf):
            d = dq[a, b]
            for x in range(wd):
                tt[a, x] += d * ax[b, x]
    _rotations(fy, wd, nf, ca, sa)
    for y in range(wd):  # C = Ay tt, Ay[y, a] = tc[a, y] ca[a] + ts[a, y] sa[a]
        for x in range(wd):
            out[y, x] = 0.0
        for a in range(nf):
            f = tc[a, y] * ca[a] + ts[a, y] * sa[a]
            for x in range(wd):
                out[y, x] += f * tt[a, x]


@njit(cache=True, nogil=True, error_model="numpy")
def _ellipse_weights(xl, yl, cx, cy, a, b, c, h, out):
    """1 on the pixel centres with a dx^2 + 2 b dx dy + c dy^2 <= 1 (kronFlux's rows), 0 elsewhere."""
    for j in range(2 * h + 1):
        for i in range(2 * h + 1):
            out[j, i] = 0.0
        lo, hi = _ellipse_run(xl, yl, a, b, c, cy - h + j)
        for x in range(max(lo, cx - h), min(hi, cx + h + 1)):
            out[j, x - cx + h] = 1.0


@njit(cache=True, nogil=True)
def padded(n):
    """n rounded up to a multiple of 8 (a 512-bit vector of float64): the row length :func:`_convolve` runs."""
    return (n + 7) // 8 * 8


@njit(cache=True, nogil=True, error_model="numpy")
def _convolve(a, h, taps, r, abuf, tbuf, obuf):
    """taps (x) taps * a[:2h+1, :2h+1] (zero outside): a (2(h+r)+1, p) view of ``obuf`` whose first 2(h+r)+1
    columns are the convolution (p = :func:`padded` width; the other columns hold zeros).

    Rows then columns, each pass as 2r+1 long contiguous multiply-adds (vectorised) over the whole
    block laid out with row stride p: the rows, zero-padded to p, are one flat array, so a tap's
    shift by k columns is a shift by k of the flat array (what passes a row's end adds zeros to the
    next one) and a shift by k rows one by k p. The order is fixed: each element sums its row taps by
    ascending k, then its column terms by ascending row of the row pass. ``abuf``: >= (2h+1) p,
    ``tbuf``: >= (2h+2) p, ``obuf``: >= (2(h+r)+1) p elements."""
    n, m = 2 * h + 1, 2 * (h + r) + 1
    p = padded(m)
    nn = n * p
    for j in range(n):
        for i in range(n):
            abuf[j * p + i] = a[j, i]
        for i in range(n, p):
            abuf[j * p + i] = 0.0
    for i in range(nn + p):
        tbuf[i] = 0.0
    for k in range(2 * r + 1):
        c = taps[k]
        dst = tbuf[k:k + nn]
        for i in range(nn):
            dst[i] += c * abuf[i]
    for i in range(m * p):
        obuf[i] = 0.0
    for k in range(2 * r, -1, -1):  # output row j: rows j - k of the row pass, ascending
        c = taps[k]
        dst = obuf[k * p:k * p + nn]
        for i in range(nn):
            dst[i] += c * tbuf[i]
    return obuf[:m * p].reshape((m, p))


@njit(cache=True, nogil=True, error_model="numpy")
def _plain_box(image, variance, valid, cx, cy, hb):
    """True if the box of half-size hb around (cx, cy) lies on the image and holds only plain valid pixels
    (class 1: neither invalid nor EXCLUDED) with finite values and variances: :func:`_weighted_sums_plain` applies."""
    height, width = image.shape
    if cy - hb < 0 or cx - hb < 0 or cy + hb >= height or cx + hb >= width:
        return False
    for y in range(cy - hb, cy + hb + 1):
        for x in range(cx - hb, cx + hb + 1):
            if valid[y, x] != 1 or not (math.isfinite(image[y, x]) and math.isfinite(variance[y, x])):
                return False
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _weighted_sums_plain(image, variance, cx, cy, w, hh, fcol, vcol, xs, ys, ds, nd):
    """:func:`_weighted_sums` where every pixel of the box is plain valid (:func:`_plain_box`): no branches.
    Each column sums its rows in turn (element-wise over a row: vectorised) into ``fcol, vcol``
    (>= 2hh+1 elements), then the columns are added in turn: a fixed order."""
    n = 2 * hh + 1
    for i in range(n):
        fcol[i] = 0.0
        vcol[i] = 0.0
    for j in range(n):
        img = image[cy - hh + j, cx - hh:cx + hh + 1]
        vr = variance[cy - hh + j, cx - hh:cx + hh + 1]
        wr = w[j, :n]
        for i in range(n):
            a = wr[i]
            fcol[i] += a * img[i]
            vcol[i] += a * a * vr[i]
    f = v = 0.0
    for i in range(n):
        f += fcol[i]
        v += vcol[i]
    for p in range(nd):  # the source's own heavy values over the noise
        j, i = ys[p] - cy + hh, xs[p] - cx + hh
        if 0 <= j <= 2 * hh and 0 <= i <= 2 * hh:
            f += w[j, i] * ds[p]
    return f, v, 0.0, 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _weighted_sums(image, variance, valid, cx, cy, fx, fy, w, hh, reach2, xs, ys, ds, nd):
    """(flux, variance, invalid weight, excluded weight) of the weights w[:2hh+1, :2hh+1] centred on (cx, cy);
    excluded pixels count with centres within sqrt(reach2) of (cx + fx, cy + fy)."""
    height, width = image.shape
    f = v = bad = exc = 0.0
    for j in range(2 * hh + 1):
        y = cy - hh + j
        for i in range(2 * hh + 1):
            wt = w[j, i]
            if wt == 0.0:
                continue
            x = cx - hh + i
            cls = valid[y, x] if (0 <= y < height and 0 <= x < width) else 0
            if cls:
                f += wt * image[y, x]
                v += wt * wt * variance[y, x]
                if cls == EXCLUDED and (i - hh - fx) ** 2 + (j - hh - fy) ** 2 <= reach2:
                    exc += abs(wt)
            else:
                bad += abs(wt)
    for p in range(nd):  # the source's own heavy values over the noise
        j, i = ys[p] - cy + hh, xs[p] - cx + hh
        if 0 <= j <= 2 * hh and 0 <= i <= 2 * hh:
            f += w[j, i] * ds[p]
    return f, v, bad, exc


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def convolved_kernel(image, variance, valid, fp, cx, cy, fx, fy, xl, yl, radii, widths, dq, tc, ts, qa, qb, qc, khalf,
                     sigma, todo, order):
    """Fluxes of each source in the sinc circles ``radii`` and its Kron ellipse, on its image convolved
    with each target's Gaussian of sigma ``sigma[s, t]`` (<= 0: unconvolved).

    ``widths, dq, tc, ts``: the radii's sinc tables (:func:`forcedphot.kernels.aperture_sinc.sinc_tables`).
    ``khalf[s]`` (< 0: no Kron aperture) is the half-size of the box holding the ellipse
    qa dx^2 + 2 qb dx dy + qc dy^2 <= 1. Returns flux, variance, invalid and excluded weight, each
    (N, T, len(radii) + 1), the Kron aperture last; sources with ``todo`` 0 get NaN.
    """
    n = cx.size
    nt = sigma.shape[1]
    nr = radii.size
    na = nr + 1
    flux = np.full((n, nt, na), np.nan)
    var = np.full((n, nt, na), np.nan)
    bad = np.zeros((n, nt, na))
    exc = np.zeros((n, nt, na))
    wmax = widths.max()
    nfm = wmax // 2 + 1
    no = order.size
    for blk in prange((no + BLOCK - 1) // BLOCK):
        ca = np.empty(nfm)
        sa = np.empty(nfm)
        ax = np.empty((nfm, wmax))
        tt = np.empty((nfm, wmax))
        for q in range(blk * BLOCK, min(no, (blk + 1) * BLOCK)):
            s = order[q]
            if not todo[s]:
                continue
            xs, ys, ds, nd = _own_deltas(fp, s, image, valid)
            rmax = 0
            taps = np.empty((nt, 2 * int(4.0 * max(sigma[s].max(), 0.0) + 0.5) + 1))
            rk = np.zeros(nt, np.int64)
            for t in range(nt):
                if sigma[s, t] > 0:
                    r = int(4.0 * sigma[s, t] + 0.5)
                    rk[t] = r
                    rmax = max(rmax, r)
                    norm = 0.0
                    for k in range(2 * r + 1):
                        taps[t, k] = math.exp(-0.5 * ((k - r) / sigma[s, t]) ** 2)
                        norm += taps[t, k]
                    for k in range(2 * r + 1):
                        taps[t, k] /= norm
            hmax = max(wmax // 2, khalf[s])
            m = 2 * (hmax + rmax) + 1
            a = np.empty((2 * hmax + 1, 2 * hmax + 1))
            pm = padded(m)
            abuf = np.empty((2 * hmax + 1) * pm)
            tbuf = np.empty((2 * hmax + 2) * pm)
            obuf = np.empty(m * pm)
            fcol = np.empty(m)
            vcol = np.empty(m)
            plain = _plain_box(image, variance, valid, cx[s], cy[s], hmax + rmax)
            same = np.full(nt, -1, np.int64)  # an earlier target with the same kernel (e.g. two _deconv): its values
            for t in range(nt):
                for t0 in range(t):
                    if same[t0] < 0 and rk[t0] == rk[t] and sigma[s, t0] == sigma[s, t]:
                        same[t] = t0
                        break
            for ap in range(na):
                if ap < nr:
                    h = widths[ap] // 2
                    _sinc_weights(fx[s], fy[s], widths[ap], dq[ap], tc[ap], ts[ap], ca, sa, ax, tt, a)
                    reach = radii[ap] + 0.5
                elif khalf[s] >= 0:
                    h = khalf[s]
                    _ellipse_weights(xl[s], yl[s], cx[s], cy[s], qa[s], qb[s], qc[s], h, a)
                    reach = np.inf
                else:
                    continue
                for t in range(nt):
                    if same[t] >= 0:
                        t0 = same[t]
                        flux[s, t, ap], var[s, t, ap] = flux[s, t0, ap], var[s, t0, ap]
                        bad[s, t, ap], exc[s, t, ap] = bad[s, t0, ap], exc[s, t0, ap]
                        continue
                    r = rk[t]
                    reach2 = (reach + r) ** 2
                    if r > 0:
                        wk = _convolve(a, h, taps[t], r, abuf, tbuf, obuf)
                    else:
                        wk = a[:2 * h + 1, :2 * h + 1]
                    if plain:
                        res = _weighted_sums_plain(image, variance, cx[s], cy[s], wk, h + r, fcol, vcol, xs, ys, ds, nd)
                    else:
                        res = _weighted_sums(image, variance, valid, cx[s], cy[s], fx[s], fy[s], wk, h + r, reach2,
                                             xs, ys, ds, nd)
                    flux[s, t, ap], var[s, t, ap], bad[s, t, ap], exc[s, t, ap] = res
    return flux, var, bad, exc


def convolved_sums(image, variance, valid, fp, cx, cy, xl, yl, radii, qa, qb, qc, khalf, sigma, todo):
    """:func:`convolved_kernel` on read-only views of the planes, sources in Z order of their pixels.

    ``cx, cy``: each source's nearest (coadd-local) pixel; ``xl, yl``: its local position."""
    image, variance, valid = read_only(image, variance, valid)
    todo = np.ascontiguousarray(todo, np.uint8)
    cx, cy = np.ascontiguousarray(cx, np.int64), np.ascontiguousarray(cy, np.int64)
    xl, yl = np.ascontiguousarray(xl, np.float64), np.ascontiguousarray(yl, np.float64)
    q64 = [np.ascontiguousarray(v, np.float64) for v in (qa, qb, qc)]
    radii = np.asarray(radii, np.float64)
    widths, dq, tc, ts, _, _ = sinc_tables(radii)
    return convolved_kernel(image, variance, valid, fp, cx, cy, xl - cx, yl - cy, xl, yl, radii, widths, dq, tc, ts,
                            *q64, np.ascontiguousarray(khalf, np.int64), np.ascontiguousarray(sigma, np.float64), todo,
                            spatial_order(cx, cy, todo))


def _warm():
    image = np.zeros((16, 16), np.float32)
    one = np.ones(1)
    convolved_sums(image, image + 1, np.ones((16, 16), np.uint8), no_footprints(1), np.full(1, 8), np.full(1, 8),
                   one * 8.2, one * 7.9, np.array([2.0]), one, one * 0, one, np.full(1, 2, np.int64),
                   np.array([[0.0, 0.8]]), np.ones(1, np.uint8))


WARMUP = [_warm]
