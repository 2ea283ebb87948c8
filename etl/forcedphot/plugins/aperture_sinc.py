"""Sinc (band-limited) circular apertures, as Rubin's SincCoeffs for r <= maxSincRadius.

The coefficients of radius R are the top-hat disk band-limited at Nyquist: on a W x W grid,
W = 2h - 1 with h = 2^max(3, ceil(log2(2R))), their Fourier transform is the disk's,
D(k) = R J1(2 pi R |k|) / |k| (pi R^2 at k = 0), so they sum to pi R^2. They are shifted to
each source's sub-pixel centre by a Fourier phase ramp: the exact shift of a band-limited
image, which Rubin approximates with a lanczos5 kernel. F = sum(c I), err = sqrt(sum(c^2 V)).
Radii sharing a grid width share one gather of the image stamps.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.special import j1

FFT_WORKERS = 2


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
    """(N, W, W) coefficients shifted by (fx, fy); element [W//2, W//2] is the source's nearest pixel."""
    w = sinc_width(radius)
    half = w // 2
    # separable phase ramp; the extra W//2 shift puts the centre in the middle (no fftshift)
    py = np.exp(-2j * np.pi * np.fft.fftfreq(w)[None, :] * (fy[:, None] + half))
    px = np.exp(-2j * np.pi * np.fft.rfftfreq(w)[None, :] * (fx[:, None] + half))
    spectrum = disk_transform(radius)[None] * py[:, :, None]
    spectrum *= px[:, None, :]
    return scipy.fft.irfft2(spectrum, s=(w, w), axes=(-2, -1), workers=FFT_WORKERS)


def sinc_aperture_sums(cutouts, fx, fy, radii) -> dict:
    """radius -> (flux, variance, invalid weight, coefficients truncated) for a batch of sources.

    ``cutouts(half)`` gives the batch's CutoutBatch of that half-size.
    """
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
