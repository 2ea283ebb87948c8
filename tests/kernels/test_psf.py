"""The compiled PSF images and PsfFlux against their numpy references (tests/kernels/reference_psf.py)."""

import dataclasses

import numba
import numpy as np
import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.plugins.psf_flux import PsfFlux
from forcedphot.psf import PsfGrid
from tests.kernels.context import quantum_context
from tests.kernels.reference_psf import ReferencePsfFlux, reference_images_at

FLAGS = ("psfFlux_flag", "psfFlux_flag_noGoodPixels", "psfFlux_flag_edge", "psfFlux_flag_badPixels",
         "psfFlux_npixels")


@pytest.fixture(scope="module")
def blended(tiny_repo_master):
    """Patch 2 in r: blends (own heavy footprints under noise replacement), a NO_DATA box, edges."""
    ctx, plain = quantum_context(tiny_repo_master, band="r", index=2)
    assert "PsfFlux" in ctx.undeblended and (ctx.ref["parent"] != 0).sum() >= 20
    assert (ctx.pixels.valid == 0).sum() > 0
    return ctx, plain


def _reference(ctx, plain, config=None, **kw):
    config = config or ctx.config
    out = ReferencePsfFlux(config, **kw).measure(ctx)
    out.update({f"undeblended_{k}": v for k, v in ReferencePsfFlux(config, **kw).measure(plain).items()})
    return out


def _assert_agree(new, old, prefixes=("", "undeblended_")):
    assert set(new) == {p + k for p in prefixes for k in old if not k.startswith("undeblended_")}
    for p in prefixes:
        f, e = new[p + "psfFlux"], new[p + "psfFluxErr"]
        of, oe = old[p + "psfFlux"], old[p + "psfFluxErr"]
        assert np.array_equal(np.isfinite(f), np.isfinite(of))
        ok = np.isfinite(of)
        assert ok.sum() > 50
        assert np.all(np.abs(f[ok] - of[ok]) <= 1e-3 * oe[ok])
        np.testing.assert_allclose(e[ok], oe[ok], rtol=1e-6)
        for c, rtol in (("psfFlux_area", 1e-6), ("psfFlux_chi2", 1e-6)):
            np.testing.assert_allclose(new[p + c][ok], old[p + c][ok], rtol=rtol, atol=1e-6)
        for c in FLAGS:
            assert new[p + c].dtype == old[p + c].dtype
            np.testing.assert_array_equal(new[p + c], old[p + c], err_msg=p + c)


def test_psf_images_equal_the_fourier_phase_ramp(blended):
    ctx, _ = blended
    psf = ctx.coadd.psf
    rng = np.random.default_rng(3)
    b = ctx.coadd.bbox
    x = rng.uniform(b.min_x - 40, b.max_x + 40, 300)  # beyond the grid too (clamped)
    y = rng.uniform(b.min_y - 40, b.max_y + 40, 300)
    x[:4] = np.floor(x[:4])  # zero offsets along x, y, both
    y[2:6] = np.floor(y[2:6])
    x[6], y[7] = np.floor(x[6]) + 0.5, np.floor(y[7]) - 0.5  # half-pixel offsets
    got = psf.images_at(x, y)
    want = reference_images_at(psf, x, y)
    assert np.abs(got - want).max() <= 1e-14 * np.abs(want).max()
    np.testing.assert_allclose(got.sum(axis=(1, 2)), want.sum(axis=(1, 2)), rtol=1e-13)


def test_psf_images_of_a_synthetic_grid():
    rng = np.random.default_rng(0)
    for k in (3, 9, 33):
        images = rng.random((2, 3, k, k))
        grid = PsfGrid([0.0, 50.0, 100.0], [0.0, 80.0], images)
        x, y = rng.uniform(-20, 120, 50), rng.uniform(-20, 100, 50)
        x[0], y[0] = 50.0, 80.0  # on a node, no shift: the node image itself
        got, want = grid.images_at(x, y), reference_images_at(grid, x, y)
        assert np.abs(got - want).max() <= 1e-14 * np.abs(want).max()
        assert np.array_equal(got[0], images[1, 1])


def test_psf_flux_matches_the_numpy_reference_on_blends(blended):
    ctx, plain = blended
    new = PsfFlux(ctx.config).measure(ctx)  # deblended and undeblended from one pass
    _assert_agree(new, _reference(ctx, plain))
    alone = PsfFlux(ctx.config).measure(plain)  # the undeblended context measured on its own
    assert all(np.array_equal(alone[k], new["undeblended_" + k], equal_nan=True) for k in alone)


