"""Masked pixels never bias a flux silently: a zeroed column, marked BAD, through a star.

On the noiseless tiny survey (no bad columns of its own) one quantum's coadd gets a column of
zeros through an isolated star, marked BAD, as a dead column would be. Measured without noise
replacement (each source sees the coadd itself, so nothing else moves): the PSF fit leaves the
column out and stays within 1% of the true flux, flagged when the column carries more than
psf_max_bad_weight_fraction of the PSF weight; the apertures, Kron and Gaussian fluxes over the
column are flagged; a star far from it is unflagged and bit-identical.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.io.coadd import read_coadd, write_coadd
from forcedphot.plan import plan_quanta
from forcedphot.repository import DataId, Repository
from forcedphot.sim import load_recipe, simulate
from forcedphot.task import ForcedPhotCoaddTask

DATA_ID = DataId(0, 1, "r")  # five isolated, unflagged stars spread across the patch
CONFIG = ForcedPhotConfig(noise_replacement=False)
FLUXES = ("psfFlux", "ap03Flux", "ap04p5Flux", "ap06Flux", "ap09Flux", "ap12Flux", "ap17Flux", "kronFlux",
          "gaussianFlux")
COVERED = ("ap03Flux", "ap04p5Flux", "ap06Flux", "ap09Flux", "ap12Flux", "kronFlux", "gaussianFlux")


def measure(repo, config):
    quantum = next(q for q in plan_quanta(repo, bands=[DATA_ID.band]) if q.data_id == DATA_ID)
    task = ForcedPhotCoaddTask(repo, config)
    inputs = task.attach_footprints(quantum)
    table = task.run(task.generate_meas_cat(inputs), inputs)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.fixture(scope="module")
def column_through_a_star(tmp_path_factory):
    """(repo, before, row of the star under the column, row of a far star, true flux of both)."""
    root = tmp_path_factory.mktemp("masked") / "repo"
    simulate(load_recipe("tiny", noise=False, bad_columns=()), root, progress=False)
    repo = Repository(root)
    before = measure(repo, CONFIG)
    truth = pq.read_table(repo.truth_path(DATA_ID.tract, DATA_ID.patch)).to_pandas()
    truth = truth[truth.band == DATA_ID.band].set_index("id")
    ids = before["objectId"]
    coadd = read_coadd(repo.coadd_path(DATA_ID))
    b = coadd.bbox
    x, y = before["centroid_x"], before["centroid_y"]
    true_flux = truth.flux.reindex(ids).to_numpy()
    star = truth.is_star.reindex(ids).fillna(False).to_numpy(bool)
    alone = (truth.n_neighbours.reindex(ids) == 0).to_numpy()
    clean = ~np.any([before[f"{f}_flag"] for f in FLUXES], axis=0) & ~before["pixelFlags_saturated"]
    inside = (x > b.min_x + 40) & (x < b.max_x - 40) & (y > b.min_y + 40) & (y < b.max_y - 40)
    ok = star & alone & clean & inside & (np.abs(before["psfFlux"] / true_flux - 1) < 0.01)
    candidates = np.flatnonzero(ok)
    # the brightest candidate with another one beyond the reach of every aperture checked
    pairs = [(t, f) for t in candidates[np.argsort(-true_flux[candidates])] for f in candidates
             if abs(x[f] - np.floor(x[t] + 0.5)) > 45]
    assert pairs, "no isolated star far from another"
    target, far = pairs[0]
    column = int(np.floor(x[target] + 0.5))
    shutil.rmtree(root / "forced_source", ignore_errors=True)
    image, mask = np.array(coadd.image), np.array(coadd.mask)
    image[:, column - b.min_x] = 0.0
    mask[:, column - b.min_x] |= coadd.mask_planes.bitmask("BAD")
    write_coadd(dataclasses.replace(coadd, image=image, mask=mask), repo.coadd_path(DATA_ID))
    return repo, before, target, far, true_flux


def test_psf_fit_leaves_the_column_out_and_stays_unbiased(column_through_a_star):
    repo, before, s, _, truth = column_through_a_star
    after = measure(repo, CONFIG)
    assert after["psfFlux"][s] == pytest.approx(truth[s], rel=0.01)
    assert after["psfFlux_flag_badPixels"][s] and not after["psfFlux_flag_edge"][s]
    assert after["psfFlux_npixels"][s] < before["psfFlux_npixels"][s]
    assert after["psfFluxErr"][s] > before["psfFluxErr"][s]  # less information, honestly reported
    # a column through the centre carries more than the default 20% of sum(P^2): the general flag
    assert after["psfFlux_flag"][s] and not before["psfFlux_flag"][s]
    lenient = measure(repo, dataclasses.replace(CONFIG, psf_max_bad_weight_fraction=0.5))
    assert not lenient["psfFlux_flag"][s] and lenient["psfFlux_flag_badPixels"][s]
    assert lenient["psfFlux"][s] == after["psfFlux"][s]  # the fraction only decides the flag
    # the old default fitted the zeros: a large bias with no PSF flag (only pixelFlags_bad said so)
    old = measure(repo, dataclasses.replace(CONFIG, psf_bad_mask_planes=("NO_DATA",)))
    assert old["psfFlux"][s] / truth[s] < 0.85
    assert not old["psfFlux_flag"][s] and not old["psfFlux_flag_badPixels"][s] and old["pixelFlags_bad"][s]


def test_fluxes_summed_over_the_column_are_flagged(column_through_a_star):
    repo, before, s, _, _ = column_through_a_star
    after = measure(repo, CONFIG)
    for flux in COVERED:
        assert after[f"{flux}_flag"][s] and not before[f"{flux}_flag"][s], flux
        assert after[flux][s] < before[flux][s], flux  # the zeros are summed: biased low, and flagged
    assert not after["ap03Flux_flag_apertureTruncated"][s] and not after["ap03Flux_flag_sincCoeffsTruncated"][s]
    exact = measure(repo, dataclasses.replace(CONFIG, aperture_method="exact"))
    assert all(exact[f"ap{r}Flux_flag"][s] for r in ("03", "06", "12", "25"))


def test_a_star_far_from_the_column_is_unflagged_and_unchanged(column_through_a_star):
    repo, before, _, far, _ = column_through_a_star
    after = measure(repo, CONFIG)
    for flux in FLUXES:
        assert not after[f"{flux}_flag"][far], flux
        assert after[flux][far] == before[flux][far], flux
    assert not after["psfFlux_flag_badPixels"][far]
    assert after["psfFlux_npixels"][far] == before["psfFlux_npixels"][far]
