"""The SdssCentroid kernel against the numpy reference (tests/kernels/reference_sdss_centroid.py)."""

import numba
import numpy as np
import pytest

from forcedphot.plugins.sdss_centroid import SdssCentroid
from tests.kernels.context import quantum_context
from tests.kernels.reference_moments import invalid_pixels_read_zero
from tests.kernels.reference_sdss_centroid import ReferenceSdssCentroid

QUANTA = (1, 2)  # patch 1: the most blends; patch 2: blends and invalid pixels (NO_DATA, bad columns)


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    return {i: quantum_context(tiny_repo_master, index=i)[0] for i in QUANTA}


def _measure(plugin, ctx):
    return {k: np.asarray(v) for k, v in plugin(ctx.config).measure(ctx).items()}


def compare(new, old):
    for c in SdssCentroid.columns(None):
        if c.kind == "flag":
            np.testing.assert_array_equal(new[c.name], old[c.name], err_msg=c.name)
        else:
            np.testing.assert_array_equal(np.isfinite(new[c.name]), np.isfinite(old[c.name]), err_msg=c.name)
    for name in ("sdssCentroid_x", "sdssCentroid_y"):
        np.testing.assert_allclose(new[name], old[name], rtol=0, atol=1e-9, err_msg=name)
    for name in ("sdssCentroid_xErr", "sdssCentroid_yErr"):
        np.testing.assert_allclose(new[name], old[name], rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("index", QUANTA)
def test_sdss_centroid_matches_the_numpy_reference(contexts, index):
    ctx = contexts[index]
    new = _measure(SdssCentroid, ctx)
    # the reference reads invalid pixels of a source's own footprint as 0 too (the kernels' noise replacement)
    compare(new, _measure(ReferenceSdssCentroid, invalid_pixels_read_zero(ctx)))
    assert (~new["sdssCentroid_flag"]).sum() > 0.5 * ctx.n
    if index == 1:  # no invalid pixels: the reference exactly as it was
        compare(new, _measure(ReferenceSdssCentroid, ctx))
    if index == 2:
        assert new["sdssCentroid_flag_edge"].any()


def test_sdss_centroid_is_bit_identical_for_any_thread_count(contexts):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    ctx = contexts[2]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _measure(SdssCentroid, ctx)
        numba.set_num_threads(2)
        two = _measure(SdssCentroid, ctx)
    finally:
        numba.set_num_threads(before)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)
