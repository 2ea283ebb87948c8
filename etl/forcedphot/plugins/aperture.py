"""CircularApertureFlux: fluxes in circular apertures at the configured radii.

Three methods, chosen by ``aperture_method``:

- ``"sinc"`` (default, Rubin's): band-limited sinc coefficients for r <= ``max_sinc_radius``
  (12 px, as obs_lsst) and the naive pixel-centre sum above (see kernels/aperture_sinc, kernels/aperture_naive);
- ``"naive"``: pixel centres in the closed disk at every radius;
- ``"exact"``: exact pixel/circle overlap (SEP ``subpix=0`` and photutils ``method='exact'``).

Edges: an aperture reaching beyond the coadd is flagged ``_flag_apertureTruncated``; the
sinc and naive methods then give no value (as Rubin), the exact method sums the on-image
part (as SEP/photutils). Sinc coefficients reaching beyond the coadd (or onto invalid pixels)
set ``_flag_sincCoeffsTruncated`` and are clipped. Apertures are not aperture-corrected.

Masked pixels: an aperture cannot leave pixels out without losing their flux, so pixels in
``psf_bad_mask_planes`` (e.g. BAD, SAT) are summed as they are and an aperture that reaches one
gets its general ``_flag`` (as for NO_DATA pixels; no new column): naive, a pixel centre in the
disk; exact, a pixel overlapping it; sinc, a pixel centre within r + 0.5.

The compiled kernels (:mod:`forcedphot.kernels.apertures`) measure every radius of a method in
one pass per source, and the undeblended image in the same pass when the task asks for it
(``measures_undeblended``).

The general flag is also set centrally (:mod:`forcedphot.validity`, applied by
``ForcedPhotCoaddTask.run`` after all measurement plugins and again after calibration) wherever an
aperture flux or its error is not finite or the error is <= 0 (deblended and undeblended); this
plugin sets its specific flags.
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels.aperture_naive import naive_apertures
from forcedphot.kernels.aperture_sinc import sinc_apertures, sinc_width
from forcedphot.layout import STANDARD_APERTURE_RADII, UNDEBLENDED, aperture_name
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, excluded_bits, flag, register

MAX_SINC_RADIUS_IN_SCHEMA = 12.0


def source_pixels(ctx: MeasurementContext):
    """ctx.pixels, or (a context built without them) the planes and own footprints made from ctx."""
    if ctx.pixels is None:
        from forcedphot.stages import SourcePixels

        fps = ctx.ref.get("footprints") if ctx.replacement is not None else None
        ctx.pixels = SourcePixels.build(ctx.coadd, ctx.n, replacer=ctx.replacement if fps is not None else None,
                                        footprints=fps)
    return ctx.pixels


def method_for(radius: float, config) -> str:
    if config.aperture_method == "sinc":
        return "sinc" if radius <= config.max_sinc_radius else "naive"
    return config.aperture_method


@register
class CircularApertureFlux(Plugin):
    name = "CircularApertureFlux"
    kernel_modules = ("forcedphot.kernels.apertures", "forcedphot.kernels.aperture_sinc", "forcedphot.kernels.aperture_naive")
    measures_undeblended = True

    @classmethod
    def columns(cls, config):
        cols = []
        for r in STANDARD_APERTURE_RADII:
            p = aperture_name(r)
            cols += [
                Column(f"{p}Flux", "double", f"Flux in a circular aperture of radius {r:g} pixels (method per config: sinc, naive or exact; null if not configured).", "nJy", "flux"),
                Column(f"{p}FluxErr", "double", f"Uncertainty of {p}Flux: sqrt(sum(c^2 var)) for sinc, sqrt(sum(var)) for naive, sqrt(sum(w^2 var)) for exact (or sqrt(sum(w var)) if configured 'linear', as SEP).", "nJy", "fluxErr"),
                flag(f"{p}Flux_flag", f"General failure of {p}Flux: no usable centroid, a truncated aperture, or NO_DATA, non-finite or psf_bad_mask_planes (e.g. BAD, SAT) pixels in it."),
                flag(f"{p}Flux_flag_apertureTruncated", f"The radius-{r:g} aperture extends beyond the coadd."),
            ]
            if r <= MAX_SINC_RADIUS_IN_SCHEMA:
                cols.append(flag(f"{p}Flux_flag_sincCoeffsTruncated", f"The sinc coefficients of radius {r:g} extend beyond the coadd and were clipped."))
        return tuple(cols)

    @classmethod
    def padding(cls, config):
        pads = [int(np.ceil(r)) + 3 for r in config.aperture_radii]
        pads += [sinc_width(r) // 2 + 1 for r in config.aperture_radii if method_for(r, config) == "sinc"]
        return max(pads, default=0)

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        both = self.name in ctx.undeblended
        pixels = source_pixels(ctx)
        image, variance, _, _, fp = pixels.planes()
        valid = pixels.classes(excluded_bits(ctx.coadd, self.config))  # excluded pixels are summed, and flag the aperture
        original = pixels.original if both else image
        c = ctx.centres()
        usable = c.usable.astype(bool)
        bbox = ctx.coadd.bbox
        radii = tuple(float(r) for r in self.config.aperture_radii)
        truncated = {r: usable & ((ctx.x - r < bbox.min_x - 0.5) | (ctx.x + r > bbox.max_x + 0.5)
                                  | (ctx.y - r < bbox.min_y - 0.5) | (ctx.y + r > bbox.max_y + 0.5)) for r in radii}
        # per radius: (flux, flux on the original image, variance, invalid weight, sinc coefficients truncated,
        # excluded pixels touched)
        sums = {}
        by_method = {}
        for r in radii:
            by_method.setdefault(method_for(r, self.config), []).append(r)
        if "sinc" in by_method:
            group = by_method["sinc"]
            todo = np.stack([usable & ~truncated[r] for r in group], axis=1)
            res = sinc_apertures(image, original, variance, valid, fp, c.cx, c.cy, c.fx, c.fy, todo, group, both=both)
            for k, r in enumerate(group):
                # a truncated aperture's coefficients always reach off the coadd (W/2 > r + 1)
                sums[r] = tuple(a[:, k] for a in res[:4]) + (res[4][:, k].astype(bool) | truncated[r], res[5][:, k])
        if "naive" in by_method:
            group = by_method["naive"]
            todo = np.stack([usable & ~truncated[r] for r in group], axis=1)
            res = naive_apertures(image, original, variance, valid, fp, c.xl, c.yl, todo, group, both=both)
            for k, r in enumerate(group):
                sums[r] = tuple(a[:, k] for a in res[:4]) + (np.zeros(n, bool), res[4][:, k])
        if "exact" in by_method:
            group = by_method["exact"]
            from forcedphot.kernels.apertures import exact_fluxes

            todo = np.repeat(c.usable[:, None], len(group), axis=1)
            res = exact_fluxes(image, original, variance, valid, fp, c.cx, c.cy, c.fx, c.fy, todo, group,
                               self.config.aperture_error_weights == "squared", both)
            for k, r in enumerate(group):
                sums[r] = tuple(a[:, k] for a in res[:4]) + (np.zeros(n, bool), res[4][:, k])
        out = {}
        for r in radii:
            p = aperture_name(r)
            flux, flux_u, var, invalid, coeffs_truncated, excluded = sums[r]
            bad = ~usable | truncated[r] | (invalid > 1e-9) | (excluded > 1e-9)
            images = [("", flux)] + ([(UNDEBLENDED, flux_u)] if both else [])
            for prefix, f in images:  # every column its own array
                out[f"{prefix}{p}Flux"] = f
                out[f"{prefix}{p}FluxErr"] = np.sqrt(var)
                out[f"{prefix}{p}Flux_flag_apertureTruncated"] = truncated[r].copy()
                out[f"{prefix}{p}Flux_flag"] = bad | ~np.isfinite(f)
                if r <= MAX_SINC_RADIUS_IN_SCHEMA:
                    out[f"{prefix}{p}Flux_flag_sincCoeffsTruncated"] = coeffs_truncated.copy()
        return out
