"""PSF kernels: each source's PSF model image and its PSF flux fit, one source at a time per thread.

The PSF at a source is the bilinear interpolation of the four nearest grid node images
(clamped at the grid's edge), shifted to the source's sub-pixel offset (dx, dy) by the exact
band-limited (periodic sinc) interpolation, i.e. a Fourier phase ramp. K is odd, so that
shift is a circulant matrix whose kernel is the Dirichlet kernel::

    D_K(t) = sin(pi t) / (K sin(pi t / K)),    shifted = Sy . P . Sx^T,
    Sy[i, m] = D_K(i - m - dy),  Sx[j, m] = D_K(j - m - dx)    (offsets wrapped into [-K//2, K//2])

2 K^3 multiply-adds per source (a zero offset skips its axis); equal to the irfft2 of the
phase-ramped spectrum to ~1e-15 of the peak. :func:`psf_flux` makes each PSF image once, in
per-thread scratch, and fits it to the noise-replaced image (with the source's own heavy
footprint) and, in the same pass, to the original image.

Every source is computed independently with its sums in an order fixed by the compiled code,
so results do not depend on the thread count or on how sources are split into chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from forcedphot.kernels.prefetch import prefetch_rows

CHUNK = 32  # sources per scratch allocation and per prange task (results do not depend on it)


@njit(cache=True, nogil=True, error_model="numpy")
def node_weights(c, nodes):
    """(lower node, upper node, weight of the upper) of coordinate ``c``, clamped to the grid (PsfGrid._weights)."""
    n = nodes.size
    if n == 1:
        return 0, 0, 0.0
    c = min(max(c, nodes[0]), nodes[n - 1])
    i = 0
    while i < n - 2 and nodes[i + 1] <= c:  # searchsorted(nodes, c, "right") - 1, clipped to [0, n - 2]
        i += 1
    return i, i + 1, (c - nodes[i]) / (nodes[i + 1] - nodes[i])


@njit(cache=True, nogil=True)
def interpolate(images, node_x, node_y, x, y, out):
    """Bilinear interpolation of the (ny, nx, K, K) node images at tract position (x, y) into out."""
    ix0, ix1, tx = node_weights(x, node_x)
    iy0, iy1, ty = node_weights(y, node_y)
    w00 = (1 - tx) * (1 - ty)
    w01 = tx * (1 - ty)
    w10 = (1 - tx) * ty
    w11 = tx * ty
    g00 = images[iy0, ix0]
    g01 = images[iy0, ix1]
    g10 = images[iy1, ix0]
    g11 = images[iy1, ix1]
    k = out.shape[0]
    for i in range(k):
        for j in range(k):
            out[i, j] = w00 * g00[i, j] + w01 * g01[i, j] + w10 * g10[i, j] + w11 * g11[i, j]


@njit(cache=True, nogil=True)
def trig_table(k, table):
    """table[0, o] = sin(pi o / K), table[1, o] = cos(pi o / K) for o = -K//2..K//2 (index o + K//2)."""
    h = k // 2
    for o in range(-h, h + 1):
        table[0, o + h] = np.sin(np.pi * o / k)
        table[1, o + h] = np.cos(np.pi * o / k)


@njit(cache=True, nogil=True, error_model="numpy")
def dirichlet(d, k, table, c):
    """c[K + t] = c[t] = D_K(t - d) for the offsets t = 0..K-1 taken modulo K into [-K//2, K//2]; d != 0.

    ``c`` has 2K elements (the kernel twice, so that circulant rows are contiguous slices).
    sin(pi (t - d)) = -(-1)^t sin(pi d), and sin(pi (t - d) / K) by the angle difference from
    ``table`` (see trig_table): three trigonometric calls per shift, not K.
    """
    h = k // 2
    s = np.sin(np.pi * d)
    sd = np.sin(np.pi * d / k)
    cd = np.cos(np.pi * d / k)
    for t in range(-h, h + 1):
        num = -s if t % 2 == 0 else s
        v = num / (k * (table[0, t + h] * cd - table[1, t + h] * sd))
        c[t % k] = v
        c[t % k + k] = v


