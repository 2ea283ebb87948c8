"""SdssCentroid: re-centroid on the forced image (does not move the forced position).

A vectorised form of the SDSS algorithm in Rubin's base_SdssCentroid: smooth the image
around the forced position with a Gaussian of the PSF's width, then fit a parabola
through the 3x3 smoothed values at the nearest pixel: d2 = 2 I0 - I- - I+,
s = (I+ - I-) / 2, offset = s / d2. Errors propagate the pixel variances through the same
linear sums. The binning loop and quartic refinement of the C++ code are not reproduced;
flags keep Rubin's names and meanings.
"""

from __future__ import annotations

import numpy as np

from forcedphot.moments import offsets
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag

MAX_DIST_TO_PEAK = 1.0


class SdssCentroid(Plugin):
    name = "SdssCentroid"
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

    @classmethod
    def padding(cls, config):
        return 16

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        m = ctx.psf_moments()
        sigma = np.where(ctx.usable, (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2) ** 0.25, 1.0)
        kernel_half = np.clip(np.ceil(3 * sigma), 2, 12).astype(int)  # per source, so results do not
        smooth = np.full((n, 3, 3), np.nan)                               # depend on the other sources
        smooth_var = np.full((n, 3, 3), np.nan)
        edge = np.zeros(n, bool)
        for k in np.unique(kernel_half):
            rows = np.flatnonzero(kernel_half == k)
            stamps = ctx.cutouts(rows, k + 1)
            img = stamps.image.astype(float)
            var = stamps.variance.astype(float)
            edge[rows] = ctx.usable[rows] & ~stamps.valid.all(axis=(1, 2))
            kx, ky = offsets(k)
            kern = np.exp(-0.5 * (kx * kx + ky * ky)[None] / sigma[rows, None, None] ** 2)
            kern /= kern.sum(axis=(1, 2), keepdims=True)
            for j, oy in enumerate((-1, 0, 1)):
                for i, ox in enumerate((-1, 0, 1)):
                    win = (slice(None), slice(1 + oy, 1 + oy + 2 * k + 1), slice(1 + ox, 1 + ox + 2 * k + 1))
                    smooth[rows, j, i] = np.einsum("nij,nij->n", kern, img[win])
                    smooth_var[rows, j, i] = np.einsum("nij,nij->n", kern * kern, var[win])
        out = {}
        dxy, err, no_d2, not_max = [], [], np.zeros(n, bool), np.zeros(n, bool)
        for axis in (0, 1):  # x uses the middle row, y the middle column
            line = smooth[:, 1, :] if axis == 0 else smooth[:, :, 1]
            lvar = smooth_var[:, 1, :] if axis == 0 else smooth_var[:, :, 1]
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
