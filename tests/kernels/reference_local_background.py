"""Slow reference (tests only): LocalBackground.measure as it was before the numba kernel (commit 9e039fc).

Annulus pixels gathered from the padded planes in PSF-width groups, the own footprint added through
``NoiseCorrections.values_at`` (tests/kernels/noise_corrections.py), statistics by the numpy ``clipped_mean_std`` (full row sorts).
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.local_background import BAD_PLANES, INNER, OUTER, LocalBackground
from tests.kernels.context import ReferenceContext
from tests.kernels.reference_clipped import clipped_mean_std


def offsets(half: int) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) integer pixel offsets of a (2 half + 1)^2 stamp, as (S, S) arrays."""
    ar = np.arange(-half, half + 1, dtype=float)
    dy, dx = np.meshgrid(ar, ar, indexing="ij")
    return dx, dy


class ReferenceLocalBackground(LocalBackground):
    def measure(self, ctx: ReferenceContext):
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
        key = np.where(ok, np.round(np.log(np.where(ok, sigma, 1.0)) / 0.01), np.nan)
        image = ctx.padded.image
        usable_pixel = ctx.padded.valid & ((ctx.padded.mask & bad_bits) == 0)
        for k in np.unique(key[np.isfinite(key)]):
            idx = np.flatnonzero(key == k)
            s_lo, s_hi = sigma[idx].min(), sigma[idx].max()
            half = int(np.ceil(OUTER * s_hi)) + 1
            gx, gy = offsets(half)
            r0 = np.hypot(gx, gy)
            cand = (r0 >= INNER * s_lo - 0.75) & (r0 <= OUTER * s_hi + 0.75)
            cdx, cdy = gx[cand].astype(np.int64), gy[cand].astype(np.int64)
            flat = ctx.padded.flat_index(ix[idx], iy[idx], cdx, cdy)
            r = np.hypot(cdx[None] - fx[idx, None], cdy[None] - fy[idx, None])
            s = sigma[idx, None]
            use = (r >= INNER * s) & (r <= OUTER * s) & np.take(usable_pixel.reshape(-1), flat)
            vals = np.take(image.reshape(-1), flat)
            if ctx.noise is not None:
                p = ctx.padded.pad
                vals = ctx.noise.values_at(idx, ix[idx] - p, iy[idx] - p, cdx, cdy, vals).astype(np.float32)
            vals = np.where(use, vals, np.float32(np.nan))
            mean[idx], std[idx], _ = clipped_mean_std(vals)
        no_good = ok & ~np.isfinite(mean)
        return {"localBackground": mean, "localBackground_stdev": std,
                "localBackground_flag": ~ctx.usable | no_psf | no_good,
                "localBackground_flag_noGoodPixels": no_good, "localBackground_flag_noPsf": no_psf}
