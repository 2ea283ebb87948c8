"""Slow reference (tests only): GaussianFlux.measure as it was before the numba kernel (commit 9e039fc).

Weights over ``ctx.cutouts`` stamps (noise-replaced through ``ctx.noise``) in size buckets.
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.gaussian_flux import GaussianFlux
from tests.kernels.context import ReferenceContext
from tests.kernels.cutouts import buckets
from tests.kernels.reference_moments import gaussian_weights, inverse_2x2, offsets

SUB = (np.arange(4) - 1.5) / 4  # 4x4 sub-pixel sample offsets


class ReferenceGaussianFlux(GaussianFlux):
    def measure(self, ctx: ReferenceContext):
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
