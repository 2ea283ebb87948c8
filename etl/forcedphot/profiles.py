"""Galaxy profiles for model fits (CModel): Rubin's exponential and de Vaucouleurs profiles as
mixtures of concentric Gaussians.

A profile is given in units of its half-light ellipse Q (the ellipse of radius r_e, where the
untruncated profile equals its value at r_e): component k has flux fraction w_k (they sum to 1)
and covariance v_k Q. Convolved with a PSF mixture it is again a mixture
(:func:`forcedphot.kernels.mixtures.convolved_images`).

The mixtures are those of Hogg & Lang 2013 (PASP 125, 719; arXiv:1210.6563), fitted to SDSS's
truncated profiles (Lupton's ``photo``), as Rubin's CModel uses them: the values below are the
amplitudes and variances of the ``lux_K06_MR04``, ``luv_K08_MR08`` and ``lux_K03_MR04`` tables
distributed with Rubin's ``shapelet`` package (``data/*.pickle``, loaded by
``lsst.shapelet.tractor``), with the amplitudes renormalised to sum to 1 as Rubin's loader does.
The Tractor's published 9-digit values (``tractor/mixture_profiles.py``) agree with them to about
1e-6 (relative). Radii are in units of r_e:

- lux (SDSS exponential): p(r) = exp(-1.67835 (r - 1)), times (1 - (r - 3)^2)^2 for 3 < r < 4,
  zero beyond 4.
- luv (SDSS de Vaucouleurs): p(r) = exp(-7.66925 ((r^2 + 0.0004)^(1/8) - 1)), times
  (1 - (r - 7)^2)^2 for 7 < r < 8, zero beyond 8.

The truncation keeps 98.07% (lux) and 92.74% (luv) of the untruncated profiles' total flux: a
model's total flux is that of the truncated mixture, as Rubin reports it. The mixtures' half-light
radii are 0.986 r_e (exp) and 0.915 r_e (dev); their enclosed-flux curves follow the truncated
profiles' to 0.0064 (exp) and 0.0078 (dev) of the total (``tests/test_profiles.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MixtureProfile:
    name: str
    weights: np.ndarray  # (K,) flux fractions, summing to 1
    variances: np.ndarray  # (K,) component covariance / the half-light ellipse's
    max_radius: float  # the profile is zero beyond this radius (units of r_e)
    source: str  # which published table

    def enclosed_flux(self, r) -> np.ndarray:
        """Fraction of the mixture's flux within radius r (units of r_e) of a circular profile."""
        r = np.asarray(r, float)[..., None]
        return np.sum(self.weights * -np.expm1(-0.5 * r * r / self.variances), axis=-1)

    def surface_brightness(self, r) -> np.ndarray:
        """The mixture's surface brightness at radius r (units of r_e) of a circular unit-flux profile."""
        r = np.asarray(r, float)[..., None]
        return np.sum(self.weights / (2 * np.pi * self.variances) * np.exp(-0.5 * r * r / self.variances), axis=-1)


def _profile(name: str, amplitudes, variances, max_radius: float, source: str) -> MixtureProfile:
    a = np.array(amplitudes, np.float64)
    v = np.array(variances, np.float64)
    a.flags.writeable = v.flags.writeable = False
    w = a / a.sum()
    w.flags.writeable = False
    return MixtureProfile(name, w, v, max_radius, source)


# CModel's "exp" stage: lux, K = 6, maxRadius 4 (shapelet data/lux_K06_MR04.pickle)
EXP = _profile("exp",
               [0.002348531992742752, 0.030799498176370645, 0.2233645112201032, 1.1794909808260536,
                4.338736470973163, 5.9982084187606475],
               [0.0012007879450750007, 0.00884525395287227, 0.03914632506077574, 0.13997686821235952,
                0.46096246054949025, 1.5015954880773934],
               4.0, "Hogg & Lang 2013 lux K=6 MR=4 (Rubin shapelet lux_K06_MR04)")
# CModel's "dev" stage: luv, K = 8, maxRadius 8 (shapelet data/luv_K08_MR08.pickle)
DEV = _profile("dev",
               [0.042634780453217495, 0.24012716085960026, 0.6859071688235171, 1.5193717069760277,
                2.836268460534575, 4.464670192120253, 5.724409060101738, 5.609901711318255],
               [0.00022375926294028074, 0.0010022010934505137, 0.004187309778633194, 0.01694324010074813,
                0.06848490941884793, 0.28720625345899653, 1.3331981768264765, 8.402130126564536],
               8.0, "Hogg & Lang 2013 luv K=8 MR=8 (Rubin shapelet luv_K08_MR08)")
# CModel's "initial" stage: lux, K = 3, maxRadius 4 (shapelet data/lux_K03_MR04.pickle)
INITIAL = _profile("initial",
                   [0.39051992253634116, 3.713561031136341, 7.567472974524089],
                   [0.03757067270870865, 0.2772226369256338, 1.2483197636843673],
                   4.0, "Hogg & Lang 2013 lux K=3 MR=4 (Rubin shapelet lux_K03_MR04)")
PROFILES = {p.name: p for p in (EXP, DEV, INITIAL)}

# A point source: one component of zero size (the PSF mixture itself).
POINT = _profile("point", [1.0], [0.0], 0.0, "a delta function")

LUX_B = 1.67835  # SDSS photo's exponential: exp(-LUX_B (r - 1))
LUV_B = 7.66925  # SDSS photo's de Vaucouleurs: exp(-LUV_B ((r^2 + LUV_SOFTENING)^(1/8) - 1))
LUV_SOFTENING = 0.0004


def _taper(r, start: float, stop: float) -> np.ndarray:
    t = np.where(r > start, (1.0 - (r - start) ** 2) ** 2, 1.0)
    return np.where(r >= stop, 0.0, t)


def lux(r) -> np.ndarray:
    """SDSS's truncated exponential profile (1 at r = 1; r in units of r_e), which EXP approximates."""
    r = np.asarray(r, float)
    return np.exp(-LUX_B * (r - 1.0)) * _taper(r, 3.0, 4.0)


def luv(r) -> np.ndarray:
    """SDSS's softened, truncated de Vaucouleurs profile (about 1 at r = 1), which DEV approximates."""
    r = np.asarray(r, float)
    return np.exp(-LUV_B * ((r * r + LUV_SOFTENING) ** 0.125 - 1.0)) * _taper(r, 7.0, 8.0)


def ellipse_quadrupole(r_major, r_minor, theta) -> np.ndarray:
    """(N, 3) half-light ellipse (Qxx, Qyy, Qxy) of semi-axes r_major, r_minor at angle theta (radians,
    from +x towards +y)."""
    a2 = np.asarray(r_major, float) ** 2
    b2 = np.asarray(r_minor, float) ** 2
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([a2 * c * c + b2 * s * s, a2 * s * s + b2 * c * c, (a2 - b2) * c * s], axis=-1)
