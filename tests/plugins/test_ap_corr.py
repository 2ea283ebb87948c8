"""ApCorr corrects the measured columns in place (no second copy of them at the quantum's memory
peak) and gives exactly the numbers of the copying formula np.where(good, F a, F)."""

from types import SimpleNamespace

import numpy as np
import pytest

from forcedphot.apcorr import ApCorrMap, ChebyshevField
from forcedphot.config import ForcedPhotConfig
from forcedphot.plugins import ap_corr
from forcedphot.plugins.ap_corr import ApCorr, corrected


def _awkward(rng, n):
    v = rng.normal(0, 1e3, n)
    v[::7] = np.nan
    v[1::11] = np.inf
    v[2::13] = -0.0
    return v


def test_corrected_in_place_is_bit_identical_to_the_copying_formula():
    rng = np.random.default_rng(1)
    n = 5000
    a = rng.uniform(0.5, 1.5, n)
    a[::5] = np.nan
    a[3::17] = -1.0
    good = np.isfinite(a) & (a > 0) & (rng.random(n) > 0.1)
    v = _awkward(rng, n)
    expected = np.where(good, v * a, v)
    out = corrected(v, a, good)
    assert out is v  # in place: no second column
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("kind", ["view", "alias", "float32", "read_only"])
def test_corrected_copies_what_it_must_not_overwrite(kind):
    rng = np.random.default_rng(2)
    n = 1000
    a = rng.uniform(0.5, 1.5, n)
    good = rng.random(n) > 0.3
    base = _awkward(rng, 2 * n)
    v = {"view": base[::2], "alias": base[:n].copy(), "float32": base[:n].astype(np.float32),
         "read_only": base[:n].copy()}[kind]
    if kind == "read_only":
        v.setflags(write=False)
    before = v.copy()
    out = corrected(v, a, good, alone=kind != "alias")
    assert out is not v
    assert v.tobytes() == before.tobytes()  # the input is untouched
    assert out.tobytes() == np.where(good, before * a, before).tobytes()


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
    values["gaussianFluxErr"] = values["gaussianFlux"]  # one array under two names: never corrected in place
    usable = rng.random(n) > 0.05
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    coadd = SimpleNamespace(ap_corr=ApCorrMap(maps), bbox=box)
    return SimpleNamespace(coadd=coadd, usable=usable, x=x, y=y, n=n, values=values)


def test_ap_corr_in_place_equals_the_copying_formula_and_adds_no_copy():
    rng = np.random.default_rng(3)
    fields = [f for f in ap_corr.AP_CORR_FLUXES if f != "kronFlux"]  # one flux without a field
    ctx = _ctx(3000, rng, fields)
    before = {k: v.copy() for k, v in ctx.values.items()}
    ids = {k: id(v) for k, v in ctx.values.items()}
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
            if name not in ("gaussianFlux", "gaussianFluxErr"):  # the alias is corrected as copies
                assert id(out[name]) == ids[name], f"{name}: corrected as a copy"
        assert out[f"{f}_apCorr"].tobytes() == np.where(good, a, np.nan).tobytes()
    assert checked >= 2 * len(ap_corr.AP_CORR_FLUXES)
    # the aliased pair: both corrected from the uncorrected values, the shared array left as it was
    assert ctx.values["gaussianFlux"].tobytes() == before["gaussianFlux"].tobytes()
    assert out["gaussianFlux"] is not ctx.values["gaussianFlux"]
    assert out["gaussianFluxErr"] is not out["gaussianFlux"]


def test_quantum_with_in_place_corrections_is_bit_identical_to_copying_ones(tiny_repo_master, monkeypatch):
    """The whole quantum (pixels freed before ApCorr, columns corrected in place) gives exactly the
    table of the copying formula."""
    from tests.test_threads import _bytes, _table

    from forcedphot import threads

    try:
        in_place = _table(tiny_repo_master, ForcedPhotConfig(), 2)
        monkeypatch.setattr(ap_corr, "corrected", lambda v, a, good, alone=True: np.where(good, v * a, v))
        copying = _table(tiny_repo_master, ForcedPhotConfig(), 2)
    finally:
        threads.configure()
    assert in_place.num_rows > 50
    assert in_place.column_names == copying.column_names
    for name in in_place.column_names:
        assert _bytes(in_place, name) == _bytes(copying, name), name