@njit(cache=True, nogil=True)
def shift_x(dx, k, table, c, out):
    """out = Sx^T: out[r, s] = D_K(s - r - dx) = c[s - r + K] (rows are windows of the doubled kernel)."""
    dirichlet(dx, k, table, c)
    for r in range(k):
        row = out[r]
        o = k - r
        for t in range(k):
            row[t] = c[o + t]


@njit(cache=True, nogil=True)
def shift_y(dy, k, table, c, out):
    """out = Sy: out[r, s] = D_K(r - s - dy) = c[r - s + K]."""
    dirichlet(dy, k, table, c)
    for r in range(k):
        row = out[r]
        o = r + k
        for t in range(k):
            row[t] = c[o - t]


@njit(cache=True, nogil=True, fastmath={"contract"})
def matmul_rows(a, b, out, i0, i1):
    """Rows i0..i1-1 (at most two) of out = a @ b, (K, K) C-contiguous float64; each element summed in order.

    Four inner indices per pass along the rows (vectorised along them), two rows at once: fewer
    loads and stores per multiply-add, no element's sum reordered.
    """
    k = a.shape[0]
    mb = k - k % 4
    if i1 - i0 == 2:
        c0 = out[i0]
        c1 = out[i0 + 1]
        r0 = a[i0]
        r1 = a[i0 + 1]
        for j in range(k):
            c0[j] = 0.0
            c1[j] = 0.0
        for m in range(0, mb, 4):
            x0 = r0[m]
            x1 = r0[m + 1]
            x2 = r0[m + 2]
            x3 = r0[m + 3]
            y0 = r1[m]
            y1 = r1[m + 1]
            y2 = r1[m + 2]
            y3 = r1[m + 3]
            b0 = b[m]
            b1 = b[m + 1]
            b2 = b[m + 2]
            b3 = b[m + 3]
            for j in range(k):
                u0 = b0[j]
                u1 = b1[j]
                u2 = b2[j]
                u3 = b3[j]
                t = c0[j]
                t += x0 * u0
                t += x1 * u1
                t += x2 * u2
                t += x3 * u3
                c0[j] = t
                t = c1[j]
                t += y0 * u0
                t += y1 * u1
                t += y2 * u2
                t += y3 * u3
                c1[j] = t
        for m in range(mb, k):
            x0 = r0[m]
            y0 = r1[m]
            bm = b[m]
            for j in range(k):
                c0[j] += x0 * bm[j]
                c1[j] += y0 * bm[j]
    else:
        for i in range(i0, i1):
            ci = out[i]
            ai = a[i]
            for j in range(k):
                ci[j] = 0.0
            for m in range(k):
                am = ai[m]
                bm = b[m]
                for j in range(k):
                    ci[j] += am * bm[j]


