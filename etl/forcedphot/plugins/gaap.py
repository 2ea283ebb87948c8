"""GaapFlux: Gaussian-aperture-and-PSF fluxes (Kuijken et al. 2015; Rubin's ext_gaap_GaapFlux).

Per source, the PSF model image at the source (centred) is Gaussianized: a kernel K with
K (x) PSF ~ a circular Gaussian of sigma p = 1.15 p0 (p0 = sqrt((Pxx + Pyy) / 2), the trace
radius of the PSF's adaptive moments at the source), fitted in Rubin's basis (one Gaussian of
sigma max(p0c sqrt(1.15^2 - 1), 0.7) times the 15 monomials of degree <= 4, kernel size
odd(int(6 sigma)) clipped to [21, 35], sum K = 1), p0c the trace radius at the centre of the
source's PSF grid cell (Rubin: the source's own p0; one basis per cell makes each source's exact
least-squares fit cheap, see :func:`kernel_cells`; on the bench quantum the two sigma_K differ by
<= 0.25% and the fluxes by <= 0.02 of their errors, 1e-4 relative for S/N > 50). The flux in a
pre-seeing Gaussian aperture W (covariance, pixels) is the Gaussianized image weighted by
exp(-x^T Q^-1 x / 2), Q = W - p^2 1, scaled so that a point source gives its flux (within the PSF
model's box, as psfFlux):

    F_W = sum_x W'(x) I(x) / sum_x W'(x) P(x),   W' = K~ (x) w,   err = sqrt(sum W'^2 V) / sum W' P

with P the PSF model image at the source (no image is convolved). With a perfect kernel
sum W' P = sum w T = sqrt(det Q / det W), Rubin's 1/2 sqrt(det W / det Q) x 2 Phi_Q scaling; with a
real one (a Moffat PSF's wings leave ||T - K (x) P|| / ||T|| ~ 0.04) Rubin's point sources come out
2-3% low until aperture-corrected, these do not. The error is exact for the real per-pixel
variance (Kuijken's eq. A17 quantity; Rubin's eps formula approximates it with the centre pixel's
variance). Apertures: ``gaapPsfFlux`` (Q = p^2 1),
circular sigma 0.5, 0.7, 1.0, 1.5, 2.5, 3.0 arcsec (W = (sigma / s)^2 1, s the coadd WCS's local
pixel scale sqrt|det J| at the source; Rubin maps W through the full Jacobian, which differs by the
WCS's local shear, ~1e-4 in a tract) and ``gaapOptimalFlux`` (W = the forced reference shape + the
PSF moments at the source). Compiled kernel: :func:`forcedphot.kernels.gaap.gaap_flux`.

Flags: ``_flag_bigPsf`` where Q is not positive definite (sigma <= p), ``gaapFlux_flag_gaussianization``
where the kernel fit failed or its residual ||T - K (x) P|| / ||T|| exceeds MAX_RESIDUAL (or the PSF
has no usable size), ``gaapFlux_flag_edge`` where a measured aperture's effective weight W' reaches
off the coadd (not a failure by itself); an aperture's ``_flag`` where it is not measured (no usable centroid, bigPsf,
gaussianization, stamp beyond MAX_HALF, no reference shape for Optimal) or |W'| on invalid or
``psf_bad_mask_planes`` pixels exceeds 1e-3 of its total; ``gaapFlux_flag`` where no aperture
could be measured (no usable centroid or gaussianization failed).
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels.moments import read_only, spatial_order
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, excluded_bits, flag, register
from forcedphot.plugins.shape import ref_flag

SCALING = 1.15  # target sigma / PSF trace radius (Rubin's scalingFactors = [1.15])
SIGMAS = (0.5, 0.7, 1.0, 1.5, 2.5, 3.0)  # arcsec (obs_lsst gaap.py)
APERTURES = ("Psf",) + tuple(f"{s:.1f}".replace(".", "p") for s in SIGMAS) + ("Optimal",)
MIN_KERNEL_SIGMA = 0.7  # pixels (alardMinSig)
KERNEL_SIZES = (21, 35)
MAX_RESIDUAL = 0.1  # ||T - K (x) P|| / ||T|| above this flags the gaussianization
MAX_HALF = 200  # weight stamps beyond this half-size are not measured
SUB = (np.arange(4) - 1.5) / 4
STEP = 0.5  # pixels, for the finite-difference WCS Jacobian


def base_name(ap: str) -> str:
    return f"gaap{ap}Flux"


GAAP_FLUXES = tuple(base_name(ap) for ap in APERTURES)  # all aperture corrected (plugins/ap_corr.py)


def kernel_geometry(p0: np.ndarray):
    """(p, sigma_K, kernel half-size) for PSF trace radii p0 (pixels)."""
    p = SCALING * p0
    sigk = np.maximum(p0 * np.sqrt(SCALING ** 2 - 1), MIN_KERNEL_SIGMA)
    size = np.floor(6 * np.where(np.isfinite(sigk), sigk, 0)).astype(np.int64)
    size = np.clip(size + (size % 2 == 0), *KERNEL_SIZES)
    return p, sigk, size // 2


_CELLS: dict = {}  # id(PsfGrid) -> {cell: (sigma_K, half-size, Gram)}: made once per grid, shared by the chunks


def kernel_cells(psf, x: np.ndarray, y: np.ndarray):
    """(cell (N,), grams (C, 60, 60), sigma_K (N,), half-size (N,), ok (N,)) of the Gaussianization basis
    of sources at tract (x, y): each PSF grid cell (the four nodes a source's PSF is interpolated
    between) has one basis, of sigma_K from the PSF trace radius at the cell's centre (the mean of its
    corner nodes' moments), and the Gram of its corner nodes' convolved basis images (kernels.gaap.cell_grams),
    from which each source's kernel fit is exact for its own interpolated PSF. Cached per grid (the
    chunks of a quantum share it); ok: the cell's PSF has a usable size."""
    import weakref

    from forcedphot.kernels.gaap import cell_grams, source_cells

    key = id(psf)
    if key not in _CELLS:
        _CELLS[key] = {}
        weakref.finalize(psf, _CELLS.pop, key, None)
    cache = _CELLS[key]
    iy0, ix0 = source_cells(psf.x, psf.y, np.asarray(x, np.float64), np.asarray(y, np.float64))
    ny, nx = psf.y.size, psf.x.size
    ids = iy0 * nx + ix0
    used, index = np.unique(ids, return_inverse=True)
    todo = [int(u) for u in used if int(u) not in cache]
    if todo:
        cy0, cx0 = np.divmod(np.array(todo, np.int64), nx)
        cy1, cx1 = np.minimum(cy0 + 1, ny - 1), np.minimum(cx0 + 1, nx - 1)
        mom = psf.node_moments()
        centre = 0.25 * (mom[cy0, cx0] + mom[cy0, cx1] + mom[cy1, cx0] + mom[cy1, cx1])
        p0 = np.sqrt(0.5 * (centre[:, 0, 0] + centre[:, 1, 1]))
        ok = np.isfinite(p0) & (p0 > 0)
        _, sigk, hk = kernel_geometry(np.where(ok, p0, 1.0))
        grams = cell_grams(psf.node_images(), cy0, cx0, sigk, hk)
        for j, u in enumerate(todo):
            cache[u] = (float(sigk[j]), int(hk[j]), grams[j], bool(ok[j]))
    entries = [cache[int(u)] for u in used]
    grams = np.stack([e[2] for e in entries]) if entries else np.zeros((0, 60, 60))
    sigk = np.array([e[0] for e in entries])[index]
    hk = np.array([e[1] for e in entries], np.int64)[index]
    ok = np.array([e[3] for e in entries], bool)[index]
    return index.astype(np.int64), grams, sigk, hk, ok


