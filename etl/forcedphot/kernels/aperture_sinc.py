"""Sinc (band-limited) circular apertures, as Rubin's SincCoeffs for r <= maxSincRadius.

The coefficients of radius R are the top-hat disk band-limited at Nyquist: on a W x W grid,
W = 2h - 1 with h = 2^max(3, ceil(log2(2R))), their Fourier transform is the disk's,
D(k) = R J1(2 pi R |k|) / |k| (pi R^2 at k = 0), so they sum to pi R^2. They are shifted to
each source's sub-pixel centre exactly (the Fourier shift of a band-limited image, which Rubin
approximates with a lanczos5 kernel). D is real and even in each axis, so with M = W // 2,
m_0 = 1, m_k = 2 (k > 0) and (fx, fy) the centre's offset from its nearest pixel

    c[y, x] = (1/W^2) sum_{a,b=0..M} m_a m_b D(a, b) cos(2 pi a (y - h - fy)/W) cos(2 pi b (x - h - fx)/W)

i.e. C = Ay D' Ax^T, the inverse real FFT of the phase-ramped spectrum without an FFT
(:func:`forcedphot.kernels.apertures.sinc_aperture_kernel` makes each source's coefficients
once). F = sum(c I), err = sqrt(sum(c^2 V)).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import j1

from forcedphot.kernels.apertures import read_only, sinc_aperture_kernel, sinc_coefficient_images, spatial_order
from forcedphot.kernels.pixels import no_footprints


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


@lru_cache(maxsize=None)
def weighted_quarter(radius: float) -> np.ndarray:
    """D' = m_a m_b D(a, b) / W^2 on the quarter grid a, b = 0..W//2, (M+1, M+1) row-major."""
    w = sinc_width(radius)
    nf = w // 2 + 1
    mult = np.where(np.arange(nf) == 0, 1.0, 2.0)
    return np.ascontiguousarray(disk_transform(radius)[:nf, :nf] * mult[:, None] * mult[None, :] / (w * w))


@lru_cache(maxsize=None)
def cosine_tables(width: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin(2 pi a (x - h) / W) for a = 0..W//2, x = 0..W-1, (M+1, W), from exact integer phases."""
    h = width // 2
    a = np.arange(h + 1)[:, None]
    u = np.arange(width)[None, :] - h
    phase = 2 * np.pi * np.mod(a * u, width) / width
    return np.ascontiguousarray(np.cos(phase)), np.ascontiguousarray(np.sin(phase))


def sinc_tables(radii) -> tuple:
    """Kernel arguments for radii grouped by width (widest first): (widths, dq, tc, ts, tct, tst).

    widths (R,); dq (R, M+1, M+1) the weighted quarter spectra; tc, ts (R, M+1, W) the cosine
    tables and tct, tst (R, W, M+1) their transposes, sized by the largest width (each radius's
    arrays fill the top-left corner).
    """
    widths = np.array([sinc_width(r) for r in radii], np.int64)
    wm = int(widths.max(initial=15))
    nfm = wm // 2 + 1
    dq = np.zeros((len(radii), nfm, nfm))
    tc = np.zeros((len(radii), nfm, wm))
    ts = np.zeros((len(radii), nfm, wm))
    for k, (r, w) in enumerate(zip(radii, widths)):
        nf = int(w) // 2 + 1
        dq[k, :nf, :nf] = weighted_quarter(float(r))
        tc[k, :nf, :w], ts[k, :nf, :w] = cosine_tables(int(w))
    return (widths, dq, tc, ts, np.ascontiguousarray(tc.transpose(0, 2, 1)),
            np.ascontiguousarray(ts.transpose(0, 2, 1)))


def sinc_coefficients(radius: float, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """(N, W, W) coefficients shifted by (fx, fy); element [W//2, W//2] is the source's nearest pixel."""
    w = sinc_width(radius)
    tc, ts = cosine_tables(w)
    return sinc_coefficient_images(np.ascontiguousarray(fx, np.float64), np.ascontiguousarray(fy, np.float64), w,
                                   weighted_quarter(float(radius)), tc, ts)


def sinc_apertures(image, original, variance, valid, fp, cx, cy, fx, fy, todo, radii, *, both: bool = False):
    """(flux, flux_original, variance, invalid weight, coefficients truncated, excluded pixels), each (N, R)
    in ``radii`` order.

    ``todo`` (N, R): which sources to measure at each radius (the others get NaN). ``valid`` may be
    the pixel classes of :func:`forcedphot.kernels.footprints.pixel_classes`: excluded counts its
    EXCLUDED pixels (summed like the others) with centres within r + 0.5 of the centre.
    """
    image, original, variance, valid = read_only(image, original, variance, valid)
    radii = [float(r) for r in radii]
    order = sorted(range(len(radii)), key=lambda k: (-sinc_width(radii[k]), radii[k]))  # widest first
    todo = np.ascontiguousarray(np.asarray(todo)[:, order], np.uint8)
    cx = np.ascontiguousarray(cx, np.int64)
    cy = np.ascontiguousarray(cy, np.int64)
    res = sinc_aperture_kernel(image, original, variance, valid, fp, cx, cy, np.ascontiguousarray(fx, np.float64),
                               np.ascontiguousarray(fy, np.float64), todo, *sinc_tables([radii[k] for k in order]),
                               np.array([radii[k] for k in order], np.float64), bool(both),
                               spatial_order(cx, cy, todo.any(axis=1)))
    back = np.argsort(order)
    return tuple(a[:, back] for a in res)


def _warm():
    """The kernels once on tiny planes with the dtypes and flags the plugins pass (see forcedphot.compile)."""
    image = np.zeros((16, 16), np.float32)
    one_i, one_f = np.full(1, 8, np.int64), np.zeros(1)
    sinc_apertures(image, image, np.ones((16, 16), np.float32), np.ones((16, 16), np.uint8), no_footprints(1), one_i,
                   one_i, one_f, one_f, np.ones((1, 1), np.uint8), (3.0,), both=True)
    # sinc_coefficients alone (the coefficient images, as the tests call them) compiles on first use


WARMUP = [_warm]
