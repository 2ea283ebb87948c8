"""Slow reference (tests only): SdssCentroid.measure as it was before the numba kernel (commit 9e039fc).

Smoothing sums over ``ctx.cutouts`` stamps, grouped by kernel half-size.
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.sdss_centroid import MAX_DIST_TO_PEAK, SdssCentroid
from tests.kernels.context import ReferenceContext
from tests.kernels.reference_moments import offsets


class ReferenceSdssCentroid(SdssCentroid):
    def measure(self, ctx: ReferenceContext):
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
