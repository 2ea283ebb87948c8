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
from forcedphot.layout import CONVOLVED_RADII, CONVOLVED_TARGET_FWHMS, convolved_flux_names
from forcedphot.moments import inverse_2x2
from forcedphot.sim.profiles import PIXEL_VARIANCE, render_mixture
from forcedphot.skymap import Box

ORDER = 2
N_OFFSETS = 16
N_ANGLES = 64  # angles of the disk-fraction integral (periodic and smooth: converges exponentially)
KRON_SCALE = 2.5


def _fit(box: Box, x: np.ndarray, y: np.ndarray, values: np.ndarray) -> ChebyshevField:
    u = 2.0 * (x - (box.min_x - 0.5)) / box.width - 1.0
    v = 2.0 * (y - (box.min_y - 0.5)) / box.height - 1.0
    design = chebyshev.chebvander2d(v, u, [ORDER, ORDER])
    coeffs, *_ = np.linalg.lstsq(design, values, rcond=None)
    return ChebyshevField(box, coeffs.reshape(ORDER + 1, ORDER + 1))


def _star_fractions(band_psf, ref_psf, x, y, rng, psf_fraction, psf_mixtures=None) -> dict[str, np.ndarray]:
    """Expected measured/true flux of a star at (x, y) for psfFlux, gaussianFlux, kronFlux, the GAaP fluxes, the
    ConvolvedFlux fluxes and (given the grid's PSF mixtures, one per (x, y)) cModelFlux."""
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

    out = {"psfFlux": psf_fraction, "gaussianFlux": gaussian, "kronFlux": kron} | {f: psf_fraction for f in GAAP_FLUXES}
    if psf_mixtures is not None:
        out["cModelFlux"] = _cmodel_fractions(amps, covs, psf_mixtures, rng)
    return out | _convolved_fractions(amps, covs - PIXEL_VARIANCE * np.eye(2), einv, half, rng)


def _disk_fraction(cov: np.ndarray, radius: float) -> np.ndarray:
    """Fraction of a Gaussian N(0, cov) (..., 2, 2) within the circle of ``radius`` about its centre:
    (1 / 2 pi sqrt(det)) int (1 - exp(-R^2 a / 2)) / a dtheta, a = u^T cov^-1 u (u at angle theta)."""
    th = (np.arange(N_ANGLES) + 0.5) * (2 * np.pi / N_ANGLES)
    ux, uy = np.cos(th), np.sin(th)
    det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] ** 2
    # u^T cov^-1 u with cov^-1 = [[yy, -xy], [-xy, xx]] / det
    a = (cov[..., 1, 1, None] * ux * ux - 2 * cov[..., 0, 1, None] * ux * uy + cov[..., 0, 0, None] * uy * uy) / det[..., None]
    return ((1 - np.exp(-0.5 * radius * radius * a)) / a).mean(axis=-1) / np.sqrt(det)


def _adaptive_moments(amps: np.ndarray, covs: np.ndarray, n_iter: int = 60) -> np.ndarray:
    """SDSS adaptive moments (N, 2, 2) of Gaussian mixtures (amps (N, M), covs (N, M, 2, 2), the pixel included):
    the weight S with S = 2 M_S, M_S the S-weighted second moments (C for a Gaussian of covariance C).
    Analytic: the product of N(0, C) and the weight is a Gaussian of covariance P = (C^-1 + S^-1)^-1
    and mass sqrt(det P / det C)."""
    s = (amps[:, :, None, None] * covs).sum(axis=1) / amps.sum(axis=1)[:, None, None]
    for _ in range(n_iter):
        p = np.linalg.inv(np.linalg.inv(covs) + np.linalg.inv(s)[:, None])
        w = amps * np.sqrt(np.linalg.det(p) / np.linalg.det(covs))
        s = 2 * (w[:, :, None, None] * p).sum(axis=1) / w.sum(axis=1)[:, None, None]
    return s


