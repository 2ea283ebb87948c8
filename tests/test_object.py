"""The per-object table against the long forced_source table."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from forcedphot import query
from forcedphot.objects import object_columns

BANDS = ["g", "r", "i", "z"]  # the tiny recipe's bands, in wavelength order
GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "query.md"  # lists the column families


@pytest.fixture(scope="module")
def objects(measured_tiny_repo) -> pl.DataFrame:
    return query.load_object(measured_tiny_repo)


@pytest.fixture(scope="module")
def long(measured_tiny_repo) -> pl.DataFrame:
    return query.load_forced_source(measured_tiny_repo)


def test_one_row_per_primary_object(measured_tiny_repo, objects, long):
    primaries = long.filter(pl.col("detect_isPrimary"))
    assert objects.height == objects["objectId"].n_unique() == primaries["objectId"].n_unique() > 0
    assert objects["detect_isPrimary"].all()
    # a simulated source in a patch overlap is an object of each patch; the table has it once
    truth = pl.from_arrow(query.sql(measured_tiny_repo, "SELECT DISTINCT id AS objectId, source_id FROM truth"))
    per_source = long.select("objectId").unique().join(truth, on="objectId").group_by("source_id").len()
    assert per_source["len"].max() > 1
    assert objects.join(truth, on="objectId")["source_id"].is_duplicated().sum() == 0


def test_values_equal_the_forced_source_rows(objects, long):
    primaries = long.filter(pl.col("detect_isPrimary"))
    for band in BANDS:
        rows = primaries.filter(pl.col("band") == band)
        joined = objects.join(rows, on="objectId", how="inner")
        assert joined.height == rows.height > 0
        for col in ("psfFlux", "psfFluxErr", "psfFlux_flag", "psfMag", "gaussianFlux", "kronFlux", "kronRad",
                    "ap06Flux", "ap12FluxErr", "extendedness", "inputCount", "pixelFlags_edge"):
            mine, theirs = joined[f"{band}_{col}"], joined[col]
            same = (mine == theirs) | (mine.is_null() & theirs.is_null())
            if mine.dtype.is_float():
                same = same | (mine.is_nan() & theirs.is_nan())
            assert same.all(), (band, col)
        assert (joined["coord_ra"] == joined["coord_ra_right"]).all()
        assert (joined["patch"] == joined["patch_right"]).all()  # the primary patch's row
    colour = objects["g_psfMag"] - objects["r_psfMag"]
    finite = colour.is_finite()
    assert finite.sum() > 0 and ((objects["g_r_psfColor"] - colour).abs().filter(finite) < 1e-12).all()


def test_a_missing_band_is_null(measured_tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, repo)
    (repo / "forced_source" / "tract=0" / "patch=0" / "band=z" / "forced_source.parquet").unlink()
    objects = query.load_object(repo)
    in_patch0 = objects.filter(pl.col("patch") == 0)
    assert in_patch0.height > 0 and in_patch0["z_psfFlux"].is_null().all() and in_patch0["i_z_psfColor"].is_null().all()
    assert in_patch0["i_psfFlux"].is_not_null().all()
    assert objects.filter(pl.col("patch") != 0)["z_psfFlux"].is_not_null().all()


def test_sql_view_equals_the_loader_and_the_documented_columns(measured_tiny_repo, objects):
    view = query.sql(measured_tiny_repo, "SELECT * FROM object ORDER BY objectId")
    assert view.column_names == objects.columns
    assert view.column("objectId").to_pylist() == objects["objectId"].to_list()
    documented = object_columns(BANDS)
    assert [c.name for c in documented] == objects.columns
    assert all(c.description for c in documented)
    assert next(c for c in documented if c.name == "g_psfFlux").unit == "nJy"
    guide = GUIDE.read_text()
    for family in {re.sub(r"^[a-z]_(?:[a-z]_)?", "<b>_", c.name) for c in documented if c.name[1] == "_"}:
        assert family.replace("<b>_", "") in guide, family


def test_all_objects_includes_the_non_primary_ones(measured_tiny_repo, long):
    every = query.load_object(measured_tiny_repo, primary_only=False)
    assert every.height == long.select("objectId", "patch").unique().height
    assert every.select("objectId", "patch").is_duplicated().sum() == 0
    assert every.height > every.filter(pl.col("detect_isPrimary")).height > 0


def test_astropy_backend_carries_the_schema_units(measured_tiny_repo, objects):
    import astropy.units as u

    table = query.load_object(measured_tiny_repo, backend="astropy")
    assert len(table) == objects.height
    assert table["g_psfFlux"].unit == u.nJy and table["g_psfMag"].unit == u.ABmag
    assert table["g_psfMagErr"].unit == u.mag and table["coord_ra"].unit == u.deg
    flux = table["r_psfFlux"].to_value(u.nJy)
    assert ((flux == objects["r_psfFlux"].to_numpy()) | (flux != flux)).all()
    fs = query.load_forced_source(measured_tiny_repo, band="g", columns=["psfFlux", "psfMag", "centroid_x"],
                                  backend="astropy")
    assert fs["centroid_x"].unit == u.pix and fs["psfMag"].unit == u.ABmag
    with pytest.raises(ValueError, match="backend must be one of polars, pandas, astropy"):
        query.load_object(measured_tiny_repo, backend="arrow")
