"""Per-coadd products the simulator derives from its truth: aperture corrections and input polygons.

Aperture corrections are measured the way a pipeline measures them, on stars: at each PSF
grid node, the expected fraction of a star's flux each algorithm recovers (analytic for the
PSF and Gaussian fluxes, averaged over sub-pixel positions for the naive Kron ellipse),
fitted by a 2-D Chebyshev series of order 2 over the patch.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import chebyshev

from forcedphot.apcorr import ApCorrMap, ChebyshevField
from forcedphot.coadd_inputs import CoaddInput, CoaddInputs
from forcedphot.moments import inverse_2x2
from forcedphot.sim.profiles import PIXEL_VARIANCE, render_mixture
from forcedphot.skymap import Box

ORDER = 2
N_OFFSETS = 16
KRON_SCALE = 2.5


def _fit(box: Box, x: np.ndarray, y: np.ndarray, values: np.ndarray) -> ChebyshevField:
    u = 2.0 * (x - (box.min_x - 0.5)) / box.width - 1.0
    v = 2.0 * (y - (box.min_y - 0.5)) / box.height - 1.0
    design = chebyshev.chebvander2d(v, u, [ORDER, ORDER])
    coeffs, *_ = np.linalg.lstsq(design, values, rcond=None)
    return ChebyshevField(box, coeffs.reshape(ORDER + 1, ORDER + 1))


def _star_fractions(band_psf, ref_psf, x, y, rng, psf_fraction) -> dict[str, np.ndarray]:
    """Expected measured/true flux of a star at (x, y) for psfFlux, gaussianFlux, kronFlux and the GAaP fluxes."""
    amps, covs = band_psf.components(x, y)  # (N, 2), (N, 2, 2, 2)
    covs = covs + PIXEL_VARIANCE * np.eye(2)
    ramps, rcovs = ref_psf.components(x, y)
    q = (ramps[:, :, None, None] * rcovs).sum(axis=1)  # reference shape of a star: PSF moments in the ref band
    det_q = q[:, 0, 0] * q[:, 1, 1] - q[:, 0, 1] ** 2
    cq = covs + q[:, None]
    det_cq = cq[..., 0, 0] * cq[..., 1, 1] - cq[..., 0, 1] ** 2
    gaussian = 2 * (amps * np.sqrt(det_q[:, None] / det_cq)).sum(axis=1)
    # Kron: naive pixel-centre sum of the star in the 2.5 R_K ellipse of shape q, over sub-pixel offsets
    rdet = rcovs[..., 0, 0] * rcovs[..., 1, 1] - rcovs[..., 0, 1] ** 2
    r_k = np.sqrt(np.pi / 2) * (ramps * rdet ** 0.25).sum(axis=1)
    ellipse = q * ((KRON_SCALE * r_k) ** 2 / np.sqrt(det_q))[:, None, None]
    einv, _ = inverse_2x2(ellipse)
    half = int(np.ceil(np.sqrt(ellipse[:, [0, 1], [0, 1]].max()))) + 2
    ar = np.arange(-half, half + 1, dtype=float)
    gy, gx = np.meshgrid(ar, ar, indexing="ij")
    kron = np.empty(x.size)
    for i in range(x.size):
        off = rng.uniform(-0.5, 0.5, (N_OFFSETS, 2))
        dx = gx[None] - off[:, 0, None, None]
        dy = gy[None] - off[:, 1, None, None]
        img = render_mixture(dx, dy, np.tile(amps[i], (N_OFFSETS, 1)), np.tile(covs[i] - PIXEL_VARIANCE * np.eye(2),
                                                                             (N_OFFSETS, 1, 1, 1)))
        e = einv[i]
        inside = e[0, 0] * dx * dx + 2 * e[0, 1] * dx * dy + e[1, 1] * dy * dy <= 1.0
        kron[i] = (img * inside).sum(axis=(1, 2)).mean()
    # the PSF images are normalised over their box: psfFlux recovers the flux in that box; so does every GAaP
    # flux (normalised by the point-source response sum(W' P)), plus the wing beyond the box inside the
    # largest apertures' weights, < 1 - psf_fraction (~2e-7 for these PSFs): psf_fraction for all of them
    from forcedphot.plugins.gaap import GAAP_FLUXES

    return {"psfFlux": psf_fraction, "gaussianFlux": gaussian, "kronFlux": kron} | {f: psf_fraction for f in GAAP_FLUXES}


def simulate_ap_corr(band_psf, ref_psf, box: Box, grid_x, grid_y, rng, *, psf_fraction) -> ApCorrMap:
    """``psf_fraction``: flux of the PSF inside its image box at each grid node (row-major)."""
    xx, yy = np.meshgrid(grid_x, grid_y)
    x, y = xx.ravel(), yy.ravel()
    fields = {}
    for name, frac in _star_fractions(band_psf, ref_psf, x, y, rng, psf_fraction).items():
        value = _fit(box, x, y, 1.0 / frac)
        resid = 1.0 / frac - value(x, y)
        error = ChebyshevField.constant(box, float(np.sqrt(np.mean(resid ** 2)) + 1e-4))
        fields[name] = (value, error)
    return ApCorrMap(fields)


def simulate_inputs(region: Box, rng, *, n_visits: int = 8, dither: float = 60.0, drop: float = 0.1) -> CoaddInputs:
    """Visits of 2x2 rotated detectors covering the region, dithered; some detectors missing."""
    inputs = []
    cx, cy = (region.min_x + region.max_x) / 2, (region.min_y + region.max_y) / 2
    half_w, half_h = region.width / 4 + 20, region.height / 4 + 20
    for visit in range(n_visits):
        ox, oy = rng.uniform(-dither, dither, 2)
        ang = np.deg2rad(rng.uniform(-2, 2))
        c, s = np.cos(ang), np.sin(ang)
        for det, (sx, sy) in enumerate(((-1, -1), (1, -1), (-1, 1), (1, 1))):
            if rng.random() < drop:
                continue
            dcx, dcy = sx * (half_w + 4), sy * (half_h + 4)  # 8 px chip gaps
            corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
            pts = corners + [dcx, dcy]
            px = cx + ox + c * pts[:, 0] - s * pts[:, 1]
            py = cy + oy + s * pts[:, 0] + c * pts[:, 1]
            inputs.append(CoaddInput(1000 + visit, det, tuple(px.tolist()), tuple(py.tolist())))
    return CoaddInputs(tuple(inputs))