def _convolved_fractions(amps, covs, einv, half, rng) -> dict[str, np.ndarray]:
    """ConvolvedFlux's fractions of a star: its PSF (mixture amps, covs, pixel excluded) matched as the plugin
    matches it (seeing: the PSF's adaptive moments, sigma_K^2 = t^2 - seeing^2 where positive) and measured in
    the sinc circles (the integral over the disk of the matched profile) and the naive Kron ellipse (over
    sub-pixel offsets, as kronFlux)."""
    n = amps.shape[0]
    pix = PIXEL_VARIANCE * np.eye(2)
    m = _adaptive_moments(amps, covs + pix)
    seeing = (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2) ** 0.25
    ar = np.arange(-half, half + 1, dtype=float)
    gy, gx = np.meshgrid(ar, ar, indexing="ij")
    out = {}
    for k, fwhm in enumerate(CONVOLVED_TARGET_FWHMS):
        t = fwhm / (2 * np.sqrt(2 * np.log(2)))
        var_k = np.where(t < seeing, 0.0, t * t - seeing * seeing)  # _deconv: the unconvolved image
        matched = covs + pix + var_k[:, None, None, None] * np.eye(2)
        names = convolved_flux_names(k)
        for r, name in zip(CONVOLVED_RADII, names):
            out[name] = (amps * _disk_fraction(matched, r)).sum(axis=1)
        kron = np.empty(n)
        for i in range(n):
            off = rng.uniform(-0.5, 0.5, (N_OFFSETS, 2))
            dx = gx[None] - off[:, 0, None, None]
            dy = gy[None] - off[:, 1, None, None]
            img = render_mixture(dx, dy, np.tile(amps[i], (N_OFFSETS, 1)), np.tile(matched[i] - pix, (N_OFFSETS, 1, 1, 1)))
            e = einv[i]
            inside = e[0, 0] * dx * dx + 2 * e[0, 1] * dx * dy + e[1, 1] * dy * dy <= 1.0
            kron[i] = (img * inside).sum(axis=(1, 2)).mean()
        out[names[-1]] = kron
    return out


def _cmodel_fractions(amps, covs, mixtures, rng) -> np.ndarray:
    """CModel of a star whose reference models are points: the least-squares amplitude of the pipeline's PSF
    mixture (fitted to the box-normalised PSF image) times its total flux, over the region 4 P (Rubin's final
    region of a point: P the PSF's moments), for a unit-flux star at random sub-pixel offsets."""
    m_amp, m_centre, m_cov = (np.asarray(a, float) for a in mixtures)
    p = (amps[:, :, None, None] * covs).sum(axis=1)  # PSF moments, pixel included (amps sum to 1)
    region_inv, _ = inverse_2x2(4.0 * p)
    half = int(np.ceil(np.sqrt(4.0 * p[:, [0, 1], [0, 1]].max()))) + 2
    ar = np.arange(-half, half + 1, dtype=float)
    gy, gx = np.meshgrid(ar, ar, indexing="ij")
    out = np.full(amps.shape[0], np.nan)
    for i in range(amps.shape[0]):
        off = rng.uniform(-0.5, 0.5, (N_OFFSETS, 2))
        dx = gx[None] - off[:, 0, None, None]
        dy = gy[None] - off[:, 1, None, None]
        star = render_mixture(dx, dy, np.tile(amps[i], (N_OFFSETS, 1)),
                              np.tile(covs[i] - PIXEL_VARIANCE * np.eye(2), (N_OFFSETS, 1, 1, 1)))
        model = np.zeros(dx.shape)
        for a, c in zip(m_amp[i], m_cov[i]):
            det = c[0] * c[1] - c[2] ** 2
            ex, ey = dx - m_centre[i, 0], dy - m_centre[i, 1]
            model += a / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * (c[1] * ex * ex + c[0] * ey * ey - 2 * c[2] * ex * ey) / det)
        e = region_inv[i]
        inside = e[0, 0] * dx * dx + 2 * e[0, 1] * dx * dy + e[1, 1] * dy * dy <= 1.0
        alpha = (model * star * inside).sum(axis=(1, 2)) / (model * model * inside).sum(axis=(1, 2))
        out[i] = np.mean(alpha) * m_amp[i].sum()
    return np.where(np.isfinite(out), out, np.nanmedian(out) if np.isfinite(out).any() else 1.0)


def simulate_ap_corr(band_psf, ref_psf, box: Box, grid_x, grid_y, rng, *, psf_fraction, psf_mixtures=None) -> ApCorrMap:
    """``psf_fraction``: flux of the PSF inside its image box at each grid node (row-major); ``psf_mixtures``:
    (amp (K, M), centre (K, 2), cov (K, M, 3)) of the grid nodes' PSF mixtures (row-major), for cModelFlux."""
    xx, yy = np.meshgrid(grid_x, grid_y)
    x, y = xx.ravel(), yy.ravel()
    fields = {}
    for name, frac in _star_fractions(band_psf, ref_psf, x, y, rng, psf_fraction, psf_mixtures).items():
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
