"""Every number carries its flag: a sweep of every plugin's flux-like columns on a pathological survey.

The fixture edits a copy of one tiny-survey quantum (tract 0, patch 1, band r) in about a second:
a NaN box (image NaN, no mask bit), zero and negative variance boxes, an all-masked (NO_DATA)
box, each centred on sources, and references moved to the coadd's edge and off it. Then for
each plugin's value/error/flag triple (``validity.forced_source_measurements``) a
non-finite value, a non-finite error or an error <= 0 must have its general flag set.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot import checks
from forcedphot.config import ForcedPhotConfig
from forcedphot.io.coadd import read_coadd, write_coadd
from forcedphot.io.parquet import write_parquet
from forcedphot.plan import plan_quanta
from forcedphot.plugins.base import Column, flag
from forcedphot.validity import flag_invalid, forced_source_measurements, invalid, measurements
from forcedphot.repository import DataId, Repository
from forcedphot.schema import load_schema
from forcedphot.task import ForcedPhotCoaddTask

DATA_ID = DataId(0, 1, "r")
BOX = 3  # half-size of each pathological box (7x7 pixels)
PATHOLOGIES = ("nan_image", "zero_variance", "negative_variance", "no_data")


@pytest.fixture(scope="module")
def pathological(tiny_repo_master, tmp_path_factory):
    """(repo, {pathology: reference ids it was centred on}, ids moved to the edge or off the coadd)."""
    root = tmp_path_factory.mktemp("pathological") / "repo"
    shutil.copytree(tiny_repo_master, root, ignore=shutil.ignore_patterns("forced_source", "truth", "scarlet_models"))
    repo = Repository(root)
    coadd = read_coadd(repo.coadd_path(DATA_ID))
    image, variance, mask = (np.array(a) for a in (coadd.image, coadd.variance, coadd.mask))
    ref_path = repo.ref_path(0, 1)
    ref = pq.read_table(ref_path)
    x, y = ref.column("centroid_x").to_numpy(), ref.column("centroid_y").to_numpy()
    b = coadd.bbox
    inside = np.flatnonzero((x > b.min_x + 20) & (x < b.max_x - 20) & (y > b.min_y + 20) & (y < b.max_y - 20))
    targets = {}
    no_data = coadd.mask_planes.bitmask("NO_DATA")
    for k, name in enumerate(PATHOLOGIES):
        rows = inside[k::len(PATHOLOGIES)][:3]  # three sources per pathology
        targets[name] = ref.column("id").to_numpy()[rows]
        for r in rows:
            cx, cy = int(round(x[r])) - b.min_x, int(round(y[r])) - b.min_y
            box = np.s_[cy - BOX:cy + BOX + 1, cx - BOX:cx + BOX + 1]
            if name == "nan_image":
                image[box] = np.nan
            elif name == "zero_variance":
                variance[box] = 0.0
            elif name == "negative_variance":
                variance[box] = -variance[box]
            else:
                mask[box] |= no_data
    write_coadd(dataclasses.replace(coadd, image=image, variance=variance, mask=mask), repo.coadd_path(DATA_ID))
    # references on the edge, half off and far off the coadd (positions through the tract WCS)
    moved = inside[-4:]
    new_x = np.array([b.min_x - 0.4, b.max_x + 2.0, b.min_x - 300.0, b.max_x - 1.0])
    new_y = np.array([y[moved[0]], b.max_y + 1.0, b.min_y - 300.0, b.max_y + 0.4])
    ra, dec = coadd.wcs.all_pix2world(new_x, new_y, 0)
    columns = {name: ref.column(name).to_numpy().copy() for name in ("coord_ra", "coord_dec", "centroid_x", "centroid_y")}
    for name, values in zip(columns, (ra, dec, new_x, new_y)):
        columns[name][moved] = values
        ref = ref.set_column(ref.column_names.index(name), name, pa.array(columns[name]))
    write_parquet(ref, ref_path, load_schema("ref"))
    return repo, targets, ref.column("id").to_numpy()[moved]


def measure(repo, config):
    quantum = next(q for q in plan_quanta(repo, bands=["r"]) if q.data_id == DATA_ID)
    task = ForcedPhotCoaddTask(repo, config)
    inputs = task.attach_footprints(quantum)
    return task.run(task.generate_meas_cat(inputs), inputs)


def column(table, name):
    return table.column(name).to_numpy(zero_copy_only=False)


CONFIGS = {
    "default": ForcedPhotConfig(),
    "exact, no noise replacement": ForcedPhotConfig(aperture_method="exact", noise_replacement=False),
}


def sweep(table) -> tuple[int, int, dict]:
    """(measurements swept, unusable numbers, {measurement: unflagged unusable rows})."""
    swept, unusable, unflagged = 0, 0, {}
    for m in forced_source_measurements():
        if table.column(m.value).null_count == table.num_rows:
            continue  # not configured (e.g. radii outside the config): null, not measured
        value = column(table, m.value).astype(float)
        error = column(table, m.error).astype(float) if m.error else None
        bad = invalid(value, error, positive=m.positive)
        silent = bad & ~column(table, m.flag).astype(bool)
        if silent.any():
            unflagged[m.value] = int(silent.sum())
        swept += 1
        unusable += int(bad.sum())
    return swept, unusable, unflagged


@pytest.mark.parametrize("name", CONFIGS)
def test_every_flux_like_number_carries_its_flag(pathological, name):
    repo, targets, moved = pathological
    table = measure(repo, CONFIGS[name])
    ids = column(table, "objectId")
    swept, unusable, unflagged = sweep(table)
    assert not unflagged, unflagged
    assert swept == len(forced_source_measurements()) >= 28  # all plugins' fluxes, apertures, undeblended copies, ...
    assert unusable > 20  # the pathologies produced unusable numbers, and each was flagged
    # the sources under each pathology and the moved references have their fluxes flagged
    for pathology, target in [*targets.items(), ("moved", moved)]:
        rows = np.isin(ids, target)
        assert rows.sum() == target.size
        for flux in ("psfFlux", "ap03Flux", "gaussianFlux", "kronFlux"):
            assert column(table, f"{flux}_flag")[rows].all(), (pathology, flux)
    # invalid pixels (zero or negative variance, NaN, NO_DATA) are left out of the PSF fit, which says so
    for pathology in PATHOLOGIES:
        rows = np.isin(ids, targets[pathology])
        assert column(table, "psfFlux_flag_edge")[rows].all(), pathology
        assert (column(table, "psfFluxErr")[rows] > 0).all(), pathology  # not the 0 of a zero variance


@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt")  # the old rule's negative variance
def test_central_rule_flags_what_plugins_miss(pathological, monkeypatch):
    """With the old validity rule (variance only finite) zero variance gives errors of 0 and negative
    variance NaN errors: the plugins' own flags miss them and the central rule catches every one."""
    import forcedphot.stages as stages
    import forcedphot.task as task

    def finite_only(image, variance, mask, no_data):
        return (np.isfinite(image) & np.isfinite(variance) & ((mask & no_data) == 0)).astype(np.uint8)

    repo = pathological[0]
    monkeypatch.setattr(stages, "valid_plane", finite_only)
    assert not sweep(measure(repo, ForcedPhotConfig()))[2]
    monkeypatch.setattr(task, "flag_invalid", lambda values, measured=None: values)
    _, _, unflagged = sweep(measure(repo, ForcedPhotConfig()))
    assert unflagged.get("ap03Flux", 0) > 0 and unflagged.get("sdssShape_flux", 0) > 0, unflagged


