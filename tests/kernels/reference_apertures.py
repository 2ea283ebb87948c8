"""The numpy CircularApertureFlux that the compiled kernels replaced: slow, obviously correct references.

Everything here works on the padded planes of a context built by
:func:`tests.kernels.context.quantum_context` (``ctx.padded``, ``ctx.cutouts``,
``ctx.noise``): whole-quantum stamp tensors, row prefix sums of the padded planes and
the NoiseReplacer's sparse corrections. ``ReferenceCircularApertureFlux(config).measure(ctx)``
gives the deblended columns; the undeblended ones come from ``.measure(plain)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.special import j1

from forcedphot.plugins.aperture import MAX_SINC_RADIUS_IN_SCHEMA, aperture_name, method_for

SQRT2 = np.sqrt(2.0)


# -- sinc ------------------------------------------------------------------------------------
def sinc_width(radius: float) -> int:
    h = 2 ** max(3, int(np.ceil(np.log2(2 * radius))))
    return 2 * h - 1


@lru_cache(maxsize=None)
def disk_transform(radius: float) -> np.ndarray:
    """D(k) on the rfft2 frequency grid of the W x W coefficient image (real, symmetric)."""
    w = sinc_width(radius)
    ky = np.fft.fftfreq(w)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.hypot(kx, ky)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = radius * j1(2 * np.pi * radius * k) / k
    d[0, 0] = np.pi * radius * radius
    return d


def sinc_coefficients(radius: float, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """(N, W, W) coefficients shifted by (fx, fy) by an FFT phase ramp; [W//2, W//2] is the nearest pixel."""
    w = sinc_width(radius)
    half = w // 2
    py = np.exp(-2j * np.pi * np.fft.fftfreq(w)[None, :] * (fy[:, None] + half))
    px = np.exp(-2j * np.pi * np.fft.rfftfreq(w)[None, :] * (fx[:, None] + half))
    spectrum = disk_transform(radius)[None] * py[:, :, None]
    spectrum *= px[:, None, :]
    return scipy.fft.irfft2(spectrum, s=(w, w), axes=(-2, -1), workers=2)


def sinc_aperture_sums(cutouts, fx, fy, radii) -> dict:
    """radius -> (flux, variance, invalid weight, coefficients truncated); ``cutouts(half)`` a CutoutBatch."""
    out = {}
    by_width: dict[int, list[float]] = {}
    for r in radii:
        by_width.setdefault(sinc_width(r), []).append(float(r))
    for w, group in by_width.items():
        stamps = cutouts(w // 2)
        image, variance, valid = stamps.image, stamps.variance, stamps.valid
        truncated = ~valid.all(axis=(1, 2))
        bad = np.flatnonzero(truncated)
        for r in group:
            c = sinc_coefficients(r, fx, fy)
            flux = np.einsum("nij,nij->n", c, image)
            var = np.einsum("nij,nij->n", c * c, variance)
            invalid = np.zeros(flux.size)
            invalid[bad] = np.einsum("nij,nij->n", np.abs(c[bad]), ~valid[bad])
            out[r] = (flux, var, invalid, truncated)
    return out


# -- naive -----------------------------------------------------------------------------------
def naive_aperture_sums(padded, x_local: np.ndarray, y_local: np.ndarray, radius: float):
    """(flux, variance, invalid pixel count) for centres in padded-array coordinates (row prefix sums)."""
    iy0 = np.floor(y_local + 0.5).astype(np.int64)
    m = int(np.ceil(radius)) + 1
    dy = np.arange(-m, m + 1)
    rows = iy0[:, None] + dy[None, :]
    d2 = radius * radius - (rows - y_local[:, None]) ** 2
    inside = d2 >= 0
    d = np.sqrt(np.where(inside, d2, 0.0))
    lo = np.ceil(x_local[:, None] - d).astype(np.int64)
    hi = np.floor(x_local[:, None] + d).astype(np.int64) + 1
    hi = np.where(inside, hi, lo)
    return tuple(padded.run_sums(p, rows, lo, hi).sum(axis=1) for p in ("image", "variance", "invalid"))


# -- exact -----------------------------------------------------------------------------------
def _g(u, r):
    r2 = r * r
    return 0.5 * (u * np.sqrt(np.maximum(r2 - u * u, 0.0)) + r2 * np.arcsin(np.clip(u / r, -1.0, 1.0)))


def _corner_area(y, xc, g_xc, t, g_t, r):
    neg_g_t = -g_t
    area = y * (np.clip(xc, -t, t) + t) + np.clip(g_xc, neg_g_t, g_t) + g_t
    upper = np.minimum(g_xc, neg_g_t) + np.maximum(g_xc, g_t) + (0.25 * np.pi * r * r) + neg_g_t
    return area + 2.0 * np.where(y > 0, upper, 0.0)


def corner_area(X, Y, r):
    xc = np.clip(X, -r, r)
    t = np.sqrt(np.maximum(r * r - Y * Y, 0.0))
    return _corner_area(Y, xc, _g(xc, r), t, _g(t, r), r)


def pixel_overlap(dx, dy, r):
    x0, x1, y0, y1 = dx - 0.5, dx + 0.5, dy - 0.5, dy + 0.5
    return corner_area(x1, y1, r) - corner_area(x0, y1, r) - corner_area(x1, y0, r) + corner_area(x0, y0, r)


@dataclass(frozen=True)
class ApertureTemplate:
    radius: float
    row_dy: np.ndarray
    row_half: np.ndarray
    band_dx: np.ndarray
    band_dy: np.ndarray
    edge_x: np.ndarray
    edge_y: np.ndarray
    corner_ix: np.ndarray
    corner_iy: np.ndarray
    corner_index: np.ndarray


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
    bdx, bdy = dx[band].astype(np.int64), dy[band].astype(np.int64)
    corners = np.stack([np.r_[2 * bdx - 1, 2 * bdx + 1, 2 * bdx - 1, 2 * bdx + 1],
                        np.r_[2 * bdy - 1, 2 * bdy - 1, 2 * bdy + 1, 2 * bdy + 1]], axis=1)
    uniq, inverse = np.unique(corners, axis=0, return_inverse=True)
    ex, cix = np.unique(uniq[:, 0], return_inverse=True)
    ey, ciy = np.unique(uniq[:, 1], return_inverse=True)
    return ApertureTemplate(float(radius), row_dy, row_half, bdx, bdy, ex / 2.0, ey / 2.0, cix.ravel(), ciy.ravel(),
                            inverse.reshape(4, bdx.size))


def exact_aperture_sums(padded, ix, iy, fx, fy, radius: float, *, squared_errors: bool = True):
    """Flux, variance and invalid-pixel weight in exact circular apertures (padded-array centres)."""
    tpl = aperture_template(float(radius))
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
    if tpl.row_dy.size:
        rows = iy[:, None] + tpl.row_dy[None, :]
        lo = ix[:, None] - tpl.row_half[None, :]
        hi = ix[:, None] + tpl.row_half[None, :] + 1
        flux += padded.run_sums("image", rows, lo, hi).sum(axis=1)
        var += padded.run_sums("variance", rows, lo, hi).sum(axis=1)
        invalid += padded.run_sums("invalid", rows, lo, hi).sum(axis=1)
    return flux, var, invalid


# -- the plugin --------------------------------------------------------------------------------
class ReferenceCircularApertureFlux:
    """Today's numpy CircularApertureFlux.measure, on the padded planes of ``ctx``."""

    def __init__(self, config):
        self.config = config

    def measure(self, ctx):
        out = {}
        idx = np.flatnonzero(ctx.usable)
        ix, iy = ctx.centre_index()
        fx = ctx.x - np.floor(ctx.x + 0.5)
        fy = ctx.y - np.floor(ctx.y + 0.5)
        xl = ctx.x - ctx.coadd.bbox.min_x + ctx.padded.pad
        yl = ctx.y - ctx.coadd.bbox.min_y + ctx.padded.pad
        bbox = ctx.coadd.bbox
        squared = self.config.aperture_error_weights == "squared"
        step = self.config.chunk_size
        radii = self.config.aperture_radii
        sums = {r: (np.full(ctx.n, np.nan), np.full(ctx.n, np.nan), np.zeros(ctx.n), np.zeros(ctx.n, bool))
                for r in radii}
        sinc_radii = [r for r in radii if method_for(r, self.config) == "sinc"]
        for s in range(0, idx.size, step):
            sel = idx[s:s + step]
            results = (sinc_aperture_sums(lambda half: ctx.cutouts(sel, half), fx[sel], fy[sel], sinc_radii)
                       if sinc_radii else {})
            for r in radii:
                method = method_for(r, self.config)
                if method == "exact":
                    flux, var, invalid = exact_aperture_sums(ctx.padded, ix[sel], iy[sel], fx[sel], fy[sel], r,
                                                             squared_errors=squared)
                    flux = flux + ctx.footprint_correction(sel, lambda o, dx, dy, r=r: pixel_overlap(dx, dy, r))
                    res = (flux, var, invalid, False)
                elif method == "naive":
                    flux, var, invalid = naive_aperture_sums(ctx.padded, xl[sel], yl[sel], r)
                    flux = flux + ctx.footprint_correction(sel, lambda o, dx, dy, r=r: (dx * dx + dy * dy <= r * r))
                    res = (flux, var, invalid, False)
                else:
                    res = results[r]
                for total, part in zip(sums[r], res):
                    total[sel] = part
        for r in radii:
            p = aperture_name(r)
            method = method_for(r, self.config)
            flux, var, invalid, coeffs_truncated = sums[r]
            truncated = ctx.usable & ((ctx.x - r < bbox.min_x - 0.5) | (ctx.x + r > bbox.max_x + 0.5)
                                      | (ctx.y - r < bbox.min_y - 0.5) | (ctx.y + r > bbox.max_y + 0.5))
            if method != "exact":
                flux[truncated] = np.nan
                var[truncated] = np.nan
            out[f"{p}Flux"] = flux
            out[f"{p}FluxErr"] = np.sqrt(var)
            out[f"{p}Flux_flag_apertureTruncated"] = truncated
            out[f"{p}Flux_flag"] = ~ctx.usable | truncated | (invalid > 1e-9) | ~np.isfinite(flux)
            if r <= MAX_SINC_RADIUS_IN_SCHEMA:
                out[f"{p}Flux_flag_sincCoeffsTruncated"] = coeffs_truncated
        return out
