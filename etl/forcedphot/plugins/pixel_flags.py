"""PixelFlags: mask planes OR-ed over each footprint, and OR/AND over the 3x3 centre box.

As Rubin's base_PixelFlags: ``pixelFlags_<plane>`` (any pixel of the footprint),
``pixelFlags_<plane>Center`` (any pixel of the 3x3 box at the centre) and
``pixelFlags_<plane>CenterAll`` (every pixel of that box).
"""

from __future__ import annotations

import numpy as np

from forcedphot.config import PIXEL_FLAG_PLANES
from forcedphot.footprint import spans_to_owned_pixels
from forcedphot.plugins.base import MeasurementContext, Plugin, flag

FLAG_NAMES = {"BAD": "bad", "CR": "cr", "EDGE": "edge", "INTRP": "interpolated", "NO_DATA": "nodata",
              "SAT": "saturated", "SUSPECT": "suspect", "CLIPPED": "clipped", "SENSOR_EDGE": "sensor_edge",
              "REJECTED": "rejected", "INEXACT_PSF": "inexact_psf"}


class PixelFlags(Plugin):
    name = "PixelFlags"
    pad = 2

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
        n = ctx.n
        usable = ctx.usable
        ix, iy = ctx.centre_index()
        ar = np.arange(-1, 2)
        dy, dx = np.meshgrid(ar, ar, indexing="ij")
        centre = ctx.padded.gather("mask", ctx.padded.flat_index(ix, iy, dx, dy)).reshape(n, 9)
        c_any = np.bitwise_or.reduce(centre, axis=1)
        c_all = np.bitwise_and.reduce(centre, axis=1)
        fp_any = self._footprint_or(ctx)
        fp_any = np.where(ctx.ref["has_footprint"], fp_any, c_any)  # no footprint: fall back to the centre
        out = {"pixelFlags_offimage": ~usable}
        registry = ctx.coadd.mask_planes
        for plane in self.config.pixel_flag_planes:
            name = FLAG_NAMES[plane]
            bit = registry.bitmask(plane) if plane in registry.bits else 0
            out[f"pixelFlags_{name}"] = (fp_any & bit) != 0
            out[f"pixelFlags_{name}Center"] = usable & ((c_any & bit) != 0)
            out[f"pixelFlags_{name}CenterAll"] = usable & (bit != 0) & ((c_all & bit) == bit)
        return out

    @staticmethod
    def _footprint_or(ctx: MeasurementContext) -> np.ndarray:
        """OR of the mask over each source's footprint spans, for all sources at once."""
        offsets, sy, sx0, sx1 = ctx.ref["footprint_spans"]
        n = ctx.n
        result = np.zeros(n, np.int32)
        if sy.size == 0:
            return result
        pix_source, ys, xs = spans_to_owned_pixels(offsets, sy, sx0, sx1)
        pc = ctx.padded
        px = np.clip(xs - ctx.coadd.bbox.min_x + pc.pad, 0, pc.shape[1] - 1)
        py = np.clip(ys - ctx.coadd.bbox.min_y + pc.pad, 0, pc.shape[0] - 1)
        values = pc.mask[py, px]
        has = np.flatnonzero(np.bincount(pix_source, minlength=n) > 0)
        starts = np.searchsorted(pix_source, has)
        result[has] = np.bitwise_or.reduceat(values, starts)
        return result
