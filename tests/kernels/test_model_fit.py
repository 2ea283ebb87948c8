"""Unforced reference model fits (forcedphot.kernels.model_fit, forcedphot.refmodels) against their
reference (tests/kernels/reference_model_fit.py) and against galaxies rendered by GalSim."""

from __future__ import annotations

import galsim
import numba
import numpy as np
import pytest

from forcedphot.ingest.refmeasure import adaptive_shapes
from forcedphot.kernels import model_fit as mf
from forcedphot.kernels.kron_radius import kron_radii
from forcedphot.kernels.mixtures import fit_psf_mixtures
from forcedphot.refmodels import PROFILES, REF_COLUMNS, fit_reference_models
from tests.kernels import reference_model_fit as ref

PSF_K = 33


def psf_of(kind: str):
    if kind == "gauss":
        return galsim.Gaussian(fwhm=3.5)
    return galsim.Moffat(beta=3.5, fwhm=4.0).shear(g1=0.03, g2=-0.02)


def psf_mixture(psf):
    """The PSF's 3-Gaussian mixture fitted to its pixel-integrated image (as PsfGrid.node_mixtures)."""
    img = psf.drawImage(nx=PSF_K, ny=PSF_K, scale=1.0).array
    amp, centre, cov, _, _, _, status = fit_psf_mixtures((img / img.sum())[None], 3)
    assert status[0] != 1
    m = amp.shape[1]
    return amp, np.broadcast_to(centre[:, None, :], (1, m, 2)).copy(), cov


def galaxy(n, r_e, g, beta_deg):
    """A GalSim Sersic galaxy of untruncated half-light radius r_e (pixels), truncated as Rubin's lux
    (n = 1, at 4 r_e) or luv (n = 4, at 8 r_e), sheared by reduced shear g (area kept: det radius r_e)."""
    trunc = 4.0 if n == 1 else 8.0
    gal = galsim.Sersic(n, half_light_radius=r_e, trunc=trunc * r_e, flux_untruncated=True, flux=1.0)
    return gal.shear(g=g, beta=beta_deg * galsim.degrees) if g > 0 else gal


def render(gal, psf, size, x, y, snr, seed):
    """(image, variance, noiseless) of gal * psf (pixel-integrated) at pixel (x, y) with white noise
    giving optimal S/N ``snr``."""
    obj = galsim.Convolve(gal, psf)
    c = (size - 1) / 2
    clean = obj.drawImage(nx=size, ny=size, scale=1.0, offset=(x - c, y - c)).array.astype(np.float64)
    sigma = np.sqrt(np.sum(clean ** 2)) / snr
    noisy = clean + np.random.default_rng(seed).normal(0.0, sigma, clean.shape)
    return noisy.astype(np.float32), np.full(clean.shape, sigma ** 2, np.float32), clean


def reference_inputs(image, variance, x, y, psf=None):
    """The reference shape (adaptive moments; the PSF's where they fail) and Kron radius, as ingest
    measures them."""
    valid = np.ones(image.shape, np.uint8)
    m, failed = adaptive_shapes(image, variance, valid, np.array([x]), np.array([y]))
    if failed[0]:
        assert psf is not None
        m[0] = ref.mat(ref.psf_moments(*(a[0] for a in psf)))
    r, status = kron_radii(image, valid, np.array([x]), np.array([y]), m, n_sigma=6.0)
    shape = np.array([[m[0, 0, 0], m[0, 1, 1], m[0, 0, 1]]])
    return shape, r


def fit_one(image, variance, x, y, psf, **kw):
    shape, kron = reference_inputs(image, variance, x, y, psf)
    return fit_reference_models(image, variance, np.ones(image.shape, bool), psf, [x], [y], shape, kron,
                                details=True, **kw), shape, kron


def ellipse_figures(q):
    """(determinant radius, |g| reduced shear, position angle in degrees) of Q (xx, yy, xy)."""
    m = np.array([[q[0], q[2]], [q[2], q[1]]])
    w, v = np.linalg.eigh(m)
    a, b = np.sqrt(w[1]), np.sqrt(w[0])
    return np.sqrt(a * b), (a - b) / (a + b), np.degrees(np.arctan2(v[1, 1], v[0, 1])) % 180


