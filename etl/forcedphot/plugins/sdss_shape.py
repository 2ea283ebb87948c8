"""SdssShape in forced mode: adaptive moments on the coadd, started at the forced centroid.

The compiled kernel :func:`forcedphot.kernels.moments.sdss_shape` iterates every source on
its own image (noise replacement: its own heavy footprint over the noise) within a
(2 MAX_HALF + 1)^2 stamp (Rubin's SdssShape controls: initial moments 1.5, maxIter 100, tol1
1e-5, tol2 1e-4, maxShift 2 px); where the iteration fails the moments are the unweighted ones
of the stamp. Errors propagate the pixel variances through the final weighted moments (a
linearised version of Rubin's Fisher-matrix errors); PSF moments are the PSF model's at the
centroid.

The general flag is also set centrally (:mod:`forcedphot.validity`, applied by
``ForcedPhotCoaddTask.run`` after all measurement plugins and again after calibration) wherever
sdssShape_flux or sdssShape_fluxErr is not finite or sdssShape_fluxErr <= 0 (``sdssShape_flag``);
this plugin sets its specific flags.
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels.moments import read_only, sdss_shape, spatial_order
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register

MAX_HALF = 64  # stamp half-size: the adaptive weight, the unweighted fallback and the errors stop there
INITIAL, MAX_ITER, TOL1, TOL2, MAX_SHIFT = 1.5, 100, 1e-5, 1e-4, 2.0  # Rubin's SdssShape controls


@register
class SdssShape(Plugin):
    name = "SdssShape"
    kernel_modules = ("forcedphot.kernels.moments",)
    order = 1.0

    @classmethod
    def columns(cls, config):
        cols = [Column(f"sdssShape_{c}", "double", f"Adaptive second moment I{c} measured on this coadd.", "pix**2")
                for c in ("xx", "yy", "xy")]
        cols += [Column(f"sdssShape_{c}Err", "float", f"Uncertainty of sdssShape_{c}.", "pix**2") for c in ("xx", "yy", "xy")]
        cols += [
            Column("sdssShape_x", "double", "Centroid x at the end of the adaptive iteration.", "pix"),
            Column("sdssShape_y", "double", "Centroid y at the end of the adaptive iteration.", "pix"),
            Column("sdssShape_flux", "double", "Flux of the best-matched elliptical Gaussian: 2 sum(w I).", "nJy", "flux"),
            Column("sdssShape_fluxErr", "double", "Uncertainty of sdssShape_flux.", "nJy", "fluxErr"),
        ]
        cols += [Column(f"sdssShape_psf_{c}", "double", f"PSF model second moment I{c} at the centroid.", "pix**2")
                 for c in ("xx", "yy", "xy")]
        cols += [
            flag("sdssShape_flag", "General failure: no usable centroid, unweighted fallback, or a shift beyond 2 px."),
            flag("sdssShape_flag_unweightedBad", "Both the adaptive and the unweighted moments failed."),
            flag("sdssShape_flag_unweighted", "The adaptive iteration failed; moments are unweighted."),
            flag("sdssShape_flag_shift", "The centroid moved more than 2 px during the iteration."),
            flag("sdssShape_flag_maxIter", "The iteration did not converge in 100 steps."),
            flag("sdssShape_flag_psf", "The PSF moments could not be computed."),
        ]
        return tuple(cols)

    def measure(self, ctx: MeasurementContext):
        psf = ctx.psf_moments()
        c = ctx.centres()
        image, variance, _, valid, fp = ctx.pixels.planes()
        image, variance, valid = read_only(image, variance, valid)
        m, shift, wsum, _, f, err = sdss_shape(image, variance, valid, fp, c.cx, c.cy, c.fx, c.fy, c.usable,
                                                spatial_order(c.cx, c.cy), MAX_HALF, MAX_ITER, TOL1, TOL2, MAX_SHIFT,
                                                INITIAL)
        usable = ctx.usable  # the kernel leaves NaN and no flags on unusable sources
        out = {
            "sdssShape_xx": m[:, 0], "sdssShape_yy": m[:, 2], "sdssShape_xy": m[:, 1],
            "sdssShape_xxErr": err[:, 1], "sdssShape_yyErr": err[:, 2], "sdssShape_xyErr": err[:, 3],
            "sdssShape_x": ctx.x + shift[:, 0], "sdssShape_y": ctx.y + shift[:, 1],
            "sdssShape_flux": 2 * wsum, "sdssShape_fluxErr": err[:, 0],
            "sdssShape_psf_xx": psf[:, 0, 0], "sdssShape_psf_yy": psf[:, 1, 1], "sdssShape_psf_xy": psf[:, 0, 1],
        }
        unweighted, shifted = f[:, 0] != 0, f[:, 2] != 0
        out.update({
            "sdssShape_flag": ~usable | unweighted | shifted | ~np.isfinite(m[:, 0]),
            "sdssShape_flag_unweightedBad": f[:, 1] != 0,
            "sdssShape_flag_unweighted": unweighted,
            "sdssShape_flag_shift": shifted,
            "sdssShape_flag_maxIter": f[:, 3] != 0,
            "sdssShape_flag_psf": usable & ~np.isfinite(psf[:, 0, 0]),
        })
        return out
