"""The exp and dev Gaussian mixtures (forcedphot.profiles) against the analytic profiles they approximate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, optimize, special

from forcedphot.profiles import DEV, EXP, INITIAL, LUV_B, LUX_B, PROFILES, ellipse_quadrupole, luv, lux

CASES = [(EXP, lux, 1.0, LUX_B), (DEV, luv, 4.0, LUV_B)]  # (mixture, truncated profile, Sersic n, b_n)


def _enclosed(profile, r, rmax):
    """Flux of the circular ``profile`` within r, by quadrature (break points where it bends)."""
    pts = [p for p in (1e-3, 1e-2, 0.1, 1.0, rmax - 1.0) if p < r]
    return integrate.quad(lambda s: 2 * np.pi * s * profile(s), 0, r, limit=500, points=pts or None)[0]


def sersic_total(n: float, b: float) -> float:
    """Total flux of exp(-b (r^(1/n) - 1)) in the plane (r in units of r_e): 2 pi n e^b b^(-2n) Gamma(2n)."""
    return 2 * np.pi * n * np.exp(b) * b ** (-2 * n) * special.gamma(2 * n)


@pytest.mark.parametrize("mixture, profile, n, b", CASES)
def test_the_profiles_are_the_sersic_ones_with_r_e_their_half_light_radius(mixture, profile, n, b):
    """b is the Sersic b_n of n = 1 and 4: half the untruncated profile's light lies within r_e."""
    assert abs(special.gammainc(2 * n, b) - 0.5) < 1e-5
    assert abs(_enclosed(lambda r: np.exp(-b * (r ** (1 / n) - 1)), 3.0, 99) / sersic_total(n, b)
               - special.gammainc(2 * n, b * 3.0 ** (1 / n))) < 1e-6  # the quadrature itself
    assert profile(1.0) == pytest.approx(1.0, rel=3e-3) and profile(mixture.max_radius) == 0.0


@pytest.mark.parametrize("mixture, profile, n, b", CASES)
def test_mixture_enclosed_flux_follows_the_truncated_profile(mixture, profile, n, b):
    rmax = mixture.max_radius
    total = _enclosed(profile, rmax, rmax)
    radii = np.linspace(0.01, rmax, 200)
    truncated = np.array([_enclosed(profile, r, rmax) for r in radii]) / total
    # measured: 0.0064 (exp, near 3.3 r_e) and 0.0078 (dev, near 7.5 r_e) of the total flux
    assert np.abs(mixture.enclosed_flux(radii) - truncated).max() < 0.01
    # half-light radii (units of r_e): mixture 0.9862 / profile 0.9817 (exp), 0.9155 / 0.9075 (dev)
    r_mix = optimize.brentq(lambda r: mixture.enclosed_flux(r) - 0.5, 0.1, 3)
    r_prof = optimize.brentq(lambda r: _enclosed(profile, r, rmax) / total - 0.5, 0.1, 3)
    assert abs(r_mix / r_prof - 1) < 0.01
    # the truncation keeps 98.07% (exp) and 92.74% (dev) of the untruncated profile's light
    kept = total / sersic_total(n, b)
    assert kept == pytest.approx({1.0: 0.98065, 4.0: 0.92742}[n], abs=1e-5)


@pytest.mark.parametrize("mixture, profile, n, b", CASES)
def test_mixture_enclosed_flux_follows_the_analytic_sersic_inside_the_taper(mixture, profile, n, b):
    """Inside the taper (3 r_e exp, 7 r_e dev) the truncated profile is the Sersic one (the dev's core
    softened): the mixture, scaled to the untruncated total, follows the closed-form enclosed flux
    gamma(2n, b r^(1/n))."""
    kept = _enclosed(profile, mixture.max_radius, mixture.max_radius) / sersic_total(n, b)
    radii = np.linspace(0.05, mixture.max_radius - 1, 100)
    sersic = special.gammainc(2 * n, b * radii ** (1 / n))
    profile_flux = np.array([_enclosed(profile, r, mixture.max_radius) for r in radii]) / sersic_total(n, b)
    # the profile itself: exp exactly; dev short of 0.0096 of the total beyond its softened core
    assert np.abs(profile_flux - sersic).max() < (1e-6 if n == 1 else 0.0097)
    # the mixture: measured 0.0051 (exp, at 3 r_e) and 0.0152 (dev: the softened core's 0.0096 and the mixture's)
    assert np.abs(kept * mixture.enclosed_flux(radii) - sersic).max() < (0.006 if n == 1 else 0.016)


def test_published_tables():
    for p in PROFILES.values():
        assert p.weights.sum() == pytest.approx(1.0, abs=1e-15)
        assert np.all(p.weights > 0) and np.all(np.diff(p.variances) > 0)
        assert not p.weights.flags.writeable
    assert (EXP.weights.size, DEV.weights.size, INITIAL.weights.size) == (6, 8, 3)
    # Rubin's reference values (meas_modelfit defaults table, 5 digits)
    np.testing.assert_allclose(EXP.weights, [1.9949e-4, 2.6161e-3, .018973, .10019, .36853, .50949], rtol=5e-4)
    np.testing.assert_allclose(DEV.variances, [2.2376e-4, 1.0022e-3, 4.1873e-3, .016943, .068485, .28721, 1.3332,
                                               8.4021], rtol=5e-4)
    np.testing.assert_allclose(INITIAL.weights, [.033459, .31817, .64837], rtol=5e-4)


def test_ellipse_quadrupole():
    q = ellipse_quadrupole(3.0, 1.0, np.pi / 2)
    np.testing.assert_allclose(q, [1.0, 9.0, 0.0], atol=1e-12)
    q = ellipse_quadrupole(2.0, 1.0, np.pi / 4)
    np.testing.assert_allclose(q, [2.5, 2.5, 1.5], atol=1e-12)
    m = np.array([[q[0], q[2]], [q[2], q[1]]])
    np.testing.assert_allclose(np.linalg.eigvalsh(m), [1.0, 4.0])
