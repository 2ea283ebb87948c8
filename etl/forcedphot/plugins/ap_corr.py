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

CModel: cModelFlux has its own field (the fraction of a star's flux CModel measures);
cModel_expFlux and cModel_devFlux take cModelFlux's correction (as a proxy: on a point source the
exp, dev and final models are all the PSF, so the three fractions are equal), which keeps the three
on one scale; Rubin corrects each with its own field. The _inner fluxes are not corrected.

Extendedness (Rubin's base_ClassificationExtendedness with obs_lsst's fluxRatio): 1 if 0.985 *
cModelFlux >= psfFlux else 0, both aperture corrected. Where CModel did not run or failed
(cModel_flag, or a non-finite cModelFlux) gaussianFlux stands in as the model flux and
``extendedness_flag_fallback`` says so (Rubin leaves the value unset there).
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register
from forcedphot.plugins.convolved import CONVOLVED_FLUXES
from forcedphot.plugins.gaap import GAAP_FLUXES

AP_CORR_FLUXES = ("psfFlux", "gaussianFlux", "kronFlux", "cModelFlux") + GAAP_FLUXES
AP_CORR_FLUXES += CONVOLVED_FLUXES  # ConvolvedFlux: every circle and Kron flux of every target (as Rubin)
# a flux whose flags are named after its algorithm rather than the flux (<base>_flag, <base>_flag_apCorr)
FLAG_BASE = {"cModelFlux": "cModel"}
# fluxes corrected with another flux's field (without columns of their own), besides the undeblended copies
PROXIES = {"cModelFlux": ("cModel_expFlux", "cModel_devFlux")}
FLUX_RATIO = 0.985


@register
class ApCorr(Plugin):
    name = "ApCorr"
    order = 3.0

    @classmethod
    def columns(cls, config):
        cols = []
        for f in AP_CORR_FLUXES:
            base = FLAG_BASE.get(f, f)
            cols += [
                Column(f"{f}_apCorr", "double", f"Aperture correction applied to {f} (multiplicative); NaN where none was applied."),
                Column(f"{f}_apCorrErr", "double", f"Uncertainty of {f}_apCorr (not propagated into {f}Err)."),
                flag(f"{base}_flag_apCorr", f"No usable aperture correction for {f}: it is uncorrected (and {base}_flag is set if the coadd has an ApCorr map)."),
            ]
        return tuple(cols)

    def measure(self, ctx: MeasurementContext):
        out = {}
        ap_corr = ctx.coadd.ap_corr
        fix = lambda name: np.where(good, ctx.values[name] * a, ctx.values[name])  # noqa: E731
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
            out[f] = fix(f)
            out[f"{f}Err"] = fix(f"{f}Err")
            out[f"{f}_apCorr"] = np.where(good, a, np.nan)
            out[f"{f}_apCorrErr"] = np.where(good, a_err, np.nan)
            base = FLAG_BASE.get(f, f)
            out[f"{base}_flag_apCorr"] = ~good
            out[f"{base}_flag"] = ctx.values[f"{base}_flag"] | (~good if ap_corr is not None else False)
            for p in PROXIES.get(f, ()):
                if p in ctx.values:
                    out[p] = fix(p)
                    out[f"{p}Err"] = fix(f"{p}Err")
            u = f"undeblended_{f}"  # Rubin's proxies: undeblended fluxes take their algorithm's correction
            if u in ctx.values:
                out[u] = fix(u)
                out[f"{u}Err"] = fix(f"{u}Err")
                out[f"{u}_flag"] = ctx.values[f"{u}_flag"] | (~good if ap_corr is not None else False)
        return out


@register
class Extendedness(Plugin):
    name = "Extendedness"
    order = 4.0

    @classmethod
    def columns(cls, config):
        return (
            Column("extendedness", "float", "1 if 0.985 cModelFlux >= psfFlux (extended), 0 otherwise (point source); gaussianFlux in place of cModelFlux where CModel failed (extendedness_flag_fallback); NaN if psfFlux or both model fluxes are flagged or not finite."),
            flag("extendedness_flag", "No value: psfFlux, or both cModelFlux and gaussianFlux, flagged or not finite."),
            flag("extendedness_flag_fallback", "CModel failed or did not run: the value compares gaussianFlux with psfFlux."),
        )

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        v = ctx.values

        def usable(name, flag_name):
            if name not in v:
                return np.full(n, np.nan), np.zeros(n, bool)
            value = np.asarray(v[name], float)
            return value, ~np.asarray(v[flag_name], bool) & np.isfinite(value)

        psf, psf_ok = usable("psfFlux", "psfFlux_flag")
        cmodel, cmodel_ok = usable("cModelFlux", "cModel_flag")
        gauss, gauss_ok = usable("gaussianFlux", "gaussianFlux_flag")
        fallback = ~cmodel_ok & gauss_ok
        model = np.where(cmodel_ok, cmodel, gauss)
        bad = ~psf_ok | ~(cmodel_ok | gauss_ok)
        value = np.where(FLUX_RATIO * model < psf, 0.0, 1.0)
        return {"extendedness": np.where(bad, np.nan, value), "extendedness_flag": bad,
                "extendedness_flag_fallback": fallback & ~bad}