# ---------------------------------------------------------------------------------------------
# parametrisation and regions


def test_parameters_round_trip_and_derivatives():
    rng = np.random.default_rng(3)
    q = np.empty(3)
    t = np.empty((3, 3))
    for _ in range(20):
        p = np.array([rng.normal(0, 0.8), rng.normal(0, 0.8), rng.normal(1, 1)])
        if rng.random() < 0.2:
            p[:2] *= 1e-6  # the small-|eta| series
        mf._quad(p[0], p[1], p[2], q, t)
        back = np.empty(3)
        assert mf._params(q[0], q[1], q[2], back)
        np.testing.assert_allclose(back, p, atol=1e-9)
        assert np.isclose((q[0] * q[1] - q[2] ** 2) ** 0.25, np.exp(p[2]))
        a, b = np.sqrt(np.linalg.eigvalsh(ref.mat(q)))
        assert np.isclose(np.log(b / a), np.hypot(p[0], p[1]))  # |eta| = ln(a/b)
        for k in range(3):  # dQ/dtheta against central differences
            h = 1e-6
            qp, qm, tt = np.empty(3), np.empty(3), np.empty((3, 3))
            pp, pm = p.copy(), p.copy()
            pp[k] += h
            pm[k] -= h
            mf._quad(*pp, qp, tt)
            mf._quad(*pm, qm, tt)
            np.testing.assert_allclose(t[:, k], (qp - qm) / (2 * h), rtol=1e-6, atol=1e-8 * np.abs(q).max())


def test_regions_match_the_reference():
    rng = np.random.default_rng(11)
    for case in range(40):
        pm = np.array([rng.uniform(1, 4), rng.uniform(1, 4), 0.0])
        pm[2] = rng.uniform(-0.5, 0.5) * np.sqrt(pm[0] * pm[1])
        shape = pm + np.array([rng.uniform(0, 30), rng.uniform(0, 30), 0.0])
        shape[2] += rng.uniform(-0.5, 0.5) * np.sqrt((shape[0] - pm[0]) * (shape[1] - pm[1]))
        kron = [rng.uniform(0.5, 12), np.nan, -1.0][case % 3] if case % 5 else rng.uniform(2, 8)
        fp_area = [np.nan, rng.uniform(20, 3000)][case % 2]
        e0 = np.empty(3)
        flags = mf.initial_region(shape, kron, fp_area, pm, e0)
        want, which = ref.initial_region(shape, kron, fp_area, pm)
        np.testing.assert_allclose(e0, want, rtol=1e-12)
        assert bool(flags & mf.USED_PSF_AREA) == (which == "psf")
        assert bool(flags & mf.USED_FOOTPRINT_AREA) == (which == "footprint")
        d = ref.start(shape, pm)
        e1 = np.empty(3)
        mf.final_region(d, pm, e0, e1)
        np.testing.assert_allclose(e1, ref.final_region(d, pm, e0), rtol=1e-12)
        # the region's pixels, some masked and some off the image
        hw = (61, 57)
        x, y = rng.uniform(-5, 60), rng.uniform(-5, 65)
        image = rng.normal(size=hw).astype(np.float32)
        variance = rng.uniform(0.5, 2, hw).astype(np.float32)
        usable = (rng.random(hw) > 0.05).astype(np.uint8)
        px = np.empty((mf._capacity(e1), 4))
        n, good = mf.region_pixels(image, variance, usable, mf_no_fp(), 0, x, y, e1, px)
        sel = ref.region_mask(hw, x, y, e1) & (usable != 0)
        assert n == sel.sum()
        yy, xx = np.nonzero(sel)
        np.testing.assert_array_equal(np.sort(px[:n, 2]), np.sort(image[sel].astype(float)))
        np.testing.assert_allclose(np.sort(px[:n, 0]), np.sort(xx - x))
        inside = ref.lattice_count(x, y, e1)
        assert good == (n > 0 and inside - n <= 0.1 * inside)


