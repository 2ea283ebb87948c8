"""CircularApertureFlux: fluxes in circular apertures at the configured radii.

Three methods, chosen by ``aperture_method``:

- ``"sinc"`` (default, Rubin's): band-limited sinc coefficients for r <= ``max_sinc_radius``
  (12 px, as obs_lsst) and the naive pixel-centre sum above (see aperture_sinc/aperture_naive);
- ``"naive"``: pixel centres in the closed disk at every radius;
- ``"exact"``: exact pixel/circle overlap (SEP ``subpix=0`` and photutils ``method='exact'``).

Edges: an aperture reaching beyond the coadd is flagged ``_flag_apertureTruncated``; the
sinc and naive methods then give no value (as Rubin), the exact method sums the on-image
part (as SEP/photutils). Sinc coefficients reaching beyond the coadd set
``_flag_sincCoeffsTruncated`` and are clipped. Apertures are not aperture-corrected.
"""

from __future__ import annotations

import numpy as np

from forcedphot.config import STANDARD_APERTURE_RADII
from forcedphot.plugins.aperture_exact import exact_aperture_sums, pixel_overlap
from forcedphot.plugins.aperture_naive import naive_aperture_sums
from forcedphot.plugins.aperture_sinc import sinc_aperture_sums, sinc_width
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag

MAX_SINC_RADIUS_IN_SCHEMA = 12.0


def aperture_name(radius: float) -> str:
    """Rubin Object-table style prefix: 3 -> 'ap03', 4.5 -> 'ap04p5'."""
    whole = int(radius)
    frac = round((radius - whole) * 10)
    return f"ap{whole:02d}" + (f"p{frac}" if frac else "")


def method_for(radius: float, config) -> str:
    if config.aperture_method == "sinc":
        return "sinc" if radius <= config.max_sinc_radius else "naive"
    return config.aperture_method


class CircularApertureFlux(Plugin):
    name = "CircularApertureFlux"

    @classmethod
    def columns(cls, config):
        cols = []
        for r in STANDARD_APERTURE_RADII:
            p = aperture_name(r)
            cols += [
                Column(f"{p}Flux", "double", f"Flux in a circular aperture of radius {r:g} pixels (method per config: sinc, naive or exact; null if not configured).", "nJy", "flux"),
                Column(f"{p}FluxErr", "double", f"Uncertainty of {p}Flux: sqrt(sum(c^2 var)) for sinc, sqrt(sum(var)) for naive, sqrt(sum(w^2 var)) for exact (or sqrt(sum(w var)) if configured 'linear', as SEP).", "nJy", "fluxErr"),
                flag(f"{p}Flux_flag", f"General failure of {p}Flux: no usable centroid, a truncated aperture, or NO_DATA or non-finite pixels in it."),
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
        out = {}
        idx = np.flatnonzero(ctx.usable)
        ix, iy = ctx.centre_index()
        fx = ctx.x - np.floor(ctx.x + 0.5)
        fy = ctx.y - np.floor(ctx.y + 0.5)
        xl = ctx.x - ctx.coadd.bbox.min_x + ctx.padded.pad
        yl = ctx.y - ctx.coadd.bbox.min_y + ctx.padded.pad
        bbox = ctx.coadd.bbox
        squared = self.config.aperture_error_weights == "squared"
        step = self.config.chunk_size
        radii = self.config.aperture_radii
        sums = {r: (np.full(ctx.n, np.nan), np.full(ctx.n, np.nan), np.zeros(ctx.n), np.zeros(ctx.n, bool))
                for r in radii}
        sinc_radii = [r for r in radii if method_for(r, self.config) == "sinc"]
        for s in range(0, idx.size, step):
            sel = idx[s:s + step]
            results = (sinc_aperture_sums(lambda half: ctx.cutouts(sel, half), fx[sel], fy[sel], sinc_radii)
                       if sinc_radii else {})
            for r in radii:
                method = method_for(r, self.config)
                if method == "exact":
                    flux, var, invalid = exact_aperture_sums(ctx.padded, ix[sel], iy[sel], fx[sel], fy[sel], r,
                                                             squared_errors=squared)
                    flux = flux + ctx.footprint_correction(sel, lambda o, dx, dy, r=r: pixel_overlap(dx, dy, r))
                    res = (flux, var, invalid, False)
                elif method == "naive":
                    flux, var, invalid = naive_aperture_sums(ctx.padded, xl[sel], yl[sel], r)
                    flux = flux + ctx.footprint_correction(sel, lambda o, dx, dy, r=r: (dx * dx + dy * dy <= r * r))
                    res = (flux, var, invalid, False)
                else:
                    res = results[r]
                for total, part in zip(sums[r], res):
                    total[sel] = part
        for r in radii:
            p = aperture_name(r)
            method = method_for(r, self.config)
            flux, var, invalid, coeffs_truncated = sums[r]
            truncated = ctx.usable & ((ctx.x - r < bbox.min_x - 0.5) | (ctx.x + r > bbox.max_x + 0.5)
                                      | (ctx.y - r < bbox.min_y - 0.5) | (ctx.y + r > bbox.max_y + 0.5))
            if method != "exact":  # Rubin: a truncated sinc or naive aperture has no value
                flux[truncated] = np.nan
                var[truncated] = np.nan
            out[f"{p}Flux"] = flux
            out[f"{p}FluxErr"] = np.sqrt(var)
            out[f"{p}Flux_flag_apertureTruncated"] = truncated
            out[f"{p}Flux_flag"] = ~ctx.usable | truncated | (invalid > 1e-9) | ~np.isfinite(flux)
            if r <= MAX_SINC_RADIUS_IN_SCHEMA:
                out[f"{p}Flux_flag_sincCoeffsTruncated"] = coeffs_truncated
        return out
