"""Footprints for catalog objects: ellipses as run-length spans, built for all objects at once.

Planning needs a footprint per object per band; an external catalog has no detection
footprints, so an object's footprint is its shape ellipse scaled by 3 (or by its Kron
radius, in units of the shape, if larger), or a circle of 2 PSF FWHM without a shape, always including the 3x3
box at its centre and clipped to the patch's coadd. An ellipse is convex, so every row
is one span whose ends are closed-form: spans come out of a few array operations over
all (object, row) pairs, in the row-ascending order of :func:`forcedphot.footprint.mask_to_spans`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from forcedphot.footprint import spans_to_pixels
from forcedphot.skymap import Box

SHAPE_SCALE = 3.0  # footprint ellipse = this many sigma of the catalog's second moments
PSF_RADII = 2.0  # footprint circle radius in PSF FWHM when an object has no shape


def footprint_ellipses(shape: np.ndarray | None, kron: np.ndarray | None, n: int, psf_fwhm: float) -> np.ndarray:
    """(N, 2, 2) matrices Q of the ellipses d^T Q^-1 d <= 1 (shape scaled, or the PSF circle).

    ``kron`` is sqrt(ab) in pixels (the ref schema's kron_radius).
    """
    circle = np.eye(2) * (PSF_RADII * psf_fwhm) ** 2
    q = np.broadcast_to(circle, (n, 2, 2)).copy()
    if shape is not None:
        scale = np.full(n, SHAPE_SCALE)
        if kron is not None:  # pixels -> units of the shape's semi-axes
            with np.errstate(invalid="ignore", divide="ignore"):
                k = kron / (shape[:, 0, 0] * shape[:, 1, 1] - shape[:, 0, 1] ** 2) ** 0.25
            scale = np.fmax(scale, np.where(np.isfinite(k), k, 0.0))
        good = np.all(np.isfinite(shape), axis=(1, 2))
        q[good] = shape[good] * (scale[good] ** 2)[:, None, None]
    return q


def ellipse_spans(x, y, q: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(offsets (N+1,), span_y, span_x0, span_x1) of pixel centres inside each ellipse.

    Union with the 3x3 box at the (box-clamped) nearest pixel, so every object has at
    least one span; clipped to ``box``.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    xi = np.clip(np.floor(x + 0.5), box.min_x, box.max_x).astype(np.int64)
    yi = np.clip(np.floor(y + 0.5), box.min_y, box.max_y).astype(np.int64)
    qxx, qyy, qxy = q[:, 0, 0], q[:, 1, 1], q[:, 0, 1]
    det = qxx * qyy - qxy * qxy
    ry = np.sqrt(qyy)
    y_lo = np.maximum(np.minimum(np.ceil(y - ry), yi - 1), box.min_y).astype(np.int64)
    y_hi = np.minimum(np.maximum(np.floor(y + ry), yi + 1), box.max_y).astype(np.int64)
    nrows = np.maximum(y_hi - y_lo + 1, 0)
    obj = np.repeat(np.arange(n), nrows)
    first = np.repeat(np.cumsum(nrows) - nrows, nrows)
    row = np.repeat(y_lo, nrows) + (np.arange(obj.size) - first)
    dy = row - y[obj]
    # inverse [[a, b], [b, c]] of Q: a dx^2 + 2 b dx dy + c dy^2 <= 1
    a = (qyy / det)[obj]
    b = (-qxy / det)[obj]
    c = (qxx / det)[obj]
    disc = b * b * dy * dy - a * (c * dy * dy - 1.0)
    inside = disc >= 0
    half = np.sqrt(np.where(inside, disc, 0.0)) / a
    mid = x[obj] - b * dy / a
    x0 = np.ceil(mid - half - 1e-9).astype(np.int64)
    x1 = np.floor(mid + half + 1e-9).astype(np.int64)
    inside &= x0 <= x1
    near = np.abs(row - yi[obj]) <= 1
    xc = xi[obj]
    x0 = np.where(near, np.where(inside, np.minimum(x0, xc - 1), xc - 1), x0)
    x1 = np.where(near, np.where(inside, np.maximum(x1, xc + 1), xc + 1), x1)
    x0 = np.maximum(x0, box.min_x)
    x1 = np.minimum(x1, box.max_x)
    keep = (inside | near) & (x0 <= x1)
    counts = np.bincount(obj[keep], minlength=n)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return offsets, row[keep].astype(np.int32), x0[keep].astype(np.int32), x1[keep].astype(np.int32)


def _list(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def footprint_table(*, ids, parents, tract: int, patch: int, band: str, spans, image: np.ndarray,
                    image_box: Box, scale: np.ndarray | None = None, zero_flux: np.ndarray | None = None) -> pa.Table:
    """Footprint rows in the footprints schema's columns.

    Heavy values are the band's image pixels, times ``scale`` (one factor per footprint
    pixel, in row and span order: the deblender's ratios for children) when given.
    ``zero_flux`` (per row: 1 / 0, NaN for null) is the deblender's ``deblend_zeroFlux``;
    without it the column is left out (the writer fills the schema's nullable columns).
    """
    offsets, sy, sx0, sx1 = spans
    n = offsets.size - 1
    ys, xs = spans_to_pixels(sy, sx0, sx1)
    values = image[ys - image_box.min_y, xs - image_box.min_x]
    if scale is not None:
        values = np.asarray(values, np.float64) * scale
    values = np.asarray(values, np.float32)
    npix = (sx1.astype(np.int64) - sx0 + 1)
    pix_offsets = np.r_[0, np.cumsum(npix)][offsets]
    starts = offsets[:-1]
    if n:
        bbox = [np.minimum.reduceat(sx0, starts), np.minimum.reduceat(sy, starts),
                np.maximum.reduceat(sx1, starts), np.maximum.reduceat(sy, starts)]
    else:
        bbox = [np.zeros(0, np.int32)] * 4
    extra = {}
    if zero_flux is not None:
        zero_flux = np.asarray(zero_flux, float)
        extra["deblend_zeroFlux"] = pa.array(zero_flux == 1.0, pa.bool_(), mask=np.isnan(zero_flux))
    return pa.table({
        "id": pa.array(np.asarray(ids, np.int64)), "parent": pa.array(np.asarray(parents, np.int64)),
        "tract": pa.array(np.full(n, tract, np.int64)), "patch": pa.array(np.full(n, patch, np.int64)),
        "band": pa.array([band] * n, pa.string()),
        "bbox_min_x": bbox[0], "bbox_min_y": bbox[1], "bbox_max_x": bbox[2], "bbox_max_y": bbox[3],
        "span_y": _list(offsets, sy), "span_x0": _list(offsets, sx0), "span_x1": _list(offsets, sx1),
        "values": _list(pix_offsets, values),
        **extra,
    })