def mf_no_fp():
    from forcedphot.kernels.pixels import no_footprints

    return no_footprints(1)


# ---------------------------------------------------------------------------------------------
# the fit against the reference


@pytest.mark.parametrize("n_sersic, r_e, g, psf_kind", [(1, 4.0, 0.3, "gauss"), (4, 3.0, 0.2, "moffat")])
def test_fit_matches_the_reference(n_sersic, r_e, g, psf_kind):
    psf = psf_of(psf_kind)
    size = 71
    x, y = 35.3, 34.8
    image, variance, _ = render(galaxy(n_sersic, r_e, g, 30.0), psf, size, x, y, 80.0, 5)
    variance = variance * np.random.default_rng(2).uniform(0.8, 1.2, variance.shape).astype(np.float32)
    mix = psf_mixture(psf)
    out, shape, kron = fit_one(image, variance, x, y, mix)
    want = ref.fit_source(image, variance, np.ones(image.shape, np.uint8), x, y, shape[0], kron[0], np.nan,
                          tuple(a[0] for a in mix))
    assert not out["cModel_ref_flag"][0]
    np.testing.assert_allclose([out[f"cModel_region_{c}"][0] for c in ("xx", "yy", "xy")], want["e1"], rtol=2e-3)
    for k, stage in enumerate(("initial", "exp", "dev")):
        q, alpha, chi2 = want[stage]
        got = np.array([out[f"cModel_{stage}_{c}"][0] for c in ("xx", "yy", "xy")])
        scale = np.sqrt(q[0] * q[1])
        np.testing.assert_allclose(got, q, rtol=0, atol=2e-3 * scale)
        assert np.isclose(out["flux"][0, k], alpha, rtol=1e-3)
        # a minimum of the same objective: never worse than the reference's, by more than rounding
        assert out["chi2"][0, k] <= chi2 * (1 + 1e-6) + 1e-6
        assert out["chi2"][0, k] >= chi2 * (1 - 1e-3)
    # the shared-ellipse rule decided as the reference decides it (the galaxy's own profile keeps its fit)
    own = "exp" if n_sersic == 1 else "dev"
    assert want["shared"] == ("dev" if n_sersic == 1 else "exp")
    for k, stage in ((1, "exp"), (2, "dev")):
        assert bool(out["stage_flags"][0, k] & mf.SHARED) == (stage == want["shared"])
    np.testing.assert_allclose(want[own][0], want["own"][own])


def test_the_shared_ellipse_rule():
    """The worse of exp and dev by more than SHARE_DCHI2 takes the better one's ellipse (bit SHARED), its flux
    and chi2 untouched; within SHARE_DCHI2, or with a failed stage, each keeps its own."""
    def run(chi2_exp, chi2_dev, flags=(0, 0, 0)):
        ell = np.array([[1.0, 1.0, 0.0], [4.0, 3.0, 0.5], [16.0, 12.0, 2.0]])
        chi2 = np.array([50.0, chi2_exp, chi2_dev])
        sflags = np.array(flags, np.int32)
        mf.share_ellipse(ell, chi2, sflags)
        return ell, chi2, sflags

    ell, chi2, sflags = run(100.0, 100.0 + mf.SHARE_DCHI2 + 0.5)  # dev worse: exp's ellipse
    np.testing.assert_array_equal(ell[2], [4.0, 3.0, 0.5])
    np.testing.assert_array_equal(ell[1], [4.0, 3.0, 0.5])
    assert list(sflags) == [0, 0, mf.SHARED] and chi2[2] == 100.0 + mf.SHARE_DCHI2 + 0.5
    ell, _, sflags = run(100.0 + mf.SHARE_DCHI2 + 0.5, 100.0)  # exp worse: dev's ellipse
    np.testing.assert_array_equal(ell[1], [16.0, 12.0, 2.0])
    assert list(sflags) == [0, mf.SHARED, 0]
    for c_exp, c_dev, flags in ((100.0, 100.0 + mf.SHARE_DCHI2 - 0.5, (0, 0, 0)),
                                (100.0 + mf.SHARE_DCHI2 - 0.5, 100.0, (0, 0, 0)),
                                (100.0, 500.0, (0, mf.FAILED, 0)), (500.0, 100.0, (0, 0, mf.FAILED))):
        ell, _, sflags = run(c_exp, c_dev, flags)
        np.testing.assert_array_equal(ell[1:], [[4.0, 3.0, 0.5], [16.0, 12.0, 2.0]])
        assert list(sflags) == [0, *flags[1:]]


