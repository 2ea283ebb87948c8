"""ApCorr: each flux, its error, its proxies and its undeblended copy multiplied by the field's correction
where it is usable (np.where(good, F a, F), bit for bit), the measured columns left as they were."""

from types import SimpleNamespace

import numpy as np

from forcedphot.apcorr import ApCorrMap, ChebyshevField
from forcedphot.config import ForcedPhotConfig
from forcedphot.plugins import ap_corr
from forcedphot.plugins.ap_corr import ApCorr


def _awkward(rng, n):
    v = rng.normal(0, 1e3, n)
    v[::7] = np.nan
    v[1::11] = np.inf
    v[2::13] = -0.0
    return v


def _ctx(n, rng, fields):
    box = SimpleNamespace(min_x=0, min_y=0)
    fbox = SimpleNamespace(min_x=0, min_y=0, width=100, height=100)
    maps = {f: (ChebyshevField(fbox, rng.uniform(0.8, 1.2, (2, 2))), ChebyshevField.constant(fbox, 1e-3))
            for f in fields}
    values = {}
    for f in ap_corr.AP_CORR_FLUXES:
        base = ap_corr.FLAG_BASE.get(f, f)
        values[f] = _awkward(rng, n)
        values[f"{f}Err"] = np.abs(_awkward(rng, n))
        values[f"{base}_flag"] = rng.random(n) > 0.8
    for p in ap_corr.PROXIES["cModelFlux"]:
        values[p], values[f"{p}Err"] = _awkward(rng, n), _awkward(rng, n)
    values["undeblended_psfFlux"], values["undeblended_psfFluxErr"] = _awkward(rng, n), _awkward(rng, n)
    values["undeblended_psfFlux_flag"] = np.zeros(n, bool)
    values["gaussianFluxErr"] = values["gaussianFlux"]  # one array under two names
    usable = rng.random(n) > 0.05
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    coadd = SimpleNamespace(ap_corr=ApCorrMap(maps), bbox=box)
    return SimpleNamespace(coadd=coadd, usable=usable, x=x, y=y, n=n, values=values)


def test_ap_corr_applies_the_formula_and_leaves_the_measured_columns():
    rng = np.random.default_rng(3)
    fields = [f for f in ap_corr.AP_CORR_FLUXES if f != "kronFlux"]  # one flux without a field
    ctx = _ctx(3000, rng, fields)
    before = {k: v.copy() for k, v in ctx.values.items()}
    out = ApCorr(ForcedPhotConfig()).measure(ctx)
    x = np.where(ctx.usable, ctx.x, 0)
    y = np.where(ctx.usable, ctx.y, 0)
    checked = 0
    for f in ap_corr.AP_CORR_FLUXES:
        if f in fields:
            a, a_err = ctx.coadd.ap_corr.evaluate(f, x, y)
        else:
            a = a_err = np.full(ctx.n, np.nan)
        good = ctx.usable & np.isfinite(a) & (a > 0) & np.isfinite(a_err) & (a_err >= 0)
        names = [f, f"{f}Err"] + [n for p in ap_corr.PROXIES.get(f, ()) for n in (p, f"{p}Err")]
        names += [n for n in (f"undeblended_{f}", f"undeblended_{f}Err") if n in before]
        for name in names:
            assert out[name].tobytes() == np.where(good, before[name] * a, before[name]).tobytes(), name
            checked += 1
        assert out[f"{f}_apCorr"].tobytes() == np.where(good, a, np.nan).tobytes()
    assert checked >= 2 * len(ap_corr.AP_CORR_FLUXES)
    # every measured column as it was, the aliased pair (one array under two names) included
    for name, value in before.items():
        assert ctx.values[name].tobytes() == value.tobytes(), name
    assert out["gaussianFluxErr"] is not out["gaussianFlux"]
