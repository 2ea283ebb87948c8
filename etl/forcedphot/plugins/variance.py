"""Variance: median of the variance plane in an ellipse 5x the forced shape (Rubin's base_Variance).

Pixels with DETECTED, DETECTED_NEGATIVE, BAD, SAT or NO_DATA set are excluded. Scaled to nJy^2.
"""

from __future__ import annotations

import numpy as np

from forcedphot.clipped import masked_median
from forcedphot.cutouts import CutoutBatch, buckets
from forcedphot.moments import inverse_2x2, offsets
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag

SCALE = 5.0
EXCLUDED = ("DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT", "NO_DATA")


class Variance(Plugin):
    name = "Variance"

    @classmethod
    def columns(cls, config):
        return (
            Column("localVariance", "double", "Median of the variance plane in the ellipse 5x the forced shape, excluding detected and bad pixels.", "nJy**2", "variance"),
            flag("localVariance_flag", "General failure: no usable centroid or shape, or no pixels left in the ellipse."),
            flag("localVariance_flag_emptyFootprint", "No pixels left in the ellipse after excluding masked ones."),
        )

    @classmethod
    def padding(cls, config):
        return 130

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        value = np.full(n, np.nan)
        ok = ctx.usable & ctx.shape_ok
        q = np.where(ok[:, None, None], ctx.shape, np.eye(2)) * SCALE ** 2
        qinv, _ = inverse_2x2(q)
        planes = ctx.coadd.mask_planes
        bits = planes.bitmask(*[p for p in EXCLUDED if p in planes.bits])
        ix, iy = ctx.centre_index()
        fx, fy = ctx.sub_pixel()
        need = np.where(ok, np.ceil(np.sqrt(np.maximum(q[:, 0, 0], q[:, 1, 1]))), np.nan)
        for half, idx in buckets(need):
            if half is None:
                continue
            stamps = CutoutBatch(ctx.padded, ix[idx], iy[idx], half)
            gx, gy = offsets(half)
            dx = gx[None] - fx[idx, None, None]
            dy = gy[None] - fy[idx, None, None]
            qi = qinv[idx]
            inside = (qi[:, 0, 0, None, None] * dx * dx + 2 * qi[:, 0, 1, None, None] * dx * dy
                      + qi[:, 1, 1, None, None] * dy * dy) <= 1.0
            use = inside & stamps.valid & ((stamps.mask & bits) == 0)
            value[idx] = masked_median(np.where(use, stamps.variance, np.float32(np.nan)).reshape(idx.size, -1))
        empty = ok & ~np.isfinite(value)
        return {"localVariance": value, "localVariance_flag": ~ok | empty, "localVariance_flag_emptyFootprint": empty}
