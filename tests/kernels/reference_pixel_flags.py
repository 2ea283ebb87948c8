"""Slow reference (tests only): PixelFlags.measure as it was before the numba kernel (commit 9e039fc).

Mask gathered from the padded planes: every footprint pixel expanded (owner, y, x), OR by reduceat.
"""

from __future__ import annotations

import numpy as np

from forcedphot.footprint import spans_to_owned_pixels
from forcedphot.plugins.pixel_flags import FLAG_NAMES, PixelFlags
from tests.kernels.context import ReferenceContext


class ReferencePixelFlags(PixelFlags):
    def measure(self, ctx: ReferenceContext):
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
    def _footprint_or(ctx: ReferenceContext) -> np.ndarray:
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
