"""SdssCentroid: re-centroid on the forced image (does not move the forced position).

A vectorised form of the SDSS algorithm in Rubin's base_SdssCentroid: smooth the image
around the forced position with a Gaussian of the PSF's width, then fit a parabola
through the 3x3 smoothed values at the nearest pixel: d2 = 2 I0 - I- - I+,
s = (I+ - I-) / 2, offset = s / d2. Errors propagate the pixel variances through the same
linear sums. The binning loop and quartic refinement of the C++ code are not reproduced;
flags keep Rubin's names and meanings. The smoothed values come from the compiled kernel
:func:`forcedphot.kernels.centroid.smoothed_cross`, on each source's own image (noise
replacement: its own heavy footprint over the noise).
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels.centroid import smoothed_cross
from forcedphot.kernels.moments import read_only, spatial_order
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register

MAX_DIST_TO_PEAK = 1.0


@register
class SdssCentroid(Plugin):
    name = "SdssCentroid"
    kernel_modules = ("forcedphot.kernels.centroid", "forcedphot.kernels.moments")
    order = 0.0

    @classmethod
    def columns(cls, config):
        return (
            Column("sdssCentroid_x", "double", "Centroid x re-measured on this coadd (SDSS parabola on the PSF-smoothed image).", "pix"),
            Column("sdssCentroid_y", "double", "Centroid y re-measured on this coadd.", "pix"),
            Column("sdssCentroid_xErr", "float", "Uncertainty of sdssCentroid_x.", "pix"),
            Column("sdssCentroid_yErr", "float", "Uncertainty of sdssCentroid_y.", "pix"),
            flag("sdssCentroid_flag", "General failure; the centroid is then the forced position."),
            flag("sdssCentroid_flag_edge", "The smoothing kernel reaches off the coadd."),
            flag("sdssCentroid_flag_noSecondDerivative", "Vanishing second derivative or an offset beyond 10 px."),
            flag("sdssCentroid_flag_notAtMaximum", "The forced position is not at a maximum of the smoothed image."),
            flag("sdssCentroid_flag_resetToPeak", "The measured centroid was more than 1 px from the forced position and was reset to it."),
            flag("sdssCentroid_flag_badError", "The centroid error is not finite."),
        )

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        m = ctx.psf_moments()
        sigma = np.where(ctx.usable, (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2) ** 0.25, 1.0)
        # kernel half-size per source, so results do not depend on the other sources (NaN sigma:
        # NaN smoothed values, hence a bad error)
        kernel_half = np.clip(np.ceil(3 * np.where(np.isfinite(sigma), sigma, 1.0)), 2, 12).astype(np.int64)
        c = ctx.centres()
        image, variance, _, valid, fp = ctx.pixels.planes()
        image, variance, valid = read_only(image, variance, valid)
        sx, sy, vx, vy, edge = smoothed_cross(image, variance, valid, fp, c.cx, c.cy, c.usable,
                                              np.ascontiguousarray(sigma, np.float64), kernel_half,
                                              spatial_order(c.cx, c.cy))
        edge = ctx.usable & (edge != 0)
        out = {}
        dxy, err, no_d2, not_max = [], [], np.zeros(n, bool), np.zeros(n, bool)
        for line, lvar in ((sx, vx), (sy, vy)):  # x uses the middle row, y the middle column
            d2 = 2 * line[:, 1] - line[:, 0] - line[:, 2]
            s = 0.5 * (line[:, 2] - line[:, 0])
            with np.errstate(divide="ignore", invalid="ignore"):
                off = s / d2
                e = np.sqrt(0.25 * (lvar[:, 0] + lvar[:, 2])) / np.abs(d2)
            no_d2 |= (d2 == 0) | (np.abs(off) > 10)
            not_max |= d2 < 0
            dxy.append(off)
            err.append(e)
        bad = ctx.usable & (no_d2 | not_max | edge)
        x = ctx.x + np.floor(ctx.x + 0.5) - ctx.x + dxy[0]
        y = ctx.y + np.floor(ctx.y + 0.5) - ctx.y + dxy[1]
        reset = ctx.usable & ~bad & (np.hypot(x - ctx.x, y - ctx.y) > MAX_DIST_TO_PEAK)
        fallback = ~ctx.usable | bad | reset
        out["sdssCentroid_x"] = np.where(fallback, ctx.x, x)
        out["sdssCentroid_y"] = np.where(fallback, ctx.y, y)
        xerr = np.where(fallback, np.nan, err[0])
        yerr = np.where(fallback, np.nan, err[1])
        bad_error = ctx.usable & ~fallback & ~(np.isfinite(xerr) & np.isfinite(yerr))
        out.update({
            "sdssCentroid_xErr": xerr, "sdssCentroid_yErr": yerr,
            "sdssCentroid_flag": fallback | bad_error,
            "sdssCentroid_flag_edge": edge, "sdssCentroid_flag_noSecondDerivative": ctx.usable & no_d2,
            "sdssCentroid_flag_notAtMaximum": ctx.usable & not_max & ~no_d2,
            "sdssCentroid_flag_resetToPeak": reset, "sdssCentroid_flag_badError": bad_error,
        })
        return out
