"""GAaP kernels: per source, a PSF-Gaussianization kernel K and the flux in pre-seeing Gaussian apertures.

Gaussianization (Rubin's meas_extensions_gaap with ip_diffim's Alard-Lupton basis): the target is
a circular Gaussian T of sigma p (= 1.15 x the PSF's trace radius p0); K is one Gaussian of sigma
sigma_K = max(p0 sqrt(f^2 - 1), 0.7) times the 15 monomials (u/h)^a (v/h)^b, a + b <= 4, on a
(2h+1)^2 box (h = kernel half-size). Each 1-D factor g_a(u) = exp(-u^2 / 2 sigma_K^2) (u/h)^a
is scaled to unit norm, so every basis image is separable: B_ab(u, v) = g_a(u) g_b(v). The
coefficients d minimise sum (T - K (x) P)^2 over the PSF image's K_psf x K_psf box (as Rubin's
fit over the PSF stamps) with sum K = 1 exactly (a Lagrange multiplier; the normal equations solved
by Gaussian elimination with partial pivoting): :func:`fit_kernel`.

Flux: no image is convolved. With w the aperture weight exp(-x^T Q^-1 x / 2) (kept where
x^T Q^-1 x <= MAX_Q) centred on the source, sum_x w (K (x) I) = sum_x W' I with the effective
weight W' = K~ (x) w (K~ the flipped kernel), built per aperture on a stamp: for an axis-aligned Q
(the PSF and circular apertures) w = wx(x) wy(y) on its box and W' = sum_b (g_b~ (x) wy)(y)
sum_a d_ab (g_a~ (x) wx)(x), 1-D convolutions and 5 outer products (:func:`separable_weight`);
for any Q (Optimal), the rows of w convolved with the 5 g_a, then for each b the combination
sum_a d_ab convolved with g_b along columns (:func:`effective_weight`). The flux is sum(W' I) / sum(W' P), P the PSF image at the
source's sub-pixel position: a point source's flux is its flux within the PSF model's box whatever
the Gaussianization's residual (with a perfect K, sum(W' P) = sum(w T) = sqrt(det Q / det W), i.e.
Rubin's scaling 1/2 sqrt(det W / det Q) x 2). Its error is sqrt(sum(W'^2 V)) / sum(W' P), exact
for the real per-pixel variance. Shapes the pixel grid under-samples (Q_xx or Q_yy < 0.25,
det Q < 0.0625) take w as the mean of 4x4 sub-pixel samples.

Each source is measured on its own image (noise replacement: its own heavy footprint over the
noise; :func:`forcedphot.kernels.moments.own_stamp_variance`), alone in per-block scratch with
sums in a fixed order, so results do not depend on the thread count or the chunking.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.footprints import EXCLUDED
from forcedphot.kernels.moments import own_stamp_variance

DEGREE = 4  # monomials of total degree <= 4
N_BASIS = 15
MAX_Q = 20.0  # aperture weight kept where x^T Q^-1 x <= MAX_Q (weight beyond: exp(-10) = 4.5e-5 of it)
BLOCK = 8  # sources per scratch allocation (the unit of the parallel loop)


@njit(cache=True, nogil=True, error_model="numpy")
def basis_1d(sigk, hk, g):
    """g[a, t] = exp(-u^2 / 2 sigk^2) (u / hk)^a for u = t - hk, a = 0..DEGREE, each row scaled to unit norm."""
    for a in range(DEGREE + 1):
        norm = 0.0
        for t in range(2 * hk + 1):
            u = t - hk
            v = math.exp(-0.5 * u * u / (sigk * sigk)) * (u / hk) ** a
            g[a, t] = v
            norm += v * v
        norm = math.sqrt(norm)
        for t in range(2 * hk + 1):
            g[a, t] /= norm


@njit(cache=True, nogil=True)
def basis_index(k):
    """(a, b) of basis image k: total degree n = 0..4, then a = n..0."""
    n = 0
    while k > n:
        k -= n + 1
        n += 1
    return n - k, k


@njit(cache=True, nogil=True, error_model="numpy")
def solve(a, b, n):
    """Solve a[:n, :n] x = b[:n] in place (Gaussian elimination, partial pivoting); False if singular."""
    for c in range(n):
        piv = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[piv, c]):
                piv = r
        if not a[piv, c] != 0.0:
            return False
        if piv != c:
            for j in range(n):
                a[c, j], a[piv, j] = a[piv, j], a[c, j]
            b[c], b[piv] = b[piv], b[c]
        for r in range(c + 1, n):
            m = a[r, c] / a[c, c]
            if m != 0.0:
                for j in range(c, n):
                    a[r, j] -= m * a[c, j]
                b[r] -= m * b[c]
    for c in range(n - 1, -1, -1):
        s = b[c]
        for j in range(c + 1, n):
            s -= a[c, j] * b[j]
        b[c] = s / a[c, c]
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def fit_kernel(psf, p, sigk, hk, g, xa, yk, tgt, kkt, rhs, d):
    """Fit K to the PSF image ``psf`` (centred, odd size K): d[a, b] the coefficients of g_a(u) g_b(v).

    The fit runs over the PSF image's own K x K box (as Rubin's, over the PSF stamps): K (x) P there.
    Scratch: g (5, >= 2hk+1), xa (5, >= K, >= K), yk (15, >= K, >= K), tgt (>= K, >= K), kkt (16, 16),
    rhs (16,). Returns the relative residual ||T - K (x) P|| / ||T|| over the box (inf if the solve
    failed).
    """
    kp = psf.shape[0]
    nt = 2 * hk + 1
    m = kp
    c = (m - 1) // 2
    basis_1d(sigk, hk, g)
    for a in range(DEGREE + 1):  # rows: xa[a, i, j + t - hk] = sum P[i, j] g_a[t], within the box
        for i in range(kp):
            row = xa[a, i]
            for x in range(m):
                row[x] = 0.0
            for j in range(kp):
                v = psf[i, j]
                for t in range(max(0, hk - j), min(nt, kp + hk - j)):
                    row[j + t - hk] += v * g[a, t]
    for k in range(N_BASIS):  # columns: yk[k, i + t - hk] += xa[a, i] g_b[t]
        a, b = basis_index(k)
        img = yk[k]
        for y in range(m):
            for x in range(m):
                img[y, x] = 0.0
        for i in range(kp):
            src = xa[a, i]
            for t in range(max(0, hk - i), min(nt, kp + hk - i)):
                gb = g[b, t]
                dst = img[i + t - hk]
                for x in range(m):
                    dst[x] += gb * src[x]
    tt = 0.0
    for y in range(m):
        for x in range(m):
            r2 = (y - c) ** 2 + (x - c) ** 2
            v = math.exp(-0.5 * r2 / (p * p)) / (2 * math.pi * p * p)
            tgt[y, x] = v
            tt += v * v
    for k in range(N_BASIS):
        s = 0.0
        for y in range(m):
            for x in range(m):
                s += yk[k, y, x] * tgt[y, x]
        rhs[k] = s
        for l in range(k + 1):
            s = 0.0
            for y in range(m):
                for x in range(m):
                    s += yk[k, y, x] * yk[l, y, x]
            kkt[k, l] = s
            kkt[l, k] = s
    gram = np.empty((N_BASIS, N_BASIS))  # kept for the residual (the solve overwrites kkt)
    b0 = np.empty(N_BASIS)
    for k in range(N_BASIS):
        b0[k] = rhs[k]
        for l in range(N_BASIS):
            gram[k, l] = kkt[k, l]
    for k in range(N_BASIS):  # constraint sum K = sum_ab d_ab (sum g_a)(sum g_b) = 1
        a, b = basis_index(k)
        sa = 0.0
        sb = 0.0
        for t in range(nt):
            sa += g[a, t]
            sb += g[b, t]
        kkt[k, N_BASIS] = sa * sb
        kkt[N_BASIS, k] = sa * sb
    kkt[N_BASIS, N_BASIS] = 0.0
    rhs[N_BASIS] = 1.0
    if not solve(kkt, rhs, N_BASIS + 1):
        return np.inf
    r2 = tt
    for k in range(N_BASIS):
        a, b = basis_index(k)
        d[a, b] = rhs[k]
        r2 -= 2 * rhs[k] * b0[k]
        for l in range(N_BASIS):
            r2 += rhs[k] * gram[k, l] * rhs[l]
    for a in range(DEGREE + 1):
        for b in range(DEGREE + 1 - a, DEGREE + 1):
            d[a, b] = 0.0
    return math.sqrt(max(r2, 0.0) / tt)


@njit(cache=True, nogil=True, error_model="numpy")
def aperture_weight(ia, ib, ic, fx, fy, rw, small, sub, w):
    """w[j, i] = exp(-q / 2) at offsets (i - rw - fx, j - rw - fy) (q <= MAX_Q; the mean of sub-pixel samples
    when ``small``)."""
    n = 2 * rw + 1
    ns = sub.size
    for j in range(n):
        dy = j - rw - fy
        for i in range(n):
            dx = i - rw - fx
            if small:
                v = 0.0
                for su in range(ns):
                    for sv in range(ns):
                        ex = dx + sub[su]
                        ey = dy + sub[sv]
                        q = ia * ex * ex + 2 * ib * ex * ey + ic * ey * ey
                        if q <= MAX_Q:
                            v += math.exp(-0.5 * q)
                v /= ns * ns
            else:
                q = ia * dx * dx + 2 * ib * dx * dy + ic * dy * dy
                v = math.exp(-0.5 * q) if q <= MAX_Q else 0.0
            w[j, i] = v


@njit(cache=True, nogil=True, error_model="numpy")
def effective_weight(w, rw, hk, g, d, ta, u, out):
    """out[:2hs+1, :2hs+1] = K~ (x) w (hs = rw + hk): W'(x) = sum_u K(u) w(x + u), K = sum d_ab g_a g_b.

    Scratch ta (5, >= 2rw+1, >= 2hs+1), u (>= 2rw+1, >= 2hs+1).
    """
    n = 2 * rw + 1
    hs = rw + hk
    ns = 2 * hs + 1
    nt = 2 * hk + 1
    for a in range(DEGREE + 1):  # rows: ta[a, j, i + nt - 1 - t] += w[j, i] g_a[t]
        for j in range(n):
            row = ta[a, j]
            for x in range(ns):
                row[x] = 0.0
            for i in range(n):
                v = w[j, i]
                if v != 0.0:
                    for t in range(nt):
                        row[i + nt - 1 - t] += v * g[a, t]
    for y in range(ns):
        for x in range(ns):
            out[y, x] = 0.0
    for b in range(DEGREE + 1):
        for j in range(n):
            urow = u[j]
            for x in range(ns):
                urow[x] = 0.0
            for a in range(DEGREE + 1 - b):
                c = d[a, b]
                trow = ta[a, j]
                for x in range(ns):
                    urow[x] += c * trow[x]
        for j in range(n):  # columns: out[j + nt - 1 - t] += u[j] g_b[t]
            urow = u[j]
            for t in range(nt):
                gb = g[b, t]
                dst = out[j + nt - 1 - t]
                for x in range(ns):
                    dst[x] += gb * urow[x]


@njit(cache=True, nogil=True, error_model="numpy")
def weight_1d(ia, f, rw, small, sub, out):
    """out[i] = exp(-ia (i - rw - f)^2 / 2) for i = 0..2rw (the mean over the sub-pixel samples when ``small``)."""
    ns = sub.size
    for i in range(2 * rw + 1):
        e = i - rw - f
        if small:
            v = 0.0
            for su in range(ns):
                v += math.exp(-0.5 * ia * (e + sub[su]) ** 2)
            out[i] = v / ns
        else:
            out[i] = math.exp(-0.5 * ia * e * e)


@njit(cache=True, nogil=True, error_model="numpy")
def separable_weight(ia, ic, fx, fy, rw, hk, small, sub, g, d, ta, u, out):
    """W' = K~ (x) w for w(x, y) = wx(x) wy(y) (Q^-1 = diag(ia, ic)), on the box |x|, |y| <= rw (no
    elliptical cut: the weight beyond it is < exp(-MAX_Q / 2)) into out[:2hs+1, :2hs+1]:
    W'(x, y) = sum_b (g_b~ (x) wy)(y) sum_a d_ab (g_a~ (x) wx)(x). Scratch ta (5, >= 2hs+1) and
    u (>= 2, >= 2hs+1) hold the 1-D pieces."""
    n = 2 * rw + 1
    hs = rw + hk
    ns = 2 * hs + 1
    nt = 2 * hk + 1
    weight_1d(ia, fx, rw, small, sub, u[0])
    weight_1d(ic, fy, rw, small, sub, u[1])
    cx = ta[0, 0]  # one 1-D convolution along x at a time
    for y in range(ns):
        for x in range(ns):
            out[y, x] = 0.0
    for b in range(DEGREE + 1):
        by = u[2]  # (g_b~ (x) wy)
        for x in range(ns):
            by[x] = 0.0
        for i in range(n):
            v = u[1, i]
            for t in range(nt):
                by[i + nt - 1 - t] += v * g[b, t]
        cb = u[3]  # sum_a d_ab (g_a~ (x) wx)
        for x in range(ns):
            cb[x] = 0.0
        for a in range(DEGREE + 1 - b):
            c = d[a, b]
            for x in range(ns):
                cx[x] = 0.0
            for i in range(n):
                v = u[0, i]
                for t in range(nt):
                    cx[i + nt - 1 - t] += v * g[a, t]
            for x in range(ns):
                cb[x] += c * cx[x]
        for y in range(ns):
            vy = by[y]
            row = out[y]
            for x in range(ns):
                row[x] += vy * cb[x]


@njit(cache=True, nogil=True)
def new_outputs(n, na):
    """flux, err, invalid, excluded, edge, residual of gaap_flux."""
    return (np.full((n, na), np.nan), np.full((n, na), np.nan), np.zeros((n, na), np.uint8),
            np.zeros((n, na), np.uint8), np.zeros(n, np.uint8), np.full(n, np.nan))


@njit(cache=True, nogil=True, error_model="numpy")
def measure_block(t0, t1, args, fp, out):
    """Sources order[t0:t1] of :func:`gaap_flux` (its other arguments ``args``) into ``out``, in this block's own scratch."""
    image, variance, valid, psf, psfs, cx, cy, fx, fy, p, sigk, hk, ia, ib, ic, rw, small, sub, order = args
    flux, err, invalid, excluded, edge, residual = out
    na = rw.shape[1]
    kp = psf.shape[1]
    height, width = image.shape
    hkb = 0
    rwb = 0
    for t in range(t0, t1):
        s = order[t]
        if hk[s] >= 0:
            hkb = max(hkb, hk[s])
            for k in range(na):
                rwb = max(rwb, rw[s, k])
    m = kp
    nw = 2 * rwb + 1
    nsb = 2 * (rwb + hkb) + 1
    g = np.empty((DEGREE + 1, 2 * hkb + 1))
    xa = np.empty((DEGREE + 1, kp, m))
    yk = np.empty((N_BASIS, m, m))
    tgt = np.empty((m, m))
    kkt = np.empty((N_BASIS + 1, N_BASIS + 1))
    rhs = np.empty(N_BASIS + 1)
    d = np.zeros((DEGREE + 1, DEGREE + 1))
    w = np.empty((nw, nw))
    ta = np.empty((DEGREE + 1, nw, nsb))
    u = np.empty((max(nw, 4), nsb))
    wp = np.empty((nsb, nsb))
    img = np.empty((nsb, nsb))
    var = np.empty((nsb, nsb))
    ok = np.empty((nsb, nsb), np.uint8)
    for t in range(t0, t1):
        s = order[t]
        h = hk[s]
        if h < 0:
            continue
        res = fit_kernel(psf[s], p[s], sigk[s], h, g, xa, yk, tgt, kkt, rhs, d)
        residual[s] = res
        if not res < np.inf:
            continue
        hmax = -1
        for k in range(na):
            if rw[s, k] >= 0:
                hmax = max(hmax, rw[s, k] + h)
        if hmax < 0:
            continue
        own_stamp_variance(image, variance, valid, fp, s, cy[s], cx[s], hmax, img, var, ok)
        for k in range(na):
            r = rw[s, k]
            if r < 0:
                continue
            hs = r + h
            if ib[s, k] == 0.0:  # axis-aligned Q: w = wx(x) wy(y) on its box, W' a sum of 5 outer products
                separable_weight(ia[s, k], ic[s, k], fx[s], fy[s], r, h, small[s, k] != 0, sub, g, d, ta, u, wp)
            else:
                aperture_weight(ia[s, k], ib[s, k], ic[s, k], fx[s], fy[s], r, small[s, k] != 0, sub, w)
                effective_weight(w, r, h, g, d, ta, u, wp)
            swt = 0.0  # a point source's response: sum W' P, P the PSF image at the source's position
            hp = kp // 2
            for j in range(max(0, hs - hp), min(2 * hs + 1, hs + hp + 1)):
                for i in range(max(0, hs - hp), min(2 * hs + 1, hs + hp + 1)):
                    swt += wp[j, i] * psfs[s, j - hs + hp, i - hs + hp]
            off = hmax - hs
            sf = sv = sa = sbad = sexc = soff = 0.0
            for j in range(2 * hs + 1):
                y = cy[s] - hs + j
                for i in range(2 * hs + 1):
                    v = wp[j, i]
                    av = abs(v)
                    sf += v * img[j + off, i + off]
                    sv += v * v * var[j + off, i + off]
                    sa += av
                    x = cx[s] - hs + i
                    if not (0 <= x < width and 0 <= y < height):
                        soff += av
                        sbad += av
                    elif not ok[j + off, i + off]:
                        sbad += av
                    elif valid[y, x] == EXCLUDED:
                        sexc += av
            flux[s, k] = sf / swt
            err[s, k] = math.sqrt(sv) / swt
            invalid[s, k] = sbad > 1e-3 * sa
            excluded[s, k] = sexc > 1e-3 * sa
            if soff > 0:
                edge[s] = 1


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def gaap_flux(image, variance, valid, fp, psf, psfs, cx, cy, fx, fy, p, sigk, hk, ia, ib, ic, rw, small, sub, order):
    """GAaP fluxes of every source (rows) in every aperture (columns); see the module docstring.

    psf (N, K, K): each source's PSF image, centred (the fit's); psfs: the same shifted to the source's
    sub-pixel position (the normalisation's); p, sigk (N,): target and kernel-Gaussian sigmas;
    hk (N,): kernel half-size (< 0: not measured); (ia, ib, ic) (N, A): Q^-1 of each aperture;
    rw (N, A): its weight's half-size (< 0: not measured); small (N, A): sub-pixel samples ``sub``.
    Returns flux, err (N, A), invalid and excluded (N, A, uint8: |W'| on invalid or off-coadd pixels,
    or on EXCLUDED pixels of ``valid`` as pixel classes, above 1e-3 of sum |W'|), edge (N, uint8:
    a measured aperture's W' reaches off the coadd), residual (N: ||T - K (x) P|| / ||T||, NaN if not
    fitted, inf if the fit failed).
    """
    n, na = rw.shape
    out = new_outputs(n, na)
    args = (image, variance, valid, psf, psfs, cx, cy, fx, fy, p, sigk, hk, ia, ib, ic, rw, small, sub, order)
    n_blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(n_blocks):
        measure_block(blk * BLOCK, min(n, (blk + 1) * BLOCK), args, fp, out)
    return out


def _warm_gaap():
    from forcedphot.kernels.moments import _warm_planes

    image, variance, valid, fp = _warm_planes()
    one_i, one_f = np.full(1, 4, np.int64), np.zeros(1)
    psf = np.zeros((1, 5, 5))
    psf[0, 2, 2] = 1.0
    a = np.ones((1, 1))
    gaap_flux(image, variance, valid, fp, psf, psf, one_i, one_i, one_f, one_f, np.ones(1), np.ones(1), np.full(1, 2, np.int64),
              a, a * 0, a, np.full((1, 1), 2, np.int64), np.zeros((1, 1), np.uint8), (np.arange(4) - 1.5) / 4,
              np.zeros(1, np.int64))


# the signatures the pipeline compiles (see forcedphot.compile)
WARMUP = [_warm_gaap]
