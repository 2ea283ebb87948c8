"""The per-object table against the long forced_source table, and against Rubin's lsstcam Object schema."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from forcedphot import objects as objects_module
from forcedphot import query
from forcedphot.layout import STANDARD_APERTURE_RADII
from forcedphot.objects import BAND_COLUMNS, missing_columns, object_columns, object_select
from forcedphot.plugins.aperture import aperture_name
from forcedphot.schema import load_schema

BANDS = ["g", "r", "i", "z"]  # the tiny recipe's bands, in wavelength order
GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "query.md"  # lists the column families

# Rubin's forced per-band Object columns the view may leave out because their forced_source column does not
# exist yet: none (the CModel and GAaP columns have landed); the test requires all 58 per band.
AWAITING: set[str] = set()
# Per-band columns of Rubin's Object derived from forced ones without "Forced on" in their description:
# the magnitudes of the forced psfFlux and the duplicates of the forced 12 px aperture's flags (name -> the
# forced_src column their description names).
DERIVED = {"psfMag": "psfFlux", "psfMagErr": "psfFlux", "apFlux_flag": "ap12Flux_flag",
           "apFlux_flag_apertureTruncated": "ap12Flux_flag_apertureTruncated",
           "apFlux_flag_sincCoeffsTruncated": "ap12Flux_flag_sincCoeffsTruncated"}
FELIS = {pl.Float32: "float", pl.Float64: "double", pl.Int32: "int", pl.Int64: "long", pl.Boolean: "boolean",
         pl.String: "char"}


def rubin_object() -> dict[str, dict]:
    """Rubin's lsstcam Object columns (name -> Felis column), read from the installed lsst-sdm-schemas."""
    sdm = importlib.resources.files("lsst.sdm.schemas")
    cam = yaml.safe_load((sdm / "lsstcam.yaml").read_text())
    table = next(t for t in cam["tables"] if t["name"] == "Object")
    columns = {c["name"]: c for c in table.get("columns", [])}
    for resource, tables in table.get("columnRefs", {}).items():
        base = yaml.safe_load((sdm / cam["resources"][resource]["uri"]).read_text())
        for name, refs in tables.items():
            defined = {c["name"]: c for c in next(t for t in base["tables"] if t["name"] == name)["columns"]}
            columns.update({n: defined[n] for n in refs})
    return columns


def rubin_forced(columns: dict[str, dict], band: str) -> dict[str, dict]:
    """The forced per-band columns of band ``band`` (unprefixed name -> Felis column): described "Forced on
    <band>-band", plus the DERIVED ones (whose descriptions name the forced column they come from)."""
    forced = {n[len(band) + 1:]: c for n, c in columns.items()
              if n.startswith(f"{band}_") and f"Forced on {band}-band" in c.get("description", "")}
    derived = {n: columns[f"{band}_{n}"] for n in DERIVED}
    assert {"psfFlux", "ap12Flux_flag"} <= set(forced)  # (Rubin's Object has no ap12Flux_flag_apertureTruncated)
    for name, col in derived.items():
        said = col["description"]
        assert f"{band}-band psfFlux" in said or f"Duplicate of {band}_{DERIVED[name]}" in said, name
    return forced | derived


@pytest.fixture(scope="module")
def rubin() -> dict[str, dict]:
    return rubin_object()


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
        for entry in objects_module.available_columns():
            col = entry.source
            mine, theirs = joined[f"{band}_{entry.name}"], joined[col]
            theirs = theirs.cast(mine.dtype)  # the view's type (Rubin's fluxes and magnitudes are float)
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
    assert all(c.description and c.ucd for c in documented)
    assert next(c for c in documented if c.name == "g_psfFlux").unit == "nJy"
    # each column's declared Felis datatype is the one the view delivers
    assert {c.name: c.datatype for c in documented} == {n: FELIS[t] for n, t in objects.schema.items()}
    guide = GUIDE.read_text()
    for family in {re.sub(r"^[a-z]_(?:[a-z]_)?", "<b>_", c.name) for c in documented if c.name[1] == "_"}:
        family = re.sub(r"ap\d\d(p\d)?", "apNN", family)  # the guide lists the apertures as apNN
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


def test_rubin_forced_columns_are_counted_as_documented(rubin):
    """lsstcam's Object has, for each of u g r i z y, 53 columns "Forced on <band>-band" and the 5 DERIVED
    ones; BAND_COLUMNS marks exactly those 58 as Rubin's."""
    names = None
    for band in "ugrizy":
        forced = rubin_forced(rubin, band)
        assert len(forced) == 58 and len(set(forced) - set(DERIVED)) == 53, band
        assert names is None or set(forced) == names
        names = set(forced)
    assert {c.name for c in BAND_COLUMNS if c.rubin} == names
    assert len({c.name for c in BAND_COLUMNS}) == len(BAND_COLUMNS)
    # every aperture of the forced_source schema is in the view (Rubin's nine and our 4.5 px)
    assert {f"{aperture_name(r)}Flux" for r in STANDARD_APERTURE_RADII} <= {c.name for c in BAND_COLUMNS}


def test_view_has_rubins_forced_columns_with_their_names_datatypes_and_units(measured_tiny_repo, objects, rubin):
    documented = {c.name: c for c in object_columns(BANDS)}
    checked = 0
    for band in BANDS:
        for name, col in rubin_forced(rubin, band).items():
            full = f"{band}_{name}"
            if name in AWAITING:
                assert full not in objects.columns and full not in documented, full
                continue
            assert full in objects.columns, full
            assert FELIS[objects.schema[full]] == col["datatype"], (full, objects.schema[full], col["datatype"])
            assert documented[full].datatype == col["datatype"], full
            assert documented[full].unit == col.get("ivoa:unit"), (full, documented[full].unit, col.get("ivoa:unit"))
            checked += 1
    assert checked == len(BANDS) * (58 - len(AWAITING))
    assert {n for n, c in documented.items() if c.rubin} == {f"{b}_{n}" for b in BANDS for n in rubin_forced(rubin, b)
                                                            if n not in AWAITING}
    # the entries left out of the view are exactly those awaiting their forced_source column
    assert {c.name for c in missing_columns()} == AWAITING
    # values: the Rubin duplicates are ap12's flags, every band
    for band in BANDS:
        assert objects[f"{band}_apFlux_flag"].equals(objects[f"{band}_ap12Flux_flag"])
        assert objects[f"{band}_psfFlux_area"].is_not_null().any()
    view = query.sql(measured_tiny_repo, "SELECT * FROM object LIMIT 1")
    assert str(view.schema.field("g_psfFlux").type) == "float" and str(view.schema.field("g_ap70Flux").type) == "float"


def test_a_missing_source_column_is_detected_not_silently_dropped(monkeypatch):
    """An entry whose forced_source column does not exist is left out of the view and reported."""
    real = load_schema("forced_source")
    fake = dataclasses.replace(real, columns=tuple(c for c in real.columns if c.name != "psfFlux_area"))
    monkeypatch.setattr(objects_module, "load_schema", lambda dataset, *a, **k: fake)
    assert "psfFlux_area" in {c.name for c in missing_columns()}
    assert '"g_psfFlux_area"' not in object_select(["g"]) and '"g_psfFlux_flag_edge"' in object_select(["g"])
    assert "g_psfFlux_area" not in {c.name for c in object_columns(["g"])}
    monkeypatch.undo()
    assert "psfFlux_area" not in {c.name for c in missing_columns()}
    assert '"g_psfFlux_area"' in object_select(["g"])
