"""TransformedCentroid: the reference position in the coadd's pixel frame (the forced position).

Sky -> pixel with the coadd's astropy WCS (including SIP distortion), vectorised over all sources.
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register


@register
class TransformedCentroid(Plugin):
    name = "TransformedCentroid"
    order = 0.0
    reads_pixels = False

    @classmethod
    def columns(cls, config):
        return (
            Column("centroid_x", "double", "Forced centroid x: the reference position in coadd tract pixels (0-based centres).", "pix"),
            Column("centroid_y", "double", "Forced centroid y: the reference position in coadd tract pixels (0-based centres).", "pix"),
            flag("centroid_flag", "Reference position is not finite or not on the coadd; nothing else is measured."),
        )

    def measure(self, ctx: MeasurementContext):
        x, y = ctx.coadd.wcs.all_world2pix(ctx.ref["coord_ra"], ctx.ref["coord_dec"], 0)  # honours SIP
        usable = np.isfinite(x) & np.isfinite(y) & ctx.coadd.bbox.contains(x, y)
        ctx.x, ctx.y, ctx.usable = x, y, usable
        return {"centroid_x": x, "centroid_y": y, "centroid_flag": ~usable}
