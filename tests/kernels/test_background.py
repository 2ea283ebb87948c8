"""LocalBackground, Variance and the clipped statistics: compiled kernels against their numpy references."""

import dataclasses

import numba
import numpy as np
import pytest

from forcedphot.clipped import clipped_mean_std, masked_median
from forcedphot.plugins import PLUGINS
from tests.kernels import reference_clipped
from tests.kernels.context import quantum_context
from tests.kernels.reference_local_background import ReferenceLocalBackground
from tests.kernels.reference_variance import ReferenceVariance

REFERENCES = {"LocalBackground": ReferenceLocalBackground, "Variance": ReferenceVariance}
ERRORS = {"localBackground": "localBackground_stdev", "localBackground_stdev": "localBackground_stdev"}


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    ctx, plain = quantum_context(tiny_repo_master, index=1)
    assert (ctx.ref["parent"] != 0).sum() >= 10
    return ctx, plain


def _compare(name, ctx):
    new = PLUGINS[name](ctx.config).measure(ctx)
    old = REFERENCES[name](ctx.config).measure(ctx)
    assert set(new) == set(old)
    for c in PLUGINS[name].columns(ctx.config):
        a, b = new[c.name], old[c.name]
        if c.kind == "flag":
            np.testing.assert_array_equal(a, b, err_msg=c.name)
            continue
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b), err_msg=c.name)
        ok = np.isfinite(b)
        if c.name in ERRORS:  # |new - old| <= 1e-3 of the error
            err = np.abs(old[ERRORS[c.name]][ok])
            assert (np.abs(a[ok] - b[ok]) <= 1e-3 * err).all(), c.name
        else:  # the median picks pixel values: exact
            np.testing.assert_array_equal(a[ok], b[ok], err_msg=c.name)
        assert ok.sum() > 0.8 * ok.size
    return new


@pytest.mark.parametrize("name", ["LocalBackground", "Variance"])
@pytest.mark.parametrize("deblended", [True, False])
def test_plugin_equals_the_reference(contexts, name, deblended):
    ctx, plain = contexts
    _compare(name, ctx if deblended else plain)


def test_local_background_sees_the_source_alone(contexts):
    """With noise replacement the annulus of a blended source holds noise, not its neighbours."""
    ctx, plain = contexts
    blended = np.flatnonzero(ctx.ref["parent"] != 0)
    a = PLUGINS["LocalBackground"](ctx.config).measure(ctx)["localBackground"]
    b = PLUGINS["LocalBackground"](ctx.config).measure(plain)["localBackground"]
    assert np.nanmedian(np.abs(a[blended])) < np.nanmedian(np.abs(b[blended]))


def test_an_annulus_off_the_coadd_has_no_good_pixels(contexts):
    ctx, _ = contexts
    x, y = ctx.x.copy(), ctx.y.copy()
    x[0] = ctx.coadd.bbox.min_x - 60.0  # still flagged usable: the whole annulus off the image
    moved = dataclasses.replace(ctx, x=x, y=y, cache={})
    out = _compare("LocalBackground", moved)
    assert out["localBackground_flag_noGoodPixels"][0] and out["localBackground_flag"][0]


@pytest.mark.parametrize("name", ["LocalBackground", "Variance"])
def test_plugin_does_not_depend_on_threads(contexts, name):
    ctx, _ = contexts
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = PLUGINS[name](ctx.config).measure(ctx)
        numba.set_num_threads(2)
        two = PLUGINS[name](ctx.config).measure(ctx)
    finally:
        numba.set_num_threads(before)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipped_statistics_equal_numpy(dtype):
    rng = np.random.default_rng(9)
    rows = rng.normal(2.0, 1.5, (300, 257))
    rows[:, :20] += rng.uniform(20, 200, (300, 20))  # outliers
    rows[rng.random(rows.shape) < 0.2] = np.nan
    rows[5] = np.nan  # an empty row
    rows[6, 1:] = np.nan  # one value
    rows[7] = 3.0  # all equal
    rows[8] = np.round(rows[8])  # ties
    # a tight cluster of tiny values (model wings) among wide noise: the clip shrinks from the
    # noise to the cluster, whose variance must not come from a difference of the wide sums
    rows[9] = np.where(rng.random(257) < 0.65, rng.normal(1e-9, 2e-9, 257), rng.normal(0, 0.2, 257))
    rows = rows.astype(dtype)
    mean, std, used = clipped_mean_std(rows)
    m0, s0, u0 = reference_clipped.clipped_mean_std(rows)
    np.testing.assert_array_equal(used, u0)
    np.testing.assert_allclose(mean, m0, rtol=1e-12, atol=0)
    np.testing.assert_allclose(std, s0, rtol=1e-10, atol=0)
    np.testing.assert_array_equal(np.signbit(std[5]), np.signbit(s0[5]))  # numpy's -0.0 of an empty row
    np.testing.assert_array_equal(masked_median(rows), reference_clipped.masked_median(rows))
