"""PixelFlags: mask planes OR-ed over each footprint, and OR/AND over the 3x3 centre box.

As Rubin's base_PixelFlags: ``pixelFlags_<plane>`` (any pixel of the source's own footprint;
the 3x3 box for a source without one), ``pixelFlags_<plane>Center`` (any pixel of the 3x3 box at
the centre) and ``pixelFlags_<plane>CenterAll`` (every pixel of that box). Invalid pixels (non-finite
image, variance not finite and positive) count as NO_DATA, and so do pixels off the coadd. One compiled pass over the
spans (:func:`forcedphot.kernels.footprints.footprint_mask_or`).
"""

from __future__ import annotations

import numpy as np

from forcedphot.layout import PIXEL_FLAG_PLANES
from forcedphot.plugins.base import MeasurementContext, Plugin, flag, register

FLAG_NAMES = {"BAD": "bad", "CR": "cr", "EDGE": "edge", "INTRP": "interpolated", "NO_DATA": "nodata",
              "SAT": "saturated", "SUSPECT": "suspect", "CLIPPED": "clipped", "SENSOR_EDGE": "sensor_edge",
              "REJECTED": "rejected", "INEXACT_PSF": "inexact_psf"}


@register
class PixelFlags(Plugin):
    name = "PixelFlags"

    @classmethod
    def columns(cls, config):
        cols = [flag("pixelFlags_offimage", "The forced centroid is off the coadd.")]
        for plane in PIXEL_FLAG_PLANES:
            n = FLAG_NAMES[plane]
            cols += [
                flag(f"pixelFlags_{n}", f"Some pixel of the footprint has mask plane {plane} set."),
                flag(f"pixelFlags_{n}Center", f"Some pixel of the 3x3 box at the centroid has mask plane {plane} set."),
                flag(f"pixelFlags_{n}CenterAll", f"Every pixel of the 3x3 box at the centroid has mask plane {plane} set."),
            ]
        return tuple(cols)

    def measure(self, ctx: MeasurementContext):
        from forcedphot.kernels.footprints import footprint_mask_or

        usable = ctx.usable
        c = ctx.centres()
        registry = ctx.coadd.mask_planes
        offsets, sy, sx0, sx1 = ctx.ref["footprint_spans"]
        px = ctx.pixels
        fp_any, c_any, c_all = footprint_mask_or(
            px.mask, px.valid, np.int32(px.no_data), np.ascontiguousarray(offsets, np.int64), sy, sx0, sx1,
            ctx.coadd.bbox.min_x, ctx.coadd.bbox.min_y, np.ascontiguousarray(ctx.ref["has_footprint"], np.uint8),
            c.cx, c.cy)
        out = {"pixelFlags_offimage": ~usable}
        for plane in self.config.pixel_flag_planes:
            name = FLAG_NAMES[plane]
            bit = registry.bitmask(plane) if plane in registry.bits else 0
            out[f"pixelFlags_{name}"] = (fp_any & bit) != 0
            out[f"pixelFlags_{name}Center"] = usable & ((c_any & bit) != 0)
            out[f"pixelFlags_{name}CenterAll"] = usable & (bit != 0) & ((c_all & bit) == bit)
        return out

