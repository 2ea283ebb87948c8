"""Flux pulls of isolated simulated stars, against the truth and against the noiseless twin.

The noiseless twin has the same sources, PSFs and variance planes without pixel noise, so
the same algorithm on it gives each measurement's expected value: (noisy - noiseless) / err
checks that every estimator is unbiased by noise and that its error is right.
"""

import numpy as np
import pytest

from forcedphot import query

PULL_FLUXES = ("psfFlux", "gaussianFlux", "kronFlux", "ap03Flux", "ap04p5Flux", "ap06Flux", "ap09Flux", "ap12Flux",
               "ap17Flux")
# ConvolvedFlux: the smallest and largest targets, a circle and the Kron ellipse (errors sqrt(sum W'^2 V))
CONVOLVED = ("convolved0_ap03p3Flux", "convolved1_ap04p5Flux", "convolved3_ap06Flux", "convolved0_kronFlux",
             "convolved3_kronFlux")
ISOLATED_STAR = ("t.is_star AND t.n_neighbours = 0 AND f.detect_isPrimary AND f.parentObjectId = 0 "
                 "AND NOT f.pixelFlags_saturatedCenter")


def _joined(noisy, noiseless, columns):
    con = query.connect(noisy)
    con.register("twin", query.arrow_dataset(noiseless, "forced_source"))  # the connection opens no file itself
    sel = ", ".join(f"f.{c} AS {c}, f.{c}Err AS {c}Err, z.{c} AS {c}_twin, f.{c}_flag AS {c}_flag" for c in columns)
    return con.sql(f"""SELECT f.band, t.flux AS true_flux, {sel}
                       FROM forced_source f JOIN twin z USING (objectId, band)
                       JOIN truth t ON t.id = f.objectId AND t.band = f.band
                       WHERE {ISOLATED_STAR}""").fetchnumpy()


@pytest.mark.parametrize("column", PULL_FLUXES + CONVOLVED)
def test_pulls_against_the_noiseless_twin(star_field_repo, star_field_noiseless_repo, column):
    d = _joined(star_field_repo, star_field_noiseless_repo, [column])
    good = ~d[f"{column}_flag"] & np.isfinite(d[column]) & np.isfinite(d[f"{column}_twin"])
    pull = ((d[column] - d[f"{column}_twin"]) / d[f"{column}Err"])[good]
    print(f"{column}: n={pull.size} mean {pull.mean():+.4f} std {pull.std(ddof=1):.4f}")
    assert pull.size >= 800
    assert abs(pull.mean()) < 0.05
    assert abs(pull.std(ddof=1) - 1) < 0.05


@pytest.mark.parametrize("column", ["psfFlux", "gaussianFlux", "kronFlux", "convolved1_ap04p5Flux",
                                    "convolved3_ap06Flux", "convolved1_kronFlux"])
def test_aperture_corrected_fluxes_of_stars_are_total_fluxes(star_field_repo, star_field_noiseless_repo, column):
    """After aperture correction, PSF, Gaussian, Kron and convolved fluxes of stars estimate the total flux."""
    d = _joined(star_field_repo, star_field_noiseless_repo, [column])
    good = ~d[f"{column}_flag"] & np.isfinite(d[f"{column}_twin"])
    ratio = d[f"{column}_twin"][good] / d["true_flux"][good]
    pull = ((d[column] - d["true_flux"]) / d[f"{column}Err"])[good]
    print(f"{column}: noiseless/true median {np.median(ratio):.5f}; pull vs truth mean {pull.mean():+.3f} std {pull.std():.3f}")
    assert abs(np.median(ratio) - 1) < 2e-3
    assert abs(pull.mean()) < 0.1


def test_apertures_grow_monotonically_for_isolated_stars(star_field_noiseless_repo):
    cols = ["ap03Flux", "ap04p5Flux", "ap06Flux", "ap09Flux", "ap12Flux"]
    t = query.sql(star_field_noiseless_repo, f"""SELECT {', '.join('f.' + c for c in cols)} FROM forced_source f
        JOIN truth t ON t.id = f.objectId AND t.band = f.band WHERE {ISOLATED_STAR}""").to_pandas().dropna()
    assert (np.diff(t.to_numpy(), axis=1) > 0).mean() > 0.99


def test_every_convolved_flux_of_stars_is_a_total_flux_after_aperture_correction(star_field_repo,
                                                                                 star_field_noiseless_repo):
    """The simulator's ApCorr fields for ConvolvedFlux (star fractions of the matched PSF) are honest: the median
    noiseless/true flux of isolated stars is 1 to 2e-3 for every target and aperture, and the circles' pulls
    against the truth are unbiased (mean < 0.1, std < 1.05). The Kron pulls also hold the naive ellipse's
    pixelisation of the wider matched stars (std up to 2.4 at 8 px): printed, not asserted."""
    from forcedphot.plugins.convolved import CONVOLVED_FLUXES

    d = _joined(star_field_repo, star_field_noiseless_repo, list(CONVOLVED_FLUXES))
    for column in CONVOLVED_FLUXES:
        good = ~d[f"{column}_flag"] & np.isfinite(d[f"{column}_twin"])
        ratio = d[f"{column}_twin"][good] / d["true_flux"][good]
        pull = ((d[column] - d["true_flux"]) / d[f"{column}Err"])[good]
        print(f"{column}: n={good.sum()} noiseless/true median {np.median(ratio):.5f}; pull vs truth mean "
              f"{pull.mean():+.3f} std {pull.std():.3f}")
        assert good.sum() >= 800 and abs(np.median(ratio) - 1) < 2e-3, column
        if "kron" not in column:
            assert abs(pull.mean()) < 0.1 and pull.std() < 1.05, column
