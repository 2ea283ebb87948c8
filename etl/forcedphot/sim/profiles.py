"""Galaxy profiles as Gaussian mixtures, and rendering of Gaussian mixtures on pixel stamps.

Exponential and de Vaucouleurs profiles are approximated by mixtures of concentric
Gaussians whose amplitudes are fitted once (non-negative least squares) to the Sersic
surface-brightness profile. A mixture convolved with a Gaussian-mixture PSF is again a
mixture, so every image is rendered exactly from analytic Gaussians. The pixel response
is a Gaussian of variance 1/12 (the variance of a unit box), added to every component.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.optimize import nnls

PIXEL_VARIANCE = 1.0 / 12.0

_SERSIC = {"exp": 1.0, "dev": 4.0}


def _sersic_b(n: float) -> float:
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)


@lru_cache(maxsize=None)
def sersic_mixture(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(amplitudes summing to 1, variances in units of r_e^2) for 'exp' or 'dev'."""
    n = _SERSIC[kind]
    b = _sersic_b(n)
    if kind == "exp":
        sig = np.geomspace(0.03, 2.0, 8)
        rmax = 6.0
    else:
        sig = np.geomspace(0.002, 6.0, 12)
        rmax = 10.0
    r = np.linspace(0.0, rmax, 4000)[1:]
    target = np.exp(-b * (r ** (1.0 / n) - 1.0))
    # unit-flux 2-D Gaussians evaluated on r, weighted by sqrt(r) for area
    basis = np.exp(-0.5 * (r[:, None] / sig[None, :]) ** 2) / (2 * np.pi * sig[None, :] ** 2)
    w = np.sqrt(r)
    amp, _ = nnls(basis * w[:, None], target * w)
    keep = amp > 0
    amp, var = amp[keep], sig[keep] ** 2
    return amp / amp.sum(), var


def covariance(sigma: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """(N, 2, 2) covariances sigma^2 [[1+e1, e2], [e2, 1-e1]] (|e| < 1)."""
    s2 = np.asarray(sigma, float) ** 2
    c = np.empty(np.shape(s2) + (2, 2))
    c[..., 0, 0] = s2 * (1 + e1)
    c[..., 1, 1] = s2 * (1 - e1)
    c[..., 0, 1] = c[..., 1, 0] = s2 * e2
    return c


def ellipse_covariance(r_e: np.ndarray, q: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """(N, 2, 2) shape covariance of circularised radius r_e, axis ratio q, angle theta."""
    a2 = r_e ** 2 / q
    b2 = r_e ** 2 * q
    c, s = np.cos(theta), np.sin(theta)
    out = np.empty(np.shape(r_e) + (2, 2))
    out[..., 0, 0] = a2 * c * c + b2 * s * s
    out[..., 1, 1] = a2 * s * s + b2 * c * c
    out[..., 0, 1] = out[..., 1, 0] = (a2 - b2) * c * s
    return out


def render_mixture(dx: np.ndarray, dy: np.ndarray, amps: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """Sum over components of amp * N(d; 0, C + pixel) on stamps.

    dx, dy: (N, S, S) offsets of pixel centres from each source's centre.
    amps: (N, M) fluxes per component; covs: (N, M, 2, 2).
    """
    c = covs + PIXEL_VARIANCE * np.eye(2)
    det = c[..., 0, 0] * c[..., 1, 1] - c[..., 0, 1] ** 2
    ixx = c[..., 1, 1] / det
    iyy = c[..., 0, 0] / det
    ixy = -c[..., 0, 1] / det
    norm = amps / (2 * np.pi * np.sqrt(det))
    out = np.zeros(dx.shape)
    for m in range(amps.shape[1]):
        q = (ixx[:, m, None, None] * dx * dx + iyy[:, m, None, None] * dy * dy
             + 2 * ixy[:, m, None, None] * dx * dy)
        out += norm[:, m, None, None] * np.exp(-0.5 * q)
    return out