def pixel_scale(wcs, x, y) -> np.ndarray:
    """(N,) local pixel scale sqrt(|det J|), arcsec per pixel, J = d(sky, arcsec)/d(pixel) at tract pixels (x, y)."""
    n = x.size
    ra, dec = wcs.all_pix2world(np.concatenate([x + STEP, x - STEP, x, x]), np.concatenate([y, y, y + STEP, y - STEP]), 0)
    ra, dec = ra.reshape(4, n), dec.reshape(4, n)
    cosd = np.cos(np.deg2rad(dec.mean(axis=0)))
    dra = lambda a, b: ((ra[a] - ra[b] + 180.0) % 360.0 - 180.0) * cosd * 3600 / (2 * STEP)  # noqa: E731
    ddec = lambda a, b: (dec[a] - dec[b]) * 3600 / (2 * STEP)  # noqa: E731
    jac = np.empty((n, 2, 2))
    jac[:, 0, 0], jac[:, 1, 0] = dra(0, 1), ddec(0, 1)
    jac[:, 0, 1], jac[:, 1, 1] = dra(2, 3), ddec(2, 3)
    return np.sqrt(np.abs(np.linalg.det(jac)))


def aperture_shapes(ctx: MeasurementContext, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, A, 2, 2) pre-seeing apertures W in coadd pixels and (N, A) whether each is defined."""
    n = ctx.n
    x = np.where(ctx.usable, ctx.x, ctx.coadd.bbox.min_x).astype(float)
    y = np.where(ctx.usable, ctx.y, ctx.coadd.bbox.min_y).astype(float)
    scale = pixel_scale(ctx.coadd.wcs, x, y)
    w = np.empty((n, len(APERTURES), 2, 2))
    defined = np.ones((n, len(APERTURES)), bool)
    w[:, 0] = 2 * p[:, None, None] ** 2 * np.eye(2)  # PsfFlux: Q = p^2 1
    for k, s in enumerate(SIGMAS):
        w[:, k + 1] = (s / scale)[:, None, None] ** 2 * np.eye(2)  # circular in pixels: separable
    shape_ok = ctx.shape_ok if ctx.shape_ok is not None else np.zeros(n, bool)
    ok = shape_ok & ~ref_flag(ctx, "shape_flag")
    shape = np.where(ok[:, None, None], ctx.shape if ctx.shape is not None else 0.0, np.eye(2))
    w[:, -1] = shape + ctx.psf_moments()
    defined[:, -1] = ok
    return w, defined


@register
class GaapFlux(Plugin):
    name = "GaapFlux"
    kernel_modules = ("forcedphot.kernels.gaap", "forcedphot.kernels.psf")

    @classmethod
    def columns(cls, config):
        cols = []
        for ap in APERTURES:
            b = base_name(ap)
            what = {"Psf": "the PSF-sized aperture (Q = p^2 1, W = 2 p^2 1)",
                    "Optimal": "the optimal aperture (W = reference shape + PSF moments)"}.get(
                ap, f"a circular Gaussian aperture of sigma {ap.replace('p', '.')} arcsec")
            cols += [
                Column(b, "double", f"GAaP flux in {what}, of the PSF-Gaussianized image: the pre-seeing "
                       "flux weighted by exp(-x^T W^-1 x / 2), normalised to a point source's flux.", "nJy", "flux"),
                Column(f"{b}Err", "double", f"Uncertainty of {b}: sqrt(sum(W'^2 V)) / sum(W' P), W' the effective "
                       "weight on the original pixels, P the PSF model.", "nJy", "fluxErr"),
                flag(f"{b}_flag", f"{b} failed: not measured (no usable centroid, gaussianization failed, "
                     + ("" if ap == "Psf" else "bigPsf, ") + ("no or flagged reference shape, " if ap == "Optimal" else "")
                     + "stamp too large) or weight on invalid or psf_bad_mask_planes pixels, or a non-finite result."),
            ]
            if ap != "Psf":
                cols.append(flag(f"{b}_flag_bigPsf", f"The aperture of {b} is not larger than the Gaussianized PSF "
                                 "(W - p^2 1 not positive definite): not measured."))
        cols += [
            flag("gaapFlux_flag", "GAaP failed for every aperture: no usable centroid or the PSF's gaussianization failed."),
            flag("gaapFlux_flag_edge", "A measured aperture's effective weight reaches off the coadd (the aperture's _flag says whether more than 1e-3 of it)."),
            flag("gaapFlux_flag_gaussianization", "The PSF Gaussianization kernel fit failed, or its relative residual "
                 f"exceeded {MAX_RESIDUAL}, or the PSF has no usable size."),
        ]
        return tuple(cols)

    def measure(self, ctx: MeasurementContext):
        from forcedphot.kernels.gaap import MAX_Q, gaap_flux

        mom = ctx.psf_moments()
        p0 = np.sqrt(0.5 * (mom[:, 0, 0] + mom[:, 1, 1]))
        psf = ctx.coadd.psf
        x = np.where(ctx.usable, ctx.x, 0.0)
        y = np.where(ctx.usable, ctx.y, 0.0)
        cell, grams, sigk, hk, cell_ok = kernel_cells(psf, x, y)
        psf_ok = ctx.usable & np.isfinite(p0) & (p0 > 0) & cell_ok
        p0 = np.where(psf_ok, p0, 1.0)
        p = kernel_geometry(p0)[0]
        w, defined = aperture_shapes(ctx, p)
        q = w - (p ** 2)[:, None, None, None] * np.eye(2)
        det = q[..., 0, 0] * q[..., 1, 1] - q[..., 0, 1] ** 2
        big = ~((q[..., 0, 0] > 0) & (det > 0))
        big[:, 0] = False
        qs = np.where(big[..., None, None], np.eye(2), q)
        det = np.where(big, 1.0, det)
        ia, ib, ic = qs[..., 1, 1] / det, -qs[..., 0, 1] / det, qs[..., 0, 0] / det
        rw = np.ceil(np.sqrt(MAX_Q * np.maximum(qs[..., 0, 0], qs[..., 1, 1])))
        measured = psf_ok[:, None] & defined & ~big & (rw + hk[:, None] <= MAX_HALF)
        rw = np.where(measured, rw, -1).astype(np.int64)
        small = ((qs[..., 0, 0] < 0.25) | (qs[..., 1, 1] < 0.25) | (det < 0.0625)).astype(np.uint8)
        c = ctx.centres()
        image, variance, _, _, fp = ctx.pixels.planes()
        image, variance, valid = read_only(image, variance, ctx.pixels.classes(excluded_bits(ctx.coadd, self.config)))
        flux, err, invalid, excluded, edge, residual = gaap_flux(
            image, variance, valid, fp, psf.node_images(), psf.x, psf.y, x, y, cell, grams, c.cx, c.cy, c.fx, c.fy, p,
            sigk, np.where(psf_ok, hk, -1), np.ascontiguousarray(ia), np.ascontiguousarray(ib),
            np.ascontiguousarray(ic), rw, small, SUB, spatial_order(c.cx, c.cy))
        gauss_bad = psf_ok & ~(residual <= MAX_RESIDUAL)
        gaussianization = gauss_bad | (ctx.usable & ~psf_ok)
        failed = ~ctx.usable | gaussianization
        out = {}
        for k, ap in enumerate(APERTURES):
            b = base_name(ap)
            f, e = flux[:, k], err[:, k]
            out[b] = f
            out[f"{b}Err"] = e
            out[f"{b}_flag"] = (failed | ~measured[:, k] | (invalid[:, k] != 0) | (excluded[:, k] != 0)
                                | ~np.isfinite(f) | ~np.isfinite(e))
            if ap != "Psf":
                out[f"{b}_flag_bigPsf"] = ctx.usable & psf_ok & big[:, k]
        out["gaapFlux_flag"] = failed
        out["gaapFlux_flag_edge"] = edge != 0
        out["gaapFlux_flag_gaussianization"] = gaussianization
        return out
