"""The GaapFlux kernel against the numpy reference (tests/kernels/reference_gaap.py), and its thread independence."""

import numba
import numpy as np
import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.plugins.gaap import APERTURES, GaapFlux, base_name
from tests.kernels.context import quantum_context
from tests.kernels.reference_gaap import ReferenceGaapFlux
from tests.kernels.reference_moments import invalid_pixels_read_zero

QUANTA = (1, 2)  # patch 1: the most blends; patch 2: blends and invalid pixels (NO_DATA, bad columns)


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    config = ForcedPhotConfig(psf_bad_mask_planes=("NO_DATA",))
    return {i: quantum_context(tiny_repo_master, index=i, config=config)[0] for i in QUANTA}


def _measure(plugin, ctx):
    return {k: np.asarray(v) for k, v in plugin.measure(ctx).items()}


@pytest.mark.parametrize("index", QUANTA)
def test_gaap_matches_the_numpy_reference(contexts, index):
    from forcedphot.kernels import gaap as kernel

    ctx = contexts[index]
    calls = {}
    real = kernel.gaap_flux

    def spy(*args):
        calls["out"] = real(*args)
        return calls["out"]

    kernel.gaap_flux = spy
    try:
        new = _measure(GaapFlux(ctx.config), ctx)
    finally:
        kernel.gaap_flux = real
    flux, err, invalid, excluded, edge, residual = calls["out"]
    ref = ReferenceGaapFlux(ctx.config)
    ref.rows = np.arange(0, ctx.n, 3)  # every third source: the reference takes ~0.1 s per source
    _measure(ref, invalid_pixels_read_zero(ctx))
    r = ref.raw
    rows = ref.rows
    np.testing.assert_allclose(residual[rows], r["residual"][rows], rtol=1e-6, atol=1e-12)
    assert np.isfinite(r["residual"][rows]).sum() > 0.8 * rows.size
    np.testing.assert_array_equal(np.isfinite(flux[rows]), np.isfinite(r["flux"][rows]))
    np.testing.assert_array_equal(invalid[rows], r["invalid"][rows])
    fin = np.isfinite(r["flux"][rows]) & (r["err"][rows] > 0) & (invalid[rows] == 0)
    assert fin.sum() > 0.5 * fin.size
    pull = np.abs(flux[rows] - r["flux"][rows])[fin] / r["err"][rows][fin]
    assert pull.max() <= 1e-6
    np.testing.assert_allclose(err[rows][fin], r["err"][rows][fin], rtol=1e-9)
    # weight mostly on invalid pixels (read as 0): equal up to the FFT's round-off
    np.testing.assert_allclose(flux[rows], r["flux"][rows], rtol=1e-6, atol=1e-9 * np.nanmax(np.abs(flux)))
    np.testing.assert_array_equal(edge[rows], r["edge"][rows])
    assert edge[rows].any() and (~edge[rows].astype(bool)).any()
    # the columns carry the kernel's numbers; apertures not measured are flagged
    for k, ap in enumerate(APERTURES):
        b = base_name(ap)
        np.testing.assert_array_equal(new[b], flux[:, k])
        assert new[f"{b}_flag"][~np.isfinite(flux[:, k])].all()
    if index == 2:  # invalid pixels under some apertures
        assert invalid[rows].any()


def test_gaap_is_bit_identical_for_any_thread_count_and_chunking(contexts):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    ctx = contexts[2]
    plugin = GaapFlux(ctx.config)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _measure(plugin, ctx)
        numba.set_num_threads(2)
        two = _measure(plugin, ctx)
    finally:
        numba.set_num_threads(before)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)
    # blocks of other sources (another visiting order: other scratch sizes and neighbours) change nothing
    from forcedphot.kernels import gaap as kernel

    calls = {}
    real = kernel.gaap_flux

    def spy(*args):
        calls["args"] = args
        return real(*args)

    kernel.gaap_flux = spy
    try:
        plugin.measure(ctx)
    finally:
        kernel.gaap_flux = real
    args = calls["args"]
    full = real(*args)
    shuffled = np.random.default_rng(1).permutation(args[-1]).astype(np.int64)
    for a, b in zip(full, real(*args[:-1], shuffled)):
        np.testing.assert_array_equal(a, b)
