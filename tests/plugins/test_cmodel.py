"""CModel validated on images it did not render: closed forms for Gaussian galaxies, GalSim for
exp/dev galaxies and stars, and extendedness on both.

Coadds here are built in memory (a GalSim image, a variance plane, a PSF grid of GalSim PSF images
whose mixtures the pipeline fits itself) and measured by the plugins as the task runs them; the
reference models (the contract's ``cModel_*`` ellipses of ``ref``) are the true half-light
ellipses, the region Rubin's final region with the initial ellipse's radius factor 2:
R = 4 Q + 4 P (Q the half-light ellipse, P the PSF's moments).

"True total flux" of a GalSim Sersic galaxy (``Sersic(n, half_light_radius=r_e, trunc=4 or 8 r_e,
flux_untruncated=True)``, r_e the untruncated profile's half-light radius, which is the r_e of
Rubin's profiles) is stated three ways and the median ratios of all three are printed: F, the
untruncated profile's total; F_trunc, what GalSim drew (hard truncation); and F_model = F x
0.9807 (exp) or 0.9274 (dev), what Rubin's softly truncated lux / luv profile of the same galaxy
holds. CModel reports the total of its truncated model, so the test's targets (1% exp, 2% dev)
are on CModel / F_model.
"""

from __future__ import annotations

import time

import galsim
import numba
import numpy as np
import pytest

from forcedphot.apcorr import ApCorrMap, ChebyshevField
from forcedphot.config import ForcedPhotConfig
from forcedphot.flags import MaskPlanes
from forcedphot.io.coadd import Coadd
from forcedphot.kernels import cmodel as K
from forcedphot.plugins import PLUGINS, MeasurementContext
from forcedphot.profiles import DEV, EXP, ellipse_quadrupole
from forcedphot.psf import PsfGrid
from forcedphot.skymap import Box
from forcedphot.stages import SourcePixels

SCALE = 0.2  # arcsec per pixel
PSF_SIZE = 41
LUX_FRACTION, LUV_FRACTION = 0.9807, 0.9274  # of the untruncated profiles' flux (forcedphot.profiles)


def _psf_grid(psf, box: Box, method="auto") -> PsfGrid:
    img = psf.drawImage(nx=PSF_SIZE, ny=PSF_SIZE, scale=SCALE, method=method).array.astype(np.float64)
    img /= img.sum()
    xs = np.array([box.min_x, box.max_x], float)
    ys = np.array([box.min_y, box.max_y], float)
    return PsfGrid(xs, ys, np.broadcast_to(img, (2, 2, PSF_SIZE, PSF_SIZE)).copy())


