"""GAaP kernels: per source, a PSF-Gaussianization kernel K and the flux in pre-seeing Gaussian apertures.

Gaussianization (Rubin's meas_extensions_gaap with ip_diffim's Alard-Lupton basis): the target is
a circular Gaussian T of sigma p (= 1.15 x the PSF's trace radius p0 at the source); K is one
Gaussian of sigma sigma_K = max(p0c sqrt(f^2 - 1), 0.7) times the 15 monomials (u/h)^a (v/h)^b,
a + b <= 4, on a (2h+1)^2 box (h = kernel half-size), p0c the trace radius at the centre of the
source's PSF grid cell (one basis per cell: Rubin takes the source's own p0). Each 1-D factor
g_a(u) = exp(-u^2 / 2 sigma_K^2) (u/h)^a is scaled to unit norm, so every basis image is
separable: B_ab(u, v) = g_a(u) g_b(v). The coefficients d minimise sum (T - K (x) P)^2 over the
PSF image's K_psf x K_psf box (as Rubin's fit over the PSF stamps) with sum K = 1 exactly (a
Lagrange multiplier; the normal equations solved by Gaussian elimination with partial pivoting),
P the source's own PSF image (bilinear between the cell's four corner nodes, P = sum c_n P_n).
As the basis is the cell's, the normal matrix is exactly sum_nn' c_n c_n' G_nn', G the Gram of the
corner nodes' convolved basis images made once per cell (:func:`cell_grams`), and the right-hand
side tau_b^T P tau_a (T is separable): the per-source fit costs ~10^4 operations, not ~10^6
(:func:`fit_from_gram`).

Flux: no image is convolved. With w the aperture weight exp(-x^T Q^-1 x / 2) (kept where
x^T Q^-1 x <= MAX_Q) centred on the source, sum_x w (K (x) I) = sum_x W' I with the effective
weight W' = K~ (x) w (K~ the flipped kernel), built per aperture on a stamp: for an axis-aligned Q
(the PSF and circular apertures) w = wx(x) wy(y) on its box and W' = sum_b (g_b~ (x) wy)(y)
sum_a d_ab (g_a~ (x) wx)(x), 1-D convolutions and 5 outer products (:func:`separable_pieces`,
:func:`pieces_weight`);
for any Q (Optimal), the rows of w convolved with the 5 g_a, then each convolved with
h_a = sum_b d_ab g_b along columns (:func:`effective_weight`). The 1-D convolutions are gathers over
zero-padded inputs, four taps (or the five a) per pass (:func:`conv_gather`). The flux is sum(W' I) / sum(W' P), P the PSF image at the
source's sub-pixel position: a point source's flux is its flux within the PSF model's box whatever
the Gaussianization's residual (with a perfect K, sum(W' P) = sum(w T) = sqrt(det Q / det W), i.e.
Rubin's scaling 1/2 sqrt(det W / det Q) x 2). Its error is sqrt(sum(W'^2 V)) / sum(W' P), exact
for the real per-pixel variance. Shapes the pixel grid under-samples (Q_xx or Q_yy < 0.25,
det Q < 0.0625) take w as the mean of 4x4 sub-pixel samples.

Each source is measured on its own image (noise replacement: its own heavy footprint over the
noise). Where an aperture's W' box lies inside the coadd on valid, non-EXCLUDED pixels only
(:func:`clean_reach`, the common case) the sums are read straight from the planes, the source's
heavy footprint added as (heavy - plane) on its pixels, kernel taps whose every |g_a| is below
TAP_EPS (1e-16, rows of unit norm) left out, per-column partial sums vectorised
(:func:`separable_sums`, :func:`weight_sums`); elsewhere on the source's own stamp with every tap
and the flag sums (:func:`forcedphot.kernels.moments.own_stamp_variance`, :func:`masked_sums`).
Every source alone in per-block scratch, its PSF images made there, sums in a fixed order: results
do not depend on the thread count or the chunking.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forcedphot.kernels.footprints import EXCLUDED
from forcedphot.kernels.moments import own_stamp_variance, subsampled_gaussian
from forcedphot.kernels.psf import copy_into, interpolate, matmul_rows, node_weights, shift_x, shift_y, trig_table

DEGREE = 4  # monomials of total degree <= 4
N_BASIS = 15
MAX_Q = 20.0  # aperture weight kept where x^T Q^-1 x <= MAX_Q (weight beyond: exp(-10) = 4.5e-5 of it)
BLOCK = 8  # sources per scratch allocation (the unit of the parallel loop)
FMA = {"contract"}  # hot sums: a * b + c fused (one rounding); the order of every sum unchanged
ANCHOR = 16  # Gaussian weights: exp once every ANCHOR values, products in between (gauss_run)
TAP_EPS = 1e-16  # kernel taps with every |g_a(t)| below this (rows of unit norm) are left out where the box is clean


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


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def convolved_basis(psf, hk, g, xa, yk):
    """yk[k] = B_k (x) P over the PSF image's own K x K box (k = 0..14, B_k = g_a(u) g_b(v), g from basis_1d).

    Rows first: xa[a, i, x] = sum_j P[i, j] g_a[x - j + hk] (:func:`conv_gather` over each zero-padded
    row); then columns: yk[k, y] = sum_i g_b[y - i + hk] xa[a, i], four taps per pass over whole rows.
    Scratch xa (5, >= K, >= K); yk (>= 15, >= K, >= K).
    """
    kp = psf.shape[0]
    nt = 2 * hk + 1
    ppad = np.zeros(kp + 2 * hk)
    crev = np.empty(nt)
    for a in range(DEGREE + 1):
        for u in range(nt):
            crev[u] = g[a, nt - 1 - u]
        for i in range(kp):  # xa[a, i, x] = sum_u crev[u] ppad[x + u], ppad[k] = P[i, k - hk]
            for j in range(kp):
                ppad[hk + j] = psf[i, j]
            conv_gather(ppad, crev, nt, kp, xa[a, i, :kp])
    for k in range(N_BASIS):
        a, b = basis_index(k)
        img = yk[k]
        src = xa[a]
        for y in range(kp):  # yk[k, y] = sum_t g_b[t] xa[a, y + hk - t], rows inside the box
            dst = img[y, :kp]
            for x in range(kp):
                dst[x] = 0.0
            t = max(0, y + hk - kp + 1)
            t1 = min(nt, y + hk + 1)
            while t + 4 <= t1:
                c0, c1, c2, c3 = g[b, t], g[b, t + 1], g[b, t + 2], g[b, t + 3]
                r0 = src[y + hk - t, :kp]
                r1 = src[y + hk - t - 1, :kp]
                r2 = src[y + hk - t - 2, :kp]
                r3 = src[y + hk - t - 3, :kp]
                for x in range(kp):
                    dst[x] += c0 * r0[x] + c1 * r1[x] + c2 * r2[x] + c3 * r3[x]
                t += 4
            while t < t1:
                c0 = g[b, t]
                r0 = src[y + hk - t, :kp]
                for x in range(kp):
                    dst[x] += c0 * r0[x]
                t += 1


@njit(cache=True, nogil=True)
def corner_nodes(iy0, ix0, ny, nx):
    """The (row, column) node indices of a cell's four corners, in interpolate()'s order (00, 01, 10, 11)."""
    iy1 = iy0 + 1 if ny > 1 else iy0
    ix1 = ix0 + 1 if nx > 1 else ix0
    return (iy0, ix0), (iy0, ix1), (iy1, ix0), (iy1, ix1)


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def cell_grams(nodes, iy0, ix0, sigk, hk):
    """(C, 60, 60): for each PSF grid cell c (lower nodes iy0[c], ix0[c]), the Gram matrix of its four
    corner nodes' convolved basis images B_k (x) P_n (basis of sigma sigk[c], half-size hk[c]), over the
    PSF box: G[15 n + k, 15 n' + l] = sum_box (B_k (x) P_n)(B_l (x) P_n'). The PSF at a source in the
    cell is sum_n c_n P_n (bilinear weights c_n), so its own Gram is sum_nn' c_n c_n' G[n., n'.] exactly.
    """
    ny, nx, kp, _ = nodes.shape
    nc = iy0.size
    nb = 4 * N_BASIS
    out = np.empty((nc, nb, nb))
    for c in prange(nc):
        h = hk[c]
        g = np.empty((DEGREE + 1, 2 * h + 1))
        xa = np.empty((DEGREE + 1, kp, kp))
        yk = np.empty((N_BASIS, kp, kp))
        npix = kp * kp
        yt = np.empty((npix, nb))  # pixel i of every convolved basis image: row i
        basis_1d(sigk[c], h, g)
        corners = corner_nodes(iy0[c], ix0[c], ny, nx)
        for q in range(4):
            jy, jx = corners[q]
            convolved_basis(nodes[jy, jx], h, g, xa, yk)
            for k in range(N_BASIS):
                for y in range(kp):
                    for x in range(kp):
                        yt[y * kp + x, q * N_BASIS + k] = yk[k, y, x]
        gram_rows(yt, out[c])
    return out


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def gram_rows(yt, gram):
    """gram[k, l] = sum_i yt[i, k] yt[i, l] (pixels i ascending, one FMA each): the lower triangle as rank-1
    updates by pixel (each a vectorised loop over l), mirrored to the upper."""
    npix, nb = yt.shape
    for k in range(nb):
        for l in range(nb):
            gram[k, l] = 0.0
    for i in range(npix):
        r = yt[i]
        for k in range(nb):
            c = r[k]
            gk = gram[k, :k + 1]
            rk = r[:k + 1]
            for l in range(k + 1):
                gk[l] += c * rk[l]
    for k in range(nb):
        for l in range(k):
            gram[l, k] = gram[k, l]


@njit(cache=True, nogil=True, error_model="numpy")
def fit_from_gram(gram, wn, psf, p, sigk, hk, g, t, tau, ptau, kkt, rhs, d, gs, b0):
    """Fit K to the PSF image ``psf`` = sum_n wn[n] P_n (centred, K x K) of a cell whose corner Gram is ``gram``.

    The normal equations of min sum_box (T - K (x) P)^2 with sum K = 1 (a Lagrange multiplier), as a
    fit on the image itself: Gram sum_nn' wn wn' G[n., n'.]; right-hand side <B_ab (x) P, T> =
    tau_b^T P tau_a with T(y, x) = t(y) t(x) separable (tau_a[j] = sum_x g_a[x - j + hk] t(x) over the
    box). d[a, b] the coefficients of g_a(u) g_b(v) (g filled here by basis_1d). Scratch t (>= K),
    tau, ptau (5, >= K), kkt (16, 16), rhs (16,), gs (15, 15), b0 (15,). Returns ||T - K (x) P|| / ||T||
    over the box (inf if the solve failed).
    """
    kp = psf.shape[0]
    nt = 2 * hk + 1
    c = (kp - 1) // 2
    basis_1d(sigk, hk, g)
    s2 = 0.0
    for u in range(kp):
        v = math.exp(-0.5 * (u - c) ** 2 / (p * p)) / (math.sqrt(2 * math.pi) * p)
        t[u] = v
        s2 += v * v
    tt = s2 * s2
    for a in range(DEGREE + 1):
        for j in range(kp):
            s = 0.0
            for x in range(max(0, j - hk), min(kp, j - hk + nt)):
                s += g[a, x - j + hk] * t[x]
            tau[a, j] = s
        for i in range(kp):
            s = 0.0
            for j in range(kp):
                s += psf[i, j] * tau[a, j]
            ptau[a, i] = s
    for k in range(N_BASIS):
        a, b = basis_index(k)
        s = 0.0
        for i in range(kp):
            s += tau[b, i] * ptau[a, i]
        b0[k] = s
        rhs[k] = s
        for l in range(N_BASIS):
            gs[k, l] = 0.0
    for q in range(4):
        for r in range(4):
            wqr = wn[q] * wn[r]
            if wqr != 0.0:
                for k in range(N_BASIS):
                    grow = gram[q * N_BASIS + k]
                    for l in range(N_BASIS):
                        gs[k, l] += wqr * grow[r * N_BASIS + l]
    for k in range(N_BASIS):
        for l in range(N_BASIS):
            kkt[k, l] = gs[k, l]
    for k in range(N_BASIS):  # constraint sum K = sum_ab d_ab (sum g_a)(sum g_b) = 1
        a, b = basis_index(k)
        sa = 0.0
        sb = 0.0
        for u in range(nt):
            sa += g[a, u]
            sb += g[b, u]
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
            r2 += rhs[k] * gs[k, l] * rhs[l]
    for a in range(DEGREE + 1):
        for b in range(DEGREE + 1 - a, DEGREE + 1):
            d[a, b] = 0.0
    return math.sqrt(max(r2, 0.0) / tt)


@njit(cache=True, nogil=True, error_model="numpy")
def gauss_run(c, e0, m, out, i0, step):
    """out[i0 + step k] = exp(-c (e0 + k)^2 / 2) for k = 0..m-1 (e0 >= -0.5: the values fall with k), by the
    recurrence G_k+1 = G_k R_k, R_k+1 = R_k exp(-c) (R_k = exp(-c (e0 + k + 1/2))), both re-anchored with
    exp every ANCHOR points: 2 exp per ANCHOR values instead of one each, relative error < ANCHOR^2 ulp."""
    ec = math.exp(-c)
    g = 0.0
    r = 0.0
    for k in range(m):
        if k % ANCHOR == 0:
            e = e0 + k
            g = math.exp(-0.5 * c * e * e)
            r = math.exp(-c * (e + 0.5))
        else:
            g *= r
            r *= ec
        out[i0 + step * k] = g


@njit(cache=True, nogil=True, error_model="numpy")
def aperture_weight(ia, ib, ic, fx, fy, rw, small, sub, w):
    """w[j, i] = exp(-q / 2) at offsets (i - rw - fx, j - rw - fy) (q <= MAX_Q; the mean of sub-pixel samples
    when ``small``). Each row is exp(-(ic - ib^2/ia) dy^2 / 2) exp(-ia (dx + ib dy / ia)^2 / 2), the second
    factor by :func:`gauss_run` outwards from the pixel nearest its peak over the row's kept span (the
    pixels with q <= MAX_Q, q as written above)."""
    n = 2 * rw + 1
    for j in range(n):
        dy = j - rw - fy
        if small:
            for i in range(n):
                w[j, i] = subsampled_gaussian(i - rw - fx, dy, ia, ib, ic, sub, MAX_Q)
            continue
        lo = n
        hi = -1
        for i in range(n):
            dx = i - rw - fx
            q = ia * dx * dx + 2 * ib * dx * dy + ic * dy * dy
            if q <= MAX_Q:
                lo = min(lo, i)
                hi = i
            w[j, i] = 0.0
        if hi < lo:
            continue
        sh = ib * dy / ia  # the row's peak is at dx = -sh
        row = w[j]
        ip = min(max(int(math.floor(rw + fx - sh + 0.5)), lo), hi)
        gauss_run(ia, ip - rw - fx + sh, hi - ip + 1, row, ip, 1)
        gauss_run(ia, -(ip - 1 - rw - fx + sh), ip - lo, row, ip - 1, -1)
        amp = math.exp(-0.5 * (ic - ib * ib / ia) * dy * dy)
        for i in range(lo, hi + 1):
            dx = i - rw - fx
            q = ia * dx * dx + 2 * ib * dx * dy + ic * dy * dy
            row[i] = amp * row[i] if q <= MAX_Q else 0.0


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def effective_weight(w, rw, hk, g, d, taf, uf, outf, span):
    """K~ (x) w (hs = rw + hk) as a (2hs+1, 2hs+1) view of outf: W'(x) = sum_u K(u) w(x + u), K = sum d_ab g_a g_b.

    Rows: ta_a = g_a~ (x) w along rows, each row of w only over its nonzero span (the elliptical
    cut), as gathers over the zero-padded row, four taps per pass (one load and store of the
    output per four multiply-adds). Columns: with the column kernels h_a = sum_b d_ab g_b,
    W' = sum_a h_a~ (x) ta_a; the pieces and W' have rows of the same stride (2hs+1), so each
    column tap is one contiguous loop over all rows, the five a at once. span[0, y], span[1, y]:
    the columns [first, last + 1) of output row y that can be nonzero (none: 0, 0). Scratch taf
    (>= 5 (2rw+1)(2hs+1)), uf (unused), outf (>= (2hs+1)^2); span (2, >= 2hs+1) int64.
    """
    n = 2 * rw + 1
    hs = rw + hk
    ns = 2 * hs + 1
    nt = 2 * hk + 1
    npx = n * ns
    out = outf[:ns * ns]
    ta = taf[:(DEGREE + 1) * npx]
    wpad = np.zeros(n + 2 * (nt - 1))
    hc = np.zeros((DEGREE + 1, nt))
    for x in range(ns * ns):
        out[x] = 0.0
    for x in range((DEGREE + 1) * npx):
        ta[x] = 0.0
    for y in range(ns):
        span[0, y] = ns
        span[1, y] = 0
    for j in range(n):
        lo = 0
        while lo < n and w[j, lo] == 0.0:
            lo += 1
        hi = n - 1
        while hi >= lo and w[j, hi] == 0.0:
            hi -= 1
        if hi < lo:
            continue
        for y in range(j, j + nt):  # output rows j..j + nt - 1, columns lo..hi + nt - 1
            span[0, y] = min(span[0, y], lo)
            span[1, y] = max(span[1, y], hi + nt)
        m = hi - lo + 1
        mo = m + nt - 1
        for i in range(m):  # wpad[k] = w[j, lo + k - (nt - 1)], zero outside the span
            wpad[nt - 1 + i] = w[j, lo + i]
        for a in range(DEGREE + 1):  # ta[a, j, lo + o] = sum_t g_a[t] wpad[o + t] (each written once)
            base = a * npx + j * ns + lo
            conv_gather(wpad, g[a], nt, mo, ta[base:base + mo])
        for i in range(m):
            wpad[nt - 1 + i] = 0.0
    for a in range(DEGREE + 1):
        for t in range(nt):
            s = 0.0
            for b in range(DEGREE + 1 - a):
                s += d[a, b] * g[b, t]
            hc[a, t] = s
    t0 = ta[0:npx]
    t1 = ta[npx:2 * npx]
    t2 = ta[2 * npx:3 * npx]
    t3 = ta[3 * npx:4 * npx]
    t4 = ta[4 * npx:5 * npx]
    for t in range(nt):  # columns: out[j + nt - 1 - t] += sum_a h_a[t] ta_a[j], all rows j at once
        h0, h1, h2, h3, h4 = hc[0, t], hc[1, t], hc[2, t], hc[3, t], hc[4, t]
        dst = out[(nt - 1 - t) * ns:(nt - 1 - t) * ns + npx]
        for x in range(npx):
            dst[x] += h0 * t0[x] + h1 * t1[x] + h2 * t2[x] + h3 * t3[x] + h4 * t4[x]
    for y in range(ns):
        if span[1, y] <= span[0, y]:
            span[0, y] = 0
            span[1, y] = 0
    return out.reshape((ns, ns))


@njit(cache=True, nogil=True, error_model="numpy")
def weight_1d(ia, f, rw, small, sub, out):
    """out[i] = exp(-ia (i - rw - f)^2 / 2) for i = 0..2rw (the mean over the sub-pixel samples when ``small``;
    else by :func:`gauss_run` outwards from i = rw)."""
    ns = sub.size
    if small:
        for i in range(2 * rw + 1):
            e = i - rw - f
            v = 0.0
            for su in range(ns):
                v += math.exp(-0.5 * ia * (e + sub[su]) ** 2)
            out[i] = v / ns
        return
    gauss_run(ia, -f, rw + 1, out, rw, 1)
    gauss_run(ia, f + 1, rw, out, rw - 1, -1)


@njit(cache=True, nogil=True)
def new_outputs(n, na):
    """flux, err, invalid, excluded, edge, residual of gaap_flux."""
    return (np.full((n, na), np.nan), np.full((n, na), np.nan), np.zeros((n, na), np.uint8),
            np.zeros((n, na), np.uint8), np.zeros(n, np.uint8), np.full(n, np.nan))


@njit(cache=True, nogil=True)
def clean_reach(valid, cy, cx, half):
    """Largest h <= half with the box |dx|, |dy| <= h around (cx, cy) inside the plane and only valid == 1
    (valid, not EXCLUDED) pixels in it; -1 if none. Rows are visited outwards from the centre and each
    row's bad pixels only looked for when an OR over the row (vectorised, uint8) finds one."""
    height, width = valid.shape
    best = min(half, cx, cy, width - 1 - cx, height - 1 - cy)
    if best < 0:
        return -1
    one = np.uint8(1)
    for dist in range(0, half + 1):
        if dist > best:
            break
        for sgn in range(2):
            if dist == 0 and sgn == 1:
                continue
            y = cy + dist if sgn == 0 else cy - dist
            row = valid[y, cx - best:cx + best + 1]
            mid = row.size // 2
            acc = np.uint8(0)
            for x in range(row.size):
                acc |= row[x] ^ one
            if acc != 0:
                for x in range(row.size):
                    if row[x] != 1:
                        best = min(best, max(dist, abs(x - mid)) - 1)
                if best < 0:
                    return -1
    return best


@njit(cache=True, nogil=True)
def shifted_psf(pc, dx, dy, table, c, sx, sy, q, out):
    """out = Sy pc Sx^T, the centred PSF image shifted by (dx, dy) as kernels.psf.psf_image does (same sums)."""
    k = pc.shape[0]
    if dx != 0.0:
        shift_x(dx, k, table, c, sx)
        for i in range(0, k, 2):
            matmul_rows(pc, sx, q, i, min(i + 2, k))
    else:
        copy_into(pc, q)
    if dy != 0.0:
        shift_y(dy, k, table, c, sy)
        for i in range(0, k, 2):
            matmul_rows(sy, q, out, i, min(i + 2, k))
    else:
        copy_into(q, out)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def conv_gather(wpad, c, nt, no, dst):
    """dst[o] = sum_t c[t] wpad[o + t] for o < no (a 1-D convolution as a gather over the zero-padded input),
    four taps per pass: one load and store of dst per four multiply-adds, vectorised over o."""
    for o in range(no):
        dst[o] = 0.0
    t = 0
    while t + 4 <= nt:
        c0, c1, c2, c3 = c[t], c[t + 1], c[t + 2], c[t + 3]
        p0 = wpad[t:t + no]
        p1 = wpad[t + 1:t + 1 + no]
        p2 = wpad[t + 2:t + 2 + no]
        p3 = wpad[t + 3:t + 3 + no]
        for o in range(no):
            dst[o] += c0 * p0[o] + c1 * p1[o] + c2 * p2[o] + c3 * p3[o]
        t += 4
    while t < nt:
        c0 = c[t]
        p0 = wpad[t:t + no]
        for o in range(no):
            dst[o] += c0 * p0[o]
        t += 1


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def separable_pieces(ia, ic, fx, fy, rw, hk, small, sub, g, d, vec):
    """The 1-D pieces of W' = sum_b by_b(y) cb_b(x) for w = wx(x) wy(y) (w on the box |x|, |y| <= rw, no elliptical cut: the weight beyond
    it is < exp(-MAX_Q / 2)):
    vec[2 + b] = g_b~ (x) wy, vec[7 + b] = h_b~ (x) wx with h_b = sum_a d_ab g_a, over the 2 (rw + hk) + 1
    box, each by :func:`conv_gather` over wx, wy zero-padded by 2 hk on each side in vec[0], vec[1]
    (vec at least 2 (rw + 2 hk) + 1 wide); vec[12, :2hk+1] holds h_b."""
    n = 2 * rw + 1
    ns = 2 * (rw + hk) + 1
    nt = 2 * hk + 1
    pad = nt - 1
    wx = vec[0]
    wy = vec[1]
    for i in range(pad):
        wx[i] = 0.0
        wy[i] = 0.0
        wx[pad + n + i] = 0.0
        wy[pad + n + i] = 0.0
    weight_1d(ia, fx, rw, small, sub, wx[pad:pad + n])
    weight_1d(ic, fy, rw, small, sub, wy[pad:pad + n])
    hb = vec[12]
    for b in range(DEGREE + 1):
        conv_gather(wy, g[b], nt, ns, vec[2 + b])
        for t in range(nt):
            s = 0.0
            for a in range(DEGREE + 1 - b):
                s += d[a, b] * g[a, t]
            hb[t] = s
        conv_gather(wx, hb, nt, ns, vec[7 + b])


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def separable_sums(image, variance, fp, src, cy, cx, hs, vec, psfs):
    """(sum W' I, sum W'^2 V, sum W' P) for the separable W' of ``vec`` (separable_pieces) on the box of
    half-size hs around (cx, cy), read straight from the planes (the box is inside and all valid: see
    clean_reach), the source's own heavy footprint added as (heavy - plane) on its pixels. W' is made
    row by row (the same sums as pieces_weight); per-column partial sums, two rows per pass, then
    summed in order: vectorised, and the same for any thread."""
    ns = 2 * hs + 1
    kp = psfs.shape[0]
    hp = kp // 2
    by0, by1, by2, by3, by4 = vec[2], vec[3], vec[4], vec[5], vec[6]
    cb0, cb1, cb2, cb3, cb4 = vec[7], vec[8], vec[9], vec[10], vec[11]
    af = np.zeros(ns)
    av = np.zeros(ns)
    ap = np.zeros(ns)
    x0 = cx - hs
    j0 = max(0, hs - hp)
    j1 = min(ns, hs + hp + 1)
    for j in range(j0, j1):  # a point source's response sum W' P, P the PSF image at the source
        b0, b1, b2, b3, b4 = by0[j], by1[j], by2[j], by3[j], by4[j]
        prow = psfs[j - hs + hp]
        for i in range(j0, j1):
            v = 0.0 + b0 * cb0[i]
            v += b1 * cb1[i]
            v += b2 * cb2[i]
            v += b3 * cb3[i]
            v += b4 * cb4[i]
            ap[i] += v * prow[i - hs + hp]
    j = 0
    while j + 1 < ns:
        irow = image[cy - hs + j, x0:x0 + ns]
        vrow = variance[cy - hs + j, x0:x0 + ns]
        irow2 = image[cy - hs + j + 1, x0:x0 + ns]
        vrow2 = variance[cy - hs + j + 1, x0:x0 + ns]
        b0, b1, b2, b3, b4 = by0[j], by1[j], by2[j], by3[j], by4[j]
        e0, e1, e2, e3, e4 = by0[j + 1], by1[j + 1], by2[j + 1], by3[j + 1], by4[j + 1]
        for i in range(ns):
            c0 = cb0[i]
            c1 = cb1[i]
            c2 = cb2[i]
            c3 = cb3[i]
            c4 = cb4[i]
            v = 0.0 + b0 * c0
            v += b1 * c1
            v += b2 * c2
            v += b3 * c3
            v += b4 * c4
            u = 0.0 + e0 * c0
            u += e1 * c1
            u += e2 * c2
            u += e3 * c3
            u += e4 * c4
            f = af[i]
            f += v * irow[i]
            f += u * irow2[i]
            af[i] = f
            s = av[i]
            s += v * v * vrow[i]
            s += u * u * vrow2[i]
            av[i] = s
        j += 2
    if j < ns:
        irow = image[cy - hs + j, x0:x0 + ns]
        vrow = variance[cy - hs + j, x0:x0 + ns]
        b0, b1, b2, b3, b4 = by0[j], by1[j], by2[j], by3[j], by4[j]
        for i in range(ns):
            v = 0.0 + b0 * cb0[i]
            v += b1 * cb1[i]
            v += b2 * cb2[i]
            v += b3 * cb3[i]
            v += b4 * cb4[i]
            af[i] += v * irow[i]
            av[i] += v * v * vrow[i]
    sf = 0.0
    sv = 0.0
    swt = 0.0
    for i in range(ns):
        sf += af[i]
        sv += av[i]
        swt += ap[i]
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    f = used[src]
    if f >= 0:
        k = val_off[f]
        for sp in range(span_off[f], span_off[f + 1]):
            y, xa, xb = span_y[sp], span_x0[sp], span_x1[sp]
            j = y - cy + hs
            if 0 <= j < ns:
                b0, b1, b2, b3, b4 = by0[j], by1[j], by2[j], by3[j], by4[j]
                for x in range(max(xa, cx - hs), min(xb, cx + hs) + 1):
                    i = x - x0
                    v = 0.0 + b0 * cb0[i]
                    v += b1 * cb1[i]
                    v += b2 * cb2[i]
                    v += b3 * cb3[i]
                    v += b4 * cb4[i]
                    sf += v * (np.float64(values[k + x - xa]) - np.float64(image[y, x]))
            k += xb - xa + 1
    return sf, sv, swt


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def weight_sums(image, variance, fp, src, cy, cx, hs, wp, span, psfs):
    """separable_sums for any W' given as the array wp[:2hs+1, :2hs+1] (the box inside and all valid),
    each row j only over its columns span[0, j]..span[1, j] - 1 that can be nonzero (effective_weight):
    the same sums less the zero terms."""
    ns = 2 * hs + 1
    kp = psfs.shape[0]
    hp = kp // 2
    af = np.zeros(ns)
    av = np.zeros(ns)
    ap = np.zeros(ns)
    x0 = cx - hs
    j0 = max(0, hs - hp)
    j1 = min(ns, hs + hp + 1)
    for j in range(j0, j1):
        wrow = wp[j]
        prow = psfs[j - hs + hp]
        for i in range(j0, j1):
            ap[i] += wrow[i] * prow[i - hs + hp]
    for j in range(ns):
        a, e = span[0, j], span[1, j]
        irow = image[cy - hs + j, x0 + a:x0 + e]
        vrow = variance[cy - hs + j, x0 + a:x0 + e]
        wrow = wp[j, a:e]
        fcol = af[a:e]
        vcol = av[a:e]
        for i in range(e - a):
            v = wrow[i]
            fcol[i] += v * irow[i]
            vcol[i] += v * v * vrow[i]
    sf = 0.0
    sv = 0.0
    swt = 0.0
    for i in range(ns):
        sf += af[i]
        sv += av[i]
        swt += ap[i]
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    f = used[src]
    if f >= 0:
        k = val_off[f]
        for sp in range(span_off[f], span_off[f + 1]):
            y, xa, xb = span_y[sp], span_x0[sp], span_x1[sp]
            j = y - cy + hs
            if 0 <= j < ns:
                for x in range(max(xa, cx - hs), min(xb, cx + hs) + 1):
                    sf += wp[j, x - x0] * (np.float64(values[k + x - xa]) - np.float64(image[y, x]))
            k += xb - xa + 1
    return sf, sv, swt


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def masked_sums(image, valid, cy, cx, hs, hmax, wp, img, var, ok, psfs):
    """(sum W' I, sum W'^2 V, sum W' P, sum |W'|, on invalid or off-coadd pixels, on EXCLUDED pixels, off
    the coadd) for W' = wp on a box that may reach invalid, EXCLUDED or off-coadd pixels: read from the
    source's own stamp img, var, ok (own_stamp_variance, half-size hmax). Per-column partial sums over
    the rows in order, then summed in order (vectorised, the same for any thread); the pixel classes
    as selects."""
    height, width = image.shape
    kp = psfs.shape[0]
    hp = kp // 2
    ns = 2 * hs + 1
    swt = 0.0
    for j in range(max(0, hs - hp), min(ns, hs + hp + 1)):
        for i in range(max(0, hs - hp), min(ns, hs + hp + 1)):
            swt += wp[j, i] * psfs[j - hs + hp, i - hs + hp]
    off = hmax - hs
    af = np.zeros(ns)
    av = np.zeros(ns)
    aa = np.zeros(ns)
    ab = np.zeros(ns)
    ae = np.zeros(ns)
    ao = np.zeros(ns)
    x0 = cx - hs
    i_lo = min(ns, max(0, -x0))  # columns [i_lo, i_hi) are on the coadd
    i_hi = max(i_lo, min(ns, width - x0))
    for j in range(ns):
        y = cy - hs + j
        wrow = wp[j, :ns]
        irow = img[j + off, off:off + ns]
        vrow = var[j + off, off:off + ns]
        for i in range(ns):
            v = wrow[i]
            af[i] += v * irow[i]
            av[i] += v * v * vrow[i]
            aa[i] += abs(v)
        if 0 <= y < height and i_lo < i_hi:
            for i in range(i_lo):
                v = abs(wrow[i])
                ab[i] += v
                ao[i] += v
            krow = ok[j + off, off + i_lo:off + i_hi]
            crow = valid[y, x0 + i_lo:x0 + i_hi]
            wmid = wrow[i_lo:i_hi]
            bmid = ab[i_lo:i_hi]
            emid = ae[i_lo:i_hi]
            for i in range(i_hi - i_lo):
                v = abs(wmid[i])
                good = krow[i] != 0
                bmid[i] += 0.0 if good else v
                emid[i] += v if (good and crow[i] == EXCLUDED) else 0.0
            for i in range(i_hi, ns):
                v = abs(wrow[i])
                ab[i] += v
                ao[i] += v
        else:
            for i in range(ns):
                v = abs(wrow[i])
                ab[i] += v
                ao[i] += v
    sf = sv = sa = sbad = sexc = soff = 0.0
    for i in range(ns):
        sf += af[i]
        sv += av[i]
        sa += aa[i]
        sbad += ab[i]
        sexc += ae[i]
        soff += ao[i]
    return sf, sv, swt, sa, sbad, sexc, soff


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FMA)
def pieces_weight(hs, vec, wp):
    """wp[:2hs+1, :2hs+1] = sum_b vec[2 + b](y) vec[7 + b](x), the separable W' from separable_pieces."""
    ns = 2 * hs + 1
    cb0, cb1, cb2, cb3, cb4 = vec[7, :ns], vec[8, :ns], vec[9, :ns], vec[10, :ns], vec[11, :ns]
    for j in range(ns):
        b0, b1, b2, b3, b4 = vec[2, j], vec[3, j], vec[4, j], vec[5, j], vec[6, j]
        row = wp[j, :ns]
        for i in range(ns):
            v = 0.0 + b0 * cb0[i]
            v += b1 * cb1[i]
            v += b2 * cb2[i]
            v += b3 * cb3[i]
            v += b4 * cb4[i]
            row[i] = v


