"""Footprint and plane kernels: the validity plane, noise written over footprint spans, mask ORs over footprints.

All work from the spans (y, x0, x1 inclusive) directly: nothing is expanded to per-pixel arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, nogil=True)
def valid_pixels(image, variance, mask, no_data):
    """uint8 plane: 1 where the image is finite, the variance finite and positive, and NO_DATA is not set.

    A pixel of zero or negative variance would give errors of 0 or NaN: it is invalid, as NO_DATA,
    so every measurement that touches it is flagged (checked at load by :mod:`forcedphot.checks`).
    """
    h, w = image.shape
    out = np.empty((h, w), np.uint8)
    for y in prange(h):
        for x in range(w):
            v = variance[y, x]
            out[y, x] = np.isfinite(image[y, x]) and np.isfinite(v) and v > 0 and (mask[y, x] & no_data) == 0
    return out


@njit(cache=True, nogil=True)
def write_noise(base, z, z_start, draw_off, bbox, has, span_off, span_y, span_x0, span_x1, f0, f1, origin_x,
                origin_y, mean, sigma):
    """Write the noise of footprints f0..f1-1 into ``base`` (H, W), in catalogue order (the last one wins).

    Footprint f's noise is z[draw_off[f] - z_start:] laid out over its bounding box ``bbox[f]``
    (min_x, min_y, max_x, max_y; tract pixels, as the spans), row-major; a pixel gets
    float32(z * sigma + mean). One thread, footprint after footprint: the normals stream in
    order (a row-parallel writer, jumping between footprints' draws on every row, is slower),
    and the noise draws of the next chunk overlap it (nogil).
    """
    h, w = base.shape
    for f in range(f0, f1):
        if not has[f]:
            continue
        bx0, by0 = bbox[f, 0], bbox[f, 1]
        bw = bbox[f, 2] - bx0 + 1
        for s in range(span_off[f], span_off[f + 1]):
            y = span_y[s] - origin_y
            if y < 0 or y >= h:
                continue
            row = draw_off[f] - z_start + (span_y[s] - by0) * bw - bx0 + origin_x  # z index of local x = 0
            for x in range(max(span_x0[s] - origin_x, 0), min(span_x1[s] - origin_x, w - 1) + 1):
                base[y, x] = np.float32(z[row + x] * sigma + mean)


@njit(cache=True, parallel=True, nogil=True)
def footprint_mask_or(mask, valid, no_data, span_off, span_y, span_x0, span_x1, origin_x, origin_y, has, cx, cy):
    """(OR of the mask over each source's own footprint, OR and AND over the 3x3 box at local pixel (cx, cy)).

    A pixel's mask is its plane value, with NO_DATA added where it is invalid; off the coadd it is
    NO_DATA alone. Spans are in tract pixels (``origin``: tract pixel of mask[0, 0]). A source
    without a footprint (``has`` 0) gets the box OR as its footprint OR.
    """
    n = cx.size
    h, w = mask.shape
    fp_or = np.zeros(n, np.int32)
    c_or = np.zeros(n, np.int32)
    c_and = np.zeros(n, np.int32)
    for src in prange(n):
        any_, all_ = np.int32(0), np.int32(-1)
        for y in range(cy[src] - 1, cy[src] + 2):
            for x in range(cx[src] - 1, cx[src] + 2):
                m = no_data
                if 0 <= y < h and 0 <= x < w:
                    m = mask[y, x] if valid[y, x] else mask[y, x] | no_data
                any_ |= m
                all_ &= m
        c_or[src], c_and[src] = any_, all_
        if not has[src]:
            fp_or[src] = any_
            continue
        acc = np.int32(0)
        for s in range(span_off[src], span_off[src + 1]):
            y = span_y[s] - origin_y
            x0, x1 = span_x0[s] - origin_x, span_x1[s] - origin_x
            if x1 < x0:
                continue
            if y < 0 or y >= h or x0 < 0 or x1 >= w:
                acc |= no_data
                if y < 0 or y >= h:
                    continue
            for x in range(max(x0, 0), min(x1, w - 1) + 1):
                acc |= mask[y, x] if valid[y, x] else mask[y, x] | no_data
        fp_or[src] = acc
    return fp_or, c_or, c_and


EXCLUDED = 2  # pixel_classes: a valid pixel in an excluded mask plane


@njit(cache=True, parallel=True, nogil=True)
def pixel_classes(valid, mask, bits):
    """uint8 plane: 0 invalid, 1 valid, EXCLUDED (2) valid but with one of the mask ``bits``.

    Kernels that sum over pixels read it as their validity plane (nonzero: summed) and count the
    EXCLUDED pixels they touch, in the same pass; the PSF fit leaves those out.
    """
    h, w = valid.shape
    out = np.empty((h, w), np.uint8)
    for y in prange(h):
        for x in range(w):
            out[y, x] = 0 if valid[y, x] == 0 else (EXCLUDED if (mask[y, x] & bits) != 0 else 1)
    return out


@njit(cache=True)
def span_checks(span_off, span_y, span_x0, span_x1, bbox):
    """(pixel count of each footprint's spans, 1 where a footprint has a pixel outside its bbox)."""
    n = span_off.size - 1
    pixels = np.zeros(n, np.int64)
    outside = np.zeros(n, np.uint8)
    for f in range(n):
        for s in range(span_off[f], span_off[f + 1]):
            x0, x1, y = span_x0[s], span_x1[s], span_y[s]
            pixels[f] += x1 - x0 + 1
            if x1 >= x0 and (x0 < bbox[f, 0] or x1 > bbox[f, 2] or y < bbox[f, 1] or y > bbox[f, 3]):
                outside[f] = 1
    return pixels, outside


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # as the memory-mapped planes the pipeline passes
    return a


def _warm():
    """The signatures the pipeline compiles (see forcedphot.compile)."""
    image = _frozen(np.zeros((4, 4), np.float32))
    mask = _frozen(np.zeros((4, 4), np.int32))
    valid = valid_pixels(image, image, mask, np.int32(1))
    pixel_classes(valid, mask, np.int32(1))
    offsets = np.array([0, 1], np.int64)
    y, x0, x1 = np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1, np.int32)
    bbox = np.array([[0, 0, 1, 0]], np.int64)
    footprint_mask_or(mask, valid, np.int32(1), offsets, y, x0, x1, 0, 0, np.ones(1, np.uint8), np.ones(1, np.int64),
                      np.ones(1, np.int64))
    span_checks(offsets, y, x0, x1, bbox)
    write_noise(np.zeros((4, 4), np.float32), np.zeros(2), 0, np.array([0, 2], np.int64), bbox, np.ones(1, np.uint8),
                offsets, y, x0, x1, 0, 1, 0, 0, 0.0, 1.0)


WARMUP = [_warm]