def _render(objects, psf, shape, rng, sigma):
    """GalSim image (pixel-convolved) of the objects (galsim profiles, x, y) through psf, plus N(0, sigma^2)."""
    h, w = shape
    image = galsim.ImageF(w, h, scale=SCALE)
    image.setOrigin(0, 0)
    for obj, x, y in objects:
        conv = galsim.Convolve(obj, psf)
        half = int(min(conv.getGoodImageSize(SCALE) // 2, 200))
        b = galsim.BoundsI(int(x) - half, int(x) + half, int(y) - half, int(y) + half) & image.bounds
        conv.drawImage(image=image[b], center=galsim.PositionD(x, y), add_to_image=True)
    arr = image.array.astype(np.float64)
    if sigma > 0:
        arr = arr + rng.normal(0.0, sigma, arr.shape)
    return arr.astype(np.float32)


def _coadd(image, sigma, psf, ap_corr=None, method="auto") -> Coadd:
    h, w = image.shape
    box = Box(0, 0, w - 1, h - 1)
    variance = np.full((h, w), max(sigma, 1e-3) ** 2, np.float32)
    return Coadd(0, 0, "r", box, image, np.zeros((h, w), np.int32), variance, None, _psf_grid(psf, box, method), 1.0,
                 MaskPlanes(), ap_corr=ap_corr)


def _measure(coadd, x, y, q_exp, q_dev, region=None, plugins=("PsfFlux", "CModel")):
    """The plugins' outputs for sources at (x, y) with these reference ellipses (region R = 4 Q + 4 P if not given)."""
    n = x.size
    config = ForcedPhotConfig()
    p = coadd.psf.moments_at(x, y)
    if region is None:
        region = 4 * q_exp + 4 * np.stack([p[:, 0, 0], p[:, 1, 1], p[:, 0, 1]], axis=1)
    ref = {"id": np.arange(n, dtype=np.int64)}
    for name, q in (("cModel_exp", q_exp), ("cModel_dev", q_dev), ("cModel_region", region)):
        for i, c in enumerate(("xx", "yy", "xy")):
            ref[f"{name}_{c}"] = np.asarray(q[:, i], float)
    ctx = MeasurementContext(coadd, config, ref, x=x, y=y, usable=np.ones(n, bool),
                             pixels=SourcePixels.build(coadd, n))
    for name in plugins:
        ctx.values.update(PLUGINS[name](config).measure(ctx))
    return ctx


def _gauss_overlap(c1, c2):
    """integral of N(x; 0, C1) N(x; 0, C2) dx = N(0; 0, C1 + C2), covariances as (xx, yy, xy)."""
    c = np.asarray(c1) + np.asarray(c2)
    return 1.0 / (2 * np.pi * np.sqrt(c[0] * c[1] - c[2] ** 2))


def test_gaussian_galaxy_through_a_gaussian_psf_has_the_closed_form():
    """A Gaussian galaxy (covariance S) through a Gaussian PSF (covariance P), noiseless and well sampled, with a
    large region: the pixel sums are the integrals, so with C_k = v_k Q + P, D = S + P and Q = 2 ln 2 S (the
    Gaussian's half-light ellipse), alpha_s = F sum_k w_k N(0; C_k + D) / sum_kl w_k w_l N(0; C_k + C_l) per
    stage, and the joint fit solves the 2 x 2 system of those overlaps (checked non-negative here)."""
    rng = np.random.default_rng(1)
    sigma_psf = 2.0  # pixels
    psf = galsim.Gaussian(sigma=sigma_psf * SCALE)
    shape = (400, 500)
    # each galaxy: Gaussians (flux, sigma major px, axis ratio, angle) sharing a centre; the last a narrow core in
    # a wide halo, whose joint fit needs both models
    cases = [[(1000.0, 3.0, 0.8, 0.3)], [(1000.0, 2.0, 0.5, 1.0)], [(1000.0, 4.0, 1.0, 0.0)],
             [(600.0, 2.0, 0.8, 0.3), (400.0, 5.0, 0.8, 0.3)]]
    objects, qs, ss, xs, ys = [], [], [], [], []
    for i, parts in enumerate(cases):
        x, y = 100.0 + 100 * i + 0.3, 200.0 - 0.2
        for flux, sig, ratio, beta in parts:
            g = galsim.Gaussian(sigma=sig * SCALE * np.sqrt(ratio), flux=flux).shear(q=ratio, beta=beta * galsim.radians)
            objects.append((g, x, y))
        s = [(flux, ellipse_quadrupole(sig, sig * ratio, beta)) for flux, sig, ratio, beta in parts]
        ss.append(s)
        qs.append(2 * np.log(2) * sum(f * c for f, c in s) / sum(f for f, _ in s))
        xs.append(x)
        ys.append(y)
    # no pixel: sample at pixel centres, as the model is evaluated
    image = galsim.ImageF(shape[1], shape[0], scale=SCALE)
    image.setOrigin(0, 0)
    for g, x, y in objects:
        galsim.Convolve(g, psf).drawImage(image=image, center=galsim.PositionD(x, y), add_to_image=True,
                                          method="no_pixel")
    coadd = _coadd(image.array.astype(np.float32), 0.0, psf, method="no_pixel")
    q = np.array(qs)
    x, y = np.array(xs), np.array(ys)
    ctx = _measure(coadd, x, y, q, q, region=np.tile([45.0 ** 2, 45.0 ** 2, 0.0], (x.size, 1)), plugins=("CModel",))
    v = ctx.values
    mix = ctx.psf_mixtures()
    kinds = []
    for i in range(x.size):
        # the models use the pipeline's PSF mixture (fitted to the PSF image), the data the true PSF
        comps = [(a, c) for a, c in zip(mix.amp[i], mix.cov[i])]
        dk = [(f, np.array([c[0], c[1], c[2]]) + [sigma_psf ** 2, sigma_psf ** 2, 0.0]) for f, c in ss[i]]
        overlaps = {}
        for name, prof in (("exp", EXP), ("dev", DEV)):
            ck = [(w * a, v_ * q[i] + c) for w, v_ in zip(prof.weights, prof.variances) for a, c in comps]
            b = sum(a1 * a2 * _gauss_overlap(c1, c2) for a1, c1 in ck for a2, c2 in dk)
            h = sum(a1 * a2 * _gauss_overlap(c1, c2) for a1, c1 in ck for a2, c2 in ck)
            total = sum(a for a, _ in ck)
            overlaps[name] = (ck, b, h, total)
            assert v[f"cModel_{name}Flux"][i] == pytest.approx(b / h * total, rel=1e-3)
        ce, be, hee, te = overlaps["exp"]
        cd, bd, hdd, td = overlaps["dev"]
        hed = sum(a1 * a2 * _gauss_overlap(c1, c2) for a1, c1 in ce for a2, c2 in cd)
        alpha = np.linalg.solve([[hee, hed], [hed, hdd]], [be, bd])
        if not np.all(alpha >= 0):  # on the boundary: the better single-model fit (objective -b^2 / h)
            alpha = np.array([be / hee, 0.0]) if be ** 2 / hee > bd ** 2 / hdd else np.array([0.0, bd / hdd])
        kinds.append(bool(np.all(alpha > 0)))
        assert v["cModelFlux"][i] == pytest.approx(alpha @ [te, td], rel=1e-3)
        assert v["cModel_fracDev"][i] == pytest.approx(alpha[1] * td / (alpha @ [te, td]), abs=1e-3)
        assert not v["cModel_flag"][i]
    print("joint fits inside the positive quadrant:", kinds)
    assert kinds[-1]  # the compound galaxy's fit is interior (both amplitudes > 0)


def test_a_gaussian_profile_recovers_a_gaussian_galaxys_flux_exactly():
    """The kernel with a one-Gaussian 'profile' (w = 1, v = 1) and Q = S: the model is the galaxy, flux = F."""
    rng = np.random.default_rng(2)
    psf = galsim.Gaussian(sigma=1.5 * SCALE)
    image = galsim.ImageF(120, 100, scale=SCALE)
    image.setOrigin(0, 0)
    s = ellipse_quadrupole(3.0, 2.0, 0.4)[None]
    g = galsim.Gaussian(sigma=np.sqrt(6.0) * SCALE, flux=500.0).shear(q=2 / 3, beta=0.4 * galsim.radians)
    galsim.Convolve(g, psf).drawImage(image=image, center=galsim.PositionD(60.2, 50.4), add_to_image=True,
                                      method="no_pixel")
    img = image.array.astype(np.float32)
    h, w = img.shape
    one = np.ones(1)
    valid = np.ones((h, w), np.uint8)
    from forcedphot.kernels.pixels import no_footprints
    values, flags = K.cmodel(img, np.ones((h, w), np.float32), np.zeros((h, w), np.int32), valid, no_footprints(1),
                             np.array([60]), np.array([50]), np.array([0.2]), np.array([0.4]), np.ones(1, np.uint8),
                             np.array([[900.0, 900.0, 0.0]]), s, s, np.ones((1, 2), np.uint8), one[None],
                             np.zeros((1, 1, 2)), np.array([[[2.25, 2.25, 0.0]]]), np.ones(1, np.uint8), one, one, one,
                             one, 0)
    assert flags[0] == 0
    for col in (K.EXP_FLUX, K.DEV_FLUX, K.FLUX):
        assert values[0, col] == pytest.approx(500.0, rel=1e-6)
    assert values[0, K.OBJECTIVE] == pytest.approx(0.0, abs=1e-6 * 500 ** 2)


def _galaxies(n_sersic, rng, spacing):
    """(objects, half-light ellipses, F, F_trunc) of a grid of sizes and ellipticities."""
    objects, q, f, f_trunc = [], [], [], []
    trunc = 4.0 if n_sersic == 1 else 8.0
    i = 0
    for r_arcsec in (0.5, 1.0, 1.6):
        for ratio in (1.0, 0.7, 0.4):
            beta = rng.uniform(0, np.pi)
            r = r_arcsec / SCALE
            flux = 1.0e4
            gal = galsim.Sersic(n_sersic, half_light_radius=r_arcsec, trunc=trunc * r_arcsec, flux=flux,
                                flux_untruncated=True).shear(q=ratio, beta=beta * galsim.radians)
            x = spacing * (0.5 + i % 3) + rng.uniform(-0.5, 0.5)
            y = spacing * (0.5 + i // 3) + rng.uniform(-0.5, 0.5)
            objects.append((gal, x, y))
            q.append(ellipse_quadrupole(r / np.sqrt(ratio), r * np.sqrt(ratio), beta))
            f.append(flux)
            f_trunc.append(gal.flux)
            i += 1
    return objects, np.array(q), np.array(f), np.array(f_trunc)


BANDS = {"g": galsim.Gaussian(fwhm=0.9), "r": galsim.Moffat(beta=3.5, fwhm=0.7),
         "i": galsim.Kolmogorov(fwhm=0.6)}


@pytest.mark.parametrize("n_sersic, target", [(1, 0.01), (4, 0.02)])
def test_galsim_exp_and_dev_galaxies_with_the_true_ellipses(n_sersic, target):
    rng = np.random.default_rng(10 + n_sersic)
    spacing = 160.0
    ratios = {"model": [], "untruncated": [], "galsim": [], "pull": []}
    for band, psf in BANDS.items():
        objects, q, f, f_trunc = _galaxies(n_sersic, rng, spacing)
        x = np.array([o[1] for o in objects])
        y = np.array([o[2] for o in objects])
        truth_model = f * (LUX_FRACTION if n_sersic == 1 else LUV_FRACTION)
        sigma = 1.0e4 / 100 / (np.pi * 4 * 5 ** 2) ** 0.5  # S/N ~ 100 within 2 r_e of the largest galaxies
        shape = (int(3 * spacing), int(3 * spacing))
        noiseless = _render(objects, psf, shape, rng, 0.0)
        noisy = noiseless + rng.normal(0, sigma, shape).astype(np.float32)
        v0 = _measure(_coadd(noiseless, sigma, psf), x, y, q, q, plugins=("CModel",)).values
        v = _measure(_coadd(noisy, sigma, psf), x, y, q, q, plugins=("CModel",)).values
        assert not v["cModel_flag"].any() and not v0["cModel_flag"].any()
        assert np.all(v["cModelFlux"] / v["cModelFluxErr"] > 50)  # S/N > 50
        stage = "cModel_expFlux" if n_sersic == 1 else "cModel_devFlux"
        print(f"n={n_sersic} {band}: noiseless {stage}/F_model {np.round(v0[stage] / truth_model, 4)}; "
              f"fracDev median {np.median(v0['cModel_fracDev']):.3f}")
        ratios["model"] += list(v["cModelFlux"] / truth_model)
        ratios["untruncated"] += list(v["cModelFlux"] / f)
        ratios["galsim"] += list(v["cModelFlux"] / f_trunc)
        ratios["pull"] += list((v["cModelFlux"] - v0["cModelFlux"]) / v["cModelFluxErr"])
    med = {k: float(np.median(r)) for k, r in ratios.items()}
    print(f"n={n_sersic}: median cModelFlux / F_model {med['model']:.4f}, / F {med['untruncated']:.4f}, "
          f"/ F_trunc(GalSim) {med['galsim']:.4f}; pull std {np.std(ratios['pull']):.3f}")
    assert abs(med["model"] - 1) < target
    assert 0.6 < np.std(ratios["pull"]) < 1.5  # the error follows the noise (shape held fixed)


def _star_coadd(psf, rng, n_side, flux, sigma, spacing=40.0):
    xs, ys, objects = [], [], []
    for i in range(n_side * n_side):
        x = spacing * (1 + i % n_side) + rng.uniform(-0.5, 0.5)
        y = spacing * (1 + i // n_side) + rng.uniform(-0.5, 0.5)
        objects.append((galsim.DeltaFunction(flux=flux), x, y))
        xs.append(x)
        ys.append(y)
    shape = (int(spacing * (n_side + 1)), int(spacing * (n_side + 1)))
    return objects, np.array(xs), np.array(ys), shape


STAR_Q = 0.01  # the reference ellipses of a point source (Rubin's smallest starting moments, pixels^2)


def _ap_corr(psf, rng, box: Box) -> ApCorrMap:
    """Aperture corrections measured as a pipeline does: true / measured flux of noiseless stars."""
    objects, x, y, shape = _star_coadd(psf, rng, 3, 1.0e4, 0.0)
    image = _render(objects, psf, shape, rng, 0.0)
    q = np.tile([STAR_Q, STAR_Q, 0.0], (x.size, 1))
    v = _measure(_coadd(image, 0.0, psf), x, y, q, q).values
    fields = {}
    for name in ("psfFlux", "cModelFlux"):
        fields[name] = (ChebyshevField.constant(box, float(np.median(1.0e4 / v[name]))),
                        ChebyshevField.constant(box, 1e-4))
    return ApCorrMap(fields)


def test_extendedness_of_galsim_stars_and_galaxies():
    """Stars at S/N ~ 30-100 are point sources (>= 98%), galaxies with r_e >= 0.5" extended (>= 95%), on
    aperture-corrected cModelFlux and psfFlux; CModel of stars after correction is their total flux."""
    rng = np.random.default_rng(3)
    star_point, gal_ext, star_ratio = [], [], []
    for band, psf in BANDS.items():
        objects, x, y, shape = _star_coadd(psf, rng, 8, 1.0, 0.0)
        h, w = shape
        box = Box(0, 0, w - 1, h - 1)
        ap_corr = _ap_corr(psf, rng, box)
        # S/N 30 .. 100 in psfFlux: flux / (sigma sqrt(4 pi sigma_psf^2)) with sigma_psf from the PSF image
        sig_psf = psf.calculateFWHM() / 2.3548 / SCALE
        sigma = 1.0
        flux = rng.uniform(30, 100, x.size) * sigma * np.sqrt(4 * np.pi) * sig_psf
        objects = [(galsim.DeltaFunction(flux=f), xx, yy) for f, xx, yy in zip(flux, x, y)]
        image = _render(objects, psf, shape, rng, sigma)
        q = np.tile([STAR_Q, STAR_Q, 0.0], (x.size, 1))
        ctx = _measure(_coadd(image, sigma, psf, ap_corr), x, y, q, q,
                       plugins=("PsfFlux", "CModel", "ApCorr", "Extendedness"))
        v = ctx.values
        snr = v["psfFlux"] / v["psfFluxErr"]
        assert snr.min() > 25
        assert not v["extendedness_flag"].any() and not v["extendedness_flag_fallback"].any()
        star_point += list(v["extendedness"] == 0)
        star_ratio += list(v["cModelFlux"] / flux)
        # galaxies: exp and dev, r_e >= 0.5", S/N ~ 100
        for n_sersic in (1, 4):
            gals, qg, f, _ = _galaxies(n_sersic, rng, 160.0)
            gx = np.array([o[1] for o in gals])
            gy = np.array([o[2] for o in gals])
            gimg = _render(gals, psf, (480, 480), rng, 0.0) + rng.normal(0, 5.0, (480, 480)).astype(np.float32)
            gbox = Box(0, 0, 479, 479)
            gap = ApCorrMap({k: (ChebyshevField(gbox, f_.coeffs), e) for k, (f_, e) in ap_corr.fields.items()})
            gv = _measure(_coadd(gimg, 5.0, psf, gap), gx, gy, qg, qg,
                          plugins=("PsfFlux", "CModel", "ApCorr", "Extendedness")).values
            gal_ext += list(gv["extendedness"] == 1)
    star_point, gal_ext = np.array(star_point), np.array(gal_ext)
    print(f"stars: {star_point.mean():.3f} point (n={star_point.size}); galaxies: {gal_ext.mean():.3f} extended "
          f"(n={gal_ext.size}); star cModelFlux / true median {np.median(star_ratio):.4f}")
    assert star_point.mean() >= 0.98
    assert gal_ext.mean() >= 0.95
    assert abs(np.median(star_ratio) - 1) < 0.01


def test_missing_reference_models_are_flagged_not_guessed():
    rng = np.random.default_rng(4)
    psf = BANDS["g"]
    objects, x, y, shape = _star_coadd(psf, rng, 2, 1.0e4, 0.0)
    image = _render(objects, psf, shape, rng, 1.0)
    q = np.tile([STAR_Q, STAR_Q, 0.0], (4, 1))
    q_dev = q.copy()
    q_dev[1] = np.nan  # no dev model: exp measured, final failed
    region = np.tile([16.0, 16.0, 0.0], (4, 1))
    region[2] = np.nan  # no region: nothing measured
    coadd = _coadd(image, 1.0, psf)
    ctx = _measure(coadd, x, y, q, q_dev, region=region, plugins=("CModel",))
    v = ctx.values
    assert not v["cModel_flag"][0] and np.isfinite(v["cModelFlux"][0])
    assert v["cModel_flag"][1] and v["cModel_flag_badReference"][1] and v["cModel_dev_flag"][1]
    assert np.isfinite(v["cModel_expFlux"][1]) and np.isnan(v["cModelFlux"][1])
    assert v["cModel_flag"][2] and v["cModel_flag_badReference"][2] and np.isnan(v["cModel_expFlux"][2])
    assert not v["cModel_flag_noShapeFit"][:3].any()
    # a ref without the columns at all (an older ref file): everything flagged, no value
    ref = {"id": np.arange(4, dtype=np.int64)}
    bare = MeasurementContext(coadd, ForcedPhotConfig(), ref, x=x, y=y, usable=np.ones(4, bool),
                              pixels=SourcePixels.build(coadd, 4))
    out = PLUGINS["CModel"](ForcedPhotConfig()).measure(bare)
    assert out["cModel_flag"].all() and out["cModel_flag_badReference"].all() and out["cModel_flag_noShapeFit"].all()
    assert np.isnan(out["cModelFlux"]).all()


def test_plugin_is_bit_identical_for_one_and_two_threads_and_reports_its_speed():
    rng = np.random.default_rng(6)
    psf = BANDS["r"]
    objects, q, f, _ = _galaxies(1, rng, 60.0)
    x = np.array([o[1] for o in objects])
    y = np.array([o[2] for o in objects])
    image = _render(objects, psf, (200, 200), rng, 3.0)
    coadd = _coadd(image, 3.0, psf)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = _measure(coadd, x, y, q, q, plugins=("CModel",)).values
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        b = _measure(coadd, x, y, q, q, plugins=("CModel",)).values
    finally:
        numba.set_num_threads(before)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # speed: many copies of the sources (the kernel measures each alone)
    reps = 60
    xs, ys = np.tile(x, reps), np.tile(y, reps)
    qs = np.tile(q, (reps, 1))
    t0 = time.perf_counter()
    _measure(coadd, xs, ys, qs, qs, plugins=("CModel",))
    dt = time.perf_counter() - t0
    print(f"CModel: {1000 * dt / xs.size:.3f} s per 1000 sources (r_e 0.5-1.6\", {numba.get_num_threads()} threads)")


def _inject_reference_models(ctx, point=None):
    """The contract's ref columns from the forced shape, as Rubin's initial guess makes them: D = S - P floored
    at 0.01 (xy kept, or 0 if not positive definite), Q = D / 0.95473 for exp and dev, region 4 Q + 4 P;
    ``point``: sources whose models are points (Q = STAR_Q, as a reference fit of a star ends)."""
    s = np.where(ctx.shape_ok[:, None, None], ctx.shape, np.nan)
    p = ctx.psf_moments()
    dxx = np.maximum(s[:, 0, 0] - p[:, 0, 0], 0.01)
    dyy = np.maximum(s[:, 1, 1] - p[:, 1, 1], 0.01)
    dxy = s[:, 0, 1] - p[:, 0, 1]
    dxy = np.where(dxx * dyy - dxy ** 2 > 0, dxy, 0.0)
    q = np.stack([dxx, dyy, dxy], axis=1) / 0.95473
    if point is not None:
        q[point] = [STAR_Q, STAR_Q, 0.0]
    region = 4 * q + 4 * np.stack([p[:, 0, 0], p[:, 1, 1], p[:, 0, 1]], axis=1)
    for name, e in (("cModel_exp", q), ("cModel_dev", q), ("cModel_region", region)):
        for i, c in enumerate(("xx", "yy", "xy")):
            ctx.ref[f"{name}_{c}"] = np.ascontiguousarray(e[:, i])


def test_on_a_simulated_quantum_chunks_change_nothing(tiny_repo_master):
    """A tiny-survey quantum (blends, noise replacement): CModel measured chunk by chunk as the task does equals
    the whole quantum's, bit for bit."""
    from tests.kernels.context import quantum_context

    ctx, _ = quantum_context(tiny_repo_master, index=1)
    _inject_reference_models(ctx)
    plugin = PLUGINS["CModel"](ctx.config)
    whole = plugin.measure(ctx)
    n, step = ctx.n, 7
    for start in range(0, n, step):
        stop = min(n, start + step)
        pixels = ctx.pixels.chunk(start, stop, replacer=ctx.replacement, footprints=ctx.ref["footprints"],
                                  coadd=ctx.coadd)
        part = plugin.measure(ctx.chunk(start, stop, pixels=pixels))
        for k, v in part.items():
            np.testing.assert_array_equal(v, whole[k][start:stop], err_msg=k)
    assert (~whole["cModel_flag"]).sum() > 0.8 * n


def test_simulated_stars_get_their_total_flux_through_the_simulators_ap_corr(tiny_repo_master):
    """The simulator's ApCorr field for cModelFlux (computed from the PSF grid's own mixtures): after aperture
    correction, isolated stars' cModelFlux (point models) is their psfFlux (both total fluxes; psfFlux is checked
    against the truth in test_flux_pulls) and they are point sources."""
    from forcedphot import query
    from forcedphot.validity import flag_invalid
    from tests.kernels.context import quantum_context

    ratios, points = [], []
    for index in range(4):
        ctx, _ = quantum_context(tiny_repo_master, index=index)
        t = query.sql(tiny_repo_master, f"SELECT id, is_star, n_neighbours FROM truth "
                                        f"WHERE band = '{ctx.coadd.band}'").to_pandas()
        truth = {i: (bool(st), int(nn)) for i, st, nn in zip(t["id"], t["is_star"], t["n_neighbours"])}
        ids = np.asarray(ctx.ref["id"])
        star = np.array([truth.get(i, (False, 1))[0] for i in ids])
        isolated = np.array([truth.get(i, (False, 1))[1] == 0 for i in ids])
        _inject_reference_models(ctx, point=star)
        for name in ("PsfFlux", "GaussianFlux", "CModel"):
            ctx.values.update(PLUGINS[name](ctx.config).measure(ctx))
        flag_invalid(ctx.values)
        for name in ("ApCorr", "Extendedness"):
            ctx.values.update(PLUGINS[name](ctx.config).measure(ctx))
        v = ctx.values
        bright = star & isolated & (v["psfFlux"] / v["psfFluxErr"] > 30) & ~v["cModel_flag"] & ~v["psfFlux_flag"]
        ratios += list(v["cModelFlux"][bright] / v["psfFlux"][bright])
        points += list(v["extendedness"][bright] == 0)
    print(f"isolated stars S/N > 30: n={len(ratios)}, cModelFlux/psfFlux median {np.median(ratios):.4f} "
          f"(range {np.min(ratios):.4f}..{np.max(ratios):.4f}), extendedness 0 for {np.mean(points):.3f}")
    assert len(ratios) >= 5
    assert abs(np.median(ratios) - 1) < 0.005
    assert np.mean(points) >= 0.9