@njit(cache=True, nogil=True, error_model="numpy")
def measure_block(t0, t1, args, fp, out):
    """Sources order[t0:t1] of :func:`gaap_flux` (its other arguments ``args``) into ``out``, in this block's own scratch."""
    (image, variance, valid, nodes, node_x, node_y, x, y, cell, grams, cx, cy, fx, fy, p, sigk, hk,
     ia, ib, ic, rw, small, sub, order) = args
    flux, err, invalid, excluded, edge, residual = out
    na = rw.shape[1]
    kp = nodes.shape[-1]
    hkb = 0
    rwb = 0
    for t in range(t0, t1):
        s = order[t]
        if hk[s] >= 0:
            hkb = max(hkb, hk[s])
            for k in range(na):
                rwb = max(rwb, rw[s, k])
    nw = 2 * rwb + 1
    nsb = 2 * (rwb + hkb) + 1
    g = np.empty((DEGREE + 1, 2 * hkb + 1))
    ge = np.empty((DEGREE + 1, 2 * hkb + 1))
    tv = np.empty(kp)
    tau = np.empty((DEGREE + 1, kp))
    ptau = np.empty((DEGREE + 1, kp))
    kkt = np.empty((N_BASIS + 1, N_BASIS + 1))
    rhs = np.empty(N_BASIS + 1)
    gs = np.empty((N_BASIS, N_BASIS))
    b0 = np.empty(N_BASIS)
    d = np.zeros((DEGREE + 1, DEGREE + 1))
    wn = np.empty(4)
    table = np.empty((2, kp))
    trig_table(kp, table)
    dk = np.empty(2 * kp)
    pc = np.empty((kp, kp))
    ps = np.empty((kp, kp))
    sx = np.empty((kp, kp))
    sy = np.empty((kp, kp))
    q = np.empty((kp, kp))
    vec = np.empty((13, max(nsb, nw) + 2 * hkb))  # separable_pieces pads wx, wy by 2 hk each side
    w = np.empty((nw, nw))
    wp = np.empty((nsb, nsb))
    taf = np.empty((DEGREE + 1) * nw * nsb)  # effective_weight's flat scratch
    uf = np.empty(nw * nsb)
    wpf = np.empty(nsb * nsb)
    span = np.empty((2, nsb), np.int64)
    img = np.empty((nsb, nsb))
    var = np.empty((nsb, nsb))
    ok = np.empty((nsb, nsb), np.uint8)
    for t in range(t0, t1):
        s = order[t]
        h = hk[s]
        if h < 0:
            continue
        _, _, tx = node_weights(x[s], node_x)
        _, _, ty = node_weights(y[s], node_y)
        wn[0] = (1 - tx) * (1 - ty)
        wn[1] = tx * (1 - ty)
        wn[2] = (1 - tx) * ty
        wn[3] = tx * ty
        interpolate(nodes, node_x, node_y, x[s], y[s], pc)  # the centred PSF (the fit's)
        res = fit_from_gram(grams[cell[s]], wn, pc, p[s], sigk[s], h, g, tv, tau, ptau, kkt, rhs, d, gs, b0)
        residual[s] = res
        if not res < np.inf:
            continue
        hmax = -1
        for k in range(na):
            if rw[s, k] >= 0:
                hmax = max(hmax, rw[s, k] + h)
        if hmax < 0:
            continue
        # the PSF at the source's sub-pixel position (the normalisation's)
        shifted_psf(pc, x[s] - math.floor(x[s] + 0.5), y[s] - math.floor(y[s] + 0.5), table, dk, sx, sy, q, ps)
        reach = clean_reach(valid, cy[s], cx[s], hmax)
        he = h  # the fast path's taps: |g_a(t)| <= TAP_EPS (rows of unit norm) beyond he are left out
        while he > 0:
            top = 0.0
            for a in range(DEGREE + 1):
                top = max(top, abs(g[a, h - he]), abs(g[a, h + he]))
            if top > TAP_EPS:
                break
            he -= 1
        for a in range(DEGREE + 1):
            for i in range(2 * he + 1):
                ge[a, i] = g[a, h - he + i]
        stamp = False
        for k in range(na):
            r = rw[s, k]
            if r < 0:
                continue
            hs = r + h
            sep = ib[s, k] == 0.0  # axis-aligned Q: w = wx(x) wy(y) on its box, W' a sum of 5 outer products
            if hs <= reach:  # inside the coadd, every pixel valid: sums straight from the planes
                if sep:
                    separable_pieces(ia[s, k], ic[s, k], fx[s], fy[s], r, he, small[s, k] != 0, sub, ge, d, vec)
                    sf, sv, swt = separable_sums(image, variance, fp, s, cy[s], cx[s], r + he, vec, ps)
                else:
                    aperture_weight(ia[s, k], ib[s, k], ic[s, k], fx[s], fy[s], r, small[s, k] != 0, sub, w)
                    we = effective_weight(w, r, he, ge, d, taf, uf, wpf, span)
                    sf, sv, swt = weight_sums(image, variance, fp, s, cy[s], cx[s], r + he, we, span, ps)
                flux[s, k] = sf / swt
                err[s, k] = math.sqrt(sv) / swt
                continue
            if not stamp:
                own_stamp_variance(image, variance, valid, fp, s, cy[s], cx[s], hmax, img, var, ok)
                stamp = True
            if sep:
                separable_pieces(ia[s, k], ic[s, k], fx[s], fy[s], r, h, small[s, k] != 0, sub, g, d, vec)
                pieces_weight(hs, vec, wp)
                we = wp
            else:
                aperture_weight(ia[s, k], ib[s, k], ic[s, k], fx[s], fy[s], r, small[s, k] != 0, sub, w)
                we = effective_weight(w, r, h, g, d, taf, uf, wpf, span)
            sf, sv, swt, sa, sbad, sexc, soff = masked_sums(image, valid, cy[s], cx[s], hs, hmax, we, img, var, ok, ps)
            flux[s, k] = sf / swt
            err[s, k] = math.sqrt(sv) / swt
            invalid[s, k] = sbad > 1e-3 * sa
            excluded[s, k] = sexc > 1e-3 * sa
            if soff > 0:
                edge[s] = 1


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def gaap_flux(image, variance, valid, fp, nodes, node_x, node_y, x, y, cell, grams, cx, cy, fx, fy, p, sigk, hk,
              ia, ib, ic, rw, small, sub, order):
    """GAaP fluxes of every source (rows) in every aperture (columns); see the module docstring.

    nodes (ny, nx, K, K) float64, node_x, node_y: the PSF grid; x, y (N,): tract positions (the PSF
    at a source: bilinear between its cell's corner nodes, centred for the fit, shifted to the
    sub-pixel position for the normalisation); cell (N,): index into grams (C, 60, 60) of the source's
    cell (:func:`cell_grams`); p, sigk (N,): target and kernel-Gaussian sigmas (sigk that of the cell);
    hk (N,): kernel half-size (< 0: not measured); (ia, ib, ic) (N, A): Q^-1 of each aperture;
    rw (N, A): its weight's half-size (< 0: not measured); small (N, A): sub-pixel samples ``sub``.
    Returns flux, err (N, A), invalid and excluded (N, A, uint8: |W'| on invalid or off-coadd pixels,
    or on EXCLUDED pixels of ``valid`` as pixel classes, above 1e-3 of sum |W'|), edge (N, uint8:
    a measured aperture's W' reaches off the coadd), residual (N: ||T - K (x) P|| / ||T||, NaN if not
    fitted, inf if the fit failed).
    """
    n, na = rw.shape
    out = new_outputs(n, na)
    args = (image, variance, valid, nodes, node_x, node_y, x, y, cell, grams, cx, cy, fx, fy, p, sigk, hk,
            ia, ib, ic, rw, small, sub, order)
    n_blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(n_blocks):
        measure_block(blk * BLOCK, min(n, (blk + 1) * BLOCK), args, fp, out)
    return out


