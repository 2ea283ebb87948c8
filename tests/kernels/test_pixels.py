"""forcedphot.kernels.pixels: a source's own heavy values put into square and rectangular stamps."""

import numpy as np

from forcedphot.kernels.pixels import insert_footprint, insert_footprint_box


def _footprint():
    """One footprint (source 0) of three spans, some of them reaching past the stamps below."""
    spans = [(10, 3, 9), (11, 5, 6), (14, 0, 12)]  # (y, x0, x1), coadd-local
    values = np.arange(1.0, 1 + sum(x1 - x0 + 1 for _, x0, x1 in spans), dtype=np.float32)
    i32 = lambda a: np.array(a, np.int32)  # noqa: E731
    fp = (np.array([0], np.int64), np.array([0, len(spans)], np.int64), i32([s[0] for s in spans]),
          i32([s[1] for s in spans]), i32([s[2] for s in spans]), np.array([0, values.size], np.int64), values)
    truth = {}
    k = 0
    for y, x0, x1 in spans:
        for x in range(x0, x1 + 1):
            truth[(y, x)] = values[k]
            k += 1
    return fp, truth


def _expected(truth, cy, cx, hy, hx, ok, zero_is_ok):
    out = np.full((2 * hy + 1, 2 * hx + 1), -1.0)
    for (y, x), v in truth.items():
        j, i = y - cy + hy, x - cx + hx
        if 0 <= j <= 2 * hy and 0 <= i <= 2 * hx and (ok[j, i] != 0) != zero_is_ok:
            out[j, i] = v
    return out


def test_rectangular_stamps_take_the_footprint_values_where_ok():
    fp, truth = _footprint()
    rng = np.random.default_rng(3)
    for cy, cx, hy, hx in ((12, 6, 2, 4), (12, 6, 1, 6), (11, 2, 3, 1), (13, 8, 2, 2)):
        ok = rng.integers(0, 3, (2 * hy + 1, 2 * hx + 1)).astype(np.uint8)
        for zero_is_ok in (False, True):
            img = np.full(ok.shape, -1.0)
            insert_footprint_box(fp, 0, cy, cx, hy, hx, img, ok, zero_is_ok)
            np.testing.assert_array_equal(img, _expected(truth, cy, cx, hy, hx, ok, zero_is_ok))
        if hy == hx:  # the square form is the rectangular one
            img = np.full(ok.shape, -1.0)
            insert_footprint(fp, 0, cy, cx, hy, img, ok)
            np.testing.assert_array_equal(img, _expected(truth, cy, cx, hy, hx, ok, False))
    none = (np.array([-1], np.int64),) + fp[1:]
    img = np.full((3, 5), -1.0)
    insert_footprint_box(none, 0, 12, 6, 1, 2, img, np.ones((3, 5), np.uint8))
    assert (img == -1).all()  # no footprint: nothing written
