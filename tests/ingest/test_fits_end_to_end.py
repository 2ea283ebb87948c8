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
