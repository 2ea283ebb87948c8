"""Per-source pixel access for compiled kernels: stamps read straight from the coadd planes.

Kernels get the quantum's planes as (H, W) arrays in coadd-local pixels (the memory-mapped
coadd's own, no padded copies) and build the few pixels each source needs in per-source
scratch, so memory is bounded by one stamp per thread. Off-image pixels read as invalid.

``valid`` (uint8) is 1 where the original image and the variance are finite and NO_DATA is
not set; invalid pixels read as 0 in image and variance (they contribute nothing and flag
what they touch).

Noise replacement: a source's image is the noise image B with its own footprint's heavy
values put back. Footprints come as one tuple ``fp`` of CSR arrays (see
:class:`forcedphot.stages.SourcePixels`)::

    fp = (used, span_offsets, span_y, span_x0, span_x1, value_offsets, values)

``used[src]`` is the footprint row source ``src`` is measured with (-1: none, e.g. the
undeblended image); spans are in coadd-local pixels; heavy values follow span order.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def fill_stamp(image, variance, mask, valid, cy, cx, half, img, var, msk, ok):
    """Copy the (2h+1)^2 pixels around local pixel (cx, cy) into img, var (float64), msk, ok (uint8)."""
    h, w = image.shape
    size = 2 * half + 1
    for j in range(size):
        y = cy - half + j
        inside_y = 0 <= y < h
        for i in range(size):
            x = cx - half + i
            if inside_y and 0 <= x < w:
                msk[j, i] = mask[y, x]
                if valid[y, x]:
                    img[j, i] = image[y, x]
                    var[j, i] = variance[y, x]
                    ok[j, i] = 1
                    continue
            else:
                msk[j, i] = -1  # off the coadd: every plane bit set (NO_DATA included)
            img[j, i] = 0.0
            var[j, i] = 0.0
            ok[j, i] = 0


@njit(cache=True, nogil=True)
def insert_footprint_box(fp, src, cy, cx, hy, hx, img, ok, zero_is_ok=False):
    """Put source ``src``'s own heavy values into its (2hy+1) x (2hx+1) stamp centred on local pixel
    (cx, cy), where ``ok`` is nonzero (``zero_is_ok``: where it is 0); no-op without a footprint."""
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    f = used[src]
    if f < 0:
        return
    ny = 2 * hy + 1
    k = val_off[f]
    for s in range(span_off[f], span_off[f + 1]):
        y, x0, x1 = span_y[s], span_x0[s], span_x1[s]
        j = y - cy + hy
        if 0 <= j < ny:
            lo = max(x0, cx - hx)
            hi = min(x1, cx + hx)
            for x in range(lo, hi + 1):
                i = x - cx + hx
                if (ok[j, i] != 0) != zero_is_ok:
                    img[j, i] = values[k + x - x0]
        k += x1 - x0 + 1


@njit(cache=True, nogil=True)
def insert_footprint(fp, src, cy, cx, half, img, ok):
    """Put source ``src``'s own heavy values into its square stamp (valid pixels only); no-op without one."""
    insert_footprint_box(fp, src, cy, cx, half, half, img, ok)


@njit(cache=True, nogil=True)
def source_stamp(image, variance, mask, valid, fp, src, cy, cx, half, img, var, msk, ok):
    """fill_stamp, then the source's own footprint (what the source looks like alone)."""
    fill_stamp(image, variance, mask, valid, cy, cx, half, img, var, msk, ok)
    insert_footprint(fp, src, cy, cx, half, img, ok)


@njit(cache=True, nogil=True)
def footprint_size(fp, src):
    """Number of pixels of the footprint source ``src`` is measured with (0 without one)."""
    used, _, _, _, _, val_off, _ = fp
    f = used[src]
    return 0 if f < 0 else val_off[f + 1] - val_off[f]


@njit(cache=True, nogil=True)
def footprint_deltas(fp, src, image, valid, xs, ys, deltas):
    """(x, y, heavy - image) of the source's own valid on-image footprint pixels; returns their count.

    ``xs, ys, deltas`` need footprint_size(fp, src) elements. A sum taken over the noise image
    ``image`` plus sum(w(x, y) * delta) is the sum over the source's own image; the cost is
    linear in footprint pixels, whatever the aperture.
    """
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    f = used[src]
    if f < 0:
        return 0
    h, w = image.shape
    n = 0
    k = val_off[f]
    for s in range(span_off[f], span_off[f + 1]):
        y, x0, x1 = span_y[s], span_x0[s], span_x1[s]
        if 0 <= y < h:
            for x in range(max(x0, 0), min(x1, w - 1) + 1):
                if valid[y, x]:
                    xs[n] = x
                    ys[n] = y
                    deltas[n] = np.float64(values[k + x - x0]) - np.float64(image[y, x])  # not in float32
                    n += 1
        k += x1 - x0 + 1
    return n


def no_footprints(n: int) -> tuple:
    """The ``fp`` tuple of a measurement without noise replacement (every ``used`` = -1)."""
    z64 = np.zeros(1, np.int64)
    z32 = np.zeros(0, np.int32)
    return (np.full(n, -1, np.int64), z64, z32, z32, z32, z64, np.zeros(0, np.float32))
