"""The numpy KronFlux that the compiled kernel replaced (row prefix sums of the padded planes).

``ReferenceKronFlux(config).measure(ctx)`` on a context of :func:`tests.kernels.context.quantum_context`
gives the deblended columns; ``.measure(plain)`` the undeblended ones.
"""

from __future__ import annotations

import numpy as np

from forcedphot.moments import inverse_2x2
from tests.kernels.cutouts import buckets

N_RADIUS_FOR_FLUX = 2.5
MAX_HALF = 512


def ellipse_row_sums(padded, xl, yl, ellipse, half):
    """Naive sums over pixel centres with d^T ellipse^-1 d <= 1, rows -half..half around yl."""
    a_inv, _ = inverse_2x2(ellipse)
    a, b, c = a_inv[:, 0, 0, None], a_inv[:, 0, 1, None], a_inv[:, 1, 1, None]
    iy0 = np.floor(yl + 0.5).astype(np.int64)
    rows = iy0[:, None] + np.arange(-half, half + 1)[None, :]
    dy = rows - yl[:, None]
    disc = b * b * dy * dy - a * (c * dy * dy - 1.0)
    inside = disc >= 0
    root = np.sqrt(np.where(inside, disc, 0.0))
    lo = np.ceil(xl[:, None] + (-b * dy - root) / a).astype(np.int64)
    hi = np.floor(xl[:, None] + (-b * dy + root) / a).astype(np.int64) + 1
    hi = np.where(inside, hi, lo)
    return tuple(padded.run_sums(p, rows, lo, hi).sum(axis=1) for p in ("image", "variance", "invalid"))


class ReferenceKronFlux:
    """Today's numpy KronFlux.measure, on the padded planes of ``ctx`` (padding >= 8)."""

    def __init__(self, config):
        self.config = config

    def measure(self, ctx):
        n = ctx.n
        flux, var, invalid = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n)
        r_k = np.asarray(ctx.ref.get("kron_radius", np.full(n, np.nan)), float)
        no_radius = np.isnan(r_k)
        bad_radius = ~(np.isfinite(r_k) & (r_k > np.finfo(float).eps))
        s = np.stack([np.asarray(ctx.ref[c], float) for c in ("shape_xx", "shape_yy", "shape_xy")])
        no_shape = ~np.isfinite(s).all(axis=0)
        bad_shape = ~ctx.shape_ok
        ref_det = ctx.ref["shape_xx"] * ctx.ref["shape_yy"] - ctx.ref["shape_xy"] ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = r_k ** 2 / np.sqrt(ref_det)
        ok = ctx.usable & ~bad_radius & ~bad_shape & np.isfinite(scale)
        ellipse = np.where(ok[:, None, None], ctx.shape * scale[:, None, None], np.eye(2))
        kron_rad = np.where(ok, (ellipse[:, 0, 0] * ellipse[:, 1, 1] - ellipse[:, 0, 1] ** 2) ** 0.25, np.nan)
        flux_ellipse = ellipse * N_RADIUS_FOR_FLUX ** 2
        ext_x = np.sqrt(flux_ellipse[:, 0, 0])
        ext_y = np.sqrt(flux_ellipse[:, 1, 1])
        bbox = ctx.coadd.bbox
        edge = ok & ((ctx.x - ext_x < bbox.min_x - 0.5) | (ctx.x + ext_x > bbox.max_x + 0.5)
                     | (ctx.y - ext_y < bbox.min_y - 0.5) | (ctx.y + ext_y > bbox.max_y + 0.5))
        measure = ok & ~edge
        xl = ctx.x - bbox.min_x + ctx.padded.pad
        yl = ctx.y - bbox.min_y + ctx.padded.pad
        need = np.where(measure, np.ceil(ext_y) + 1, np.nan)
        sizes = tuple(int(s) for s in np.unique(np.r_[np.geomspace(2, MAX_HALF, 24).astype(int), MAX_HALF]))
        for half, idx in buckets(need, sizes=sizes):
            if half is None:  # too large (treated as off the coadd); sources not measured are not at an edge
                edge[idx[measure[idx]]] = True
                continue
            flux[idx], var[idx], invalid[idx] = ellipse_row_sums(ctx.padded, xl[idx], yl[idx], flux_ellipse[idx], half)
            einv, _ = inverse_2x2(flux_ellipse[idx])
            flux[idx] += ctx.footprint_correction(idx, lambda o, dx, dy: (
                einv[o, 0, 0] * dx * dx + 2 * einv[o, 0, 1] * dx * dy + einv[o, 1, 1] * dy * dy <= 1.0))
        flux[edge] = np.nan
        var[edge] = np.nan
        failed = ~ok | edge | (invalid > 0) | ~np.isfinite(flux)
        return {"kronFlux": flux, "kronFluxErr": np.sqrt(var), "kronRad": kron_rad, "kronFlux_flag": failed,
                "kronFlux_flag_edge": edge, "kronFlux_flag_noRefRadius": no_radius, "kronFlux_flag_noRefShape": no_shape,
                "kronFlux_flag_bad_radius": bad_radius & ~no_radius & ctx.usable,
                "kronFlux_flag_bad_shape": bad_shape & ~no_shape & ctx.usable}
