"""LocalBackground: clipped mean and scatter of the pixels in an annulus around each source.

As Rubin's base_LocalBackground: annulus between 7 and 15 sigma_PSF (sigma_PSF = the PSF's
determinant radius at the centre), pixel centres, ignoring BAD, SAT and NO_DATA pixels;
3-sigma, 3-iteration clipped mean (the per-pixel background level) and standard deviation
(the scatter of the pixels, not the error of the mean).
"""

from __future__ import annotations

import numpy as np

from forcedphot.clipped import clipped_mean_std
from forcedphot.cutouts import CutoutBatch, buckets
from forcedphot.moments import offsets
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag

INNER, OUTER = 7.0, 15.0
BAD_PLANES = ("BAD", "SAT", "NO_DATA")


class LocalBackground(Plugin):
    name = "LocalBackground"

    @classmethod
    def columns(cls, config):
        return (
            Column("localBackground", "double", "Clipped mean of the pixels in the 7-15 sigma_PSF annulus (per-pixel background level).", "nJy/pix", "flux"),
            Column("localBackgroundErr", "double", "Clipped standard deviation of the annulus pixels (per-pixel scatter).", "nJy/pix", "flux"),
            flag("localBackground_flag", "General failure: no usable centroid, no PSF, or no good pixels in the annulus."),
            flag("localBackground_flag_noGoodPixels", "No good pixels in the annulus."),
            flag("localBackground_flag_noPsf", "No PSF model at the centroid."),
        )

    @classmethod
    def padding(cls, config):
        return 66

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        mean = np.full(n, np.nan)
        std = np.full(n, np.nan)
        m = ctx.psf_moments()
        sigma = (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2) ** 0.25
        no_psf = ctx.usable & ~np.isfinite(sigma)
        ok = ctx.usable & ~no_psf
        bad_bits = ctx.coadd.mask_planes.bitmask(*[p for p in BAD_PLANES if p in ctx.coadd.mask_planes.bits])
        ix, iy = ctx.centre_index()
        fx, fy = ctx.sub_pixel()
        need = np.where(ok, np.ceil(OUTER * sigma) + 1, np.nan)
        for half, idx in buckets(need):
            if half is None:
                continue
            stamps = CutoutBatch(ctx.padded, ix[idx], iy[idx], half)
            gx, gy = offsets(half)
            r = np.hypot(gx[None] - fx[idx, None, None], gy[None] - fy[idx, None, None])
            s = sigma[idx, None, None]
            use = (r >= INNER * s) & (r <= OUTER * s) & stamps.valid & ((stamps.mask & bad_bits) == 0)
            vals = np.where(use, stamps.image, np.nan).reshape(idx.size, -1)
            mean[idx], std[idx], _ = clipped_mean_std(vals)
        no_good = ok & ~np.isfinite(mean)
        return {"localBackground": mean, "localBackgroundErr": std,
                "localBackground_flag": ~ctx.usable | no_psf | no_good,
                "localBackground_flag_noGoodPixels": no_good, "localBackground_flag_noPsf": no_psf}
