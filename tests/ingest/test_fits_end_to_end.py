"""Synthetic FITS coadds -> ingest (FITS, Parquet, CSV catalogs) -> run -> SQL against the injected fluxes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from forcedphot.cli import main
from forcedphot.ingest import BandSpec, CatalogSpec, ingest_fits
from forcedphot.query import sql
from forcedphot.repository import Repository
from tests.ingest.synth import FWHM_PX, PIXEL_SCALE, SHAPE, ZERO_POINT, gaussian_image


def _write_catalog(s, fmt: str):
    """The same stars, spelled as each format's users would: sky, pixel (1-based) and sky again."""
    ids = np.arange(101, 101 + s.x.size)
    if fmt == "fits":
        path = s.root / "cat.fits"
        Table({"ID": ids, "RA": s.ra, "DEC": s.dec}).write(path)
    elif fmt == "parquet":
        path = s.root / "cat.parquet"
        pq.write_table(pa.table({"objectId": ids, "X_IMAGE": s.x + 1, "Y_IMAGE": s.y + 1}), path)
    else:
        path = s.root / "cat.csv"
        pacsv.write_csv(pa.table({"id": ids, "ALPHA_J2000": s.ra, "DELTA_J2000": s.dec, "mag": np.zeros(ids.size)}),
                        path)
    return path


def _cli_bands(s):
    """g: Gaussian FWHM in px and a zero point; r: a PSF image and a flux unit."""
    psf_path = s.root / "psf_r.fits"
    # an even-sized, 3x oversampled PSF file: ingest must bin and centre it
    fwhm = FWHM_PX["r"] * 3
    fits.writeto(psf_path, gaussian_image((48, 48), [23.5], [23.5], [1.0], fwhm).astype(np.float32))
    r_unit_njy = 10 ** (-0.4 * (ZERO_POINT["r"] - 31.4))
    return ["--band", "g", "--image", s.files["g"]["image"], "--variance", s.files["g"]["variance"],
            "--psf-fwhm", f"{FWHM_PX['g']}px", "--zero-point", str(ZERO_POINT["g"]),
            "--band", "r", "--image", s.files["r"]["image"], "--variance", s.files["r"]["variance"],
            "--psf", str(psf_path), "--psf-oversampling", "3", "--flux-unit", f"{r_unit_njy * 1e-3:.12g} uJy"]


@pytest.mark.parametrize("fmt", ["fits", "parquet", "csv"])
def test_ingest_run_query_recovers_injected_fluxes(synthetic, tmp_path, fmt, capsys):
    s = synthetic
    cat = _write_catalog(s, fmt)
    repo = tmp_path / f"repo-{fmt}"
    assert main(["ingest", "fits", "--repo", str(repo), *_cli_bands(s), "--catalog", str(cat)]) == 0
    assert "12 reference rows" in capsys.readouterr().out
    assert main(["run", "--repo", str(repo), "-q"]) == 0
    counts = sql(repo, "SELECT band, count(*) AS n FROM forced_source GROUP BY band ORDER BY band").to_pylist()
    assert counts == [{"band": "g", "n": s.x.size}, {"band": "r", "n": s.x.size}]
    rows = sql(repo, """
        SELECT f.band, r.centroid_x, r.centroid_y, f.psfFlux, f.psfFluxErr
        FROM forced_source f JOIN ref r ON f.objectId = r.id ORDER BY f.band, r.centroid_x, r.centroid_y
    """).to_pandas()
    order = np.lexsort((s.y, s.x))
    for band in ("g", "r"):
        got = rows[rows.band == band]
        np.testing.assert_allclose(got.centroid_x, s.x[order], atol=1e-6)
        np.testing.assert_allclose(got.centroid_y, s.y[order], atol=1e-6)
        ratio = got.psfFlux.to_numpy() / s.njy(band)[order]
        assert np.all(np.abs(ratio - 1) < 0.01), (band, ratio)


