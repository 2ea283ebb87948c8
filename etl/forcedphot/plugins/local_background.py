"""LocalBackground: clipped mean and scatter of the pixels in an annulus around each source.

As Rubin's base_LocalBackground: annulus between 7 and 15 sigma_PSF (sigma_PSF = the PSF's
determinant radius at the centre), pixel centres, ignoring BAD, SAT and NO_DATA pixels;
3-sigma, 3-iteration clipped mean (the per-pixel background level) and standard deviation
(the scatter of the pixels, not the error of the mean). The pixels are the source's own image
(noise replacement: its footprint over the noise); one compiled pass over the sources
(:func:`forcedphot.kernels.background.annulus_clipped_stats`), the statistics of
:func:`forcedphot.clipped.clipped_mean_std`.

The general flag is also set centrally (:mod:`forcedphot.validity`, applied by
``ForcedPhotCoaddTask.run`` after all measurement plugins and again after calibration) wherever
localBackground or localBackground_stdev is not finite; this plugin sets
its specific flags.
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register

INNER, OUTER = 7.0, 15.0
BAD_PLANES = ("BAD", "SAT", "NO_DATA")


@register
class LocalBackground(Plugin):
    name = "LocalBackground"
    kernel_modules = ("forcedphot.kernels.background", "forcedphot.kernels.moments")

    @classmethod
    def columns(cls, config):
        return (
            Column("localBackground", "double", "Clipped mean of the pixels in the 7-15 sigma_PSF annulus (per-pixel background level).", "nJy/pix", "flux"),
            Column("localBackground_stdev", "double", "Clipped standard deviation of the annulus pixels (per-pixel scatter, "
                   "not the uncertainty of localBackground; localBackgroundErr before forced_source 2.0).", "nJy/pix", "flux"),
            flag("localBackground_flag", "General failure: no usable centroid, no PSF, or no good pixels in the annulus."),
            flag("localBackground_flag_noGoodPixels", "No good pixels in the annulus."),
            flag("localBackground_flag_noPsf", "No PSF model at the centroid."),
        )

    def measure(self, ctx: MeasurementContext):
        from forcedphot.kernels.background import annulus_clipped_stats
        from forcedphot.kernels.moments import read_only

        m = ctx.psf_moments()
        sigma = (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2) ** 0.25
        no_psf = ctx.usable & ~np.isfinite(sigma)
        ok = ctx.usable & ~no_psf
        planes = ctx.coadd.mask_planes
        bad_bits = planes.bitmask(*[p for p in BAD_PLANES if p in planes.bits])
        image, _, mask, valid, fp = ctx.pixels.planes()
        (image,) = read_only(image)  # the noise image or the coadd's: one compiled signature
        c = ctx.centres()
        s = np.where(ok, sigma, 0.0)
        mean, std = annulus_clipped_stats(image, valid, mask, np.int32(bad_bits), fp, c.cx, c.cy, c.fx, c.fy,
                                          INNER * s, OUTER * s,
                                          ok.astype(np.uint8), 3.0, 3)
        no_good = ok & ~np.isfinite(mean)
        return {"localBackground": mean, "localBackground_stdev": std,
                "localBackground_flag": ~ctx.usable | no_psf | no_good,
                "localBackground_flag_noGoodPixels": no_good, "localBackground_flag_noPsf": no_psf}
