"""LocalBackground: clipped mean and scatter of the pixels in an annulus around each source.

As Rubin's base_LocalBackground: annulus between 7 and 15 sigma_PSF (sigma_PSF = the PSF's
determinant radius at the centre), pixel centres, ignoring BAD, SAT and NO_DATA pixels;
3-sigma, 3-iteration clipped mean (the per-pixel background level) and standard deviation
(the scatter of the pixels, not the error of the mean).
"""

from __future__ import annotations

import numpy as np

from forcedphot.clipped import clipped_mean_std
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
        # group sources by PSF width (1% steps); each group gathers only the pixels its annuli can reach
        key = np.where(ok, np.round(np.log(np.where(ok, sigma, 1.0)) / 0.01), np.nan)
        image = ctx.padded.image
        usable_pixel = ctx.padded.valid & ((ctx.padded.mask & bad_bits) == 0)
        for k in np.unique(key[np.isfinite(key)]):
            idx = np.flatnonzero(key == k)
            s_lo, s_hi = sigma[idx].min(), sigma[idx].max()
            half = int(np.ceil(OUTER * s_hi)) + 1
            gx, gy = offsets(half)
            r0 = np.hypot(gx, gy)
            cand = (r0 >= INNER * s_lo - 0.75) & (r0 <= OUTER * s_hi + 0.75)  # any sub-pixel offset
            cdx, cdy = gx[cand].astype(np.int64), gy[cand].astype(np.int64)
            flat = ctx.padded.flat_index(ix[idx], iy[idx], cdx, cdy)
            r = np.hypot(cdx[None] - fx[idx, None], cdy[None] - fy[idx, None])
            s = sigma[idx, None]
            use = (r >= INNER * s) & (r <= OUTER * s) & np.take(usable_pixel.reshape(-1), flat)
            vals = np.take(image.reshape(-1), flat)
            if ctx.replacement is not None:  # own footprint over the noise
                p = ctx.padded.pad
                vals = ctx.replacement.values_at(idx, ix[idx] - p, iy[idx] - p, cdx, cdy, vals).astype(np.float32)
            vals = np.where(use, vals, np.float32(np.nan))
            mean[idx], std[idx], _ = clipped_mean_std(vals)
        no_good = ok & ~np.isfinite(mean)
        return {"localBackground": mean, "localBackgroundErr": std,
                "localBackground_flag": ~ctx.usable | no_psf | no_good,
                "localBackground_flag_noGoodPixels": no_good, "localBackground_flag_noPsf": no_psf}
