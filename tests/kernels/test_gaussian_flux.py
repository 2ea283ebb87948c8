"""The GaussianFlux kernel against the numpy reference (tests/kernels/reference_gaussian_flux.py)."""

import numba
import numpy as np
import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.plugins.gaussian_flux import GaussianFlux
from tests.kernels.context import quantum_context
from tests.kernels.reference_gaussian_flux import ReferenceGaussianFlux
from tests.kernels.reference_moments import invalid_pixels_read_zero

QUANTA = (1, 2)  # patch 1: the most blends; patch 2: blends and invalid pixels (NO_DATA, bad columns)


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    config = ForcedPhotConfig(psf_bad_mask_planes=("NO_DATA",))  # the reference flags invalid pixels only
    return {i: quantum_context(tiny_repo_master, index=i, config=config)[0] for i in QUANTA}


def _measure(plugin, ctx):
    return {k: np.asarray(v) for k, v in plugin(ctx.config).measure(ctx).items()}


def compare(new, old):
    np.testing.assert_array_equal(new["gaussianFlux_flag"], old["gaussianFlux_flag"])
    for name in ("gaussianFlux", "gaussianFluxErr"):
        np.testing.assert_array_equal(np.isfinite(new[name]), np.isfinite(old[name]), err_msg=name)
    fin = np.isfinite(old["gaussianFlux"]) & (old["gaussianFluxErr"] > 0)
    pull = np.abs(new["gaussianFlux"] - old["gaussianFlux"])[fin] / old["gaussianFluxErr"][fin]
    assert pull.max(initial=0) <= 1e-3
    zero = np.isfinite(old["gaussianFlux"]) & (old["gaussianFluxErr"] == 0)  # all weight on invalid pixels
    np.testing.assert_array_equal(new["gaussianFlux"][zero], old["gaussianFlux"][zero])
    np.testing.assert_allclose(new["gaussianFluxErr"], old["gaussianFluxErr"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("index", QUANTA)
def test_gaussian_flux_matches_the_numpy_reference(contexts, index):
    ctx = contexts[index]
    new = _measure(GaussianFlux, ctx)
    # the reference reads invalid pixels of a source's own footprint as 0 too (the kernels' noise replacement)
    compare(new, _measure(ReferenceGaussianFlux, invalid_pixels_read_zero(ctx)))
    assert (~new["gaussianFlux_flag"]).sum() > 0.5 * ctx.n
    if index == 1:  # no invalid pixels: the reference exactly as it was
        compare(new, _measure(ReferenceGaussianFlux, ctx))


def test_gaussian_flux_of_small_shapes_uses_sub_pixel_samples(contexts):
    ctx = contexts[1]
    small = ctx.usable & ctx.shape_ok
    rows = np.flatnonzero(small)[:10]
    shape = ctx.shape.copy()
    shape[rows] = np.array([[0.2, 0.03], [0.03, 0.15]])  # under-sampled: 4 x 4 sub-pixel samples
    ctx = type(ctx)(**{**ctx.__dict__, "shape": shape, "cache": dict(ctx.cache)})
    new = _measure(GaussianFlux, ctx)
    old = _measure(ReferenceGaussianFlux, ctx)
    compare(new, old)
    assert np.isfinite(new["gaussianFlux"][rows]).all()


def test_gaussian_flux_is_bit_identical_for_any_thread_count(contexts):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    ctx = contexts[2]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _measure(GaussianFlux, ctx)
        numba.set_num_threads(2)
        two = _measure(GaussianFlux, ctx)
    finally:
        numba.set_num_threads(before)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)
