"""Catalog sky frames: ICRS, FK5, FK4, galactic and ecliptic columns give the same pixels; detection; misses."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import FK4, FK5, BarycentricMeanEcliptic, Galactic, SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from forcedphot.cli import main
from forcedphot.errors import InputError
from forcedphot.ingest import BandSpec, CatalogSpec, ingest_fits
from forcedphot.ingest.catalog import load_catalog
from forcedphot.ingest.grid import make_grid
from forcedphot.ingest.images import celestial_wcs, read_image
from tests.ingest.synth import REAL_DATA, SHAPE


def _grid(path):
    return _grid_of(path, SHAPE)


def _grid_of(path, shape=None):
    data, header, label = read_image(path)
    return make_grid([(label, shape or data.shape, celestial_wcs(header, label))], pixel_scale=None)


def _in(frame, s):
    """The synthetic stars' (lon, lat) in ``frame``, from their ICRS positions."""
    sky = SkyCoord(s.ra * u.deg, s.dec * u.deg, frame="icrs").transform_to(frame).spherical
    return sky.lon.deg, sky.lat.deg


CASES = [  # (columns, frame in the catalog, --frame, --equinox)
    (("ra", "dec"), "icrs", None, None),
    (("RA", "DEC"), FK5(), "fk5", None),
    (("RAJ2000", "DEJ2000"), FK5(equinox=Time("J1975")), "fk5", "J1975"),
    (("RAB1950", "DEB1950"), FK4(), None, None),  # FK4 B1950 from the column names
    (("l", "b"), Galactic(), None, None),
    (("GLON", "GLAT"), Galactic(), "galactic", None),
    (("ELON", "ELAT"), BarycentricMeanEcliptic(), None, None),
    (("lambda", "beta"), BarycentricMeanEcliptic(equinox=Time("J2010")), "ecliptic", "2010"),
]


@pytest.mark.parametrize("cols, frame, option, equinox", CASES, ids=[c[0][0] for c in CASES])
def test_every_frame_gives_the_same_pixels(synthetic, cols, frame, option, equinox):
    s = synthetic
    lon, lat = _in(frame, s)
    path = s.root / "cat.fits"
    Table({cols[0]: lon, cols[1]: lat, "a": np.full(lon.size, 2.0), "theta": np.zeros(lon.size)}).write(path)
    objects = load_catalog(CatalogSpec(path=path, frame=option, equinox=equinox), _grid(s.files["g"]["image"]))
    np.testing.assert_allclose(objects.x, s.x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(objects.y, s.y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(objects.ra, s.ra, rtol=0, atol=1e-9)  # coord_ra/coord_dec: ICRS, the WCS's frame
    assert objects.positions["columns"] == list(cols)
    assert objects.positions["frame_from"] == ("--frame" if option else "column names" if cols[0] != "ra"
                                               else "default")
    assert objects.shape is None  # "b" is the latitude, not a semi-minor axis next to "a" and "theta"


def test_galactic_catalog_through_ingest_and_the_cli(synthetic, tmp_path, capsys):
    """l/b found by name through the whole ingest; the frame and columns are recorded in the repository."""
    s = synthetic
    lon, lat = _in("galactic", s)
    Table({"l": lon, "b": lat, "NUMBER": np.arange(1, lon.size + 1)}).write(s.root / "gal.fits")
    band = BandSpec(name="g", image=s.files["g"]["image"], variance=s.files["g"]["variance"], psf_fwhm="3px",
                    flux_unit="nJy")
    repo = ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=s.root / "gal.fits"), deblend="none")
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas().sort_values("externalId")
    np.testing.assert_allclose(ref.centroid_x, s.x, atol=1e-6)
    np.testing.assert_allclose(ref.coord_dec, s.dec, atol=1e-9)
    cat = repo.metadata()["ingest"]["catalog"]
    assert (cat["frame"], cat["columns"], cat["frame_from"], cat["image_frame"]) == \
        ("galactic", ["l", "b"], "column names", "icrs")
    # the CLI: an explicit --frame and wrong equinox use are one-line errors
    base = ["ingest", "fits", "--repo", str(tmp_path / "cli"), "--band", "g", "--image", s.files["g"]["image"],
            "--variance", s.files["g"]["variance"], "--psf-fwhm", "3px", "--flux-unit", "nJy",
            "--catalog", str(s.root / "gal.fits")]
    assert main([*base, "--frame", "galactic", "--equinox", "J2000"]) == 2
    assert "the galactic frame has no equinox" in capsys.readouterr().err
    assert main([*base, "--frame", "horizon"]) == 2
    assert "unknown sky frame 'horizon'" in capsys.readouterr().err
    assert main([*base, "--frame", "gal"]) == 0


