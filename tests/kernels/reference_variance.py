"""Slow reference (tests only): Variance.measure as it was before the numba kernel (commit 9e039fc).

Variance stamps from the padded planes in size buckets, median by a full sort of every row.
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.variance import EXCLUDED, SCALE, Variance
from tests.kernels.context import ReferenceContext
from tests.kernels.cutouts import CutoutBatch, buckets
from tests.kernels.reference_clipped import masked_median


def offsets(half: int) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) integer pixel offsets of a (2 half + 1)^2 stamp, as (S, S) arrays."""
    ar = np.arange(-half, half + 1, dtype=float)
    dy, dx = np.meshgrid(ar, ar, indexing="ij")
    return dx, dy


def inverse_2x2(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inverse, determinant) of (N, 2, 2) symmetric matrices."""
    inv = np.empty_like(m)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] ** 2
        inv[:, 0, 0] = m[:, 1, 1] / det
        inv[:, 1, 1] = m[:, 0, 0] / det
        inv[:, 0, 1] = inv[:, 1, 0] = -m[:, 0, 1] / det
    return inv, det


class ReferenceVariance(Variance):
    def measure(self, ctx: ReferenceContext):
        n = ctx.n
        value = np.full(n, np.nan)
        ok = ctx.usable & ctx.shape_ok
        q = np.where(ok[:, None, None], ctx.shape, np.eye(2)) * SCALE ** 2
        qinv, _ = inverse_2x2(q)
        planes = ctx.coadd.mask_planes
        bits = planes.bitmask(*[p for p in EXCLUDED if p in planes.bits])
        ix, iy = ctx.centre_index()
        fx, fy = ctx.sub_pixel()
        need = np.where(ok, np.ceil(np.sqrt(np.maximum(q[:, 0, 0], q[:, 1, 1]))), np.nan)
        for half, idx in buckets(need):
            if half is None:
                continue
            stamps = CutoutBatch(ctx.padded, ix[idx], iy[idx], half)
            gx, gy = offsets(half)
            dx = gx[None] - fx[idx, None, None]
            dy = gy[None] - fy[idx, None, None]
            qi = qinv[idx]
            inside = (qi[:, 0, 0, None, None] * dx * dx + 2 * qi[:, 0, 1, None, None] * dx * dy
                      + qi[:, 1, 1, None, None] * dy * dy) <= 1.0
            use = inside & stamps.valid & ((stamps.mask & bits) == 0)
            value[idx] = masked_median(np.where(use, stamps.variance, np.float32(np.nan)).reshape(idx.size, -1))
        empty = ok & ~np.isfinite(value)
        return {"localVariance": value, "localVariance_flag": ~ok | empty, "localVariance_flag_emptyFootprint": empty}