@pytest.mark.parametrize("n_sersic", [1, 4])
def test_a_galaxys_other_profile_takes_its_own_profiles_ellipse(n_sersic):
    """GalSim exp / dev galaxies at S/N 100: the other profile's own fit is far from the galaxy's (dev on exp
    ~2-4 r_e, exp on dev ~0.4-0.7 r_e) and worse by far more than SHARE_DCHI2, so it stores the galaxy's
    profile's ellipse; the galaxy's own profile keeps its fit (SHARED unset)."""
    psf = psf_of("moffat")
    r_e = 5.0
    size = int(2 * (6.5 * r_e + 12)) | 1
    x, y = size // 2 + 0.3, size // 2 - 0.2
    image, variance, _ = render(galaxy(n_sersic, r_e, 0.3, 40.0), psf, size, x, y, 100.0, 7)
    res, _, _ = fit_one(image, variance, x, y, psf_mixture(psf))
    own, other = (1, 2) if n_sersic == 1 else (2, 1)
    stages = {1: "exp", 2: "dev"}
    assert res["chi2"][0, other] - res["chi2"][0, own] > mf.SHARE_DCHI2
    assert res["stage_flags"][0, other] & mf.SHARED and not res["stage_flags"][0, own] & mf.SHARED
    assert not res["cModel_ref_flag"][0]
    q = {k: np.array([res[f"cModel_{stages[k]}_{c}"][0] for c in ("xx", "yy", "xy")]) for k in (1, 2)}
    np.testing.assert_array_equal(q[other], q[own])
    assert 0.85 < ellipse_figures(q[own])[0] / r_e < 1.05


# ---------------------------------------------------------------------------------------------
# validation on GalSim galaxies

CASES = [(n, r_e, g, beta, psf_kind) for n in (1, 4) for psf_kind in ("gauss", "moffat")
         for r_e, g, beta in ((2.5, 0.0, 0.0), (5.0, 0.3, 20.0), (10.0, 0.5, 110.0), (15.0, 0.2, 65.0))]


def validation_figures(snr):
    """{(n, r_e, g, psf): (radius ratio, g error, angle error, flux ratio)} of the matching stage."""
    out = {}
    for i, (n, r_e, g, beta, psf_kind) in enumerate(CASES):
        psf = psf_of(psf_kind)
        size = int(2 * (6.5 * r_e + 12)) | 1
        x, y = size // 2 + 0.3, size // 2 - 0.2
        image, variance, clean = render(galaxy(n, r_e, g, beta), psf, size, x, y, snr, 100 + i)
        res, _, _ = fit_one(image, variance, x, y, psf_mixture(psf))
        stage = "exp" if n == 1 else "dev"
        k = 1 if n == 1 else 2
        assert not res[f"cModel_{stage}_flag"][0] and not res["cModel_ref_flag"][0]
        q = [res[f"cModel_{stage}_{c}"][0] for c in ("xx", "yy", "xy")]
        r, gg, angle = ellipse_figures(q)
        dangle = ((angle - beta + 90) % 180 - 90) if g > 0 else 0.0
        out[(n, r_e, g, psf_kind)] = (r / r_e, gg - g, dangle, res["flux"][0, k] / clean.sum())
    return out