def test_multi_patch_assigns_each_object_one_primary_record(synthetic, tmp_path):
    s = synthetic
    cat = _write_catalog(s, "fits")
    bands = [BandSpec(name=b, image=s.files[b]["image"], variance=s.files[b]["variance"],
                      psf_fwhm=FWHM_PX[b] * PIXEL_SCALE, psf_fwhm_unit="arcsec", zero_point=ZERO_POINT[b])
             for b in ("g", "r")]
    repo = ingest_fits(tmp_path / "repo", bands, CatalogSpec(path=cat), patch_size=40, patch_border=8,
                       ref_band="r")
    assert isinstance(repo, Repository)
    tract = repo.read_skymap()[0]
    assert (tract.n_patch_x, tract.n_patch_y) == (-(-SHAPE[1] // 40), -(-SHAPE[0] // 40))
    assert main(["run", "--repo", str(repo.root), "-q"]) == 0
    per_band = sql(repo, """
        SELECT band, count(*) FILTER (WHERE detect_isPrimary) AS n_primary, count(*) AS n,
               count(DISTINCT objectId) AS n_ids, min(refBand) AS ref_band
        FROM forced_source GROUP BY band ORDER BY band
    """).to_pylist()
    for row in per_band:
        assert row["n_primary"] == s.x.size and row["n"] > s.x.size and row["n_ids"] == row["n"]
        assert row["ref_band"] == "r"
    # every primary measurement recovers its star, whichever patch holds it
    got = sql(repo, "SELECT band, coord_ra, psfFlux FROM forced_source WHERE detect_isPrimary "
                    "ORDER BY band, coord_ra").to_pandas()
    order = np.argsort(s.ra)
    for band in ("g", "r"):
        ratio = got[got.band == band].psfFlux.to_numpy() / s.njy(band)[order]
        assert np.all(np.abs(ratio - 1) < 0.01), (band, ratio)


def test_skymap_stores_the_image_wcs(synthetic, tmp_path):
    s = synthetic
    cat = _write_catalog(s, "fits")
    band = BandSpec(name="g", image=s.files["g"]["image"], variance=s.files["g"]["variance"], psf_fwhm="3px",
                    flux_unit="nJy")
    repo = ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=cat))
    tract = repo.read_skymap()[0]
    assert tract.wcs_header and "RA---TAN" in tract.wcs_header
    xx, yy = np.meshgrid([0.0, 40.0, 87.0], [0.0, 71.0])
    np.testing.assert_allclose(np.array(tract.pixel_to_sky(xx, yy)), np.array(s.wcs.all_pix2world(xx, yy, 0)),
                               atol=1e-10)
    assert tract.n_patches == 1 and tract.patch_border == 0
    assert tract.patch(0).inner.width >= SHAPE[1] and tract.patch(0).inner.height >= SHAPE[0]


# -- keys back to the catalog rows, duplicates -------------------------------------------
def _g_band(s):
    return ["--band", "g", "--image", s.files["g"]["image"], "--variance", s.files["g"]["variance"],
            "--psf-fwhm", f"{FWHM_PX['g']}px", "--zero-point", str(ZERO_POINT["g"])]


def test_rows_without_ids_are_keyed_by_row_number_and_join_back(synthetic, tmp_path):
    """A catalog without an id column (positions only, as the GLIMPSE VOTable): externalId is each row's 0-based
    row number in the file, in ref, forced_source and the object view, and SQL joins the results back to the
    user's rows. Row 0 is off the image and the rows are reversed, so row numbers are not ref's order; with
    overlapping patches a row is measured in each patch holding it and is primary in one."""
    from forcedphot import query

    s = synthetic
    x, y, flux = np.r_[-30.0, s.x[::-1]], np.r_[5.0, s.y[::-1]], np.r_[np.nan, s.njy("g")[::-1]]
    ra, dec = s.wcs.all_pix2world(x, y, 0)
    cat = s.root / "noid.csv"
    pacsv.write_csv(pa.table({"RA": ra, "DEC": dec, "mag": np.zeros(x.size)}), cat)
    repo = tmp_path / "repo"
    assert main(["ingest", "fits", "--repo", str(repo), *_g_band(s), "--catalog", str(cat), "--patch-size", "40",
                 "--patch-border", "8"]) == 0
    assert main(["run", "--repo", str(repo), "-q"]) == 0
    rows = list(range(1, x.size))
    assert sql(repo, "SELECT count(*) AS n FROM ref").column("n")[0].as_py() > len(rows)  # rows in overlaps
    assert sorted(set(sql(repo, "SELECT externalId FROM ref").column("externalId").to_pylist())) == rows
    primary = sql(repo, "SELECT externalId FROM forced_source WHERE detect_isPrimary ORDER BY externalId")
    assert primary.column("externalId").to_pylist() == rows
    assert sql(repo, "SELECT externalId FROM object ORDER BY externalId").column("externalId").to_pylist() == rows
    assert Repository(repo).metadata()["ingest"]["catalog"]["externalId"] == "row"
    # the user's rows (with a 0-based row column) joined to the results
    con = query.connect(repo)
    con.register("cat", pa.table({"row": np.arange(x.size), "RA": ra, "flux": flux}))
    got = con.sql("""SELECT c.row, c.RA, c.flux, f.coord_ra, f.psfFlux FROM cat c
                     JOIN forced_source f ON f.externalId = c.row WHERE f.detect_isPrimary ORDER BY c.row""").df()
    wide = con.sql("SELECT c.row, o.g_psfFlux FROM cat c JOIN object o ON o.externalId = c.row ORDER BY c.row").df()
    missing = con.sql("SELECT row FROM cat ANTI JOIN object o ON o.externalId = cat.row").df()
    con.close()
    assert got.row.tolist() == rows and wide.row.tolist() == rows and missing.row.tolist() == [0]
    np.testing.assert_allclose(got.coord_ra, got.RA, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.psfFlux, got.flux, rtol=0.01)
    np.testing.assert_allclose(wide.g_psfFlux, got.psfFlux, rtol=1e-7)  # the object view is float32, as Rubin's