@njit(cache=True, nogil=True)
def source_cells(node_x, node_y, x, y):
    """(iy0, ix0) (N,): the lower corner node of each source's PSF grid cell (as interpolate() takes it)."""
    n = x.size
    iy0 = np.empty(n, np.int64)
    ix0 = np.empty(n, np.int64)
    for s in range(n):
        ix0[s] = node_weights(x[s], node_x)[0]
        iy0[s] = node_weights(y[s], node_y)[0]
    return iy0, ix0


def _warm_gaap():
    from forcedphot.kernels.moments import _warm_planes

    image, variance, valid, fp = _warm_planes()
    one_i, one_f = np.full(1, 4, np.int64), np.zeros(1)
    nodes = np.zeros((1, 1, 5, 5))
    nodes[0, 0, 2, 2] = 1.0
    hk = np.full(1, 2, np.int64)
    iy0, ix0 = source_cells(one_f, one_f, one_f + 0.25, one_f)
    grams = cell_grams(nodes, iy0, ix0, np.ones(1), hk)
    a = np.ones((1, 1))
    gaap_flux(image, variance, valid, fp, nodes, one_f, one_f, one_f + 0.25, one_f + 0.1, np.zeros(1, np.int64), grams,
              one_i, one_i, one_f, one_f, np.ones(1), np.ones(1), hk, a, a * 0, a, np.full((1, 1), 2, np.int64),
              np.zeros((1, 1), np.uint8), (np.arange(4) - 1.5) / 4, np.zeros(1, np.int64))


# the signatures the pipeline compiles (see forcedphot.compile)
WARMUP = [_warm_gaap]
