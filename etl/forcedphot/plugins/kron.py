"""Forced Kron flux: the reference Kron radius times 2.5, in an ellipse of the reference shape.

As Rubin's forced ext_photometryKron_KronFlux: no new radius is measured. The ellipse has
the reference shape's axis ratio and orientation with sqrt(ab) = R_K, is transformed to
the coadd frame with the shape, and is scaled by nRadiusForFlux = 2.5. The flux is the naive
sum of pixels whose centres lie in the ellipse (one row run per pixel row, summed directly by
:func:`forcedphot.kernels.apertures.ellipse_kernel`); Rubin uses sinc coefficients for
ellipses with b <= 10 px, which this implementation does not. F = sum(I), err = sqrt(sum(V)).
Aperture corrected. The undeblended flux comes from the same pass (``measures_undeblended``).
Pixels in ``psf_bad_mask_planes`` (e.g. BAD, SAT) inside the ellipse are summed as they are and
set the general flag, as invalid pixels do.

The general flag is also set centrally (:mod:`forcedphot.validity`, applied by
``ForcedPhotCoaddTask.run`` after all measurement plugins and again after calibration) wherever
kronFlux or kronFluxErr is not finite or kronFluxErr <= 0 (deblended and undeblended); this plugin
sets its specific flags. A row without a reference radius or shape is flagged for that cause
(``_flag_noRefRadius``, ``_flag_noRefShape``; the ingest measures both when a catalog lacks them,
:mod:`forcedphot.ingest.refmeasure`); ``_flag_edge`` only for an ellipse that leaves the coadd.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from forcedphot.layout import UNDEBLENDED, UNDEBLENDED_SKIP
from forcedphot.moments import inverse_2x2
from forcedphot.plugins.aperture import source_pixels
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, excluded_bits, flag, register
from forcedphot.plugins.shape import missing_shape, ref_flag

N_RADIUS_FOR_FLUX = 2.5
MAX_HALF = 512  # ellipses taller than this many rows either side are treated as off the coadd


class KronEllipse(NamedTuple):
    """The forced Kron aperture of every source (coadd pixels) and why a source has none."""

    ok: np.ndarray  # usable centroid, radius and shape
    edge: np.ndarray  # the ellipse leaves the coadd (or has more than MAX_HALF rows either side)
    half: np.ndarray  # rows either side of the centre (0 where not measured)
    ext_x: np.ndarray  # half-extents of the ellipse along x and y
    ext_y: np.ndarray
    einv: np.ndarray  # (N, 2, 2) inverse of the flux ellipse: d^T einv d <= 1 inside
    kron_rad: np.ndarray  # sqrt(ab) before the 2.5 scaling (NaN where not ok)
    no_radius: np.ndarray
    bad_radius: np.ndarray
    no_shape: np.ndarray
    bad_shape: np.ndarray


def forced_kron_ellipse(ctx: MeasurementContext) -> KronEllipse:
    """The reference shape rescaled to sqrt(ab) = the reference Kron radius, times 2.5 (KronFlux and ConvolvedFlux)."""
    n = ctx.n
    r_k = np.asarray(ctx.ref.get("kron_radius", np.full(n, np.nan)), float)
    no_radius = np.isnan(r_k)
    bad_radius = ~(np.isfinite(r_k) & (r_k > np.finfo(float).eps))
    no_shape = missing_shape(ctx)
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
    with np.errstate(invalid="ignore"):
        half = np.where(ok & ~edge, np.ceil(ext_y) + 1, 0)
    edge |= half > MAX_HALF  # larger than any patch: treated as off the coadd
    einv, _ = inverse_2x2(flux_ellipse)
    return KronEllipse(ok, edge, half, ext_x, ext_y, einv, kron_rad, no_radius, bad_radius, no_shape, bad_shape)


@register
class KronFlux(Plugin):
    name = "KronFlux"
    kernel_modules = ("forcedphot.kernels.apertures",)
    measures_undeblended = True

    @classmethod
    def columns(cls, config):
        return (
            Column("kronFlux", "double", "Flux in the forced Kron ellipse: 2.5 x the reference Kron radius, reference shape (naive pixel-centre sum); aperture corrected.", "nJy", "flux"),
            Column("kronFluxErr", "double", "Uncertainty of kronFlux: sqrt(sum(V)); aperture corrected.", "nJy", "fluxErr"),
            Column("kronRad", "float", "Kron radius sqrt(ab) of the forced ellipse before the 2.5 scaling, in coadd pixels.", "pix"),
            flag("kronFlux_flag", "General failure: no usable centroid, bad radius or shape, a reference radius flagged by the ingest (the PSF's stand-in), an aperture off the coadd, or invalid or psf_bad_mask_planes (e.g. BAD, SAT) pixels in it."),
            flag("kronFlux_flag_edge", "The Kron ellipse extends beyond the coadd (no value)."),
            flag("kronFlux_flag_noRefRadius", "The reference has no Kron radius (null; no value)."),
            flag("kronFlux_flag_noRefShape", "The reference has no shape (null; no value)."),
            flag("kronFlux_flag_bad_radius", "The reference Kron radius is present but not finite or not positive."),
            flag("kronFlux_flag_bad_shape", "The reference shape is present but not positive-definite."),
        )

    @classmethod
    def padding(cls, config):
        return 8

    def measure(self, ctx: MeasurementContext):
        from forcedphot.kernels.apertures import ellipse_sums

        both = self.name in ctx.undeblended
        e = forced_kron_ellipse(ctx)
        ok, edge, half, einv, kron_rad = e.ok, e.edge, e.half, e.einv, e.kron_rad
        no_radius, bad_radius, no_shape, bad_shape = e.no_radius, e.bad_radius, e.no_shape, e.bad_shape
        measure = ok & ~edge
        pixels = source_pixels(ctx)
        image, variance, _, _, fp = pixels.planes()
        valid = pixels.classes(excluded_bits(ctx.coadd, self.config))  # excluded pixels are summed, and flag the flux
        c = ctx.centres()
        flux, flux_u, var, invalid, excluded = ellipse_sums(
            image, pixels.original if both else image, variance, valid, fp, c.cx, c.cy, c.xl, c.yl,
            einv[:, 0, 0], einv[:, 0, 1], einv[:, 1, 1], np.where(measure, half, 0), measure, both)
        out = {"kronRad": kron_rad, "kronFlux_flag_edge": edge, "kronFlux_flag_noRefRadius": no_radius,
               "kronFlux_flag_noRefShape": no_shape, "kronFlux_flag_bad_radius": bad_radius & ~no_radius & ctx.usable,
               "kronFlux_flag_bad_shape": bad_shape & ~no_shape & ctx.usable}
        # a radius the ingest could not measure (the PSF's stand-in, ref.kron_radius_flag) gives a value, flagged
        failed = ~ok | edge | (invalid > 0) | (excluded > 0) | ref_flag(ctx, "kron_radius_flag")
        out.update({"kronFlux": flux, "kronFluxErr": np.sqrt(var), "kronFlux_flag": failed | ~np.isfinite(flux)})
        if both:
            out = out | {UNDEBLENDED + k: v.copy() for k, v in out.items() if k not in UNDEBLENDED_SKIP}
            out[UNDEBLENDED + "kronFlux"] = flux_u
            out[UNDEBLENDED + "kronFlux_flag"] = failed | ~np.isfinite(flux_u)
        return out
