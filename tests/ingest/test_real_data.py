"""Real data through ingest: the SExtractor test image (apertures vs FLUX_APER) and an HSC 5-band blend.

The data live beside the clone in ``../shared/data/real`` (see its README); the tests skip
when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import ascii

from forcedphot.cli import main
from forcedphot.io.coadd import read_coadd
from forcedphot.query import sql
from forcedphot.repository import DataId, Repository
from tests.ingest.synth import REAL_DATA, ingest_hsc_npz

try:
    from forcedphot.plugins.aperture import aperture_photometry
except ImportError:  # moved next to the exact-overlap kernel
    from forcedphot.plugins.aperture_exact import aperture_photometry

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real test data not found at {REAL_DATA} "
                                                      "(expected ../shared/data/real beside the clone)"),
]
SEP = REAL_DATA / "sep"
HSC_BLEND = REAL_DATA / "hsc" / "deblender_43158172147386355.npz"


def test_sep_image_apertures_reproduce_sextractor(tmp_path, capsys):
    repo = tmp_path / "sep"
    argv = ["ingest", "fits", "--repo", str(repo),
            "--band", "R", "--image", str(SEP / "image.fits"), "--background", str(SEP / "back.fits"),
            "--sigma", str(SEP / "rms.fits"), "--psf-fwhm", "1.0arcsec",
            "--catalog", str(SEP / "image.cat"), "--x-col", "X_IMAGE", "--y-col", "Y_IMAGE", "--xy-origin", "1",
            "--pixel-scale", "0.3", "--assume-njy"]  # no BUNIT or zero point in the header
    assert main(argv) == 0
    cat = ascii.read(SEP / "image.cat", format="sextractor")
    # catalog rows are children or isolated objects; the deblender adds one parent per blend
    n_ref = sql(repo, "SELECT count(*) FILTER (WHERE deblend_nChild = 0) AS objects, count(*) AS n FROM ref")
    assert n_ref.to_pylist()[0]["objects"] == len(cat)
    assert f"{n_ref.to_pylist()[0]['n']} reference rows" in capsys.readouterr().out
    coadd = read_coadd(Repository(repo).coadd_path(DataId(0, 0, "R")))
    x = np.asarray(cat["X_IMAGE"], float) - 1  # tract pixels = image pixels, 0-based
    y = np.asarray(cat["Y_IMAGE"], float) - 1
    flux, _, _ = aperture_photometry(coadd, x, y, 5.0)  # FLUX_APER: PHOT_APERTURES 10 (a diameter)
    good = np.asarray(cat["FLAGS"]) == 0
    ratio = np.median(flux[good] / np.asarray(cat["FLUX_APER"], float)[good])
    assert 0.998 <= ratio <= 1.002, ratio
    assert main(["run", "--repo", str(repo), "-q"]) == 0
    n = sql(repo, "SELECT count(*) AS n, count(*) FILTER (WHERE centroid_flag) AS off FROM forced_source "
                  "WHERE deblend_nChild = 0")
    assert n.to_pylist() == [{"n": len(cat), "off": 0}]
    # forced Kron on the original image reproduces SExtractor's FLUX_AUTO (its ellipse is KRON_RADIUS x (A, B))
    t = sql(repo, "SELECT externalId, undeblended_kronFlux / ? AS kron, kronFlux_flag FROM forced_source "
                  "WHERE deblend_nChild = 0".replace("?", repr(coadd.photo_calib))).to_pandas()
    t = t.merge(cat.to_pandas()[["NUMBER", "FLUX_AUTO", "FLAGS"]], left_on="externalId", right_on="NUMBER")
    t = t[(t.FLAGS == 0) & ~t.kronFlux_flag.astype(bool)]
    kron_ratio = np.median(t.kron / t.FLUX_AUTO)
    print(f"Kron / FLUX_AUTO median {kron_ratio:.6f} over {len(t)} objects")
    assert len(t) > 40 and 0.999 <= kron_ratio <= 1.001


def test_hsc_blend_five_bands(tmp_path):
    _, peaks = ingest_hsc_npz(HSC_BLEND, tmp_path)
    assert main(["run", "--repo", str(tmp_path / "repo"), "-q"]) == 0
    rows = sql(tmp_path / "repo", """
        SELECT band, count(*) AS n, count(*) FILTER (WHERE isfinite(psfFlux) AND psfFluxErr > 0) AS n_finite
        FROM forced_source WHERE deblend_nChild = 0 GROUP BY band ORDER BY band
    """).to_pylist()
    assert [r["band"] for r in rows] == sorted("grizy")
    for r in rows:
        assert r["n"] == len(peaks)
        assert r["n_finite"] >= 0.75 * len(peaks), r
