"""Exact circular apertures: pixel/circle overlap weights in closed form (SEP/photutils-compatible).

The overlap of a pixel with a disk is written with a "corner function"
A(X, Y) = area of {u <= X, v <= Y} inside the disk of radius r centred at the origin:

    t  = sqrt(max(r^2 - Y^2, 0)),  Xc = clip(X, -r, r),  Xt = clip(Xc, -t, t)
    A  = Y (Xt + t) + H(-t, Xt) + [Y > 0] * 2 (H(-r, min(Xc, -t)) + H(t, max(Xc, t)))
    H(a, b) = G(b) - G(a),  G(u) = (u sqrt(r^2 - u^2) + r^2 asin(u / r)) / 2

and a pixel [x0, x1] x [y0, y1] overlaps the disk by A(x1, y1) - A(x0, y1) - A(x1, y0) + A(x0, y0).
Xc and G(Xc) depend only on a pixel column edge, t and G(t) only on a row edge, so a source
evaluates the transcendental functions once per edge.

The compiled kernel (:func:`forcedphot.kernels.apertures.exact_aperture_kernel`) measures all
radii of a source in one pass: in each row strip the pixels fully inside the disk form a run of
weight 1, and only the pixels the circle crosses get exact weights.

Error: sqrt(sum(w^2 var)) by default (photutils >= 3.1), or sqrt(sum(w var)) (SEP and
photutils <= 3.0) with ``aperture_error_weights = "linear"``. Off-image pixels contribute
nothing (as SEP and photutils); the aperture is then flagged as truncated.
"""

from __future__ import annotations

import numpy as np


def _g(u: np.ndarray, r: float) -> np.ndarray:
    """G(u) = (u sqrt(r^2 - u^2) + r^2 asin(u / r)) / 2 for |u| <= r."""
    r2 = r * r
    return 0.5 * (u * np.sqrt(np.maximum(r2 - u * u, 0.0)) + r2 * np.arcsin(np.clip(u / r, -1.0, 1.0)))


def _corner_area(y, xc, g_xc, t, g_t, r):
    """The corner function from its separable parts (see the module docstring).

    G is increasing, so G(clip(xc, -t, t)) = clip(G(xc), -G(t), G(t)),
    G(min(xc, -t)) = min(G(xc), -G(t)) and G(max(xc, t)) = max(G(xc), G(t)).
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


def exact_aperture_sums(padded, ix, iy, fx, fy, radius: float, *, squared_errors: bool = True):
    """Flux, variance and invalid-pixel weight in exact circular apertures on a PaddedCoadd's planes.

    ``ix, iy``: padded-array pixel nearest each centre; ``fx, fy``: centre minus that pixel (in [-0.5, 0.5]).
    """
    from forcedphot.kernels.apertures import exact_apertures

    flux, var, invalid = exact_apertures(padded.image, padded.variance, padded.valid.view(np.uint8), ix, iy, fx, fy,
                                         np.array([float(radius)]), squared_errors)
    return flux[:, 0], var[:, 0], invalid[:, 0]


def aperture_photometry(coadd, x, y, radius: float, *, squared_errors: bool = True):
    """Exact circular-aperture photometry at tract positions (x, y) on a coadd, in image units.

    A convenience for one-off measurements (any radius, not only the schema's): returns
    (flux, flux_err, flag) with flag set where the aperture touches off-image or invalid pixels.
    """
    from forcedphot.kernels.apertures import exact_apertures
    from forcedphot.stages import valid_plane

    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    usable = np.isfinite(x) & np.isfinite(y) & coadd.bbox.contains(x, y)
    xs = np.where(usable, x - coadd.bbox.min_x, 0.0)
    ys = np.where(usable, y - coadd.bbox.min_y, 0.0)
    cx, cy = np.floor(xs + 0.5), np.floor(ys + 0.5)
    valid = valid_plane(coadd.image, coadd.variance, coadd.mask, coadd.mask_planes.bitmask("NO_DATA"))
    flux, var, invalid = exact_apertures(coadd.image, coadd.variance, valid, cx.astype(np.int64), cy.astype(np.int64),
                                         xs - cx, ys - cy, np.array([float(radius)]), squared_errors)
    flag = ~usable | (invalid[:, 0] > 1e-9)
    return np.where(usable, flux[:, 0], np.nan), np.where(usable, np.sqrt(var[:, 0]), np.nan), flag
