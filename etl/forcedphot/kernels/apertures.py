"""Circular-aperture and ellipse kernels: exact overlap, sinc coefficients, naive pixel-centre sums.

Every kernel measures each source independently (``prange`` over blocks of sources, one scratch
per block), reads the coadd planes directly in coadd-local pixels and sums in a fixed order,
so results do not depend on the thread count. Each returns, per source and radius, the flux on
the deblended image (``image`` with the source's own footprint, see :mod:`.pixels`), the flux
on ``original`` when ``both`` (the undeblended measurement, no footprint), the variance and the
invalid weight (off-image, non-finite or NO_DATA pixels read as 0 and add their weight there).
``valid`` may be the pixel classes of :func:`forcedphot.kernels.footprints.pixel_classes`: its
EXCLUDED pixels (a bad mask plane) are summed like any valid pixel and each kernel also returns
how much of the aperture lies on them (the plugins flag such fluxes), counted in the same pass.
Sources or radii not to measure (``todo`` 0) get NaN fluxes and variances and 0 invalid weight.

- Exact (SEP ``subpix=0``, photutils ``exact``): per row strip the pixels fully inside the disk
  are a run of weight 1; only the pixels the circle crosses get the closed-form overlap of
  ``plugins/aperture_exact.py`` (corner function), from one sqrt and asin per pixel edge.
- Sinc: the coefficient image of radius r on its W x W grid shifted to the source's sub-pixel
  centre, computed exactly without FFT as C = Ay D' Ax^T (``kernels/aperture_sinc.py``; the two
  small products accumulate in vector registers, :func:`small_matmul`); each source's
  coefficients are made once and used for both images, the variance and the invalid weight.
- Naive (pixel centres in the closed disk, afw's PixelRegion rows): row runs summed with the
  float64 prefix sums of one image row at a time, swept down a stripe of sources (no prefix
  sums of whole planes or bands are kept).
- Kron: naive sums over an ellipse, one run per row, summed directly.

Under noise replacement every sum is taken over the noise image B and adds
sum(w * (heavy - B)) over the source's own valid footprint pixels (:func:`_own_deltas`), each
pixel's weight taken from the same coefficients, run bounds or overlap as the main sum.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from forcedphot.kernels.footprints import EXCLUDED
from forcedphot.kernels.pixels import footprint_deltas, footprint_size, no_footprints
from forcedphot.kernels.prefetch import prefetch_rows

BLOCK = 16  # sources per scratch allocation (work unit of prange)
# The exact kernel hints the box of the source this many places ahead in its order into the caches
# while it measures the current one: apertures of neighbouring sources barely overlap, so each
# source's rows (one 4 kB page apiece per plane) are otherwise fetched from memory as they are
# summed. A hint never changes a result.
PREFETCH_AHEAD = 2


def read_only(*planes):
    """Read-only views of the planes: the noise image (a writable copy) and the coadd's memory-mapped
    planes then type alike, so each kernel compiles one signature."""
    out = []
    for p in planes:
        v = p.view()
        v.setflags(write=False)
        out.append(v)
    return tuple(out)


ORDER_CELL = 8  # sources are visited in Z order of 8 x 8 pixel cells (neighbours share cache lines)


def spatial_order(cx, cy, measure=None, cell: int = ORDER_CELL) -> np.ndarray:
    """Indices of the sources to measure in Z (Morton) order of their ``cell`` x ``cell`` pixel cells."""
    idx = np.arange(np.size(cx)) if measure is None else np.flatnonzero(measure)
    gx = (np.asarray(cx)[idx] // cell).astype(np.uint64)
    gy = (np.asarray(cy)[idx] // cell).astype(np.uint64)
    key = np.zeros(idx.size, np.uint64)
    for b in range(21):  # interleave the bits of (gx, gy): cells of any coadd up to 2^21 * cell pixels
        key |= ((gx >> np.uint64(b)) & np.uint64(1)) << np.uint64(2 * b)
        key |= ((gy >> np.uint64(b)) & np.uint64(1)) << np.uint64(2 * b + 1)
    return idx[np.argsort(key, kind="stable")].astype(np.int64)


@njit(cache=True, nogil=True)
def _own_deltas(fp, src, image, valid):
    """(xs, ys, heavy - image, n) of the source's own valid on-image footprint pixels, in float64
    (:func:`forcedphot.kernels.pixels.footprint_deltas` into freshly sized arrays)."""
    size = footprint_size(fp, src)
    xs = np.empty(size, np.int64)
    ys = np.empty(size, np.int64)
    ds = np.empty(size, np.float64)
    n = footprint_deltas(fp, src, image, valid, xs, ys, ds)
    return xs, ys, ds, n


# -- exact ---------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _g(u, r, r2):
    """G(u) = (u sqrt(r^2 - u^2) + r^2 asin(u / r)) / 2, clipped to |u| <= r."""
    v = u / r
    if v >= 1.0:
        return 0.25 * np.pi * r2
    if v <= -1.0:
        return -0.25 * np.pi * r2
    return 0.5 * (u * np.sqrt(max(r2 - u * u, 0.0)) + r2 * np.arcsin(v))


@njit(cache=True, nogil=True)
def _strip_area(xc, gxc, y0, y1, t0, t1, g0, g1, s0, s1, e):
    """Area of the disk with u <= X and y0 <= v <= y1, up to a constant of the strip.

    The corner function's A(X, y1) - A(X, y0) (``plugins/aperture_exact.py``) with its branches on
    the sign of y resolved per strip: with c(y) = clip(xc, -t, t), k(y) = clip(G(xc), -G(t), G(t)),
    A(X, y) = y c(y) + (2 G(xc) - k(y) if y > 0 else k(y)) + const, so
    F = y1 c1 - y0 c0 + s1 k1 + s0 k0 + e G(xc), s1 = -1 if y1 > 0 else 1, s0 = 1 if y0 > 0 else -1,
    e = 2 [y1 > 0] - 2 [y0 > 0]. A pixel's overlap is F(x1) - F(x0).
    """
    return (y1 * min(max(xc, -t1), t1) - y0 * min(max(xc, -t0), t0) + s1 * min(max(gxc, -g1), g1)
            + s0 * min(max(gxc, -g0), g0) + e * gxc)


@njit(cache=True, nogil=True)
def _exact_one(image, original, variance, valid, cx, cy, fx, fy, r, squared, both, xs, ys, ds, nd,
               ex, gx, ey, ty, gy, lo, hi, ilo, ihi):
    """(flux, flux_original, variance, invalid, excluded) of one source in the exact disk of radius r
    (excluded: the overlap weight on EXCLUDED pixels, summed like the others)."""
    h, w = image.shape
    r2 = r * r
    m = int(np.ceil(r)) + 1
    ne = 2 * m + 2
    for k in range(ne):  # pixel edges: k <-> offset k - m - 0.5 from the nearest pixel
        xc = min(max((k - m) - 0.5 - fx, -r), r)
        ex[k] = xc
        gx[k] = _g(xc, r, r2)
        yv = (k - m) - 0.5 - fy
        ey[k] = yv
        t = np.sqrt(max(r2 - yv * yv, 0.0))
        ty[k] = t
        gy[k] = _g(t, r, r2)
    f = 0.0
    fu = 0.0
    v = 0.0
    bad = 0.0
    excluded = 0.0
    for s in range(2 * m + 1):  # row strip s: offset j = s - m, between edges s and s + 1
        y0, y1 = ey[s], ey[s + 1]
        if y0 >= r or y1 <= -r:
            lo[s], hi[s], ilo[s], ihi[s] = 1, 0, 1, 0
            continue
        t0, t1, g0, g1 = ty[s], ty[s + 1], gy[s], gy[s + 1]
        s1 = -1.0 if y1 > 0 else 1.0
        s0 = 1.0 if y0 > 0 else -1.0
        e = (2.0 if y1 > 0 else 0.0) - (2.0 if y0 > 0 else 0.0)
        smax = r if (y0 < 0.0 and y1 > 0.0) else max(t0, t1)
        smin = min(t0, t1)
        a = max(int(np.floor(fx - 0.5 - smax)) + 1, -m)  # pixels touching the disk: a..b
        b = min(int(np.ceil(smax + fx + 0.5)) - 1, m)
        ia = int(np.ceil(fx + 0.5 - smin))  # pixels fully inside: ia..ib
        ib = int(np.floor(smin + fx - 0.5))
        if ia > ib:
            ia, ib = b + 1, b
        lo[s], hi[s], ilo[s], ihi[s] = a, b, ia, ib
        y = cy + s - m
        row_ok = 0 <= y < h
        # interior run
        if ib >= ia:
            x0, x1 = cx + ia, cx + ib
            if not row_ok:
                bad += x1 - x0 + 1
            else:
                c0, c1 = max(x0, 0), min(x1, w - 1)
                bad += (c0 - x0) + (x1 - c1)
                n_excluded = 0
                for x in range(c0, c1 + 1):
                    cls = valid[y, x]
                    if cls:
                        f += image[y, x]
                        if both:
                            fu += original[y, x]
                        v += variance[y, x]
                        n_excluded += cls >> 1  # EXCLUDED = 2: branch-free count
                    else:
                        bad += 1.0
                excluded += n_excluded
        # boundary pixels: a..ia-1 and ib+1..b, weights F(k+1) - F(k) with F(k) = A(k, s+1) - A(k, s)
        for part in range(2):
            p0, p1 = (a, ia - 1) if part == 0 else (ib + 1, b)
            if p1 < p0:
                continue
            k = p0 + m
            fk = _strip_area(ex[k], gx[k], y0, y1, t0, t1, g0, g1, s0, s1, e)
            for i in range(p0, p1 + 1):
                k = i + m + 1
                fn = _strip_area(ex[k], gx[k], y0, y1, t0, t1, g0, g1, s0, s1, e)
                wt = fn - fk
                fk = fn
                x = cx + i
                cls = valid[y, x] if row_ok and 0 <= x < w else 0
                if cls:
                    f += wt * image[y, x]
                    if both:
                        fu += wt * original[y, x]
                    v += (wt * wt if squared else wt) * variance[y, x]
                    if cls == EXCLUDED:
                        excluded += wt
                else:
                    bad += wt
    # the source's own footprint: + w * (heavy - B), w as above
    for q in range(nd):
        i = xs[q] - cx
        s = ys[q] - cy + m
        if s < 0 or s > 2 * m or i < lo[s] or i > hi[s]:
            continue
        if ilo[s] <= i <= ihi[s]:
            f += ds[q]
            continue
        y0, y1 = ey[s], ey[s + 1]
        t0, t1, g0, g1 = ty[s], ty[s + 1], gy[s], gy[s + 1]
        s1 = -1.0 if y1 > 0 else 1.0
        s0 = 1.0 if y0 > 0 else -1.0
        e = (2.0 if y1 > 0 else 0.0) - (2.0 if y0 > 0 else 0.0)
        k = i + m
        fk = _strip_area(ex[k], gx[k], y0, y1, t0, t1, g0, g1, s0, s1, e)
        fn = _strip_area(ex[k + 1], gx[k + 1], y0, y1, t0, t1, g0, g1, s0, s1, e)
        f += (fn - fk) * ds[q]
    return f, fu, v, bad, excluded


@njit(cache=True, parallel=True, nogil=True)
def exact_aperture_kernel(image, original, variance, valid, fp, cx, cy, fx, fy, todo, radii, squared, both, order):
    """Exact circular apertures, every radius in one pass per source.

    Returns (flux, flux_original, variance, invalid, excluded), each (N, R); ``todo`` (N, R) uint8.
    """
    n = cx.size
    nr = radii.size
    flux = np.full((n, nr), np.nan)
    flux_u = np.full((n, nr), np.nan)
    var = np.full((n, nr), np.nan)
    bad = np.zeros((n, nr))
    excl = np.zeros((n, nr))
    rmax = 0.0
    for k in range(nr):
        rmax = max(rmax, radii[k])
    m_max = int(np.ceil(rmax)) + 1
    ne = 2 * m_max + 2
    no = order.size
    for blk in prange((no + BLOCK - 1) // BLOCK):
        ex = np.empty(ne)
        gx = np.empty(ne)
        ey = np.empty(ne)
        ty = np.empty(ne)
        gy = np.empty(ne)
        lo = np.empty(ne, np.int64)
        hi = np.empty(ne, np.int64)
        ilo = np.empty(ne, np.int64)
        ihi = np.empty(ne, np.int64)
        for q in range(blk * BLOCK, min(no, (blk + 1) * BLOCK)):
            src = order[q]
            if q + PREFETCH_AHEAD < no:  # sources to measure only: ``order`` holds no other
                nxt = order[q + PREFETCH_AHEAD]
                prefetch_rows(cy[nxt], cx[nxt], m_max, 0, 2 * m_max + 1, image, original, variance, valid, both)
            any_todo = False
            for k in range(nr):
                if todo[src, k]:
                    any_todo = True
            if not any_todo:
                continue
            xs, ys, ds, nd = _own_deltas(fp, src, image, valid)
            for k in range(nr):
                if todo[src, k]:
                    res = _exact_one(image, original, variance, valid, cx[src], cy[src], fx[src], fy[src], radii[k],
                                     squared, both, xs, ys, ds, nd, ex, gx, ey, ty, gy, lo, hi, ilo, ihi)
                    flux[src, k] = res[0]
                    if both:
                        flux_u[src, k] = res[1]
                    var[src, k] = res[2]
                    bad[src, k] = res[3]
                    excl[src, k] = res[4]
    return flux, flux_u, var, bad, excl


def exact_fluxes(image, original, variance, valid, fp, cx, cy, fx, fy, todo, radii, squared_errors=True, both=False):
    """:func:`exact_aperture_kernel` on read-only views of the planes, sources in Z order."""
    image, original, variance, valid = read_only(image, original, variance, valid)
    cx = np.ascontiguousarray(cx, np.int64)
    cy = np.ascontiguousarray(cy, np.int64)
    todo = np.ascontiguousarray(todo, np.uint8)
    return exact_aperture_kernel(image, original, variance, valid, fp, cx, cy, np.ascontiguousarray(fx, np.float64),
                                 np.ascontiguousarray(fy, np.float64), todo, np.ascontiguousarray(radii, np.float64),
                                 bool(squared_errors), bool(both), spatial_order(cx, cy, todo.any(axis=1)))


def exact_apertures(image, variance, valid, cx, cy, fx, fy, radii, squared_errors=True):
    """Exact circular-aperture sums of every source at every radius, one pass per source.

    ``image, variance`` (H, W) and ``valid`` (H, W) uint8 in coadd-local pixels; ``cx, cy`` (N,)
    int64 nearest local pixel, ``fx, fy`` (N,) the offset of the centre from it; ``radii`` (R,).
    Returns (flux, variance, invalid weight), each (N, R) float64: sqrt(sum(w^2 var)) errors with
    ``squared_errors``, else sqrt(sum(w var)) (SEP). Invalid and off-image pixels contribute 0.
    """
    n = np.size(cx)
    radii = np.atleast_1d(np.asarray(radii, np.float64))
    flux, _, var, bad, _ = exact_fluxes(image, image, variance, valid, no_footprints(n), cx, cy, fx, fy,
                                     np.ones((n, radii.size), np.uint8), radii, squared_errors, False)
    return flux, var, bad


# -- small dense products (sinc coefficients) ----------------------------------------------------
@intrinsic
def _tile_4x8(typingctx, a, b, c, i0, j0, kdim):
    """c[i0:i0+4, j0:j0+8] = a[i0:i0+4, :kdim] @ b[:kdim, j0:j0+8], accumulators in vector registers.

    Rows of a, b, c must be contiguous (inner stride 1); k runs in order with one fused multiply-add
    per term, so every element has a fixed summation order.
    """
    sig = types.void(a, b, c, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        at, bt, ct = signature.args[:3]
        arr_a = context.make_array(at)(context, builder, args[0])
        arr_b = context.make_array(bt)(context, builder, args[1])
        arr_c = context.make_array(ct)(context, builder, args[2])
        i0, j0, kd = args[3], args[4], args[5]
        f64 = ir.DoubleType()
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        v4 = ir.VectorType(f64, 4)
        eight = ir.Constant(i64, 8)
        lda = builder.sdiv(builder.extract_value(arr_a.strides, 0), eight)
        ldb = builder.sdiv(builder.extract_value(arr_b.strides, 0), eight)
        ldc = builder.sdiv(builder.extract_value(arr_c.strides, 0), eight)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v4, [v4, v4, v4]), "llvm.fma.v4f64")
        zero = ir.Constant(v4, [ir.Constant(f64, 0.0)] * 4)
        undef = ir.Constant(v4, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, 4), [ir.Constant(i32, 0)] * 4)
        vptr = v4.as_pointer()
        accs = []
        for _ in range(8):
            p = cgutils.alloca_once(builder, v4)
            builder.store(zero, p)
            accs.append(p)
        with cgutils.for_range(builder, kd) as loop:
            k = loop.index
            brow = builder.gep(arr_b.data, [builder.add(builder.mul(k, ldb), j0)])
            bv = (builder.load(builder.bitcast(brow, vptr), align=8),
                  builder.load(builder.bitcast(builder.gep(brow, [ir.Constant(i64, 4)]), vptr), align=8))
            for r in range(4):
                ai = builder.add(builder.mul(builder.add(i0, ir.Constant(i64, r)), lda), k)
                s = builder.load(builder.gep(arr_a.data, [ai]))
                sv = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, splat)
                for half in range(2):
                    p = accs[2 * r + half]
                    builder.store(builder.call(fma, [sv, bv[half], builder.load(p)]), p)
        for r in range(4):
            crow = builder.gep(arr_c.data, [builder.add(builder.mul(builder.add(i0, ir.Constant(i64, r)), ldc), j0)])
            builder.store(builder.load(accs[2 * r]), builder.bitcast(crow, vptr), align=8)
            builder.store(builder.load(accs[2 * r + 1]), builder.bitcast(builder.gep(crow, [ir.Constant(i64, 4)]), vptr),
                          align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def small_matmul(a, b, c):
    """c = a @ b for small float64 matrices with contiguous rows, in a fixed summation order (k ascending).

    Rows of c in tiles of 4 and columns in tiles of 8 use vector registers; the rest is scalar.
    """
    m, kd = a.shape
    n = b.shape[1]
    m4 = m - m % 4
    n8 = n - n % 8
    for i in range(0, m4, 4):
        for j in range(0, n8, 8):
            _tile_4x8(a, b, c, i, j, kd)
    for i in range(m):
        for j in range(n8 if i < m4 else 0, n):
            s = 0.0
            for k in range(kd):
                s += a[i, k] * b[k, j]
            c[i, j] = s


# -- sinc ----------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _rotations(f, width, nf, ca, sa):
    """ca[a], sa[a] = cos, sin(2 pi a f / W) for a < nf (rotation by the a = 1 angle)."""
    phi = 2.0 * np.pi * f / width
    c1, s1 = np.cos(phi), np.sin(phi)
    c, s = 1.0, 0.0
    for a in range(nf):
        ca[a] = c
        sa[a] = s
        c, s = c * c1 - s * s1, s * c1 + c * s1


@njit(cache=True, nogil=True)
def _stamp_counts(valid, x0, y0, size):
    """(invalid or off-image, EXCLUDED) pixels of the size x size stamp at (x0, y0)."""
    h, w = valid.shape
    bad = 0
    excluded = 0
    for j in range(size):
        y = y0 + j
        if y < 0 or y >= h:
            bad += size
            continue
        a, b = max(x0, 0), min(x0 + size, w)
        bad += size - max(b - a, 0)
        row = valid[y, a:b]
        for i in range(row.size):
            bad += row[i] == 0
            excluded += row[i] == EXCLUDED
    return bad, excluded


@njit(cache=True, parallel=True, nogil=True)
def sinc_aperture_kernel(image, original, variance, valid, fp, cx, cy, fx, fy, todo, widths, dq, tc, ts, tct, tst,
                         radii, both, order):
    """Sinc-coefficient apertures: sum(c I), sum(c I_original), sum(c^2 V), sum(|c|) over invalid pixels.

    Radii come grouped by width ``widths`` (R,), best widest first (a stamp with no invalid pixel
    at one width then spares the check at the smaller ones); ``dq[k, :M+1, :M+1]`` (M = W // 2) is radius k's
    weighted quarter spectrum m_a m_b D(a, b) / W^2, ``tc, ts[k, :M+1, :W]`` its width's tables
    cos, sin(2 pi a (x - h) / W) and ``tct, tst[k, :W, :M+1]`` their transposes. Per source and
    width the shifted cosine bases Ay (W x (M+1)) and Ax^T ((M+1) x W) are made once (angle
    addition); per radius C = Ay (D' Ax^T) (two small products, C four rows at a time) is summed
    against the planes. Returns (flux, flux_original, variance, invalid, coefficients truncated
    (uint8), excluded), each (N, R); excluded counts the EXCLUDED pixels (summed like the others)
    whose centres lie within ``radii[k]`` + 0.5 of the centre (the coefficients beyond ring at a
    few per cent and do not count).
    """
    n = cx.size
    nr = widths.size
    flux = np.full((n, nr), np.nan)
    flux_u = np.full((n, nr), np.nan)
    var = np.full((n, nr), np.nan)
    bad = np.zeros((n, nr))
    trunc = np.zeros((n, nr), np.uint8)
    excl = np.zeros((n, nr))
    wm = 0
    for k in range(nr):
        wm = max(wm, widths[k])
    stm = wm + 1  # rows and columns padded to W + 1 = 2h (tiles of 4 and 8)
    nfm = wm // 2 + 1
    h_img, w_img = image.shape
    no = order.size
    for blk in prange((no + BLOCK - 1) // BLOCK):
        axt = np.zeros((nfm, stm))  # Ax^T: [b, x]
        ayp = np.zeros((stm, nfm))  # Ay: [y, a]
        tt = np.zeros((nfm, stm))  # D' Ax^T
        cc = np.zeros((stm, stm))  # C
        acc = np.zeros((4, stm))
        ca = np.empty(nfm)
        sa = np.empty(nfm)
        for q in range(blk * BLOCK, min(no, (blk + 1) * BLOCK)):
            src = order[q]
            xs, ys, ds, nd = _own_deltas(fp, src, image, valid)
            last_w = -1
            clean = False
            invalid = False
            clean_w = -1
            for k in range(nr):
                if not todo[src, k]:
                    continue
                wd = widths[k]
                hw = wd // 2
                nf = hw + 1
                st = wd + 1
                x0, y0 = cx[src] - hw, cy[src] - hw
                if wd != last_w:  # shifted cosine bases, shared by the radii of one width
                    _rotations(fx[src], wd, nf, ca, sa)
                    for b in range(nf):
                        row = axt[b]
                        cb, sb = ca[b], sa[b]
                        t0, t1 = tc[k, b], ts[k, b]
                        for x in range(wd):
                            row[x] = t0[x] * cb + t1[x] * sb
                        row[wd:st] = 0.0
                    _rotations(fy[src], wd, nf, ca, sa)
                    for y in range(wd):
                        row = ayp[y, :nf]
                        t0, t1 = tct[k, y, :nf], tst[k, y, :nf]
                        for a in range(nf):
                            row[a] = t0[a] * ca[a] + t1[a] * sa[a]
                    ayp[wd:st, :] = 0.0
                    # a stamp with no invalid or EXCLUDED pixel at one width has none at the smaller ones
                    if clean_w >= wd:
                        clean = True
                        invalid = False
                    else:
                        n_invalid, n_excluded = _stamp_counts(valid, x0, y0, wd)
                        clean = n_invalid == 0 and n_excluded == 0
                        invalid = n_invalid > 0
                        if clean:
                            clean_w = wd
                    last_w = wd
                small_matmul(dq[k, :nf, :nf], axt[:nf, :st], tt[:nf, :st])
                reach2 = (radii[k] + 0.5) ** 2
                n_touch = 0.0
                ay = ayp[:st, :nf]
                t = tt[:nf, :st]
                acc[:, :st] = 0.0
                for i in range(0, st, 4):  # four rows of C, then their sums while they are in cache
                    for j in range(0, st, 8):
                        _tile_4x8(ay, t, cc, i, j, nf)
                    for y in range(i, min(i + 4, wd)):
                        cr = cc[y, :wd]
                        yy = y0 + y
                        if clean:
                            ri = image[yy, x0:x0 + wd]
                            rv = variance[yy, x0:x0 + wd]
                            for x in range(wd):
                                v = cr[x]
                                acc[0, x] += v * ri[x]
                                acc[2, x] += v * v * rv[x]
                            if both:
                                ru = original[yy, x0:x0 + wd]
                                for x in range(wd):
                                    acc[1, x] += cr[x] * ru[x]
                        else:
                            row_in = 0 <= yy < h_img
                            dy2 = (y - hw - fy[src]) ** 2
                            for x in range(wd):
                                v = cr[x]
                                xx = x0 + x
                                cls = valid[yy, xx] if row_in and 0 <= xx < w_img else 0
                                if cls:
                                    acc[0, x] += v * image[yy, xx]
                                    acc[2, x] += v * v * variance[yy, xx]
                                    if both:
                                        acc[1, x] += v * original[yy, xx]
                                    if cls == EXCLUDED and (x - hw - fx[src]) ** 2 + dy2 <= reach2:
                                        n_touch += 1.0
                                else:
                                    acc[3, x] += abs(v)
                tf = 0.0
                tu = 0.0
                tv = 0.0
                tb = 0.0
                for x in range(wd):
                    tf += acc[0, x]
                    tu += acc[1, x]
                    tv += acc[2, x]
                    tb += acc[3, x]
                for p in range(nd):  # the source's own footprint: + c (heavy - B)
                    j = ys[p] - y0
                    i = xs[p] - x0
                    if 0 <= j < wd and 0 <= i < wd:
                        tf += cc[j, i] * ds[p]
                flux[src, k] = tf
                if both:
                    flux_u[src, k] = tu
                var[src, k] = tv
                bad[src, k] = tb
                trunc[src, k] = 1 if invalid else 0
                excl[src, k] = n_touch
    return flux, flux_u, var, bad, trunc, excl


@njit(cache=True, parallel=True, nogil=True)
def sinc_coefficient_images(fx, fy, width, dq, tc, ts):
    """(N, W, W) coefficient images of one radius, exactly as the kernel makes them (tests, one-off use)."""
    n = fx.size
    nf = width // 2 + 1
    st = width + 1
    out = np.empty((n, width, width))
    for src in prange(n):
        ax = np.zeros((nf, st))
        ay = np.zeros((st, nf))
        t = np.zeros((nf, st))
        c = np.zeros((st, st))
        ca = np.empty(nf)
        sa = np.empty(nf)
        _rotations(fx[src], width, nf, ca, sa)
        for b in range(nf):
            for x in range(width):
                ax[b, x] = tc[b, x] * ca[b] + ts[b, x] * sa[b]
        _rotations(fy[src], width, nf, ca, sa)
        for y in range(width):
            for a in range(nf):
                ay[y, a] = tc[a, y] * ca[a] + ts[a, y] * sa[a]
        small_matmul(dq, ax, t)
        small_matmul(ay, t, c)
        out[src] = c[:width, :width]
    return out


# -- naive: circles and ellipses -----------------------------------------------------------------
@njit(cache=True, nogil=True)
def _disk_run(xl, yl, r, row):
    """Columns [lo, hi) of pixel centres of ``row`` in the closed disk (afw's PixelRegion rows)."""
    d2 = r * r - (row - yl) ** 2
    if d2 < 0:
        return 0, 0
    d = np.sqrt(d2)
    return int(np.ceil(xl - d)), int(np.floor(xl + d)) + 1


@njit(cache=True, parallel=True, nogil=True)
def naive_aperture_kernel(image, original, variance, valid, fp, xl, yl, todo, radii, order, stripe_start, both):
    """Pixel-centre sums in closed disks: (flux, flux_original, variance, invalid pixel count, EXCLUDED
    pixel count), each (N, R).

    ``radii`` ascending. ``order`` lists the sources to measure sorted by nearest row, cut into stripes of rows
    (``stripe_start``: CSR offsets into ``order``). A stripe sweeps the image rows its disks
    cover once, top to bottom: each row's float64 prefix sums (one row of scratch) serve the
    runs of every source of the stripe crossing that row, two lookups per run. A source's sums
    are taken over its rows in ascending order whatever the stripe layout or thread count.
    Runs off the image are clipped and counted invalid (such apertures are flagged truncated).
    """
    n = xl.size
    nr = radii.size
    flux = np.full((n, nr), np.nan)
    flux_u = np.full((n, nr), np.nan)
    var = np.full((n, nr), np.nan)
    bad = np.zeros((n, nr))
    excl = np.zeros((n, nr))
    h, w = image.shape
    rmax = 0.0
    for k in range(nr):
        rmax = max(rmax, radii[k])
    mr = int(np.ceil(rmax)) + 1
    for g in prange(stripe_start.size - 1):
        s0, s1 = stripe_start[g], stripe_start[g + 1]
        if s1 <= s0:
            continue
        ns = s1 - s0
        acc = np.zeros((ns, nr, 5))
        pre = np.empty((w + 1, 5))  # prefix sums of one row: image, original, variance, invalid, EXCLUDED counts
        iy = np.empty(ns, np.int64)
        for q in range(ns):
            iy[q] = int(np.floor(yl[order[s0 + q]] + 0.5))
        y_first = max(iy[0] - mr, 0)
        y_last = min(iy[ns - 1] + mr, h - 1)
        qa = 0
        qb = 0
        for row in range(y_first, y_last + 1):
            while qa < ns and iy[qa] < row - mr:
                qa += 1
            while qb < ns and iy[qb] <= row + mr:
                qb += 1
            if qa >= qb:
                continue
            si = 0.0
            so = 0.0
            sv = 0.0
            sb = 0.0
            se = 0.0
            pre[0, 0] = 0.0
            pre[0, 1] = 0.0
            pre[0, 2] = 0.0
            pre[0, 3] = 0.0
            pre[0, 4] = 0.0
            for x in range(w):
                cls = valid[row, x]
                if cls:
                    si += image[row, x]
                    sv += variance[row, x]
                    if both:
                        so += original[row, x]
                    if cls == EXCLUDED:
                        se += 1.0
                else:
                    sb += 1.0
                pre[x + 1, 0] = si
                pre[x + 1, 1] = so
                pre[x + 1, 2] = sv
                pre[x + 1, 3] = sb
                pre[x + 1, 4] = se
            for q in range(qa, qb):
                src = order[s0 + q]
                x_c, y_c = xl[src], yl[src]
                dy2 = (row - y_c) ** 2
                for k in range(nr - 1, -1, -1):  # radii ascending: stop at the first disk the row misses
                    r = radii[k]
                    d2 = r * r - dy2
                    if d2 < 0:
                        break
                    if not todo[src, k]:
                        continue
                    lo, hi = _disk_run(x_c, y_c, r, row)
                    if hi <= lo:
                        continue
                    c0, c1 = max(lo, 0), min(hi, w)
                    acc[q, k, 3] += (c0 - lo) + (hi - c1)
                    if c1 > c0:
                        acc[q, k, 0] += pre[c1, 0] - pre[c0, 0]
                        acc[q, k, 1] += pre[c1, 1] - pre[c0, 1]
                        acc[q, k, 2] += pre[c1, 2] - pre[c0, 2]
                        acc[q, k, 3] += pre[c1, 3] - pre[c0, 3]
                        acc[q, k, 4] += pre[c1, 4] - pre[c0, 4]
        for q in range(ns):
            src = order[s0 + q]
            x_c, y_c = xl[src], yl[src]
            xs, ys, ds, nd = _own_deltas(fp, src, image, valid)
            for k in range(nr):
                if not todo[src, k]:
                    continue
                r = radii[k]
                a = acc[q, k]
                # rows off the image (never for the untruncated apertures measured)
                m = int(np.ceil(r)) + 1
                for row in range(iy[q] - m, iy[q] + m + 1):
                    if row < 0 or row >= h:
                        lo, hi = _disk_run(x_c, y_c, r, row)
                        if hi > lo:
                            a[3] += hi - lo
                f = a[0]
                last_row = -1 << 62
                lo, hi = 0, 0
                for p in range(nd):  # own footprint: + (heavy - B) on its pixels in the same runs
                    if ys[p] != last_row:
                        last_row = ys[p]
                        lo, hi = _disk_run(x_c, y_c, r, last_row)
                    if lo <= xs[p] < hi:
                        f += ds[p]
                flux[src, k] = f
                if both:
                    flux_u[src, k] = a[1]
                var[src, k] = a[2]
                bad[src, k] = a[3]
                excl[src, k] = a[4]
    return flux, flux_u, var, bad, excl


def row_stripes(yl: np.ndarray, measure: np.ndarray, height: int, rows_per_stripe: int):
    """(order, stripe_start): measured sources sorted by nearest row, in stripes of ``rows_per_stripe`` rows."""
    idx = np.flatnonzero(measure)
    iy = np.floor(yl[idx] + 0.5).astype(np.int64)
    sort = np.argsort(iy, kind="stable")
    n_stripes = max(1, -(-height // rows_per_stripe))
    start = np.searchsorted(iy[sort], np.arange(n_stripes + 1) * rows_per_stripe)
    start[-1] = idx.size
    return idx[sort].astype(np.int64), start.astype(np.int64)


@njit(cache=True, nogil=True)
def _ellipse_run(xl, yl, a, b, c, row):
    """Columns [lo, hi) of pixel centres of ``row`` with a dx^2 + 2 b dx dy + c dy^2 <= 1."""
    dy = row - yl
    disc = b * b * dy * dy - a * (c * dy * dy - 1.0)
    if disc < 0:
        return 0, 0
    root = np.sqrt(disc)
    return int(np.ceil(xl + (-b * dy - root) / a)), int(np.floor(xl + (-b * dy + root) / a)) + 1


@njit(cache=True, parallel=True, nogil=True)
def ellipse_kernel(image, original, variance, valid, fp, xl, yl, qa, qb, qc, half, todo, both, order):
    """Pixel-centre sums in ellipses q(d) = qa dx^2 + 2 qb dx dy + qc dy^2 <= 1, rows -half..half.

    Returns (flux, flux_original, variance, invalid pixel count, EXCLUDED pixel count), each (N,);
    runs are summed directly (no prefix sums), clipped to the image (off-image pixels count as invalid).
    """
    n = xl.size
    flux = np.full(n, np.nan)
    flux_u = np.full(n, np.nan)
    var = np.full(n, np.nan)
    bad = np.zeros(n)
    excl = np.zeros(n)
    h, w = image.shape
    no = order.size
    for blk in prange((no + BLOCK - 1) // BLOCK):
        for q in range(blk * BLOCK, min(no, (blk + 1) * BLOCK)):
            src = order[q]
            if not todo[src]:
                continue
            x_c, y_c = xl[src], yl[src]
            a, b, c = qa[src], qb[src], qc[src]
            iy0 = int(np.floor(y_c + 0.5))
            f = 0.0
            fu = 0.0
            v = 0.0
            nbad = 0
            nexc = 0
            for dy in range(-half[src], half[src] + 1):
                row = iy0 + dy
                lo, hi = _ellipse_run(x_c, y_c, a, b, c, row)
                if hi <= lo:
                    continue
                if row < 0 or row >= h:
                    nbad += hi - lo
                    continue
                c0, c1 = max(lo, 0), min(hi, w)
                nbad += (c0 - lo) + (hi - c1)
                for x in range(c0, c1):
                    cls = valid[row, x]
                    if cls:
                        f += image[row, x]
                        v += variance[row, x]
                        if both:
                            fu += original[row, x]
                        if cls == EXCLUDED:
                            nexc += 1
                    else:
                        nbad += 1
            xs, ys, ds, nd = _own_deltas(fp, src, image, valid)
            last_row = -1 << 62
            lo, hi = 0, 0
            for p in range(nd):
                if ys[p] != last_row:
                    last_row = ys[p]
                    if abs(last_row - iy0) <= half[src]:
                        lo, hi = _ellipse_run(x_c, y_c, a, b, c, last_row)
                    else:
                        lo, hi = 0, 0
                if lo <= xs[p] < hi:
                    f += ds[p]
            flux[src] = f
            if both:
                flux_u[src] = fu
            var[src] = v
            bad[src] = nbad
            excl[src] = nexc
    return flux, flux_u, var, bad, excl


def ellipse_sums(image, original, variance, valid, fp, cx, cy, xl, yl, qa, qb, qc, half, todo, both=False):
    """:func:`ellipse_kernel` on read-only views of the planes, sources in Z order of (cx, cy)."""
    image, original, variance, valid = read_only(image, original, variance, valid)
    todo = np.ascontiguousarray(todo, np.uint8)
    f64 = [np.ascontiguousarray(a, np.float64) for a in (xl, yl, qa, qb, qc)]
    return ellipse_kernel(image, original, variance, valid, fp, *f64, np.ascontiguousarray(half, np.int64), todo,
                          bool(both), spatial_order(cx, cy, todo))


def _warm_planes():
    """Tiny planes with the dtypes and flags the plugins pass (see forcedphot.compile)."""
    image = np.zeros((16, 16), np.float32)
    return image, np.ones((16, 16), np.float32), np.ones((16, 16), np.uint8), no_footprints(1)


def _warm_exact():
    image, variance, valid, fp = _warm_planes()
    one_i, one_f = np.full(1, 8, np.int64), np.zeros(1)
    exact_apertures(image, variance, valid, one_i, one_i, one_f, one_f, np.array([3.0]), False)
    exact_fluxes(image, image, variance, valid, fp, one_i, one_i, one_f, one_f, np.ones((1, 1), np.uint8),
                 np.array([3.0]), True, True)


def _warm_ellipse():
    image, variance, valid, fp = _warm_planes()
    one_i, one_f = np.full(1, 8, np.int64), np.zeros(1)
    ellipse_sums(image, image, variance, valid, fp, one_i, one_i, one_f + 8, one_f + 8, one_f + 1, one_f, one_f + 1,
                 np.full(1, 3, np.int64), np.ones(1, np.uint8), True)


# the signatures the pipeline compiles (see forcedphot.compile), in entries that can
# compile side by side
WARMUP = [_warm_exact, _warm_ellipse]  # the sinc and naive kernels: kernels/aperture_sinc.py, aperture_naive.py
