"""PixelFlags from the spans: the same flags as the per-pixel reference, for any thread count."""

import numba
import numpy as np
import pytest

from forcedphot.plugins import PLUGINS
from tests.kernels.context import quantum_context
from tests.kernels.reference_pixel_flags import ReferencePixelFlags


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    ctx, plain = quantum_context(tiny_repo_master, index=1)
    assert (ctx.ref["parent"] != 0).sum() >= 10
    return ctx, plain


def _edge_case(ctx):
    """A footprint running off the coadd, a centre on its corner and one source without a footprint."""
    ref = dict(ctx.ref)
    offsets, sy, sx0, sx1 = (a.copy() for a in ref["footprint_spans"])
    b = ctx.coadd.bbox
    sy[offsets[0]] = b.min_y - 3  # source 0's first span off the coadd
    sx1[offsets[1]] = b.max_x + 40  # source 1's first span runs off the right edge
    has = ref["has_footprint"].copy()
    has[2] = False
    ref["footprint_spans"], ref["has_footprint"] = (offsets, sy, sx0, sx1), has
    x, y = ctx.x.copy(), ctx.y.copy()
    x[3], y[3] = b.min_x - 0.4, b.max_y + 0.3  # centre on the corner pixel
    return ref, x, y


@pytest.mark.parametrize("edge", [False, True])
def test_pixel_flags_equal_the_reference(contexts, edge):
    ctx, _ = contexts
    if edge:
        import dataclasses

        ref, x, y = _edge_case(ctx)
        ctx = dataclasses.replace(ctx, ref=ref, x=x, y=y, cache={})
    new = PLUGINS["PixelFlags"](ctx.config).measure(ctx)
    old = ReferencePixelFlags(ctx.config).measure(ctx)
    assert set(new) == set(old) == {c.name for c in PLUGINS["PixelFlags"].columns(ctx.config)}
    for k in old:
        np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    assert any(new[k].any() for k in new if k != "pixelFlags_offimage")  # some plane is set somewhere


def test_pixel_flags_do_not_depend_on_threads(contexts):
    ctx, _ = contexts
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = PLUGINS["PixelFlags"](ctx.config).measure(ctx)
        numba.set_num_threads(2)
        two = PLUGINS["PixelFlags"](ctx.config).measure(ctx)
    finally:
        numba.set_num_threads(before)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])
