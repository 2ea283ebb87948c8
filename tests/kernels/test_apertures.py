"""Compiled circular apertures (sinc, naive, exact) against the numpy plugin they replaced, and thread counts."""

import dataclasses

import numba
import numpy as np
import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.kernels.apertures import exact_apertures
from forcedphot.plugins import PLUGINS
from forcedphot.plugins.aperture import aperture_name
from forcedphot.plugins.aperture_exact import pixel_overlap
from forcedphot.kernels.aperture_sinc import sinc_coefficients, sinc_width
from tests.kernels.context import quantum_context
from tests.kernels.reference_apertures import ReferenceCircularApertureFlux
from tests.kernels.reference_apertures import sinc_coefficients as fft_sinc_coefficients

UND = "undeblended_"
# the numpy plugins flag invalid pixels only: compare with NO_DATA as the only excluded plane (the flags
# of BAD and SAT pixels are checked against numpy loops in test_excluded_pixels.py; fluxes do not change)
NO_DATA = dict(psf_bad_mask_planes=("NO_DATA",))
CONFIGS = {
    "sinc": ForcedPhotConfig(**NO_DATA),
    "naive": ForcedPhotConfig(aperture_method="naive", **NO_DATA),
    "exact": ForcedPhotConfig(aperture_method="exact", **NO_DATA),
    "exact-linear": ForcedPhotConfig(aperture_method="exact", aperture_error_weights="linear", **NO_DATA),
}


@pytest.fixture(scope="module")
def contexts(tiny_repo_master):
    """Quantum 2 of band i: blends, a NO_DATA box (footprints with invalid pixels) and coadd edges."""
    ctx, plain = quantum_context(tiny_repo_master, band="i", index=2)
    assert (ctx.ref["parent"] != 0).sum() >= 10 and ctx.pixels.valid.min() == 0
    return ctx, plain


def footprints_with_invalid_pixels(ctx) -> np.ndarray:
    """Sources whose footprint holds invalid pixels (the numpy plugin added heavy - B there)."""
    used, span_off, span_y, span_x0, span_x1, _, _ = ctx.pixels.fp
    valid = ctx.pixels.valid
    h, w = valid.shape
    out = np.zeros(ctx.n, bool)
    for i in range(ctx.n):
        f = used[i]
        for s in range(span_off[f], span_off[f + 1]) if f >= 0 else ():
            y, x0, x1 = span_y[s], max(span_x0[s], 0), min(span_x1[s], w - 1)
            if 0 <= y < h and x1 >= x0 and not valid[y, x0:x1 + 1].all():
                out[i] = True
    return out


def assert_agree(new: dict, old: dict, lenient: np.ndarray, what: str) -> None:
    """Fluxes within 1e-3 sigma, errors 1e-6, flags equal; ``lenient`` sources may drop a flag (and NaN).

    The numpy plugin added heavy - B on invalid footprint pixels, which read 0 now: an aperture
    that misses those pixels no longer inherits a non-finite value, so its flag may go.
    """
    for k, b in old.items():
        a = np.asarray(new[k])
        if a.dtype == bool:
            changed = a != b
            assert not (changed & ~lenient).any(), (what, k, np.flatnonzero(changed & ~lenient))
            assert not (a & ~b).any(), (what, k)  # a flag may only go, never appear
            continue
        fa, fb = np.isfinite(a), np.isfinite(b)
        assert np.array_equal(fa & ~lenient, fb & ~lenient), (what, k)
        both = fa & fb
        if k.endswith("FluxErr"):
            np.testing.assert_allclose(a[both], b[both], rtol=1e-6, err_msg=f"{what} {k}")
        elif k.endswith("Flux"):
            err = old[k + "Err"][both]
            assert np.all(np.abs(a[both] - b[both]) <= 1e-3 * err), (what, k, np.max(np.abs(a[both] - b[both]) / err))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_apertures_equal_the_numpy_plugin(contexts, method):
    ctx, plain = contexts
    config = CONFIGS[method]
    assert "CircularApertureFlux" in ctx.undeblended
    new = PLUGINS["CircularApertureFlux"](config).measure(ctx)
    lenient = footprints_with_invalid_pixels(ctx)
    assert lenient.any()
    old = ReferenceCircularApertureFlux(config).measure(ctx)
    assert_agree(new, old, lenient, f"{method} deblended")
    old_u = ReferenceCircularApertureFlux(config).measure(plain)
    assert_agree({k[len(UND):]: v for k, v in new.items() if k.startswith(UND)}, old_u, np.zeros(ctx.n, bool),
                 f"{method} undeblended")
    assert set(new) == set(old) | {UND + k for k in old}
    # the quantum exercises truncated apertures and (sinc) coefficients on invalid pixels
    assert new["ap12Flux_flag_apertureTruncated"].any()
    if method == "sinc":
        assert (new["ap12Flux_flag_sincCoeffsTruncated"] & ~new["ap12Flux_flag_apertureTruncated"]).any()


