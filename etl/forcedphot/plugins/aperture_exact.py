"""Exact circular apertures: pixel/circle overlap weights in closed form (SEP/photutils-compatible).

The overlap of a pixel with a disk is written with a "corner function"
A(X, Y) = area of {u <= X, v <= Y} inside the disk of radius r centred at the origin:

    t  = sqrt(max(r^2 - Y^2, 0)),  Xc = clip(X, -r, r),  Xt = clip(Xc, -t, t)
    A  = Y (Xt + t) + H(-t, Xt) + [Y > 0] * 2 (H(-r, min(Xc, -t)) + H(t, max(Xc, t)))
    H(a, b) = G(b) - G(a),  G(u) = (u sqrt(r^2 - u^2) + r^2 asin(u / r)) / 2

and a pixel [x0, x1] x [y0, y1] overlaps the disk by A(x1, y1) - A(x0, y1) - A(x1, y0) + A(x0, y0).

For a batch, every radius has a fixed template relative to the source's nearest pixel:
the *interior* (pixels fully inside for any sub-pixel offset) is summed with row prefix
sums, one lookup per row; only the *boundary band* (pixels within sqrt(2) of the circle)
gets exact weights, evaluated on the shared pixel corners of all sources at once.

Error: sqrt(sum(w^2 var)) by default (photutils >= 3.1), or sqrt(sum(w var)) (SEP and
photutils <= 3.0) with ``aperture_error_weights = "linear"``. Off-image pixels contribute
nothing (as SEP and photutils); the aperture is then flagged as truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SQRT2 = np.sqrt(2.0)


def _g(u: np.ndarray, r: float) -> np.ndarray:
    """G(u) = (u sqrt(r^2 - u^2) + r^2 asin(u / r)) / 2 for |u| <= r."""
    r2 = r * r
    return 0.5 * (u * np.sqrt(np.maximum(r2 - u * u, 0.0)) + r2 * np.arcsin(np.clip(u / r, -1.0, 1.0)))


def _corner_area(y, xc, g_xc, t, g_t, r):
    """The corner function from its separable parts.

    ``xc = clip(X, -r, r)`` and ``g_xc = G(xc)`` depend only on the corner's X, ``t`` and
    ``g_t = G(t)`` only on its Y, so a batch evaluates the transcendental functions once per
    distinct column edge and row edge. G is increasing, so G(clip(xc, -t, t)) =
    clip(G(xc), -G(t), G(t)), G(min(xc, -t)) = min(G(xc), -G(t)), G(max(xc, t)) = max(G(xc), G(t)).
    """
    neg_g_t = -g_t
    area = y * (np.clip(xc, -t, t) + t) + np.clip(g_xc, neg_g_t, g_t) + g_t
    upper = np.minimum(g_xc, neg_g_t) + np.maximum(g_xc, g_t) + (0.25 * np.pi * r * r) + neg_g_t
    return area + 2.0 * np.where(y > 0, upper, 0.0)


def corner_area(X: np.ndarray, Y: np.ndarray, r: float) -> np.ndarray:
    """Area of the disk of radius r (centre 0) with u <= X and v <= Y."""
    xc = np.clip(X, -r, r)
    t = np.sqrt(np.maximum(r * r - Y * Y, 0.0))
    return _corner_area(Y, xc, _g(xc, r), t, _g(t, r), r)


def pixel_overlap(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Exact overlap area of unit pixels centred at (dx, dy) from a circle's centre."""
    x0, x1, y0, y1 = dx - 0.5, dx + 0.5, dy - 0.5, dy + 0.5
    return corner_area(x1, y1, r) - corner_area(x0, y1, r) - corner_area(x1, y0, r) + corner_area(x0, y0, r)


@dataclass(frozen=True)
class ApertureTemplate:
    """Offsets, relative to a source's nearest pixel, of a radius's interior rows and boundary band."""

    radius: float
    row_dy: np.ndarray  # (nr,) interior rows
    row_half: np.ndarray  # (nr,) interior half-width a: columns -a..a
    band_dx: np.ndarray  # (nb,) boundary pixels
    band_dy: np.ndarray
    edge_x: np.ndarray  # (nux,) distinct column edges of the band's corners
    edge_y: np.ndarray  # (nuy,) distinct row edges
    corner_ix: np.ndarray  # (nc,) unique corners as indices into edge_x / edge_y
    corner_iy: np.ndarray
    corner_index: np.ndarray  # (4, nb) corners (x0y0, x1y0, x0y1, x1y1) of each band pixel


