"""Aperture corrections (Rubin's ApplyApCorr) and star/galaxy extendedness (catalogCalculation).

For each aperture-corrected flux with a field in the coadd's ApCorr map: a = field(x, y),
and where a is finite and positive F <- a F, err <- a err (the correction's own error is
recorded but, as in Rubin, not propagated). Unlike Rubin (whose _apCorr columns stay
empty), ``<flux>_apCorr`` and ``<flux>_apCorrErr`` are filled. Where the map has no usable
value (a missing field, or a non-finite or non-positive correction), ``<flux>_flag_apCorr``
and ``<flux>_flag`` are set and the flux is left as is (Rubin's doFlagApCorrFailures). A coadd
with no ApCorr map at all (e.g. ingested FITS) sets only ``<flux>_flag_apCorr``: its fluxes
are uncorrected, not failed.

The undeblended PSF and Kron fluxes get the same correction as their algorithm (Rubin's
proxies), without columns of their own.

Extendedness = 1 if 0.985 * modelFlux >= psfFlux else 0, with gaussianFlux as the model flux
(the plugin set has no CModel), both aperture corrected.
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register
from forcedphot.plugins.gaap import GAAP_FLUXES

AP_CORR_FLUXES = ("psfFlux", "gaussianFlux", "kronFlux") + GAAP_FLUXES
FLUX_RATIO = 0.985


@register
class ApCorr(Plugin):
    name = "ApCorr"
    order = 3.0

    @classmethod
    def columns(cls, config):
        cols = []
        for f in AP_CORR_FLUXES:
            cols += [
                Column(f"{f}_apCorr", "double", f"Aperture correction applied to {f} (multiplicative); NaN where none was applied."),
                Column(f"{f}_apCorrErr", "double", f"Uncertainty of {f}_apCorr (not propagated into {f}Err)."),
                flag(f"{f}_flag_apCorr", f"No usable aperture correction for {f}: it is uncorrected (and {f}_flag is set if the coadd has an ApCorr map)."),
            ]
        return tuple(cols)

    def measure(self, ctx: MeasurementContext):
        out = {}
        ap_corr = ctx.coadd.ap_corr
        x = np.where(ctx.usable, ctx.x, ctx.coadd.bbox.min_x)
        y = np.where(ctx.usable, ctx.y, ctx.coadd.bbox.min_y)
        for f in AP_CORR_FLUXES:
            if f not in ctx.values:
                continue  # plugin not run: its apCorr columns stay null
            if ap_corr is None or f not in ap_corr.fields:
                a = a_err = np.full(ctx.n, np.nan)
            else:
                a, a_err = ap_corr.evaluate(f, x, y)
            good = ctx.usable & np.isfinite(a) & (a > 0) & np.isfinite(a_err) & (a_err >= 0)
            out[f] = np.where(good, ctx.values[f] * a, ctx.values[f])
            out[f"{f}Err"] = np.where(good, ctx.values[f"{f}Err"] * a, ctx.values[f"{f}Err"])
            out[f"{f}_apCorr"] = np.where(good, a, np.nan)
            out[f"{f}_apCorrErr"] = np.where(good, a_err, np.nan)
            out[f"{f}_flag_apCorr"] = ~good
            out[f"{f}_flag"] = ctx.values[f"{f}_flag"] | (~good if ap_corr is not None else False)
            u = f"undeblended_{f}"  # Rubin's proxies: undeblended fluxes take their algorithm's correction
            if u in ctx.values:
                out[u] = np.where(good, ctx.values[u] * a, ctx.values[u])
                out[f"{u}Err"] = np.where(good, ctx.values[f"{u}Err"] * a, ctx.values[f"{u}Err"])
                out[f"{u}_flag"] = ctx.values[f"{u}_flag"] | (~good if ap_corr is not None else False)
        return out


@register
class Extendedness(Plugin):
    name = "Extendedness"
    order = 4.0

    @classmethod
    def columns(cls, config):
        return (
            Column("extendedness", "float", "1 if 0.985 gaussianFlux >= psfFlux (extended), 0 otherwise; NaN if either is flagged or not finite."),
            flag("extendedness_flag", "psfFlux or gaussianFlux is flagged or not finite."),
        )

    def measure(self, ctx: MeasurementContext):
        if "psfFlux" not in ctx.values or "gaussianFlux" not in ctx.values:
            return {"extendedness": np.full(ctx.n, np.nan), "extendedness_flag": np.ones(ctx.n, bool)}
        psf, model = ctx.values["psfFlux"], ctx.values["gaussianFlux"]
        bad = (ctx.values["psfFlux_flag"] | ctx.values["gaussianFlux_flag"] | ~np.isfinite(psf) | ~np.isfinite(model))
        value = np.where(FLUX_RATIO * model < psf, 0.0, 1.0)
        return {"extendedness": np.where(bad, np.nan, value), "extendedness_flag": bad}