@pytest.mark.parametrize("method", ["sinc", "naive", "exact"])
def test_a_source_alone_on_its_image(contexts, method):
    """Deblended sums over B plus the own footprint's corrections equal sums over the image of the source alone."""
    ctx, _ = contexts
    config = CONFIGS[method]
    plugin = PLUGINS["CircularApertureFlux"](config)
    new = plugin.measure(ctx)
    pix = ctx.pixels
    used, span_off, span_y, span_x0, span_x1, val_off, values = pix.fp
    h, w = pix.image.shape
    blended = np.flatnonzero((ctx.ref["parent"] != 0) & ctx.usable)
    chosen = np.r_[blended[:4], np.flatnonzero(footprints_with_invalid_pixels(ctx) & ctx.usable)[:3]]
    for i in chosen:
        alone = pix.image.copy()
        f, k = used[i], val_off[used[i]]
        for s in range(span_off[f], span_off[f + 1]):
            for x in range(span_x0[s], span_x1[s] + 1):
                if 0 <= span_y[s] < h and 0 <= x < w and pix.valid[span_y[s], x]:
                    alone[span_y[s], x] = values[k + x - span_x0[s]]
            k += span_x1[s] - span_x0[s] + 1
        one = dataclasses.replace(ctx, pixels=dataclasses.replace(pix, image=alone, fp=pix.fp_none), undeblended=(),
                                  cache=dict(ctx.cache))
        got = plugin.measure(one)
        for r in config.aperture_radii:
            name = aperture_name(r) + "Flux"
            a, b = new[name][i], got[name][i]
            assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9 * max(abs(b), new[name + "Err"][i]), (i, name)


@pytest.mark.parametrize("method", ["sinc", "naive", "exact"])
def test_apertures_do_not_depend_on_the_thread_count(contexts, method):
    ctx, _ = contexts
    plugin = PLUGINS["CircularApertureFlux"](CONFIGS[method])
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


@pytest.mark.parametrize("radius", [3.0, 4.5, 6.0, 9.0, 12.0])
def test_sinc_coefficients_equal_the_fft_shift(radius):
    rng = np.random.default_rng(int(radius * 10))
    fx = np.r_[0.0, 0.5, -0.5, rng.uniform(-0.5, 0.5, 20)]
    fy = np.r_[0.0, -0.5, 0.5, rng.uniform(-0.5, 0.5, 20)]
    c = sinc_coefficients(radius, fx, fy)
    assert c.shape == (fx.size, sinc_width(radius), sinc_width(radius))
    np.testing.assert_allclose(c, fft_sinc_coefficients(radius, fx, fy), rtol=0, atol=1e-13)


def test_exact_apertures_with_invalid_pixels_equal_a_pixel_loop():
    """exact_apertures (the bench's kernel): invalid pixels (NaN, flagged) count as weight, not flux."""
    rng = np.random.default_rng(3)
    h, w = 40, 52
    image = rng.normal(50.0, 5.0, (h, w)).astype(np.float32)
    variance = rng.uniform(1.0, 3.0, (h, w)).astype(np.float32)
    valid = np.ones((h, w), np.uint8)
    bad = rng.uniform(size=(h, w)) < 0.05
    image[bad] = np.nan
    valid[bad] = 0
    x = np.r_[rng.uniform(0, w - 1, 12), 0.0, w - 1.0, 25.5]
    y = np.r_[rng.uniform(0, h - 1, 12), h - 1.0, 0.2, 19.5]
    cx, cy = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    radii = np.array([2.5, 3.0, 7.0])
    for squared in (True, False):
        flux, var, invalid = exact_apertures(image, variance, valid, cx, cy, x - cx, y - cy, radii, squared)
        yy, xx = np.mgrid[-12:h + 12, -12:w + 12]
        on = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        good = np.zeros(on.shape, bool)
        good[on] = valid[yy[on], xx[on]] == 1
        img = np.zeros(on.shape)
        img[good] = image[yy[good], xx[good]]
        vv = np.zeros(on.shape)
        vv[good] = variance[yy[good], xx[good]]
        for k, r in enumerate(radii):
            for s in range(x.size):
                wt = pixel_overlap(xx - x[s], yy - y[s], r)
                np.testing.assert_allclose(flux[s, k], (wt * img).sum(), rtol=1e-10, atol=1e-9)
                np.testing.assert_allclose(var[s, k], ((wt * wt if squared else wt) * vv).sum(), rtol=1e-10, atol=1e-9)
                np.testing.assert_allclose(invalid[s, k], (wt * ~good).sum(), rtol=1e-9, atol=1e-12)