@lru_cache(maxsize=None)
def aperture_template(radius: float) -> ApertureTemplate:
    r_in = radius - SQRT2 - 1e-9
    m = int(np.ceil(radius + 2))
    ar = np.arange(-m, m + 1)
    dy, dx = np.meshgrid(ar, ar, indexing="ij")
    d = np.hypot(dx, dy)
    interior = d <= r_in
    band = ~interior & (d <= radius + SQRT2 + 1e-9)
    rows = [(y, int(np.floor(np.sqrt(r_in * r_in - y * y)))) for y in ar if r_in > 0 and y * y <= r_in * r_in]
    row_dy = np.array([y for y, _ in rows], np.int64)
    row_half = np.array([a for _, a in rows], np.int64)
    assert interior.sum() == int(np.sum(2 * row_half + 1)) if rows else not interior.any()
    bdx, bdy = dx[band].astype(np.int64), dy[band].astype(np.int64)
    # corners on the doubled lattice: (2 dx +- 1, 2 dy +- 1)
    corners = np.stack([np.r_[2 * bdx - 1, 2 * bdx + 1, 2 * bdx - 1, 2 * bdx + 1],
                        np.r_[2 * bdy - 1, 2 * bdy - 1, 2 * bdy + 1, 2 * bdy + 1]], axis=1)
    uniq, inverse = np.unique(corners, axis=0, return_inverse=True)
    ex, cix = np.unique(uniq[:, 0], return_inverse=True)
    ey, ciy = np.unique(uniq[:, 1], return_inverse=True)
    return ApertureTemplate(float(radius), row_dy, row_half, bdx, bdy, ex / 2.0, ey / 2.0, cix.ravel(), ciy.ravel(),
                            inverse.reshape(4, bdx.size))


def exact_aperture_sums(padded, ix, iy, fx, fy, radius: float, *, squared_errors: bool = True):
    """Flux, variance and invalid-pixel weight in exact circular apertures for a batch of sources.

    ``ix, iy``: padded-array pixel nearest each centre; ``fx, fy``: centre minus that pixel (in [-0.5, 0.5]).
    """
    tpl = aperture_template(float(radius))
    # boundary band: exact weights from shared corners; transcendentals once per distinct edge
    r = tpl.radius
    xc = np.clip(tpl.edge_x[None, :] - fx[:, None], -r, r)
    y = tpl.edge_y[None, :] - fy[:, None]
    t = np.sqrt(np.maximum(r * r - y * y, 0.0))
    cx, cy = tpl.corner_ix, tpl.corner_iy
    a = _corner_area(y[:, cy], xc[:, cx], _g(xc, r)[:, cx], t[:, cy], _g(t, r)[:, cy], r)
    c00, c10, c01, c11 = tpl.corner_index
    w = a[:, c11] - a[:, c01] - a[:, c10] + a[:, c00]
    flat = padded.flat_index(ix, iy, tpl.band_dx, tpl.band_dy)
    flux = np.einsum("ij,ij->i", w, padded.gather("image", flat))
    ww = w * w if squared_errors else w
    var = np.einsum("ij,ij->i", ww, padded.gather("variance", flat))
    invalid = np.einsum("ij,ij->i", w, ~padded.gather("valid", flat))
    # interior: one prefix-sum difference per row
    if tpl.row_dy.size:
        rows = iy[:, None] + tpl.row_dy[None, :]
        lo = ix[:, None] - tpl.row_half[None, :]
        hi = ix[:, None] + tpl.row_half[None, :] + 1
        flux += padded.run_sums("image", rows, lo, hi).sum(axis=1)
        var += padded.run_sums("variance", rows, lo, hi).sum(axis=1)
        invalid += padded.run_sums("invalid", rows, lo, hi).sum(axis=1)
    return flux, var, invalid


def aperture_photometry(coadd, x, y, radius: float, *, squared_errors: bool = True):
    """Exact circular-aperture photometry at tract positions (x, y) on a coadd, in image units.

    A convenience for one-off measurements (any radius, not only the schema's): returns
    (flux, flux_err, flag) with flag set where the aperture touches off-image or invalid pixels.
    """
    from forcedphot.cutouts import PaddedCoadd

    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    padded = PaddedCoadd(coadd, int(np.ceil(radius)) + 3)
    usable = np.isfinite(x) & np.isfinite(y) & coadd.bbox.contains(x, y)
    xs = np.where(usable, x, coadd.bbox.min_x)
    ys = np.where(usable, y, coadd.bbox.min_y)
    ix, iy = padded.local_index(xs, ys)
    flux, var, invalid = exact_aperture_sums(padded, ix, iy, xs - np.floor(xs + 0.5), ys - np.floor(ys + 0.5),
                                             float(radius), squared_errors=squared_errors)
    flag = ~usable | (invalid > 1e-9)
    return np.where(usable, flux, np.nan), np.where(usable, np.sqrt(var), np.nan), flag
