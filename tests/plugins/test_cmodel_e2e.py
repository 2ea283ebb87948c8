"""Forced CModel end to end with *fitted* reference models (issue 21 item 7): GalSim exp and dev galaxies
rendered in a reference band with one PSF, their initial/exp/dev ellipses and fit region fitted there by
:func:`forcedphot.refmodels.fit_on_planes` (the ref shape and Kron radius measured as ingest does), then
CModel forced in another band whose PSF is about 30% wider, on an independent noise realisation.

The galaxies, renderer, coadds and the three truths are those of tests/plugins/test_cmodel.py (F_model, the
total of Rubin's truncated lux / luv profile of the galaxy; F, the untruncated profile; F_trunc, what GalSim
drew with its hard truncation). The same measured images are also measured with the *true* ellipses, so the
figures separate what the fitted ellipses cost.
"""

from __future__ import annotations

import functools

import galsim
import numpy as np
import pytest

from forcedphot.ingest.refmeasure import adaptive_shapes
from forcedphot.kernels.kron_radius import kron_radii
from forcedphot.refmodels import fit_on_planes
from tests.plugins.test_cmodel import LUV_FRACTION, LUX_FRACTION, SCALE, _coadd, _galaxies, _measure, _render

# (reference-band PSF, measured-band PSF about 30% wider in FWHM)
PSF_PAIRS = [(galsim.Kolmogorov(fwhm=0.6), galsim.Gaussian(fwhm=0.8)),
             (galsim.Moffat(beta=3.5, fwhm=0.65), galsim.Moffat(beta=3.5, fwhm=0.85)),
             (galsim.Gaussian(fwhm=0.7), galsim.Kolmogorov(fwhm=0.9))]


def _reference_fit(coadd, x, y):
    """The ref columns fitted on a reference-band coadd: start shape from adaptive moments (the PSF's
    moments where they fail) and Kron radius, as ingest measures them."""
    valid = np.ones(coadd.image.shape, np.uint8)
    m, failed = adaptive_shapes(coadd.image, coadd.variance, valid, x, y)
    p = coadd.psf.moments_at(x, y)
    m[failed] = p[failed]
    kron, _ = kron_radii(coadd.image, valid, x, y, m, n_sigma=6.0)
    shape = np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 0, 1]], axis=1)
    return fit_on_planes(coadd.image, coadd.variance, coadd.mask, coadd.psf, x, y, shape, kron)


def _ellipse(cols, stage):
    return np.stack([cols[f"cModel_{stage}_{c}"] for c in ("xx", "yy", "xy")], axis=1)


def _radius(q):
    return (q[:, 0] * q[:, 1] - q[:, 2] ** 2) ** 0.25