def test_galsim_galaxies_without_noise():
    """Truncated exp (GalSim Sersic n=1 cut at 4 r_e) and dev (n=4 cut at 8 r_e) galaxies, r_e 2.5-15 px,
    |g| <= 0.5, Gaussian and Moffat PSFs, noiseless: the systematic differences of the lux/luv mixtures.
    exp: radius, shear and flux to 1%; dev: the luv K8 mixture's best fit is smaller (its own half-light
    radius is 0.915 r_e): 3-12% low in radius, shear within 0.01, flux 0-6% low."""
    for key, (ratio, dg, dangle, fratio) in validation_figures(1e5).items():
        n, r_e, g, psf_kind = key
        if n == 1:
            assert abs(ratio - 1) < 0.01 and abs(dg) < 0.002 and abs(fratio - 1) < 0.01, (key, ratio, dg, fratio)
        else:
            assert 0.85 < ratio < 1.0 and abs(dg) < 0.01 and 0.93 < fratio < 1.0, (key, ratio, dg, fratio)
        assert abs(dangle) < 0.5, (key, dangle)


def test_galsim_galaxies_at_snr_100():
    """The same galaxies with white noise at optimal S/N 100 (one realisation each)."""
    for key, (ratio, dg, dangle, fratio) in validation_figures(100.0).items():
        n, r_e, g, psf_kind = key
        if n == 1:
            assert abs(ratio - 1) < 0.05 and abs(fratio - 1) < 0.05, (key, ratio, fratio)
        else:
            assert 0.8 < ratio < 1.05 and 0.88 < fratio < 1.06, (key, ratio, fratio)
        assert abs(dg) < 0.05, (key, dg)
        if g >= 0.2:
            assert abs(dangle) < 5.0, (key, dangle)


def test_stars_give_small_radii():
    rng = np.random.default_rng(9)
    for psf_kind in ("gauss", "moffat"):
        psf = psf_of(psf_kind)
        x, y = 30.0 + rng.uniform(-0.5, 0.5), 30.0 + rng.uniform(-0.5, 0.5)
        image, variance, _ = render(galsim.DeltaFunction(flux=1.0), psf, 61, x, y, 200.0, 4)
        res, _, _ = fit_one(image, variance, x, y, psf_mixture(psf))
        assert not res["cModel_ref_flag"][0]
        for stage in ("exp", "dev"):
            r = ellipse_figures([res[f"cModel_{stage}_{c}"][0] for c in ("xx", "yy", "xy")])[0]
            assert r < 0.4, (psf_kind, stage, r)  # the PSF's sigma is ~1.5 px


def test_faint_stars_are_points_and_small_faint_galaxies_stay_resolved():
    """The point test: stars at S/N 30 (40 noise realisations per PSF) end as points (trace of Q < 0.01 px^2;
    without the test their noise ellipses reach ~0.3 px^2, enough to lift forced CModel 2-3% above psfFlux),
    while exp galaxies of r_e 2.5 px (0.5" at 0.2"/px, PSF sigma ~1.5 px) at the same S/N keep their ellipse."""
    rng = np.random.default_rng(5)
    for psf_kind in ("gauss", "moffat"):
        psf, mix = psf_of(psf_kind), psf_mixture(psf_of(psf_kind))
        traces, points, radii = [], [], []
        for k in range(40):
            x, y = 30.0 + rng.uniform(-0.5, 0.5), 30.0 + rng.uniform(-0.5, 0.5)
            image, variance, _ = render(galsim.DeltaFunction(flux=1.0), psf, 61, x, y, 30.0, 100 + k)
            res, _, _ = fit_one(image, variance, x, y, mix)
            assert not res["cModel_ref_flag"][0]
            traces.append(max(res[f"cModel_{st}_xx"][0] + res[f"cModel_{st}_yy"][0] for st in ("exp", "dev")))
            points.append(bool(res["stage_flags"][0, 1] & mf.POINT))
            if k < 10:
                image, variance, _ = render(galaxy(1, 2.5, 0.2, 40.0), psf, 61, x, y, 30.0, 200 + k)
                res, _, _ = fit_one(image, variance, x, y, mix)
                radii.append(ellipse_figures([res[f"cModel_exp_{c}"][0] for c in ("xx", "yy", "xy")])[0] / 2.5)
                assert not res["stage_flags"][0, 1] & mf.POINT
        print(f"{psf_kind}: stars S/N 30 max trace {max(traces):.4f} px^2, point test used for {np.mean(points):.2f}; "
              f"galaxies r_e 2.5 px S/N 30 radius / r_e {np.min(radii):.2f}..{np.max(radii):.2f}")
        assert max(traces) < 0.01
        assert 0.7 < np.median(radii) < 1.3


