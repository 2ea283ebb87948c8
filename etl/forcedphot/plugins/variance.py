"""Variance: median of the variance plane in an ellipse 5x the forced shape (Rubin's base_Variance).

Pixels with DETECTED, DETECTED_NEGATIVE, BAD, SAT or NO_DATA set are excluded, and invalid ones
(non-finite image or variance, off the coadd). Scaled to nJy^2. An ellipse reaching beyond 128 px
is not measured (flagged empty). One compiled pass over the sources
(:func:`forcedphot.kernels.background.ellipse_median`), the median of
:func:`forcedphot.clipped.masked_median`.

The general flag is also set centrally (:mod:`forcedphot.validity`, applied by
``ForcedPhotCoaddTask.run`` after all measurement plugins and again after calibration) wherever
localVariance is not finite or <= 0; this plugin sets its specific flags.
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register

SCALE = 5.0
MAX_HALF = 128  # largest pixel offset an ellipse may reach (the numpy version's largest stamp)
EXCLUDED = ("DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT", "NO_DATA")


@register
class Variance(Plugin):
    name = "Variance"
    kernel_modules = ("forcedphot.kernels.background",)

    @classmethod
    def columns(cls, config):
        return (
            Column("localVariance", "double", "Median of the variance plane in the ellipse 5x the forced shape, excluding detected and bad pixels.", "nJy**2", "variance"),
            flag("localVariance_flag", "General failure: no usable centroid or shape, or no pixels left in the ellipse."),
            flag("localVariance_flag_emptyFootprint", "No pixels left in the ellipse after excluding masked ones."),
        )

    def measure(self, ctx: MeasurementContext):
        from forcedphot.kernels.background import ellipse_median

        ok = ctx.usable & ctx.shape_ok
        q = np.where(ok[:, None, None], ctx.shape, np.eye(2)) * SCALE ** 2
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            det = q[:, 0, 0] * q[:, 1, 1] - q[:, 0, 1] ** 2
            qi_xx, qi_xy, qi_yy = q[:, 1, 1] / det, -q[:, 0, 1] / det, q[:, 0, 0] / det
        planes = ctx.coadd.mask_planes
        bits = planes.bitmask(*[p for p in EXCLUDED if p in planes.bits])
        # pixel offsets the ellipse can reach; beyond MAX_HALF the source is not measured
        need = np.where(ok, np.ceil(np.sqrt(np.maximum(q[:, 0, 0], q[:, 1, 1]))), np.inf)
        half = np.where(need <= MAX_HALF, need, -1).astype(np.int64)
        _, variance, mask, valid, _ = ctx.pixels.planes()
        c = ctx.centres()
        value = ellipse_median(variance, valid, mask, np.int32(bits), c.cx, c.cy, c.fx, c.fy,
                               qi_xx, qi_xy, qi_yy, half)
        empty = ok & ~np.isfinite(value)
        return {"localVariance": value, "localVariance_flag": ~ok | empty, "localVariance_flag_emptyFootprint": empty}