@njit(cache=True, nogil=True)
def product(a, b, out, ahead, j0):
    """out = a @ b, two rows at a time; after each pair, one row (j0, j0 + 1, ...) of ``ahead``'s box is prefetched.

    ``ahead`` = (on, cy, cx, image, original, variance, good, undeblended): the box the next
    source's fit will read, so that its pixels arrive while this product is computed.
    """
    k = a.shape[0]
    on, cy, cx, image, original, variance, good, undeblended = ahead
    for i in range(0, k, 2):
        if on:
            prefetch_rows(cy, cx, k // 2, j0 + i // 2, j0 + i // 2 + 1, image, original, variance, good, undeblended)
        matmul_rows(a, b, out, i, min(i + 2, k))


@njit(cache=True, nogil=True)
def copy_into(a, out):
    """out[...] = a for (K, K) arrays (explicit loops: slice assignment is slow to compile)."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = a[i, j]


@njit(cache=True, nogil=True)
def psf_image(images, node_x, node_y, x, y, dx, dy, table, p0, q, out, sx, sy, c, ahead):
    """PSF image at tract (x, y) shifted by (dx, dy) into ``out``; p0, q, sx, sy (K, K), c (2K,) scratch.

    The next source's box (``ahead``, see product) is prefetched meanwhile: rows 0..K//2 during
    the x shift, the others during the y shift.
    """
    k = out.shape[0]
    half = k // 2
    on, cy, cx, image, original, variance, good, undeblended = ahead
    first = np.int64(0)  # (typed int64, not a literal: one compiled signature per callee)
    interpolate(images, node_x, node_y, x, y, p0)
    if dx != 0.0:
        shift_x(dx, k, table, c, sx)
        product(p0, sx, q, ahead, first)
    else:
        copy_into(p0, q)
        if on:
            prefetch_rows(cy, cx, half, first, half + 1, image, original, variance, good, undeblended)
    if dy != 0.0:
        shift_y(dy, k, table, c, sy)
        product(sy, q, out, ahead, half + 1)
    else:
        copy_into(q, out)
        if on:
            prefetch_rows(cy, cx, half, half + 1, k, image, original, variance, good, undeblended)


@njit(cache=True, nogil=True)
def psf_images(images, node_x, node_y, x, y, dx, dy, planes):
    """(N, K, K) PSF images at tract (x, y) shifted by (dx, dy); serial (PsfGrid.images_at, for a few sources).

    ``planes``: any (image, original, variance, good) of the fit's types (nothing is read).
    """
    n = x.size
    k = images.shape[-1]
    out = np.empty((n, k, k))
    table, c, p0, q, _, sx, sy, _, _, _ = new_scratch(k)
    image, original, variance, good = planes
    off = n < 0  # False (typed bool, not a literal: the same signatures as psf_flux's)
    ahead = (off, np.int64(0), np.int64(0), image, original, variance, good, off)
    for s in range(n):
        psf_image(images, node_x, node_y, x[s], y[s], dx[s], dy[s], table, p0, q, out[s], sx, sy, c, ahead)
    return out


@njit(cache=True, nogil=True)
def own_heavy(fp, src, cy, cx, half, hv, has):
    """Source ``src``'s own heavy values inside its box into hv, with has = 1 there (has is all 0 on entry).

    Returns the count of pixels set (0 without a footprint); clear them (``clear_heavy``) after use.
    """
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    f = used[src]
    if f < 0:
        return 0
    size = 2 * half + 1
    n = 0
    k = val_off[f]
    for s in range(span_off[f], span_off[f + 1]):
        y, x0, x1 = span_y[s], span_x0[s], span_x1[s]
        j = y - cy + half
        if 0 <= j < size:
            for x in range(max(x0, cx - half), min(x1, cx + half) + 1):
                i = x - cx + half
                has[j, i] = 1
                hv[j, i] = values[k + x - x0]
                n += 1
        k += x1 - x0 + 1
    return n


@njit(cache=True, nogil=True)
def clear_heavy(fp, src, cy, cx, half, has):
    """Undo own_heavy's marks (has back to all 0), touching only the footprint's pixels."""
    used, span_off, span_y, span_x0, span_x1, _, _ = fp
    f = used[src]
    size = 2 * half + 1
    for s in range(span_off[f], span_off[f + 1]):
        j = span_y[s] - cy + half
        if 0 <= j < size:
            for x in range(max(span_x0[s], cx - half), min(span_x1[s], cx + half) + 1):
                has[j, x - cx + half] = 0


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def fit_sums(p, cy, cx, image, original, variance, good, hv, has, undeblended, sums):
    """The PSF fit's sums over the good pixels of the box centred on local pixel (cx, cy).

    ``good``: the pixel classes (footprints.pixel_classes): 1 fitted, 2 left out for a bad mask
    plane, 0 invalid. sums = (npix, sum P, sum P^2, sum P^2 V, sum P^2/V, then sum P D, sum P D/V,
    sum D^2/V for ``image`` with the heavy values ``hv`` where ``has``, then the same three for
    ``original``, then the count and sum P^2 of the pixels left out for a bad mask plane).
    Branch-free along each row, so the compiler vectorises it: the summation order is fixed
    by the compiled code (the same for every source and thread count).
    """
    k = p.shape[0]
    half = k // 2
    h, w = image.shape
    x0 = cx - half
    y0 = cy - half
    ilo = max(0, -x0)
    ihi = min(k, w - x0)
    ng = 0
    sp = 0.0
    spp = 0.0
    sppv = 0.0
    sppi = 0.0
    spd = 0.0
    spdi = 0.0
    sddi = 0.0
    spd2 = 0.0
    spdi2 = 0.0
    sddi2 = 0.0
    nx = 0
    sppx = 0.0
    for j in range(max(0, -y0), min(k, h - y0)):
        yy = y0 + j
        pr = p[j, ilo:ihi]
        hr = hv[j, ilo:ihi]
        fr = has[j, ilo:ihi]
        ir = image[yy, x0 + ilo:x0 + ihi]
        vr = variance[yy, x0 + ilo:x0 + ihi]
        gr = good[yy, x0 + ilo:x0 + ihi]
        orr = original[yy, x0 + ilo:x0 + ihi]
        for i in range(pr.size):  # loads unconditional, then selects: no masked loads
            cls = gr[i]
            g = cls == 1
            pv = pr[i]
            px = pv if cls == 2 else 0.0  # left out for a bad mask plane: its PSF weight is counted
            nx += 1 if cls == 2 else 0
            sppx += px * px
            v = np.float64(vr[i])
            h0 = hr[i]
            d = np.float64(ir[i])
            e = np.float64(orr[i])
            d = h0 if fr[i] != 0 else d
            pv = pv if g else 0.0
            v = v if g else 0.0
            d = d if g else 0.0
            e = e if g else 0.0
            iv = 1.0 / v if v > 0 else 0.0
            ng += 1 if g else 0
            pp = pv * pv
            u = pv * iv
            sp += pv
            spp += pp
            sppv += pp * v
            sppi += pp * iv
            spd += pv * d
            spdi += u * d
            sddi += d * d * iv
            if undeblended:
                spd2 += pv * e
                spdi2 += u * e
                sddi2 += e * e * iv
    sums[0] = ng
    sums[1] = sp
    sums[2] = spp
    sums[3] = sppv
    sums[4] = sppi
    sums[5] = spd
    sums[6] = spdi
    sums[7] = sddi
    sums[8] = spd2
    sums[9] = spdi2
    sums[10] = sddi2
    sums[11] = nx
    sums[12] = sppx


@njit(cache=True, nogil=True, error_model="numpy")
def measure_source(s, images, node_x, node_y, x, y, cx, cy, fx, fy, image, original, variance, good, fp,
                   undeblended, max_bad, scratch, out, ahead):
    """PsfFlux of source ``s`` into column ``s`` of the outputs (see psf_flux); ``scratch`` from new_scratch,
    ``ahead`` the next source's box to prefetch (see product)."""
    table, c, p0, q, p, sx, sy, hv, has, sums = scratch
    flux, err, chi2, area, npix, no_good, edge, flag, bad = out
    k = p.shape[0]
    psf_image(images, node_x, node_y, x[s], y[s], fx[s], fy[s], table, p0, q, p, sx, sy, c, ahead)
    inserted = own_heavy(fp, s, cy[s], cx[s], k // 2, hv, has)
    fit_sums(p, cy[s], cx[s], image, original, variance, good, hv, has, undeblended, sums)
    if inserted:
        clear_heavy(fp, s, cy[s], cx[s], k // 2, has)
    ng = int(sums[0])
    nx = int(sums[11])
    sp, spp, sppv, sppi = sums[1], sums[2], sums[3], sums[4]
    too_masked = sums[12] > max_bad * (spp + sums[12])  # PSF weight fraction left out for bad mask planes
    for a in range(2 if undeblended else 1):
        npix[a, s] = ng
        bad[a, s] = nx > 0
        if ng == 0:
            no_good[a, s] = True
            continue
        spd, spdi, sddi = sums[5 + 3 * a], sums[6 + 3 * a], sums[7 + 3 * a]
        f = spd / spp
        e = np.sqrt(sppv) / spp
        flux[a, s] = f
        err[a, s] = e
        chi2[a, s] = sddi - 2 * f * spdi + f * f * sppi
        area[a, s] = sp * sp / spp
        edge[a, s] = ng + nx < k * k  # off the coadd or invalid pixels
        flag[a, s] = edge[a, s] or too_masked or not (np.isfinite(f) and np.isfinite(e))


@njit(cache=True, nogil=True)
def new_scratch(k):
    """One thread's scratch: trigonometric table, Dirichlet kernel, five (K, K) float64 images, heavy stamp, sums."""
    table = np.empty((2, k))
    trig_table(k, table)
    return (table, np.empty(2 * k), np.empty((k, k)), np.empty((k, k)), np.empty((k, k)), np.empty((k, k)),
            np.empty((k, k)), np.empty((k, k)), np.zeros((k, k), np.uint8), np.empty(13))


@njit(cache=True, nogil=True)
def new_outputs(npass, n):
    """(flux, err, chi2, area, npix, no_good, edge, flag, bad_pixels), each (npass, n), as for an unusable source."""
    nan = np.full((npass, n), np.nan)
    return (nan, nan.copy(), nan.copy(), nan.copy(), np.zeros((npass, n), np.int32), np.zeros((npass, n), np.bool_),
            np.zeros((npass, n), np.bool_), np.ones((npass, n), np.bool_), np.zeros((npass, n), np.bool_))


@njit(cache=True, parallel=True, nogil=True)
def psf_flux(images, node_x, node_y, x, y, cx, cy, fx, fy, usable, image, original, variance, good, fp, undeblended,
             max_bad):
    """PsfFlux of every source: the linear least-squares amplitude of its PSF image (Rubin's base_PsfFlux).

    Over the good pixels of the K x K box centred on local pixel (cx, cy) (``good``: the pixel
    classes of footprints.pixel_classes, 1 = fitted), with P the PSF image, D the data and V the variance::

        F = sum(P D) / sum(P^2)    err = sqrt(sum(P^2 V)) / sum(P^2)
        chi2 = sum(D^2/V) - 2 F sum(P D/V) + F^2 sum(P^2/V)    area = (sum P)^2 / sum(P^2)

    (1/V taken as 0 where V <= 0). Pass 0 measures ``image`` with each source's own footprint
    put back (``fp``); with ``undeblended`` pass 1 measures ``original`` with the same PSF images.
    Returns (flux, err, chi2, area, npix, no_good, edge, flag, bad_pixels), each (passes, N):
    ``edge`` where off-image or invalid pixels were left out, ``bad_pixels`` where pixels of a bad
    mask plane (class 2) were, and ``flag`` also where those carry more than ``max_bad`` of the
    box's sum P^2 over fitted and left-out pixels. Unusable sources are NaN with only ``flag`` set.
    """
    n = x.size
    k = images.shape[-1]
    out = new_outputs(2 if undeblended else 1, n)
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        scratch = new_scratch(k)
        start = chunk * CHUNK
        end = min(n, start + CHUNK)
        if usable[start]:
            prefetch_rows(cy[start], cx[start], k // 2, np.int64(0), k, image, original, variance, good, undeblended)
        for s in range(start, end):
            nxt = s + 1 < end and usable[s + 1] != 0
            ahead = (nxt, cy[s + 1] if nxt else cy[s], cx[s + 1] if nxt else cx[s], image, original, variance,
                     good, undeblended)
            if usable[s]:
                measure_source(s, images, node_x, node_y, x, y, cx, cy, fx, fy, image, original, variance, good,
                               fp, undeblended, max_bad, scratch, out, ahead)
    return out


def frozen(a: np.ndarray) -> np.ndarray:
    """A read-only view: the planes reach the kernels with one signature (memory-mapped or not)."""
    v = a.view()
    v.flags.writeable = False
    return v


NO_PLANES = tuple(frozen(np.zeros((1, 1), t)) for t in (np.float32, np.float32, np.float32, np.uint8))  # psf_images


def _warm_psf_flux():
    k = 3
    plane = frozen(np.zeros((4, 4), np.float32))
    good = frozen(np.ones((4, 4), np.uint8))
    one_f, one_i = np.zeros(1), np.ones(1, np.int64)
    fp = (np.full(1, -1, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32),
          np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.float32))
    images = np.full((1, 1, k, k), 1.0 / k**2)
    psf_flux(images, one_f, one_f, one_f + 1, one_f + 1, one_i, one_i, one_f + 0.1, one_f, np.ones(1, np.uint8),
             plane, plane, plane, good, fp, True, 0.2)


def _warm_psf_images():
    one_f = np.zeros(1)
    psf_images(np.full((1, 1, 3, 3), 1.0 / 9), one_f, one_f, one_f, one_f, one_f + 0.1, one_f + 0.2, NO_PLANES)


WARMUP = [_warm_psf_flux, _warm_psf_images]
