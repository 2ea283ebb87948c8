"""TransformedShape: the reference shape in the coadd's pixel frame.

The reference second moments (reference-tract pixels) are mapped by the local linear part
J of the reference-pixel -> sky -> coadd-pixel transform at each reference centroid:
S' = J S J^T. J is measured by finite differences through both astropy WCSs, vectorised.
``shape_flag`` also copies the reference's ``shape_flag`` (Rubin copies slot_Shape_flag): set
where the ingest's adaptive moments failed and the PSF's shape stands in.
"""

from __future__ import annotations

import numpy as np

from forcedphot.moments import positive_definite
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register

STEP = 0.5  # pixels, for the finite-difference Jacobian


def local_jacobian(ref_wcs, wcs, x, y) -> np.ndarray:
    """(N, 2, 2) d(coadd pixel)/d(reference pixel) at reference pixels (x, y)."""
    pts_x = np.concatenate([x + STEP, x - STEP, x, x])
    pts_y = np.concatenate([y, y, y + STEP, y - STEP])
    ra, dec = ref_wcs.all_pix2world(pts_x, pts_y, 0)
    u, v = wcs.all_world2pix(ra, dec, 0)
    n = x.size
    u, v = u.reshape(4, n), v.reshape(4, n)
    jac = np.empty((n, 2, 2))
    jac[:, 0, 0] = (u[0] - u[1]) / (2 * STEP)
    jac[:, 1, 0] = (v[0] - v[1]) / (2 * STEP)
    jac[:, 0, 1] = (u[2] - u[3]) / (2 * STEP)
    jac[:, 1, 1] = (v[2] - v[3]) / (2 * STEP)
    return jac


def missing_shape(ctx: MeasurementContext) -> np.ndarray:
    """True where the reference has no shape (a null or NaN moment): the cause of a ``_flag_noRefShape``."""
    return ~(np.isfinite(np.asarray(ctx.ref["shape_xx"], float)) & np.isfinite(np.asarray(ctx.ref["shape_yy"], float))
             & np.isfinite(np.asarray(ctx.ref["shape_xy"], float)))


def ref_flag(ctx: MeasurementContext, name: str) -> np.ndarray:
    """A boolean reference column as a bool array, False where null or absent (older ref files)."""
    v = ctx.ref.get(name)
    if v is None:
        return np.zeros(ctx.n, bool)
    v = np.asarray(v)
    return v.astype(bool) if v.dtype == bool else np.equal(v, True).astype(bool)  # nulls (None) are False


@register
class TransformedShape(Plugin):
    name = "TransformedShape"
    order = 1.0
    reads_pixels = False

    @classmethod
    def columns(cls, config):
        return (
            Column("shape_xx", "double", "Forced shape: reference second moment Ixx transformed to coadd pixels.", "pix**2"),
            Column("shape_yy", "double", "Forced shape: reference second moment Iyy transformed to coadd pixels.", "pix**2"),
            Column("shape_xy", "double", "Forced shape: reference second moment Ixy transformed to coadd pixels.", "pix**2"),
            flag("shape_flag", "Reference shape missing, not positive-definite, its transform failed, or flagged in the reference (the ingest's adaptive moments failed: the PSF's shape)."),
        )

    def measure(self, ctx: MeasurementContext):
        s = np.empty((ctx.n, 2, 2))
        s[:, 0, 0] = ctx.ref["shape_xx"]
        s[:, 1, 1] = ctx.ref["shape_yy"]
        s[:, 0, 1] = s[:, 1, 0] = ctx.ref["shape_xy"]
        s = np.where(np.isfinite(s), s, np.nan)
        if ctx.ref_wcs is not None:
            jac = local_jacobian(ctx.ref_wcs, ctx.coadd.wcs, ctx.ref["centroid_x"].astype(float),
                                 ctx.ref["centroid_y"].astype(float))
            s = jac @ s @ np.swapaxes(jac, 1, 2)
        ok = positive_definite(s)
        ctx.shape, ctx.shape_ok = s, ok
        return {"shape_xx": s[:, 0, 0], "shape_yy": s[:, 1, 1], "shape_xy": s[:, 0, 1],
                "shape_flag": ~ok | ref_flag(ctx, "shape_flag")}