@functools.lru_cache(maxsize=None)
def _figures(n_sersic):
    """Per galaxy ratios to the truths: CModel forced with the fitted reference models, and on the same measured
    images with the true ellipses; the fitted radius of the galaxy's own profile over r_e."""
    rng = np.random.default_rng(30 + n_sersic)
    spacing = 160.0
    shape = (int(3 * spacing), int(3 * spacing))
    sigma = 1.0e4 / 100 / (np.pi * 4 * 5 ** 2) ** 0.5  # S/N ~ 100 within 2 r_e of the largest galaxies
    stage = "exp" if n_sersic == 1 else "dev"
    fraction = LUX_FRACTION if n_sersic == 1 else LUV_FRACTION
    out = {k: [] for k in ("model", "untruncated", "galsim", "stage", "noiseless", "true_model", "true_galsim",
                           "radius", "frac_dev", "snr", "ref_flag", "flag")}
    for ref_psf, meas_psf in PSF_PAIRS:
        objects, q, f, f_trunc = _galaxies(n_sersic, rng, spacing)
        x = np.array([o[1] for o in objects])
        y = np.array([o[2] for o in objects])
        cols = _reference_fit(_coadd(_render(objects, ref_psf, shape, rng, sigma), sigma, ref_psf), x, y)
        q_exp, q_dev, region = _ellipse(cols, "exp"), _ellipse(cols, "dev"), _ellipse(cols, "region")
        clean = _render(objects, meas_psf, shape, rng, 0.0)
        noisy = clean + rng.normal(0, sigma, shape).astype(np.float32)
        meas = _coadd(noisy, sigma, meas_psf)
        v = _measure(meas, x, y, q_exp, q_dev, region=region, plugins=("CModel",)).values
        v0 = _measure(_coadd(clean, sigma, meas_psf), x, y, q_exp, q_dev, region=region, plugins=("CModel",)).values
        vt = _measure(meas, x, y, q, q, plugins=("CModel",)).values  # the same image, true ellipses
        f_model = f * fraction
        out["model"] += list(v["cModelFlux"] / f_model)
        out["untruncated"] += list(v["cModelFlux"] / f)
        out["galsim"] += list(v["cModelFlux"] / f_trunc)
        out["stage"] += list(v[f"cModel_{stage}Flux"] / f_model)
        out["noiseless"] += list(v0["cModelFlux"] / f_model)
        out["true_model"] += list(vt["cModelFlux"] / f_model)
        out["true_galsim"] += list(vt["cModelFlux"] / f_trunc)
        out["radius"] += list(_radius(_ellipse(cols, stage)) / _radius(q))
        out["frac_dev"] += list(v["cModel_fracDev"])
        out["snr"] += list(v["cModelFlux"] / v["cModelFluxErr"])
        out["ref_flag"] += list(cols["cModel_ref_flag"])
        out["flag"] += list(v["cModel_flag"])
    out = {k: np.array(r) for k, r in out.items()}
    med = {k: float(np.median(r)) for k, r in out.items() if k not in ("ref_flag", "flag")}
    print(f"\nn={n_sersic} ({out['model'].size} galaxies, fitted refs, PSF ~30% wider than the reference band's): "
          f"median cModelFlux / F_model {med['model']:.4f}, / F {med['untruncated']:.4f}, / F_trunc(GalSim) "
          f"{med['galsim']:.4f}; {stage}Flux / F_model {med['stage']:.4f}; noiseless cModelFlux / F_model "
          f"{med['noiseless']:.4f}; fracDev median {med['frac_dev']:.3f}")
    print(f"n={n_sersic} true ellipses on the same images: cModelFlux / F_model {med['true_model']:.4f}, "
          f"/ F_trunc(GalSim) {med['true_galsim']:.4f}; fitted {stage} radius / r_e median {med['radius']:.3f} "
          f"({out['radius'].min():.3f}..{out['radius'].max():.3f})")
    return out


@pytest.mark.parametrize("n_sersic, target", [(1, 0.01), (4, 0.02)])
def test_forced_stage_flux_of_the_galaxys_own_profile_with_fitted_reference_models(n_sersic, target):
    """Every reference fit succeeds, every forced fit too at S/N > 50, and the stage of the galaxy's own
    profile (cModel_expFlux of exp galaxies, cModel_devFlux of dev galaxies) meets the issue's target on
    F_model: the fitted ellipses carry the flux from one band to the other."""
    out = _figures(n_sersic)
    assert not out["ref_flag"].any() and not out["flag"].any()
    assert np.all(out["snr"] > 50)
    assert abs(np.median(out["stage"]) - 1) < target


@pytest.mark.parametrize("n_sersic, target", [(1, 0.01), (4, 0.02)])
def test_forced_cmodel_flux_with_fitted_reference_models_meets_the_issue_target(n_sersic, target):
    """The issue's wording: median cModelFlux / true total flux within 1% (exp) and 2% (dev) at S/N > 50
    using fitted reference ellipses (true total = F_model, the flux of Rubin's truncated profile). Met through
    the shared-ellipse rule of forcedphot.kernels.model_fit: the profile that fits the reference band worse
    by more than SHARE_DCHI2 stores the better one's ellipse, so the forced joint fit's noise-driven share of
    it no longer moves the total (its own ellipse, 2-4x or 0.4-0.7x the galaxy's, made exp +3.6%, dev -5.2%)."""
    out = _figures(n_sersic)
    assert np.all(out["snr"] > 50)
    assert abs(np.median(out["model"]) - 1) < target
