"""ConvolvedFlux: aperture and Kron fluxes on the image PSF-matched to Gaussian seeings (Rubin's
ext_convolved_ConvolvedFlux).

Per source the seeing s0 is the determinant radius (det M)^(1/4) of the PSF model moments M at
the forced centroid (``convolvedFlux_seeing``). Each target k of ``TARGET_FWHMS`` (obs_lsst's 3.5,
5.0, 6.5, 8.0 px) has sigma t = FWHM / (2 sqrt(2 ln 2)); if t < s0 the unconvolved image is
measured and ``convolved{k}_deconv`` is set (as Rubin), otherwise the image is convolved with the
normalised sampled Gaussian of half-width int(4 sigma + 0.5) (Rubin's kernel) whose taps have
variance sigma_K^2 = t^2 - s0^2 before truncation (Rubin samples sigma_K itself, which
under-convolves below sigma_K ~ 0.7 px, see :func:`sampled_sigma`; the same from ~1 px on). On it: circular apertures of radius 3.3, 4.5 and 6.0 px (``convolved{k}_ap03p3Flux``,
``_ap04p5Flux``, ``_ap06Flux``, named as CircularApertureFlux's) and the forced Kron ellipse
(``convolved{k}_kronFlux``: the reference shape with sqrt(ab) = reference Kron radius, x 2.5,
exactly kronFlux's aperture, :func:`forcedphot.plugins.kron.forced_kron_ellipse`).

The image itself is never convolved: the aperture's weights are (:mod:`forcedphot.kernels.convolved`),
which gives the same flux, and the exact error sqrt(sum W'^2 V) with the per-pixel variance.
Circles carry CircularApertureFlux's sinc coefficients (as Rubin: the matched image is well
sampled, and exact pixel overlap would read its pixels as uniform, 1.5% low at 3.3 px for a
1.5 px Gaussian); the Kron ellipse naive pixel centres (as kronFlux; Rubin: sinc for small
ellipses). Differences from Rubin: the sinc coefficients are shifted exactly (Rubin: lanczos5);
Rubin's error sums the unconvolved variance plane over the aperture (ignoring that the convolved
pixels are correlated and less noisy), which overstates the error of background-limited sources.

Flags: ``convolvedFlux_flag`` (no usable centroid or PSF moments: no values); each flux's ``_flag``
where it has weight on invalid, off-coadd or psf_bad_mask_planes (e.g. BAD, SAT) pixels (its value
is kept: such pixels read as 0 or are summed as they are), or is not finite; the Kron fluxes also
where kronFlux has no aperture (no or bad reference radius or shape, an ellipse off the coadd, a
radius the ingest flagged) or the ellipse has more than ``MAX_KRON_HALF`` rows either side (no
value). Every flux is aperture corrected (ApCorr, ``AP_CORR_FLUXES``, as Rubin's
registerForApCorr): a PSF that is not Gaussian keeps a band-dependent part after the Gaussian
matching, which the stars' correction removes.
"""

from __future__ import annotations

import math

import numpy as np

from forcedphot.kernels.convolved import convolved_sums
from forcedphot.layout import CONVOLVED_RADII, CONVOLVED_TARGET_FWHMS, convolved_flux_names
from forcedphot.plugins.aperture import source_pixels
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, excluded_bits, flag, register
from forcedphot.plugins.kron import forced_kron_ellipse
from forcedphot.plugins.shape import ref_flag

TARGET_FWHMS = CONVOLVED_TARGET_FWHMS  # pixels (obs_lsst: 0.7, 1.0, 1.3, 1.6 arcsec at 0.2 arcsec/px)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
MAX_KRON_HALF = 128  # larger Kron ellipses are not convolved (cost grows as the square)
MAX_KERNEL_SIGMA = 3.5  # px: sigma_K <= the widest target's sigma (3.397 px)
INVALID_WEIGHT = 1e-9  # weight on invalid or excluded pixels above which a flux is flagged


flux_names = convolved_flux_names  # the flux columns of target k: the circles, then the Kron ellipse


CONVOLVED_FLUXES = tuple(name for k in range(len(TARGET_FWHMS)) for name in flux_names(k))  # all aperture corrected