def test_load_counts_the_pixels_made_invalid_by_their_variance(pathological, caplog):
    repo, targets, _ = pathological
    coadd = read_coadd(repo.coadd_path(DATA_ID))
    # zero and negative boxes (3 each, 7x7), minus pixels that were already NO_DATA or NaN
    expected = int(((~(coadd.variance > 0)) & np.isfinite(coadd.image)
                    & ((coadd.mask & coadd.mask_planes.bitmask("NO_DATA")) == 0)).sum())
    assert expected > 100  # boxes may overlap each other or the survey's own NaN box
    assert checks.bad_variance_pixels(coadd) == expected
    with caplog.at_level("WARNING", logger="forcedphot.checks"):
        measure(repo, ForcedPhotConfig(plugins=("PsfFlux",), undeblended=()))
    assert f"{expected} pixel(s) with finite image but non-finite or non-positive variance" in caplog.text
    assert "coadd.arrow" in caplog.text


def test_central_rule_sets_the_general_flag_and_nothing_else():
    cols = (Column("aFlux", "double", "", kind="flux"), Column("aFluxErr", "double", "", kind="fluxErr"),
            flag("aFlux_flag", ""), flag("aFlux_flag_edge", ""),
            Column("grp_flux", "double", "", kind="flux"), flag("grp_flag", ""),
            Column("localV", "double", "", kind="variance"), flag("localV_flag", ""))
    triples = measurements(cols)
    assert [(m.value, m.error, m.flag) for m in triples] == [("aFlux", "aFluxErr", "aFlux_flag"),
                                                             ("grp_flux", None, "grp_flag"),
                                                             ("localV", None, "localV_flag")]
    values = {"aFlux": np.array([1.0, np.nan, 1.0, 1.0, 1.0, 2.0]),
              "aFluxErr": np.array([1.0, 1.0, 0.0, -1.0, np.inf, 1.0]),
              "aFlux_flag": np.array([False, False, False, False, False, True]),
              "aFlux_flag_edge": np.zeros(6, bool),
              "grp_flux": np.array([1.0, np.inf, -1.0, 0.0, 1.0, 1.0]), "grp_flag": np.zeros(6, bool),
              "localV": np.array([1.0, 0.0, -1.0, np.nan, 2.0, 3.0]), "localV_flag": np.zeros(6, bool)}
    flag_invalid(values, triples)
    assert values["aFlux_flag"].tolist() == [False, True, True, True, True, True]
    assert not values["aFlux_flag_edge"].any()  # specific flags are the plugins' own
    assert values["grp_flag"].tolist() == [False, True, False, False, False, False]  # negative fluxes are numbers
    assert values["localV_flag"].tolist() == [False, True, True, True, False, False]
    with pytest.raises(ValueError, match="no general flag"):
        measurements((Column("bFlux", "double", "", kind="flux"),))
