"""Noise replacement from the spans: equal to the old per-pixel NoiseReplacer, chunked draws, any thread count."""

import numba
import numpy as np
import pytest

from forcedphot import noise
from forcedphot.errors import InputError
from forcedphot.kernels.background import clipped_stats_flat
from forcedphot.noise import HeavyFootprints, NoiseReplacer
from forcedphot.plan import plan_quanta
from forcedphot.repository import Repository
from forcedphot.task import ForcedPhotCoaddTask
from tests.kernels.noise_corrections import NoiseCorrections, footprint_pixels
from tests.kernels.reference_clipped import clipped_stats_1d as reference_stats
from tests.kernels.reference_noise import reference_noise_image


@pytest.fixture(scope="module")
def blended_inputs(tiny_repo_master):
    repo = Repository(tiny_repo_master)
    task = ForcedPhotCoaddTask(repo)
    quantum = [q for q in plan_quanta(repo, bands=["i"]) if q.ready][1]
    inputs = task.attach_footprints(quantum)
    assert (inputs.ref["parent"] != 0).sum() >= 10  # a quantum with blends
    d = quantum.data_id
    seed = task.make_id_factory(d).catalog_id(d.tract, d.patch) * task.config.noise_seed_multiplier
    return inputs, seed


def _replacer(inputs, seed, **kw):
    c = inputs.coadd
    return NoiseReplacer(c.image, (c.bbox.min_x, c.bbox.min_y), inputs.ref["id"], inputs.ref["parent"],
                         inputs.ref["footprints"], seed=seed, **kw)


def test_consecutive_draws_continue_one_stream():
    big = np.random.default_rng(np.random.PCG64(77)).standard_normal(100_003)
    rng = np.random.default_rng(np.random.PCG64(77))
    parts = [rng.standard_normal(n) for n in (1, 4096, 17, 0, 50_000, 45_889)]
    np.testing.assert_array_equal(np.concatenate(parts), big)


@pytest.mark.parametrize("chunk", [1 << 22, 64, 1])
def test_noise_image_equals_the_per_pixel_replacer(blended_inputs, monkeypatch, chunk):
    inputs, seed = blended_inputs
    monkeypatch.setattr(noise, "DRAW_CHUNK", chunk)  # 64, 1: many chunks, footprints larger than a chunk
    r = _replacer(inputs, seed, offset=0.25)
    c = inputs.coadd
    base, mean, sigma = reference_noise_image(c.image, (c.bbox.min_x, c.bbox.min_y), inputs.ref["footprints"],
                                              seed=seed, offset=0.25)
    assert (r.mean, r.sigma) == (mean, sigma)  # bit for bit
    np.testing.assert_array_equal(r.base, base)
    assert r.base.dtype == np.float32
    # the only arrays the replacer holds: B and the footprint each source uses (no per-pixel arrays)
    assert {k for k, v in vars(r).items() if isinstance(v, np.ndarray)} == {"base", "used"}


def test_noise_image_is_the_same_for_any_thread_count(blended_inputs):
    inputs, seed = blended_inputs
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _replacer(inputs, seed)
        numba.set_num_threads(2)
        two = _replacer(inputs, seed)
    finally:
        numba.set_num_threads(before)
    assert (one.mean, one.sigma) == (two.mean, two.sigma)
    np.testing.assert_array_equal(one.base, two.base)


def test_sparse_corrections_of_the_numpy_references(blended_inputs):
    inputs, seed = blended_inputs
    r = _replacer(inputs, seed)
    rows = np.flatnonzero(r.used >= 0)[:20]
    fp = inputs.ref["footprints"]
    c = inputs.coadd
    # sum of delta = heavy - B over each used footprint's on-image pixels, against a direct loop
    ones = lambda o, dx, dy: np.ones(o.size)  # noqa: E731
    got = NoiseCorrections(r).weighted_correction(rows, np.zeros(rows.size), np.zeros(rows.size), ones)
    value_offsets, values = fp.heavy()
    for k, row in enumerate(rows):
        f = r.used[row]
        total, p = 0.0, value_offsets[f]
        for s in range(fp.span_offsets[f], fp.span_offsets[f + 1]):
            for x in range(fp.span_x0[s], fp.span_x1[s] + 1):
                ly, lx = fp.span_y[s] - c.bbox.min_y, x - c.bbox.min_x
                if 0 <= ly < r.base.shape[0] and 0 <= lx < r.base.shape[1]:
                    total += float(values[p]) - float(r.base[ly, lx])
                p += 1
        assert got[k] == pytest.approx(total, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_image_clipped_stats_equal_numpy_bit_for_bit(dtype):
    rng = np.random.default_rng(5)
    for n in (2, 3, 8, 129, 1000, 70_001, 300_000):
        v = np.r_[rng.normal(0.3, 2.0, n), rng.uniform(40, 400, n // 40), [np.nan, np.inf, -np.inf]].astype(dtype)
        assert clipped_stats_flat(v) == reference_stats(v), n
    ties = np.round(rng.normal(0, 3, 50_000)).astype(dtype)  # many equal values, -0.0 and 0.0
    assert clipped_stats_flat(ties) == reference_stats(ties)
    assert np.isnan(clipped_stats_flat(np.array([1.0, np.nan], dtype))).all()


def test_footprint_checks_work_from_the_spans():
    offsets = np.array([0, 2, 2, 3])
    fp = HeavyFootprints(has=np.array([True, False, True]), span_offsets=offsets, span_y=np.array([5, 6, 9]),
                         span_x0=np.array([1, 3, 0]), span_x1=np.array([2, 3, 1]), value_offsets=np.array([0, 3, 3, 5]),
                         values=np.zeros(5, np.float32), bbox=np.array([[1, 5, 3, 6], [0, 0, 0, 0], [0, 9, 1, 9]]))
    np.testing.assert_array_equal(fp.span_pixels(), np.bincount(footprint_pixels(fp)[0], minlength=3))
    fp.check(np.array([10, 11, 12]), "here")
    fp.bbox[2] = [1, 9, 1, 9]  # span (9, 0..1) now starts left of its box
    with pytest.raises(InputError, match="outside their bounding box for ids \\[12\\]"):
        fp.check(np.array([10, 11, 12]), "here")