def test_id_column_and_key_options(synthetic, tmp_path):
    """--id-col picks the key among integer columns; --key row keys by row number although ids exist."""
    s = synthetic
    ids, src = np.arange(500, 500 + s.x.size), np.arange(s.x.size)[::-1] * 7 + 3
    cat = s.root / "two.fits"
    Table({"id": ids, "SRC": src, "ra": s.ra, "dec": s.dec}).write(cat)
    keys = {}
    for name, extra in (("auto", []), ("src", ["--id-col", "SRC"]), ("row", ["--key", "row"])):
        repo = tmp_path / name
        assert main(["ingest", "fits", "--repo", str(repo), *_g_band(s), "--catalog", str(cat), *extra]) == 0
        keys[name] = sql(repo, "SELECT externalId FROM ref ORDER BY id").column("externalId").to_pylist()
        assert Repository(repo).metadata()["ingest"]["catalog"]["externalId"] == ("row" if name == "row" else "id")
    assert keys == {"auto": ids.tolist(), "src": src.tolist(), "row": list(range(s.x.size))}
    assert Repository(tmp_path / "src").metadata()["ingest"]["catalog"]["id_column"] == "SRC"


def test_duplicate_rows_flagged_or_dropped(synthetic, tmp_path):
    """Row 12 repeats row 3. --duplicates flag keeps both with detect_isDuplicate and flags their deblended
    measurements (the undeblended ones stand); --duplicates drop keeps row 3 only, measured as a lone star."""
    s = synthetic
    n = s.x.size
    ids = np.arange(100, 101 + n)
    cat = s.root / "dup.fits"
    Table({"NUMBER": ids, "ra": np.r_[s.ra, s.ra[3]], "dec": np.r_[s.dec, s.dec[3]]}).write(cat)
    truth = np.r_[s.njy("g"), s.njy("g")[3]]
    query_text = """SELECT externalId, detect_isDuplicate, psfFlux, psfFlux_flag, ap03Flux_flag, kronFlux_flag,
                           undeblended_psfFlux, undeblended_psfFlux_flag
                    FROM forced_source WHERE deblend_nChild = 0 ORDER BY externalId"""
    repo = tmp_path / "flag"
    assert main(["ingest", "fits", "--repo", str(repo), *_g_band(s), "--catalog", str(cat), "--duplicates",
                 "flag"]) == 0
    assert main(["run", "--repo", str(repo), "-q"]) == 0
    t = sql(repo, query_text).to_pandas()
    assert t.externalId.tolist() == ids.tolist()
    twins = t.externalId.isin([103, 112]).to_numpy()
    assert t.detect_isDuplicate.tolist() == twins.tolist()
    for col in ("psfFlux_flag", "ap03Flux_flag", "kronFlux_flag"):
        assert t[col].tolist() == twins.tolist(), col
    assert not t.undeblended_psfFlux_flag.any()
    np.testing.assert_allclose(t.undeblended_psfFlux, truth, rtol=0.01)
    np.testing.assert_allclose(t.psfFlux[~twins], truth[~twins], rtol=0.01)
    obj = sql(repo, "SELECT externalId, detect_isDuplicate, g_psfFlux_flag FROM object ORDER BY externalId").to_pandas()
    assert obj.detect_isDuplicate.tolist() == twins.tolist() and obj.g_psfFlux_flag.tolist() == twins.tolist()
    meta = Repository(repo).metadata()["ingest"]["catalog"]["duplicates"]
    assert meta == {"mode": "flag", "radius_px": 0.1, "groups": 1, "rows": [3, 12]}

    repo = tmp_path / "drop"
    assert main(["ingest", "fits", "--repo", str(repo), *_g_band(s), "--catalog", str(cat), "--duplicates",
                 "drop"]) == 0
    assert main(["run", "--repo", str(repo), "-q"]) == 0
    t = sql(repo, query_text).to_pandas()
    assert t.externalId.tolist() == ids[:n].tolist()
    assert not t.detect_isDuplicate.any() and not t.psfFlux_flag.any()
    np.testing.assert_allclose(t.psfFlux, truth[:n], rtol=0.01)
    assert Repository(repo).metadata()["ingest"]["catalog"]["duplicates"]["rows"] == [12]
