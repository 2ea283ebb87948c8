"""Slow reference (tests only): SdssShape.measure as it was before the numba kernel (commit 9e039fc).

Adaptive moments of every source on padded-plane stamps with the NoiseReplacer's corrections
(``ctx.padded``, ``ctx.noise``), errors on ``ctx.cutouts`` stamps in size buckets.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from forcedphot.plugins.sdss_shape import SdssShape
from tests.kernels.context import ReferenceContext
from tests.kernels.cutouts import buckets
from tests.kernels.reference_moments import adaptive_moments, gaussian_weights, inverse_2x2, offsets

MAX_HALF = 64


class ReferenceSdssShape(SdssShape):
    def measure(self, ctx: ReferenceContext):
        n = ctx.n
        nan = np.full(n, np.nan)
        out = {c.name: nan.copy() for c in self.columns(self.config) if c.kind != "flag"}
        flags = {c.name: np.zeros(n, bool) for c in self.columns(self.config) if c.kind == "flag"}
        ix, iy = ctx.centre_index()
        fx, fy = ctx.sub_pixel()
        psf = ctx.psf_moments()
        idx = np.flatnonzero(ctx.usable)
        padded = ctx.padded
        image = np.where(padded.valid, padded.image, 0.0).astype(np.float32)

        def provide(rows, c):
            win = sliding_window_view(image, (2 * c + 1, 2 * c + 1))[iy[idx[rows]] - c, ix[idx[rows]] - c]
            if ctx.noise is None:
                return win
            p = padded.pad  # own footprint inserted over the noise (image-array frame)
            return ctx.noise.apply_to_stamps(win.astype(np.float64), idx[rows], ix[idx[rows]] - p,
                                             iy[idx[rows]] - p, c)

        res = adaptive_moments(provide, fx[idx], fy[idx], half=MAX_HALF)
        m = res.moments
        out["sdssShape_xx"][idx], out["sdssShape_yy"][idx], out["sdssShape_xy"][idx] = m[:, 0, 0], m[:, 1, 1], m[:, 0, 1]
        out["sdssShape_x"][idx] = ctx.x[idx] + res.dx
        out["sdssShape_y"][idx] = ctx.y[idx] + res.dy
        out["sdssShape_flux"][idx] = res.flux
        # linearised errors: F = 2 sum(w I) and M = sum(w I d d^T) / sum(w I); adaptive = 2 M at convergence
        winv, _ = inverse_2x2(m)
        need = np.ceil(4 * np.sqrt(np.maximum(m[:, 0, 0], m[:, 1, 1])) + np.hypot(res.dx, res.dy)) + 1
        for half, grp in buckets(np.where(np.isfinite(need), need, 1), sizes=(4, 6, 8, 11, 16, 22, 32, 45, MAX_HALF)):
            half = half or MAX_HALF
            rows = idx[grp]
            stamps = ctx.cutouts(rows, half)
            gx, gy = offsets(half)
            dx = gx[None] - (fx[rows] + res.dx[grp])[:, None, None]
            dy = gy[None] - (fy[rows] + res.dy[grp])[:, None, None]
            w = gaussian_weights(dx, dy, winv[grp])
            w2v = w * w * np.where(stamps.valid, stamps.variance, 0.0)
            s0 = res.weighted_sum[grp]
            out["sdssShape_fluxErr"][rows] = 2 * np.sqrt(w2v.sum(axis=(1, 2)))
            with np.errstate(invalid="ignore", divide="ignore"):
                for name, term, mom in (("xx", dx * dx, m[grp, 0, 0] / 2), ("yy", dy * dy, m[grp, 1, 1] / 2),
                                        ("xy", dx * dy, m[grp, 0, 1] / 2)):
                    dev = term - mom[:, None, None]
                    out[f"sdssShape_{name}Err"][rows] = 2 * np.sqrt((w2v * dev * dev).sum(axis=(1, 2))) / np.abs(s0)
        flags["sdssShape_flag_unweighted"][idx] = res.flag_unweighted
        flags["sdssShape_flag_unweightedBad"][idx] = res.flag_unweighted_bad
        flags["sdssShape_flag_shift"][idx] = res.flag_shift
        flags["sdssShape_flag_maxIter"][idx] = res.flag_max_iter
        out["sdssShape_psf_xx"], out["sdssShape_psf_yy"], out["sdssShape_psf_xy"] = psf[:, 0, 0], psf[:, 1, 1], psf[:, 0, 1]
        flags["sdssShape_flag_psf"] = ctx.usable & ~np.isfinite(psf[:, 0, 0])
        flags["sdssShape_flag"] = (~ctx.usable | flags["sdssShape_flag_unweighted"] | flags["sdssShape_flag_shift"]
                                   | ~np.isfinite(out["sdssShape_xx"]))
        for key in out:
            if key not in ("sdssShape_psf_xx", "sdssShape_psf_yy", "sdssShape_psf_xy"):
                out[key] = np.where(ctx.usable, out[key], np.nan)
        return {**out, **flags}