def test_invalid_footprint_pixels_read_zero(blended):
    """The old code added heavy - noise to zeroed invalid pixels: a NaN heavy value there made the fit
    NaN. Now such a pixel reads 0 (no weight either way); those sources are still flagged (edge)."""
    ctx, plain = blended
    new = PsfFlux(ctx.config).measure(ctx)
    raw = ReferencePsfFlux(ctx.config, invalid_reads_zero=False).measure(ctx)
    changed = np.isnan(raw["psfFlux"]) & np.isfinite(new["psfFlux"])
    assert changed.sum() > 0
    assert new["psfFlux_flag"][changed].all() and new["psfFlux_flag_edge"][changed].all()
    same = ~changed
    np.testing.assert_array_equal(np.isfinite(new["psfFlux"][same]), np.isfinite(raw["psfFlux"][same]))
    for c in FLAGS:
        np.testing.assert_array_equal(new[c], raw[c])


def test_other_bad_mask_planes(blended):
    ctx, plain = blended
    config = dataclasses.replace(ctx.config, psf_bad_mask_planes=("NO_DATA", "BAD", "SAT", "CR"))
    bits = ctx.coadd.mask_planes.bitmask("BAD", "SAT", "CR")
    assert (ctx.coadd.mask & bits).any()
    new = PsfFlux(config).measure(ctx)
    old = _reference(ctx, plain, config)
    _assert_agree(new, old)
    no_data = dataclasses.replace(ctx.config, psf_bad_mask_planes=("NO_DATA",))  # the default before BAD, SAT
    assert (new["psfFlux_npixels"] < PsfFlux(no_data).measure(ctx)["psfFlux_npixels"]).any()
    none = dataclasses.replace(ctx.config, psf_bad_mask_planes=())
    _assert_agree(PsfFlux(none).measure(ctx), _reference(ctx, plain, none))


def test_without_noise_replacement(tiny_repo_master):
    ctx, _ = quantum_context(tiny_repo_master, band="i", index=1, noise=False,
                             config=ForcedPhotConfig(noise_replacement=False))
    new = PsfFlux(ctx.config).measure(ctx)
    old = _reference(ctx, ctx)
    _assert_agree(new, old)
    for k in old:
        if not k.startswith("undeblended_"):
            assert np.array_equal(new[k], new["undeblended_" + k], equal_nan=True)


def test_bit_identical_for_any_thread_count(blended):
    ctx, _ = blended
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = PsfFlux(ctx.config).measure(ctx)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = PsfFlux(ctx.config).measure(ctx)
    finally:
        numba.set_num_threads(before)
    assert one.keys() == two.keys()
    for k in one:
        assert one[k].dtype == two[k].dtype and one[k].tobytes() == two[k].tobytes(), k
    psf = ctx.coadd.psf
    x, y = ctx.x[ctx.usable], ctx.y[ctx.usable]
    try:
        numba.set_num_threads(1)
        a = psf.images_at(x, y)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        b = psf.images_at(x, y)
    finally:
        numba.set_num_threads(before)
    assert a.tobytes() == b.tobytes()


def _gaussian_grid(ctx, cov, k=33):
    """A PSF grid whose every node is the pixel-sampled Gaussian of covariance (xx, yy, xy), unit sum."""
    xx, yy, xy = cov
    r = np.arange(k) - k // 2
    dx, dy = np.meshgrid(r, r)
    det = xx * yy - xy * xy
    g = np.exp(-0.5 * (yy * dx**2 - 2 * xy * dx * dy + xx * dy**2) / det)
    b = ctx.coadd.bbox
    nodes_x, nodes_y = np.array([b.min_x, b.max_x], float), np.array([b.min_y, b.max_y], float)
    return PsfGrid(nodes_x, nodes_y, np.broadcast_to(g / g.sum(), (2, 2, k, k)).copy())


@pytest.mark.parametrize("cov", [(4.0, 4.0, 0.0), (5.0, 2.5, 1.2)])
def test_psf_area_of_an_analytic_gaussian_psf(blended, cov):
    """psfFlux_area = (sum P)^2 / sum P^2 is 4 pi sigma^2 for a Gaussian PSF (4 pi sqrt(det C) elliptical),
    at any sub-pixel position (the shifted PSF image keeps both sums), for every source with a full box."""
    ctx, _ = blended
    gaussian = dataclasses.replace(ctx, coadd=dataclasses.replace(ctx.coadd, psf=_gaussian_grid(ctx, cov)))
    out = PsfFlux(ctx.config).measure(gaussian)
    full = (out["psfFlux_npixels"] == 33 * 33) & ~out["psfFlux_flag_edge"] & ~out["psfFlux_flag_badPixels"]
    assert full.sum() >= 20
    xx, yy, xy = cov
    np.testing.assert_allclose(out["psfFlux_area"][full], 4 * np.pi * np.sqrt(xx * yy - xy * xy), rtol=1e-9)
    # a clipped box has a smaller effective area (the sums run over the fitted pixels only)
    clipped = out["psfFlux_flag_edge"] & np.isfinite(out["psfFlux_area"])
    assert clipped.sum() >= 5
    assert (out["psfFlux_area"][clipped] < 4 * np.pi * np.sqrt(xx * yy - xy * xy) * (1 + 1e-6)).all()
