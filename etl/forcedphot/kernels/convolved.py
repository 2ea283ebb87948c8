"""ConvolvedFlux kernel: aperture fluxes on the image PSF-matched to Gaussian targets, without convolving it.

Rubin's ConvolvedFlux convolves the image with a normalised, sampled Gaussian kernel K (half-width
r = int(4 sigma_K + 0.5)) and sums an aperture A on the result. As K is symmetric,

    sum_q A(q) (K * I)(q) = sum_p W'(p) I(p),   W' = K * A   (discrete convolution),

so each source's aperture weights are convolved instead (a (2h+1)^2 box grows to (2h+2r+1)^2,
separably: W' = Tcol A Trow with the banded Toeplitz matrices of the taps, as products of small
matrices in 4 x 8 register tiles, each element summed in a fixed order; a sinc circle in its two
factors), and summed over the original pixels. Independent pixels give the
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
from forcedphot.kernels.apertures import (BLOCK, _ellipse_run, _own_deltas, _rotations, _tile_4x8, read_only,
                                         spatial_order)
from forcedphot.kernels.footprints import EXCLUDED
from forcedphot.kernels.pixels import no_footprints


@njit(cache=True, nogil=True, error_model="numpy")
def _sinc_factors(fx, fy, wd, dq, tc, ts, tct, tst, ca, sa, axbuf, ay, tt):
    """The two factors of the sinc coefficients C = Ay D' Ax^T of one radius shifted by (fx, fy)
    (:func:`forcedphot.kernels.apertures.sinc_coefficient_images`; element [wd // 2, wd // 2] of C is the nearest
    pixel): ``ay`` (W, nf) with Ay[y, a] = cos(2 pi a (y - h - fy) / W) by angle addition on the tables, and
    ``tt`` (nf, W) = D' Ax^T (:func:`_band_matmul`; ``dq``: D' with rows zero-padded to a multiple of 4); both
    zero-padded beyond (W, nf) and (nf, W) to their shapes."""
    nf = wd // 2 + 1
    w8 = tt.shape[1]
    ax = axbuf[:nf * w8].reshape((nf, w8))
    _rotations(fx, wd, nf, ca, sa)
    for b in range(nf):
        for x in range(wd):
            ax[b, x] = tc[b, x] * ca[b] + ts[b, x] * sa[b]
        for x in range(wd, w8):
            ax[b, x] = 0.0
    _band_matmul(dq, ax, tt, nf, -1, -1)
    _rotations(fy, wd, nf, ca, sa)
    ay[:, :] = 0.0
    for y in range(wd):
        for a in range(nf):
            ay[y, a] = tct[y, a] * ca[a] + tst[y, a] * sa[a]


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
def padded(n, q=8):
    """n rounded up to a multiple of q (8: a 512-bit vector of float64)."""
    return (n + q - 1) // q * q


@njit(cache=True, nogil=True, error_model="numpy")
def _band_matmul(a, b, c, kd, da, db):
    """c[:M, :N] = a[:M, :kd] @ b[:kd, :N] (M = c.shape[0], a multiple of 4; N = c.shape[1], of 8) in tiles of
    4 x 8 held in vector registers (:func:`forcedphot.kernels.apertures._tile_4x8`: k ascending, one fused
    multiply-add per term, a fixed summation order per element).

    Band structure skips terms that are exactly zero: ``da >= 0``: a[i, k] = 0 unless i - da <= k <= i;
    ``db >= 0``: b[k, j] = 0 unless j - db <= k <= j (< 0: dense). A tile sums k over the union of its
    rows' (columns') bands only; the skipped terms are 0 * finite, which add nothing."""
    mm, nn = c.shape
    for i0 in range(0, mm, 4):
        klo, khi = 0, kd
        if da >= 0:
            klo, khi = max(klo, i0 - da), min(khi, i0 + 4)
        for j0 in range(0, nn, 8):
            k0, k1 = klo, khi
            if db >= 0:
                k0, k1 = max(k0, j0 - db), min(k1, j0 + 8)
            if k1 > k0:
                _tile_4x8(a[:, k0:], b[k0:, :], c, i0, j0, k1 - k0)
            else:
                for i in range(i0, i0 + 4):
                    for j in range(j0, j0 + 8):
                        c[i, j] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _toeplitz(taps, r, n, trow, tcol):
    """The row and column passes of the convolution with ``taps`` (2r+1, symmetric) as banded matrices on a
    (n, n) block: trow (n rows, >= n + 2r columns), trow[k, x] = taps[x - k]; tcol (>= n + 2r rows, n columns),
    tcol[y, k] = taps[y - k] = taps[2r - y + k]; zero elsewhere (and in the padding). Both C-contiguous."""
    tr = trow.ravel()
    tr[:] = 0.0
    w = trow.shape[1]
    for k in range(n):
        tr[k * w + k:k * w + k + 2 * r + 1] = taps[:2 * r + 1]
    tc = tcol.ravel()
    tc[:] = 0.0
    for y in range(tcol.shape[0]):
        k0, k1 = max(0, y - 2 * r), min(n, y + 1)
        if k1 > k0:
            tc[y * n + k0:y * n + k1] = taps[2 * r - y + k0:2 * r - y + k1]


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
def convolved_kernel(image, variance, valid, fp, cx, cy, fx, fy, xl, yl, radii, widths, dq, tc, ts, tct, tst, qa, qb, qc,
                     khalf, sigma, todo, order):
    """Fluxes of each source in the sinc circles ``radii`` and its Kron ellipse, on its image convolved
    with each target's Gaussian of sigma ``sigma[s, t]`` (<= 0: unconvolved).

    ``widths, dq, tc, ts, tct, tst``: the radii's sinc tables (:func:`forcedphot.kernels.aperture_sinc.sinc_tables`).
    ``khalf[s]`` (< 0: no Kron aperture) is the half-size of the box holding the ellipse
    qa dx^2 + 2 qb dx dy + qc dy^2 <= 1. Returns flux, variance, invalid and excluded weight, each
    (N, T, len(radii) + 1), the Kron aperture last; sources with ``todo`` 0 get NaN.

    The convolution K (x) A of an aperture's weights is a product of small matrices (:func:`_band_matmul`)
    with the banded (Toeplitz) matrices of the taps (:func:`_toeplitz`): Tcol A Trow. A sinc circle's
    C = Ay D' Ax^T is convolved in its factors, (Tcol Ay) ((D' Ax^T) Trow) (nf = W // 2 + 1 inner terms),
    the Kron ellipse's 0/1 block as Tcol (A Trow).
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
    dqp = np.zeros((nr, padded(nfm, 4), nfm))  # D' with rows zero-padded for the 4-row tiles
    dqp[:, :nfm, :] = dq[:, :nfm, :nfm]
    no = order.size
    for blk in prange((no + BLOCK - 1) // BLOCK):
        ca = np.empty(nfm)
        sa = np.empty(nfm)
        axbuf = np.empty(nfm * padded(wmax, 8))
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
            nm = 2 * hmax + 1
            m = 2 * (hmax + rmax) + 1
            m4, p8 = padded(m, 4), padded(m, 8)
            trs, tcs = nm * p8, m4 * nm  # per target: its Toeplitz matrices on the largest box (a smaller box's are
            trbuf = np.empty(nt * trs)  # their top-left corners, zero-padded as they must be)
            tcbuf = np.empty(nt * tcs)
            abuf = np.empty(padded(nm, 4) * nm)  # the Kron ellipse's 0/1 block
            ttbuf = np.empty(padded(nfm, 4) * padded(wmax, 8))
            aybuf = np.empty(padded(wmax, 4) * padded(nfm, 8))
            ls = padded(wmax + 2 * rmax, 4) * padded(nfm, 8)  # per target Tcol Ay, kept for the next radius of the
            lbuf = np.empty(nt * ls)  # same width (same Ay)
            rbuf = np.empty(padded(nm, 4) * p8)  # tt Trow (sinc) or A Trow (Kron)
            wbuf = np.empty(m4 * p8)
            fcol = np.empty(m)
            vcol = np.empty(m)
            plain = _plain_box(image, variance, valid, cx[s], cy[s], hmax + rmax)
            same = np.full(nt, -1, np.int64)  # an earlier target with the same kernel (e.g. two _deconv): its values
            for t in range(nt):
                for t0 in range(t):
                    if same[t0] < 0 and rk[t0] == rk[t] and sigma[s, t0] == sigma[s, t]:
                        same[t] = t0
                        break
            for t in range(nt):
                if rk[t] > 0 and same[t] < 0:
                    mt = nm + 2 * rk[t]
                    _toeplitz(taps[t], rk[t], nm, trbuf[t * trs:t * trs + nm * padded(mt, 8)].reshape((nm, padded(mt, 8))),
                              tcbuf[t * tcs:t * tcs + padded(mt, 4) * nm].reshape((padded(mt, 4), nm)))
            for ap in range(na):
                shared = 0 < ap < nr and widths[ap] == widths[ap - 1]  # same tables and shift: same Ay, Tcol Ay
                if ap < nr:
                    wd = widths[ap]
                    h = wd // 2
                    nf = wd // 2 + 1
                    nf4, nf8 = padded(nf, 4), padded(nf, 8)
                    ay = aybuf[:padded(wd, 4) * nf8].reshape((padded(wd, 4), nf8))
                    tt = ttbuf[:nf4 * padded(wd, 8)].reshape((nf4, padded(wd, 8)))
                    _sinc_factors(fx[s], fy[s], wd, dqp[ap], tc[ap], ts[ap], tct[ap], tst[ap], ca, sa, axbuf, ay, tt)
                    reach = radii[ap] + 0.5
                elif khalf[s] >= 0:
                    h = khalf[s]
                    a = abuf[:padded(2 * h + 1, 4) * (2 * h + 1)].reshape((padded(2 * h + 1, 4), 2 * h + 1))
                    a[:, :] = 0.0
                    _ellipse_weights(xl[s], yl[s], cx[s], cy[s], qa[s], qb[s], qc[s], h, a)
                    reach = np.inf
                else:
                    continue
                nb = 2 * h + 1
                for t in range(nt):
                    if same[t] >= 0:
                        t0 = same[t]
                        flux[s, t, ap], var[s, t, ap] = flux[s, t0, ap], var[s, t0, ap]
                        bad[s, t, ap], exc[s, t, ap] = bad[s, t0, ap], exc[s, t0, ap]
                        continue
                    r = rk[t]
                    reach2 = (reach + r) ** 2
                    mb = nb + 2 * r
                    mb4, mb8 = padded(mb, 4), padded(mb, 8)
                    if r > 0:
                        wk = wbuf[:mb4 * mb8].reshape((mb4, mb8))
                        mt = nm + 2 * r
                        trow = trbuf[t * trs:t * trs + nm * padded(mt, 8)].reshape((nm, padded(mt, 8)))[:nb, :mb8]
                        tcol = tcbuf[t * tcs:t * tcs + padded(mt, 4) * nm].reshape((padded(mt, 4), nm))[:mb4, :nb]
                        if ap < nr:
                            left = lbuf[t * ls:t * ls + mb4 * nf8].reshape((mb4, nf8))
                            if not shared:
                                _band_matmul(tcol, ay, left, nb, 2 * r, -1)
                            right = rbuf[:nf4 * mb8].reshape((nf4, mb8))
                            _band_matmul(tt, trow, right, nb, -1, 2 * r)
                            _band_matmul(left, right, wk, nf, -1, -1)
                        else:
                            nb4 = padded(nb, 4)
                            right = rbuf[:nb4 * mb8].reshape((nb4, mb8))
                            _band_matmul(a, trow, right, nb, -1, 2 * r)
                            _band_matmul(tcol, right, wk, nb, 2 * r, -1)
                    elif ap < nr:
                        wk = wbuf[:padded(nb, 4) * padded(nb, 8)].reshape((padded(nb, 4), padded(nb, 8)))
                        _band_matmul(ay, tt, wk, nf, -1, -1)
                    else:
                        wk = a
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
    widths, dq, tc, ts, tct, tst = sinc_tables(radii)
    return convolved_kernel(image, variance, valid, fp, cx, cy, xl - cx, yl - cy, xl, yl, radii, widths, dq, tc, ts,
                            tct, tst,
                            *q64, np.ascontiguousarray(khalf, np.int64), np.ascontiguousarray(sigma, np.float64), todo,
                            spatial_order(cx, cy, todo))


def _warm():
    image = np.zeros((16, 16), np.float32)
    one = np.ones(1)
    convolved_sums(image, image + 1, np.ones((16, 16), np.uint8), no_footprints(1), np.full(1, 8), np.full(1, 8),
                   one * 8.2, one * 7.9, np.array([2.0]), one, one * 0, one, np.full(1, 2, np.int64),
                   np.array([[0.0, 0.8]]), np.ones(1, np.uint8))


WARMUP = [_warm]