def kernel_sigmas(seeing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigma_K, deconv), each (N, len(TARGET_FWHMS)), for PSFs of determinant radius ``seeing`` (pixels).

    deconv where the target sigma t < seeing (sigma_K = 0: the unconvolved image), otherwise
    sigma_K^2 = t^2 - seeing^2. The seeing (adaptive moments of the pixelised PSF images) holds the
    pixel's 1/12 px^2, as the sinc apertures' band-limited image of the pixel values does. The
    kernel's sigma is :func:`sampled_sigma` of sigma_K (its Gaussian sampled at the pixels has
    variance sigma_K^2 before the 4 sigma truncation).
    """
    t = np.asarray(TARGET_FWHMS)[None, :] / FWHM_PER_SIGMA
    s0 = np.asarray(seeing, float)[:, None]
    deconv = t < s0
    with np.errstate(invalid="ignore"):
        sigma = np.where(deconv | ~np.isfinite(s0), 0.0, np.sqrt(np.maximum(t * t - s0 * s0, 0.0)))
    return np.where(sigma > 0, sampled_sigma(sigma), 0.0), deconv


def _sampled_variance(sigma: np.ndarray) -> np.ndarray:
    """Variance sum(n^2 K(n)) / sum(K(n)) of the Gaussian of ``sigma`` sampled at every integer n (untruncated)."""
    n = np.arange(-int(8 * sigma.max()) - 2, int(8 * sigma.max()) + 3)[None, :]
    k = np.exp(-0.5 * (n / sigma[:, None]) ** 2)
    return (k * n * n).sum(axis=1) / k.sum(axis=1)


_TABLE_SIGMA = np.linspace(0.1, MAX_KERNEL_SIGMA, 6801)
_TABLE_VARIANCE = np.maximum.accumulate(_sampled_variance(_TABLE_SIGMA))  # increasing


def sampled_sigma(sigma_k: np.ndarray) -> np.ndarray:
    """The sigma whose Gaussian sampled at the pixels has variance sigma_k^2 (before the 4 sigma truncation).

    Rubin samples sigma_k itself. Sampled at the pixels a Gaussian is narrower than sigma_k below
    ~0.7 px (variance 0.215 for sigma_k = 0.5, ~0 below 0.2): a source whose PSF is just below a
    target would be under-matched (2.2e-3 of the 3.3 px flux at sigma_k = 0.15). From ~1 px on the
    two agree (sigma = sigma_k to < 1e-7): Rubin's kernel. The 4 sigma truncation is left as Rubin's
    (compensating it too widened the core and made the colours of the test galaxies worse).
    """
    sigma_k = np.asarray(sigma_k, float)
    inside = sigma_k <= MAX_KERNEL_SIGMA
    return np.where(inside, np.interp(sigma_k * sigma_k, _TABLE_VARIANCE, _TABLE_SIGMA), sigma_k)


@register
class ConvolvedFlux(Plugin):
    name = "ConvolvedFlux"
    kernel_modules = ("forcedphot.kernels.convolved",)

    @classmethod
    def columns(cls, config):
        cols = [Column("convolvedFlux_seeing", "float", "PSF determinant radius (det M)^(1/4) of the PSF model moments at the centroid: the seeing sigma the ConvolvedFlux targets are matched from.", "pix"),
                flag("convolvedFlux_flag", "General failure of ConvolvedFlux: no usable centroid or PSF moments (no values).")]
        for k, fwhm in enumerate(TARGET_FWHMS):
            what = f"on the image PSF-matched to a Gaussian of FWHM {fwhm:g} px (sigma {fwhm / FWHM_PER_SIGMA:.3f} px)"
            cols.append(flag(f"convolved{k}_deconv", f"The PSF is wider than the FWHM {fwhm:g} px target: the convolved{k} fluxes are measured on the unconvolved image."))
            for r, name in zip(CONVOLVED_RADII + (None,), flux_names(k)):
                ap = f"a circular aperture of radius {r:g} px (sinc coefficients)" if r else "the forced Kron ellipse (2.5 x the reference Kron radius, reference shape; pixel centres)"
                cols += [
                    Column(name, "double", f"Flux in {ap} {what}; aperture corrected.", "nJy", "flux"),
                    Column(f"{name}Err", "double", f"Uncertainty of {name}: sqrt(sum(W'^2 var)), W' the aperture weights convolved with the matching kernel; aperture corrected.", "nJy", "fluxErr"),
                    flag(f"{name}_flag", f"General failure of {name}: convolvedFlux_flag, weight on invalid, off-coadd or psf_bad_mask_planes pixels, a non-finite value" + ("" if r else ", or no forced Kron aperture (see kronFlux_flag; no value)") + "."),
                ]
        return tuple(cols)

    def measure(self, ctx: MeasurementContext):
        m = ctx.psf_moments()
        det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2
        with np.errstate(invalid="ignore"):
            seeing = np.where(ctx.usable & (det > 0), det, np.nan) ** 0.25
        ok = ctx.usable & np.isfinite(seeing)
        sigma, deconv = kernel_sigmas(np.where(ok, seeing, 0.0))
        e = forced_kron_ellipse(ctx)
        kron_ok = e.ok & ~e.edge & ok
        half = np.where(kron_ok, np.ceil(np.maximum(e.ext_x, e.ext_y)) + 1, -1)
        too_big = half > MAX_KRON_HALF
        half = np.where(too_big, -1, half).astype(np.int64)
        pixels = source_pixels(ctx)
        image, variance, _, _, fp = pixels.planes()
        valid = pixels.classes(excluded_bits(ctx.coadd, self.config))
        c = ctx.centres()
        flux, var, invalid, excluded = convolved_sums(image, variance, valid, fp, c.cx, c.cy, c.xl, c.yl,
                                                      np.asarray(CONVOLVED_RADII), e.einv[:, 0, 0], e.einv[:, 0, 1],
                                                      e.einv[:, 1, 1], half, sigma, ok)
        no_kron = ~kron_ok | too_big | ref_flag(ctx, "kron_radius_flag")
        out = {"convolvedFlux_seeing": seeing.astype(np.float32), "convolvedFlux_flag": ~ok}
        for k in range(len(TARGET_FWHMS)):
            out[f"convolved{k}_deconv"] = deconv[:, k] & ok
            for a, name in enumerate(flux_names(k)):
                f = flux[:, k, a]
                bad = ~ok | (invalid[:, k, a] > INVALID_WEIGHT) | (excluded[:, k, a] > INVALID_WEIGHT) | ~np.isfinite(f)
                out[name] = f
                out[f"{name}Err"] = np.sqrt(var[:, k, a])
                out[f"{name}_flag"] = bad | (no_kron if a == len(CONVOLVED_RADII) else False)
        return out
