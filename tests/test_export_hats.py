"""`forcedphot export hats`: a HATS catalog LSDB opens and cross-matches; refusals are one line."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord

from forcedphot import query
from forcedphot.cli import main

lsdb = pytest.importorskip("lsdb", reason="lsdb is in the test extra: pip install -e '.[test]'")
pytest.importorskip("hats_import", reason="hats-import is in the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def catalog_dir(measured_tiny_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("hats") / "object_hats"
    assert main(["export", "hats", "--repo", str(measured_tiny_repo), "--out", str(out), "--highest-order", "5"]) == 0
    return out


def test_lsdb_opens_and_crossmatches_the_export(measured_tiny_repo, catalog_dir):
    objects = query.load_object(measured_tiny_repo, backend="pandas")
    catalog = lsdb.open_catalog(catalog_dir)
    assert catalog.hc_structure.catalog_info.ra_column == "coord_ra"
    df = catalog.compute()
    assert len(df) == len(objects) > 0
    got = df.set_index("objectId").sort_index()
    want = objects.set_index("objectId").sort_index()
    for col in ("coord_ra", "coord_dec", "g_psfFlux", "i_kronFlux"):
        assert np.allclose(got[col], want[col], equal_nan=True, rtol=0, atol=0), col
    # a second catalog: every other object shifted by 0.3 arcsec in dec
    shifted = objects.iloc[::2][["objectId", "coord_ra", "coord_dec"]].rename(columns={"objectId": "sourceId"})
    shifted = shifted.assign(ra=shifted["coord_ra"], dec=shifted["coord_dec"] + 0.3 / 3600)[["sourceId", "ra", "dec"]]
    other = lsdb.from_dataframe(shifted, ra_column="ra", dec_column="dec", margin_threshold=None)
    # each shifted row's nearest exported object within 1 arcsec, as astropy finds it
    matched = other.crossmatch(catalog, radius_arcsec=1.0, n_neighbors=1, suffixes=("_shift", "_obj"),
                               suffix_method="all_columns").compute().set_index("sourceId_shift").sort_index()
    theirs = SkyCoord(shifted["ra"].to_numpy(), shifted["dec"].to_numpy(), unit="deg")
    ours = SkyCoord(objects["coord_ra"].to_numpy(), objects["coord_dec"].to_numpy(), unit="deg")
    index, sep, _ = theirs.match_to_catalog_sky(ours)
    expected = pd.DataFrame({"objectId": objects["objectId"].to_numpy()[index], "sep": sep.arcsec},
                            index=shifted["sourceId"].to_numpy()).sort_index()
    assert len(matched) == len(shifted) == (expected["sep"] < 1.0).sum()
    assert (matched["objectId_obj"].to_numpy() == expected["objectId"].to_numpy()).all()
    assert np.allclose(matched["_dist_arcsec"], expected["sep"], atol=1e-6)
    assert (expected["objectId"].to_numpy() == expected.index.to_numpy()).mean() > 0.9  # mostly the object itself


def test_forced_source_export_and_refusals(measured_tiny_repo, catalog_dir, tmp_path, capsys):
    # an existing --out is refused without --overwrite, and left as it was
    before = sorted(p.relative_to(catalog_dir) for p in catalog_dir.rglob("*"))
    assert main(["export", "hats", "--repo", str(measured_tiny_repo), "--out", str(catalog_dir)]) != 0
    err = capsys.readouterr().err.strip()
    assert str(catalog_dir) in err and "--overwrite" in err and "\n" not in err
    assert sorted(p.relative_to(catalog_dir) for p in catalog_dir.rglob("*")) == before
    # not a repository
    assert main(["export", "hats", "--repo", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) != 0
    assert "not a forcedphot repository" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # --overwrite of a folder export did not write: refused with one line, nothing in it touched
    mine = tmp_path / "thesis"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("tex")
    (mine / "sub" / "data.csv").write_text("1,2")
    assert main(["export", "hats", "--repo", str(measured_tiny_repo), "--out", str(mine), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"forcedphot: error: {mine}: not a HATS catalog written by forcedphot export hats (no forcedphot_writer in "
        f"{mine / 'properties'}); refusing to overwrite it")
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == ["sub", "sub/data.csv", "thesis.tex"]
    assert (mine / "thesis.tex").read_text() == "tex" and (mine / "sub" / "data.csv").read_text() == "1,2"
    # the long table, replacing an earlier export with --overwrite; nothing else left next to it
    out = tmp_path / "fs"
    shutil.copytree(catalog_dir, out)
    (out / "stale").write_text("old")
    assert main(["export", "hats", "--repo", str(measured_tiny_repo), "--out", str(out), "--table", "forced_source",
                 "--overwrite", "--highest-order", "5"]) == 0
    assert not (out / "stale").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fs", "thesis"]
    assert "forcedphot_writer=forcedphot-" in (out / "properties").read_text()
    long = lsdb.open_catalog(out).compute()
    want = query.load_forced_source(measured_tiny_repo, columns=["objectId", "band", "psfFlux"]).to_pandas()
    assert len(long) == len(want) > 0
    merged = pd.merge(long[["objectId", "band", "psfFlux"]], want, on=["objectId", "band"], suffixes=("", "_want"))
    assert len(merged) == len(want)
    assert np.allclose(merged["psfFlux"], merged["psfFlux_want"], equal_nan=True)