def test_fk5_image_wcs_gets_the_catalog_in_its_own_frame(synthetic, tmp_path):
    """An FK5 WCS: ICRS rows are transformed to FK5 (astropy's own world_to_pixel agrees), FK5 rows used as is."""
    s = synthetic
    header = s.wcs.to_header()
    header["RADESYS"] = "FK5"
    header["EQUINOX"] = 2000.0
    path = s.root / "fk5.fits"
    fits.writeto(path, np.zeros(SHAPE, np.float32), header=header)
    grid = _grid(str(path))
    Table({"ra": s.ra, "dec": s.dec}).write(s.root / "icrs.fits")
    got = load_catalog(CatalogSpec(path=s.root / "icrs.fits"), grid)
    want = WCS(header).world_to_pixel(SkyCoord(s.ra * u.deg, s.dec * u.deg, frame="icrs"))
    np.testing.assert_allclose(got.x, want[0], atol=1e-6)
    np.testing.assert_allclose(got.y, want[1], atol=1e-6)
    assert np.max(np.hypot(got.x - s.x, got.y - s.y)) > 0.01  # the ~20 mas frame bias is not ignored
    Table({"ra": s.ra, "dec": s.dec}).write(s.root / "fk5cat.fits")
    same = load_catalog(CatalogSpec(path=s.root / "fk5cat.fits", frame="fk5"), grid)
    np.testing.assert_allclose(same.x, s.x, atol=1e-6)


