import numpy as np

from forcedphot.footprint import mask_to_spans, spans_npix, spans_to_pixels


def test_spans_round_trip_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((13, 17)) < 0.4
        y, x0, x1 = mask_to_spans(m, 100, -5)
        assert spans_npix(x0, x1) == m.sum()
        ys, xs = spans_to_pixels(y, x0, x1)
        back = np.zeros_like(m)
        back[ys + 5, xs - 100] = True
        assert (back == m).all()
        # span order equals row-major order of the mask (the order of heavy values)
        ry, rx = np.nonzero(m)
        assert (ys + 5 == ry).all() and (xs - 100 == rx).all()


def test_owned_pixels_of_many_footprints():
    from forcedphot.footprint import spans_to_owned_pixels

    offsets = np.array([0, 2, 2, 3])  # three footprints, the middle one empty
    owner, ys, xs = spans_to_owned_pixels(offsets, np.array([5, 6, 9]), np.array([1, 3, 0]), np.array([2, 3, 1]))
    assert owner.tolist() == [0, 0, 0, 2, 2]
    assert list(zip(ys.tolist(), xs.tolist())) == [(5, 1), (5, 2), (6, 3), (9, 0), (9, 1)]