def test_garbage_is_flagged():
    psf = psf_of("gauss")
    mix = psf_mixture(psf)
    size = 61
    image, variance, _ = render(galaxy(1, 4.0, 0.2, 10.0), psf, size, 30.0, 30.0, 100.0, 1)
    usable = np.ones(image.shape, bool)
    shape = np.array([[12.0, 10.0, 1.0]])
    kron = np.array([5.0])

    def run(img=image, use=usable, x=30.0, y=30.0, m=mix):
        return fit_reference_models(img, variance, use, m, [x], [y], shape, kron, details=True)

    good = run()
    assert not good["cModel_ref_flag"][0]
    # empty image: no flux
    empty = run(img=np.zeros_like(image))
    assert empty["cModel_initial_flag"][0] and empty["cModel_ref_flag"][0]
    assert empty["stage_flags"][0, 0] & mf.NO_FLUX
    assert np.isnan(empty["cModel_initial_xx"][0])
    # every pixel masked; off the image; the region half off the edge
    for kw in ({"use": np.zeros_like(usable)}, {"x": -50.0, "y": 300.0}, {"x": 0.0, "y": 30.0}):
        res = run(**kw)
        assert res["cModel_region_flag"][0] and res["cModel_ref_flag"][0], kw
        assert res["region_flags"][0] & mf.BAD_PIXELS
        assert all(np.isnan(res[f"cModel_{s}_xx"][0]) for s in ("initial", "exp", "dev", "region"))
    # no PSF
    nan_psf = tuple(np.full_like(a, np.nan) for a in mix)
    res = run(m=nan_psf)
    assert res["region_flags"][0] & mf.NO_PSF and res["cModel_ref_flag"][0]
    # NaN image inside the region
    res = run(img=np.full_like(image, np.nan))
    assert res["cModel_ref_flag"][0]
    assert set(REF_COLUMNS) <= set(res)


def test_bit_identical_for_any_thread_count():
    psf = psf_of("moffat")
    mix = psf_mixture(psf)
    rng = np.random.default_rng(5)
    size = 200
    image = np.zeros((size, size))
    xs, ys = [], []
    for i in range(9):
        x, y = 30 + 70 * (i % 3) + rng.uniform(-0.5, 0.5), 30 + 70 * (i // 3) + rng.uniform(-0.5, 0.5)
        gal = galaxy(1 + 3 * (i % 2), rng.uniform(2, 5), rng.uniform(0, 0.4), rng.uniform(0, 180))
        img = galsim.Convolve(gal, psf).drawImage(nx=size, ny=size, scale=1.0,
                                                  offset=(x - (size - 1) / 2, y - (size - 1) / 2)).array
        image += 1000 * img
        xs.append(x)
        ys.append(y)
    image += rng.normal(0, 0.05, image.shape)
    image = image.astype(np.float32)
    variance = np.full(image.shape, 0.0025, np.float32)
    n = len(xs)
    shape = np.tile([9.0, 8.0, 0.5], (n, 1))
    kron = np.full(n, 4.0)
    amp, centre, cov = (np.repeat(a, n, axis=0) for a in mix)
    runs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            runs.append(mf.fit_models(image, variance, np.ones(image.shape, np.uint8), mf_no_fp_n(n), xs, ys, shape,
                                      kron, np.full(n, np.nan), amp, centre, cov, PROFILES))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(runs[0][0]).all()


def mf_no_fp_n(n):
    from forcedphot.kernels.pixels import no_footprints

    return no_footprints(n)
