"""GaussianFlux: flux in a fixed elliptical Gaussian weight, the transformed reference shape Q.

As Rubin's base_GaussianFlux (computeFixedMomentsFlux): w = exp(-x^T Q^-1 x / 2) over a box
of half-size 4 sqrt(max(Qxx, Qyy)) with exponent <= 14, F = 2 sum(w I) (exact for a Gaussian
source of covariance Q). The error propagates every pixel's variance, err = 2 sqrt(sum(w^2 V));
Rubin's 2 sqrt(V_centre pi sqrt(det Q)) assumes uniform variance and overstates the error of
bright sources, whose Poisson variance peaks at the centre (pull width 0.86 on simulated stars). Shapes so small that the
pixel grid under-samples them (Qxx or Qyy < 0.25, det Q < 0.0625) are measured with 4x4
sub-pixel samples (averaged; Rubin sums them without dividing by 16).
"""

from __future__ import annotations

import numpy as np

from forcedphot.cutouts import buckets
from forcedphot.moments import gaussian_weights, inverse_2x2, offsets
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag

SUB = (np.arange(4) - 1.5) / 4  # 4x4 sub-pixel sample offsets


class GaussianFlux(Plugin):
    name = "GaussianFlux"

    @classmethod
    def columns(cls, config):
        return (
            Column("gaussianFlux", "double", "Flux in an elliptical Gaussian weight equal to the forced (reference) shape: 2 sum(w I); aperture corrected.", "nJy", "flux"),
            Column("gaussianFluxErr", "double", "Uncertainty of gaussianFlux: 2 sqrt(sum(w^2 V)); aperture corrected.", "nJy", "fluxErr"),
            flag("gaussianFlux_flag", "General failure: no usable centroid or shape, the weight box off the coadd, or a non-finite result."),
        )

    @classmethod
    def padding(cls, config):
        return 130

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        flux = np.full(n, np.nan)
        err = np.full(n, np.nan)
        ok = ctx.usable & ctx.shape_ok
        q = np.where(ok[:, None, None], ctx.shape, np.eye(2))
        qinv, det = inverse_2x2(q)
        need = np.where(ok, np.ceil(np.minimum(4 * np.sqrt(np.maximum(q[:, 0, 0], q[:, 1, 1])), 1000)), np.nan)
        ix, iy = ctx.centre_index()
        fx, fy = ctx.sub_pixel()
        for half, idx in buckets(need):
            if half is None:
                continue
            idx = idx[ok[idx]]
            stamps = ctx.cutouts(idx, half)
            gx, gy = offsets(half)
            dx = gx[None] - fx[idx, None, None]
            dy = gy[None] - fy[idx, None, None]
            w = gaussian_weights(dx, dy, qinv[idx])
            small = (q[idx, 0, 0] < 0.25) | (q[idx, 1, 1] < 0.25) | (det[idx] < 0.0625)
            if small.any():
                sub = np.zeros_like(w[small])
                for ox in SUB:
                    for oy in SUB:
                        sub += gaussian_weights(dx[small] + ox, dy[small] + oy, qinv[idx][small])
                w[small] = sub / SUB.size ** 2
            flux[idx] = 2 * np.einsum("nij,nij->n", w, stamps.image)
            err[idx] = 2 * np.sqrt(np.einsum("nij,nij->n", w * w, stamps.variance))
            # weights over off-image or invalid pixels make the flux unreliable
            bad = np.einsum("nij,nij->n", w, ~stamps.valid) > 1e-3 * w.sum(axis=(1, 2))
            ok[idx[bad]] = False
        failed = ~ok | ~np.isfinite(flux) | ~np.isfinite(err)
        return {"gaussianFlux": flux, "gaussianFluxErr": err, "gaussianFlux_flag": failed}
