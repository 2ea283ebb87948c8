"""Slow numpy ConvolvedFlux by the other path: convolve each source's image (scipy), then sum the apertures.

``reference_convolved(pixels, cx, cy, xl, yl, radii, einv, khalf, sigma, todo)`` returns what
:func:`forcedphot.kernels.convolved.convolved_sums` returns: flux, variance, invalid and excluded
weight, each (N, T, len(radii) + 1). Per source and target: a stamp of the source alone (its own
heavy values put into the noise image on the valid footprint pixels; invalid and off-coadd pixels
0) is convolved with the sampled, normalised Gaussian (scipy.ndimage.convolve1d, rows then
columns) and the aperture weights A are summed over it (flux). The variance and the invalid weight
need the convolved weights W' = K * A (scipy.signal.convolve2d of the outer product): sum W'^2 V
and sum |W'| over the invalid pixels (over the EXCLUDED ones within R + 0.5 + r). Circles: sinc
coefficients shifted by FFT (tests/kernels/reference_apertures.sinc_coefficients); the Kron
ellipse: pixel centres with d^T einv d <= 1.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve1d
from scipy.signal import convolve2d

from forcedphot.kernels.footprints import EXCLUDED
from tests.kernels.reference_apertures import sinc_coefficients


def gaussian_taps(sigma: float) -> np.ndarray:
    r = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def alone_image(pixels, src: int) -> np.ndarray:
    """The noise-replaced image with source ``src``'s own heavy values on its valid footprint pixels, float64."""
    image = np.where(pixels.valid != 0, pixels.image, 0.0).astype(np.float64)
    used, span_off, span_y, span_x0, span_x1, val_off, values = pixels.fp
    f = used[src]
    if f < 0:
        return image
    h, w = image.shape
    k = val_off[f]
    for s in range(span_off[f], span_off[f + 1]):
        y = span_y[s]
        for x in range(span_x0[s], span_x1[s] + 1):
            if 0 <= y < h and 0 <= x < w and pixels.valid[y, x]:
                image[y, x] = values[k + x - span_x0[s]]
        k += span_x1[s] - span_x0[s] + 1
    return image


def stamp(plane: np.ndarray, cx: int, cy: int, half: int, fill=0.0) -> np.ndarray:
    """(2 half + 1)^2 pixels of ``plane`` around (cx, cy), ``fill`` off the plane."""
    h, w = plane.shape
    out = np.full((2 * half + 1, 2 * half + 1), fill, dtype=np.result_type(plane.dtype, type(fill)))
    y0, x0 = cy - half, cx - half
    ys, xs = slice(max(y0, 0), min(y0 + 2 * half + 1, h)), slice(max(x0, 0), min(x0 + 2 * half + 1, w))
    out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = plane[ys, xs]
    return out


def reference_convolved(pixels, valid_classes, cx, cy, xl, yl, radii, einv, khalf, sigma, todo):
    n, nt = sigma.shape
    na = len(radii) + 1
    flux, var = np.full((n, nt, na), np.nan), np.full((n, nt, na), np.nan)
    bad, exc = np.zeros((n, nt, na)), np.zeros((n, nt, na))
    for s in np.flatnonzero(todo):
        image = alone_image(pixels, s)
        for a in range(na):
            if a < len(radii):
                weights = sinc_coefficients(radii[a], np.array([xl[s] - cx[s]]), np.array([yl[s] - cy[s]]))[0]
                h = weights.shape[0] // 2
                reach = radii[a] + 0.5
            elif khalf[s] >= 0:
                h = khalf[s]
                off = np.arange(-h, h + 1)
                dx, dy = np.meshgrid(cx[s] + off - xl[s], cy[s] + off - yl[s])
                e = einv[s]
                weights = (e[0, 0] * dx * dx + 2 * e[0, 1] * dx * dy + e[1, 1] * dy * dy <= 1.0).astype(float)
                reach = np.inf
            else:
                continue
            for t in range(nt):
                taps = gaussian_taps(sigma[s, t]) if sigma[s, t] > 0 else np.ones(1)
                r = taps.size // 2
                big = stamp(image, cx[s], cy[s], h + r)
                conv = convolve1d(convolve1d(big, taps, axis=1, mode="constant"), taps, axis=0, mode="constant")
                flux[s, t, a] = (weights * conv[r:r + 2 * h + 1, r:r + 2 * h + 1]).sum()
                w2 = convolve2d(weights, np.outer(taps, taps))  # W' on the (2(h + r) + 1)^2 box
                v = stamp(pixels.variance.astype(np.float64), cx[s], cy[s], h + r)
                cls = stamp(valid_classes, cx[s], cy[s], h + r, fill=0)
                var[s, t, a] = (w2 * w2 * np.where(cls != 0, v, 0.0)).sum()
                bad[s, t, a] = np.abs(w2)[cls == 0].sum()
                off = np.arange(-(h + r), h + r + 1)
                dx, dy = np.meshgrid(cx[s] + off - xl[s], cy[s] + off - yl[s])
                near = dx * dx + dy * dy <= (reach + r) ** 2
                exc[s, t, a] = np.abs(w2)[(cls == EXCLUDED) & near].sum()
    return flux, var, bad, exc