def _galactic_image(root):
    """A GLON-CAR/GLAT-CAR image like the GLIMPSE mosaics (its grid is refit as ICRS TAN-SIP)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    w.wcs.crval = [30.0, 0.5]
    w.wcs.crpix = [(SHAPE[1] + 1) / 2, (SHAPE[0] + 1) / 2]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    path = root / "gal_image.fits"
    fits.writeto(path, np.zeros(SHAPE, np.float32), header=w.to_header())
    return str(path), w


def test_galactic_image_wcs_places_icrs_and_galactic_catalogs(synthetic):
    s = synthetic
    path, w = _galactic_image(s.root)
    grid = _grid(path)
    x, y = s.x, s.y
    sky = w.pixel_to_world(x, y)  # the stars, by the image's own galactic WCS
    Table({"l": sky.l.deg, "b": sky.b.deg}).write(s.root / "gal.fits")
    Table({"ra": sky.icrs.ra.deg, "dec": sky.icrs.dec.deg}).write(s.root / "icrs.fits")
    for name in ("gal.fits", "icrs.fits"):
        got = load_catalog(CatalogSpec(path=s.root / name), grid)
        np.testing.assert_allclose(got.x, x, atol=1e-4)  # the TAN-SIP refit's residual is ~3e-8 px
        np.testing.assert_allclose(got.y, y, atol=1e-4)
        np.testing.assert_allclose(got.ra, sky.icrs.ra.deg, atol=1e-9)


def test_a_catalog_off_the_image_says_which_frame_columns_and_where_the_image_is(synthetic, tmp_path, capsys):
    """The issue's case: l/b read as RA/Dec on a galactic image; before, an astropy All-NaN warning leaked."""
    s = synthetic
    path, w = _galactic_image(s.root)
    sky = w.pixel_to_world(s.x, s.y)
    Table({"l": sky.l.deg, "b": sky.b.deg}).write(s.root / "gal.fits")
    grid = _grid(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no astropy All-NaN (or any other) warning leaks
        with pytest.raises(InputError) as info:
            load_catalog(CatalogSpec(path=s.root / "gal.fits", ra="l", dec="b", frame="icrs"), grid)
    msg = str(info.value)
    centre = w.pixel_to_world((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2)
    assert "\n" not in msg and "none of the 12 catalog rows falls on the image" in msg
    assert "tried icrs positions (frame from --frame) in columns l/b" in msg
    assert f"({centre.icrs.ra.deg:.4f}, {centre.icrs.dec.deg:.4f}) icrs" in msg
    assert f"({centre.l.deg:.4f}, {centre.b.deg:.4f}) galactic" in msg
    # the same through the CLI: exit 2, one line
    argv = ["ingest", "fits", "--repo", str(tmp_path / "r"), "--band", "g", "--image", path, "--sigma", "1",
            "--psf-fwhm", "3px", "--flux-unit", "nJy", "--catalog", str(s.root / "gal.fits"), "--frame", "icrs",
            "--ra-col", "l", "--dec-col", "b"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "WCS refit" not in line]
    assert len(err) == 1 and err[0].startswith("forcedphot: error:") and "columns l/b" in err[0], err
    assert main(argv[:-6]) == 0  # without the wrong options: l/b found and placed


SPITZER = REAL_DATA / "spitzer"


@pytest.mark.realdata
@pytest.mark.skipif(not SPITZER.is_dir(), reason=f"real test data not found at {SPITZER}")
def test_spitzer_galactic_catalog_and_mjy_per_sr_header(tmp_path):
    """The issue's case: the GLIMPSE mosaic (BUNIT MJy/sr, GLON-CAR) and its l/b catalog ingest with no options."""
    image = SPITZER / "spitzer_example_image.fits"
    cat = Table.read(SPITZER / "spitzer_example_catalog.xml")
    band = BandSpec(name="i2", image=image, sigma=0.1, psf_fwhm="1.7arcsec")
    repo = ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=SPITZER / "spitzer_example_catalog.xml"),
                       deblend="none")
    meta = repo.metadata()["ingest"]
    assert meta["bands"]["i2"]["source"] == "header BUNIT"
    assert meta["bands"]["i2"]["photo_calib_nJy"] == pytest.approx(33.85e3, rel=1e-3)  # README: 0.0338 mJy/px
    assert meta["catalog"]["frame"] == "galactic"
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas()
    assert len(ref) == len(cat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = WCS(fits.getheader(image)).world_to_pixel(SkyCoord(cat["l"], cat["b"], unit="deg", frame="galactic"))
    # the galactic WCS is refit as ICRS TAN-SIP (residual 3e-5 px): positions agree with the original WCS
    assert np.max(np.hypot(ref.centroid_x - x, ref.centroid_y - y)) < 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="tried icrs positions .* columns l/b.* galactic"):
            load_catalog(CatalogSpec(path=SPITZER / "spitzer_example_catalog.xml", ra="l", dec="b", frame="icrs"),
                         _grid_of(image))


def test_fk5_b1950_image_wcs_is_refit_as_icrs(synthetic):
    """An FK5 WCS of another equinox is not taken for ICRS (0.7 deg of precession): refit, and rows placed exactly."""
    s = synthetic
    header = s.wcs.to_header()
    header["RADESYS"] = "FK5"
    header["EQUINOX"] = 1950.0
    path = s.root / "fk5_1950.fits"
    fits.writeto(path, np.zeros(SHAPE, np.float32), header=header)
    grid = _grid(str(path))
    assert grid.wcs.wcs.radesys == "ICRS"
    sky = WCS(header).pixel_to_world(s.x, s.y)  # the stars by the image's FK5 B1950 WCS
    Table({"ra": sky.icrs.ra.deg, "dec": sky.icrs.dec.deg}).write(s.root / "icrs.fits")
    got = load_catalog(CatalogSpec(path=s.root / "icrs.fits"), grid)
    np.testing.assert_allclose(got.x, s.x, atol=1e-3)
    np.testing.assert_allclose(got.y, s.y, atol=1e-3)
    np.testing.assert_allclose(got.ra, sky.icrs.ra.deg, atol=1e-9)  # coord_ra is ICRS, not B1950
