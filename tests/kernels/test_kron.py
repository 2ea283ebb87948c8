"""Compiled forced Kron fluxes against the numpy plugin they replaced, and thread counts."""

import dataclasses

import numba
import numpy as np
import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.layout import UNDEBLENDED_SKIP
from forcedphot.plugins import PLUGINS
from tests.kernels.context import quantum_context
from tests.kernels.reference_kron import ReferenceKronFlux
from tests.kernels.test_apertures import NO_DATA, UND, assert_agree, footprints_with_invalid_pixels


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    ctx, plain = quantum_context(tiny_repo_master, band="i", index=2, config=ForcedPhotConfig(**NO_DATA))
    assert (ctx.ref["parent"] != 0).sum() >= 10
    return ctx, plain


def test_kron_equals_the_numpy_plugin(contexts):
    ctx, plain = contexts
    assert "KronFlux" in ctx.undeblended
    new = PLUGINS["KronFlux"](ctx.config).measure(ctx)
    old = ReferenceKronFlux(ctx.config).measure(ctx)
    assert_agree(new, old, footprints_with_invalid_pixels(ctx), "deblended")
    np.testing.assert_array_equal(new["kronRad"], old["kronRad"])
    old_u = ReferenceKronFlux(ctx.config).measure(plain)
    old_u = {k: v for k, v in old_u.items() if k not in UNDEBLENDED_SKIP}  # kronRad: no undeblended copy (2.0)
    assert_agree({k[len(UND):]: v for k, v in new.items() if k.startswith(UND)}, old_u, np.zeros(ctx.n, bool),
                 "undeblended")
    assert set(new) == set(old) | {UND + k for k in old if k not in UNDEBLENDED_SKIP}
    assert new["kronFlux_flag_edge"].any() and np.isfinite(new["kronFlux"]).sum() > ctx.n // 2


def test_kron_does_not_depend_on_the_thread_count(contexts):
    ctx, _ = contexts
    plugin = PLUGINS["KronFlux"](ctx.config)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = plugin.measure(ctx)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = plugin.measure(ctx)
    finally:
        numba.set_num_threads(before)
    for k in one:
        assert np.array_equal(one[k], two[k], equal_nan=True), k


def test_kron_flags_of_sources_not_measured_equal_the_numpy_plugin(contexts):
    """Missing or bad radii and shapes: the same flags (the edge flag included) and no value; a missing
    radius is flagged noRefRadius, not edge."""
    ctx, _ = contexts
    r_k = np.array(ctx.ref["kron_radius"], float)
    r_k[::7] = np.nan
    r_k[3::11] = -1.0
    shape_ok = ctx.shape_ok.copy()
    shape_ok[1::9] = False
    bad = dataclasses.replace(ctx, ref={**ctx.ref, "kron_radius": r_k}, shape_ok=shape_ok, cache=dict(ctx.cache))
    new = PLUGINS["KronFlux"](ctx.config).measure(bad)
    old = ReferenceKronFlux(ctx.config).measure(bad)
    assert_agree(new, old, footprints_with_invalid_pixels(ctx), "bad radii")
    np.testing.assert_array_equal(new["kronFlux_flag_bad_radius"], (r_k == -1) & ctx.usable)
    assert new["kronFlux_flag_bad_radius"].sum() >= 5 and new["kronFlux_flag_bad_shape"].any()
    missing = np.isnan(r_k)
    np.testing.assert_array_equal(new["kronFlux_flag_noRefRadius"], missing)
    assert not new["kronFlux_flag_edge"][missing].any() and not new["kronFlux_flag_bad_radius"][missing].any()
    assert new["kronFlux_flag"][missing].all() and np.isnan(new["kronFlux"][missing]).all()
