"""CModel: forced exp and dev galaxy-model fluxes and their non-negative combination (Rubin's
modelfit_CModel in forced mode).

The reference catalog supplies each object's models (columns of ``ref`` from schema 1.4.0, tract
pixels): the half-light ellipses of the exp and dev fits (``cModel_exp_xx/_yy/_xy``,
``cModel_dev_xx/_yy/_xy``) and the final fit region (``cModel_region_xx/_yy/_xy``), with flags
saying which reference fits failed. The coadd shares the tract's pixel grid (Rubin requires the
reference and measurement WCS to be equal), so the ellipses are used as they are, centred on the
forced centroid. Each source's models are its profile mixtures (:mod:`forcedphot.profiles`:
Rubin's lux K=6 and luv K=8) convolved with its PSF mixture (``ctx.psf_mixtures()``), sampled at
pixel centres; their amplitudes are fitted over the region's good pixels of the source's own
(noise-replaced) image by the compiled kernel :func:`forcedphot.kernels.cmodel.cmodel`, whose
docstring has the formulas (stage fits without positivity, joint fit by exact non-negative least
squares, inner fluxes and errors as Rubin's WeightSums).

Missing or flagged references are never guessed: a null region or ellipse, or a reference flag,
sets ``cModel_flag_badReference`` and ``cModel_flag`` (values are still measured where the stage's
ellipse and the region exist, as Rubin's forced mode does); with no reference model at all
(columns absent, e.g. a ref file older than 1.4.0, or every ellipse null) ``cModel_flag_noShapeFit``
says so too.
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels import cmodel as K
from forcedphot.kernels.moments import read_only, spatial_order
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register
from forcedphot.plugins.shape import ref_flag
from forcedphot.profiles import DEV, EXP
from forcedphot.psf import MIXTURE_FAILED

BAD_MASK_PLANES = ("EDGE", "SAT", "BAD", "NO_DATA")  # Rubin's CModel badMaskPlanes
MAX_AREA = 100000.0  # pixels: regions above are not fitted (region_maxArea)
MAX_BAD_PIXEL_FRACTION = 0.1


def _ellipse(ctx: MeasurementContext, prefix: str) -> np.ndarray:
    """(N, 3) ellipse (xx, yy, xy) of reference columns ``prefix_xx/_yy/_xy``; NaN where null or absent."""
    cols = []
    for c in ("xx", "yy", "xy"):
        v = ctx.ref.get(f"{prefix}_{c}")
        cols.append(np.full(ctx.n, np.nan) if v is None else np.asarray(v, np.float64))
    return np.stack(cols, axis=1)


@register
class CModel(Plugin):
    name = "CModel"
    kernel_modules = ("forcedphot.kernels.cmodel", "forcedphot.kernels.mixtures")

    @classmethod
    def columns(cls, config):
        return (
            Column("cModelFlux", "double", "CModel flux: the non-negative least-squares combination of the exp and dev models (reference half-light ellipses convolved with the PSF) over the reference fit region; total flux of the truncated models; aperture corrected.", "nJy", "flux"),
            Column("cModelFluxErr", "double", "Uncertainty of cModelFlux (model-weighted, per-pixel variance, shapes held fixed); aperture corrected.", "nJy", "fluxErr"),
            Column("cModelFlux_inner", "double", "Flux of the fitted CModel model within the fit region (sum of the model at the region's good pixel centres); not aperture corrected.", "nJy", "flux"),
            Column("cModel_fracDev", "float", "Fraction of cModelFlux in the dev component."),
            Column("cModel_expFlux", "double", "Flux of the exp model alone (linear fit, no positivity constraint); corrected with cModelFlux's aperture correction.", "nJy", "flux"),
            Column("cModel_expFluxErr", "double", "Uncertainty of cModel_expFlux; aperture corrected as it.", "nJy", "fluxErr"),
            Column("cModel_expFlux_inner", "double", "Flux of the fitted exp model within the fit region; not aperture corrected.", "nJy", "flux"),
            Column("cModel_devFlux", "double", "Flux of the dev model alone (linear fit, no positivity constraint); corrected with cModelFlux's aperture correction.", "nJy", "flux"),
            Column("cModel_devFluxErr", "double", "Uncertainty of cModel_devFlux; aperture corrected as it.", "nJy", "fluxErr"),
            Column("cModel_devFlux_inner", "double", "Flux of the fitted dev model within the fit region; not aperture corrected.", "nJy", "flux"),
            Column("cModel_objective", "double", "Objective of the final fit: 1/2 sum over the region's good pixels of (data - model)^2, unweighted (image units squared; Rubin's cModel_chi2)."),
            flag("cModel_flag", "General failure of the final fit: a bad or missing reference, no PSF mixture, no usable region, no flux, or a failed stage."),
            flag("cModel_flag_badReference", "The reference model is missing (null region or ellipse) or its fit failed (a reference CModel flag)."),
            flag("cModel_flag_noShapeFit", "The reference holds no CModel model at all (no region and no ellipses)."),
            flag("cModel_flag_region_maxArea", "The fit region's area exceeds 100000 pixels: not fitted."),
            flag("cModel_flag_region_maxBadPixelFraction", "More than 10% of the region's pixels are off the coadd, invalid or in a bad mask plane (EDGE, SAT, BAD, NO_DATA), or none is good: not fitted."),
            flag("cModel_flag_edge", "The fit region extends off the coadd (its pixels there are left out)."),
            flag("cModel_flag_noGoodPixels", "No good pixel in the fit region."),
            flag("cModel_flag_noShapeletPsf", "No usable PSF mixture at the source (the fit failed or misplaces more than 2% of the PSF's light)."),
            flag("cModel_flag_noFlux", "The final fit's flux is zero (both non-negative amplitudes 0) or not finite."),
            flag("cModel_exp_flag", "The exp stage failed: no usable exp reference, no usable pixels, or zero inner flux."),
            flag("cModel_dev_flag", "The dev stage failed: no usable dev reference, no usable pixels, or zero inner flux."),
        )

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        region = _ellipse(ctx, "cModel_region")
        q_exp = _ellipse(ctx, "cModel_exp")
        q_dev = _ellipse(ctx, "cModel_dev")
        finite = lambda q: np.isfinite(q).all(axis=1)  # noqa: E731
        region_ok = finite(region) & ~ref_flag(ctx, "cModel_region_flag")
        exp_ok = finite(q_exp) & ~ref_flag(ctx, "cModel_exp_flag")
        dev_ok = finite(q_dev) & ~ref_flag(ctx, "cModel_dev_flag")
        no_model = ~(finite(region) | finite(q_exp) | finite(q_dev))
        ref_failed = ref_flag(ctx, "cModel_ref_flag") | ref_flag(ctx, "cModel_initial_flag")
        region = np.where(region_ok[:, None], region, np.nan)
        stage_ok = np.stack([exp_ok, dev_ok], axis=1).astype(np.uint8)
        mix = ctx.psf_mixtures()
        psf_bad = mix.flag
        psf_ok = ~psf_bad & ((mix.flags & MIXTURE_FAILED) == 0) & np.isfinite(mix.amp).all(axis=1)
        c = ctx.centres()
        image, variance, mask, valid, fp = ctx.pixels.planes()
        image, variance, mask, valid = read_only(image, variance, mask, valid)
        bad_bits = ctx.coadd.mask_planes.bitmask(*[p for p in BAD_MASK_PLANES if p in ctx.coadd.mask_planes.bits])
        values, flags = K.cmodel(image, variance, mask, valid, fp, c.cx, c.cy, c.fx, c.fy, c.usable, region, q_exp,
                                 q_dev, stage_ok, mix.amp, mix.centre, mix.cov, psf_ok.astype(np.uint8), EXP.weights,
                                 EXP.variances, DEV.weights, DEV.variances, bad_bits, MAX_AREA,
                                 MAX_BAD_PIXEL_FRACTION, spatial_order(c.cx, c.cy))
        bit = lambda b: (flags & b) != 0  # noqa: E731
        bad_ref = bit(K.BAD_REF) | ref_failed
        failed = bit(K.FAILED) | bad_ref
        return {
            "cModelFlux": values[:, K.FLUX], "cModelFluxErr": values[:, K.ERR], "cModelFlux_inner": values[:, K.INNER],
            "cModel_fracDev": values[:, K.FRAC_DEV],
            "cModel_expFlux": values[:, K.EXP_FLUX], "cModel_expFluxErr": values[:, K.EXP_ERR],
            "cModel_expFlux_inner": values[:, K.EXP_INNER],
            "cModel_devFlux": values[:, K.DEV_FLUX], "cModel_devFluxErr": values[:, K.DEV_ERR],
            "cModel_devFlux_inner": values[:, K.DEV_INNER],
            "cModel_objective": values[:, K.OBJECTIVE],
            "cModel_flag": failed, "cModel_flag_badReference": bad_ref, "cModel_flag_noShapeFit": no_model,
            "cModel_flag_region_maxArea": bit(K.REGION_MAX_AREA),
            "cModel_flag_region_maxBadPixelFraction": bit(K.REGION_MAX_BAD), "cModel_flag_edge": bit(K.EDGE),
            "cModel_flag_noGoodPixels": bit(K.NO_GOOD), "cModel_flag_noShapeletPsf": psf_bad & ctx.usable,
            "cModel_flag_noFlux": bit(K.NO_FLUX),
            "cModel_exp_flag": bit(K.EXP_FAILED) | ref_flag(ctx, "cModel_exp_flag"),
            "cModel_dev_flag": bit(K.DEV_FAILED) | ref_flag(ctx, "cModel_dev_flag"),
        }
