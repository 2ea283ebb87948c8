"""Ingest building blocks: file specs, PSF preparation, calibration, planes, footprints, args, manifest, skymap."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from forcedphot.cli import build_parser, main
from forcedphot.errors import InputError
from forcedphot.flags import MaskPlanes
from forcedphot.footprint import mask_to_spans
from forcedphot.ingest import BandSpec, CatalogSpec, ingest_fits
from forcedphot.ingest.args import specs_from_args
from forcedphot.ingest.calib import photo_calib, zero_point_calib
from forcedphot.ingest.footprints import ellipse_spans
from forcedphot.ingest.grid import make_grid, make_tan
from forcedphot.ingest.images import HduSpec, parse_hdu_spec
from forcedphot.ingest.planes import load_band
from forcedphot.ingest.psfimage import MAX_PSF_SIZE, gaussian_psf, prepare_psf, psf_fwhm_pixels
from forcedphot.io.coadd import read_coadd
from forcedphot.query import sql
from forcedphot.repository import DataId, Repository
from forcedphot.schema import load_schema
from forcedphot.skymap import Box, SkyMap, TractInfo
from tests.ingest.synth import gaussian_image


def _centroid(img):
    yy, xx = np.indices(img.shape)
    return np.array([(img * yy).sum(), (img * xx).sum()]) / img.sum()


# -- file specs ----------------------------------------------------------------------------
def test_parse_hdu_spec(tmp_path):
    assert parse_hdu_spec("a.fits") == HduSpec(Path("a.fits"))
    assert parse_hdu_spec("a.fits:2") == HduSpec(Path("a.fits"), 2)
    assert parse_hdu_spec("a.fits[SCI]") == HduSpec(Path("a.fits"), "SCI")
    assert parse_hdu_spec("dir/a.fits:WHT").hdu == "WHT"
    odd = tmp_path / "odd:1.fits"
    odd.write_bytes(b"")
    assert parse_hdu_spec(str(odd)) == HduSpec(odd)  # an existing name is taken whole
    assert parse_hdu_spec("a.fits").label == "a.fits" and parse_hdu_spec("a.fits:1").label == "a.fits[1]"


# -- PSF -----------------------------------------------------------------------------------
def test_gaussian_psf_is_centred_unit_sum_and_has_its_fwhm():
    psf = gaussian_psf(3.0)
    assert psf.shape[0] % 2 == 1 and psf.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(_centroid(psf), [psf.shape[0] // 2] * 2, atol=1e-12)
    assert psf_fwhm_pixels(psf) == pytest.approx(3.0, rel=0.15)
    assert gaussian_psf(40.0).shape == (MAX_PSF_SIZE, MAX_PSF_SIZE)


def test_prepare_psf_even_offcentre_oversampled_and_large():
    # even size: centre between pixels -> odd, centred, unit sum
    even = gaussian_image((20, 20), [9.5], [9.5], [5.0], 3.0)
    p = prepare_psf(even, label="even")
    assert p.shape[0] % 2 == 1 and p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(_centroid(p), [p.shape[0] // 2] * 2, atol=0.02)
    # a cutout whose star is 3 px off the middle gets recentred
    off = gaussian_image((25, 25), [15.0], [12.0], [1.0], 3.0)
    p = prepare_psf(off, label="off")
    np.testing.assert_allclose(_centroid(p), [p.shape[0] // 2] * 2, atol=0.02)
    # 4x oversampled, odd size, centred on its middle pixel: binned onto native pixels
    fine = gaussian_image((81, 81), [40.0], [40.0], [1.0], 4 * 2.5)
    p = prepare_psf(fine, oversampling=4, label="fine")
    ref = gaussian_psf(2.5)
    k = min(p.shape[0], ref.shape[0]) // 2
    cp, cr = p.shape[0] // 2, ref.shape[0] // 2
    np.testing.assert_allclose(p[cp - k:cp + k + 1, cp - k:cp + k + 1], ref[cr - k:cr + k + 1, cr - k:cr + k + 1],
                               atol=2e-3)
    # larger than PsfFlux's padding allows: cropped to 65
    big = gaussian_image((101, 101), [50.0], [50.0], [1.0], 30.0)
    assert prepare_psf(big, label="big").shape == (MAX_PSF_SIZE, MAX_PSF_SIZE)
    with pytest.raises(InputError, match="no flux"):
        prepare_psf(np.zeros((5, 5)), label="zero")
    with pytest.raises(InputError, match="oversampling"):
        prepare_psf(even, oversampling=0, label="x")


# -- calibration ---------------------------------------------------------------------------
def test_photo_calib_from_zero_point_and_units():
    assert zero_point_calib(31.4) == pytest.approx(1.0)
    assert zero_point_calib(27.0) == pytest.approx(10 ** (0.4 * 4.4))
    kw = {"pixel_area_sr": (0.2 / 206264.806) ** 2, "label": "t"}
    assert photo_calib(flux_unit="uJy", **kw) == pytest.approx(1e3)
    assert photo_calib(flux_unit="mJy", **kw) == pytest.approx(1e6)
    assert photo_calib(flux_unit="nmgy", **kw) == pytest.approx(3631.0)
    # 1 MJy/sr over a 1.2" pixel is 0.0338 mJy (README of the Spitzer data)
    area = (1.2 / 206264.806) ** 2
    assert photo_calib(flux_unit="MJy/sr", pixel_area_sr=area, label="t") == pytest.approx(33.85e3, rel=1e-3)
    assert photo_calib(flux_unit="Jy/arcsec2", pixel_area_sr=area, label="t") == pytest.approx(1.44e9, rel=1e-6)
    assert photo_calib(**kw) == 1.0
    with pytest.raises(InputError, match="neither a flux density"):
        photo_calib(flux_unit="erg/s", **kw)
    with pytest.raises(InputError, match="not both"):
        photo_calib(zero_point=27, flux_unit="nJy", **kw)


# -- planes --------------------------------------------------------------------------------
def test_planes_mask_bits_nan_pixels_invvar_and_background(tmp_path):
    shape = (6, 7)
    img = np.full(shape, 5.0, np.float32)
    img[0, 0] = np.nan
    img[0, 1] = np.inf
    w = np.full(shape, 4.0, np.float32)
    w[1, 1] = 0.0
    m = np.zeros(shape, np.int16)
    m[2, 2] = 0b1
    m[2, 3] = 0b1000
    m[2, 4] = 0b100  # unmapped bit: ignored with a mapping
    path = tmp_path / "b.fits"
    fits.HDUList([fits.PrimaryHDU(img), fits.ImageHDU(w, name="WHT"), fits.ImageHDU(m, name="MSK")]).writeto(path)
    grid = make_grid([(str(path), shape, None)], pixel_scale=0.5)
    spec = BandSpec(name="g", image=f"{path}:0", invvar=f"{path}:WHT", mask=f"{path}:MSK", mask_bits="BAD=0,SAT=3",
                    background="1.5", psf_fwhm="1arcsec", zero_point=30.0)
    band = load_band(spec, img, str(path), grid)
    planes = MaskPlanes()
    assert band.mask[2, 2] == planes.bitmask("BAD") and band.mask[2, 3] == planes.bitmask("SAT")
    assert band.mask[2, 4] == 0
    nodata = planes.bitmask("NO_DATA")
    assert band.mask[0, 0] & nodata and band.mask[0, 1] & nodata and band.mask[1, 1] & nodata
    assert np.isnan(band.image[0, 1]) and np.isnan(band.variance[1, 1]) and np.isnan(band.variance[0, 0])
    assert band.image[3, 3] == pytest.approx(3.5) and band.variance[3, 3] == pytest.approx(0.25)
    assert band.psf_fwhm == pytest.approx(2.0, rel=0.3)  # 1 arcsec at 0.5 arcsec/px
    assert band.photo_calib == pytest.approx(zero_point_calib(30.0))
    # default mapping: any nonzero value is BAD
    default = load_band(BandSpec(name="g", image=f"{path}:0", sigma="2", mask=f"{path}:MSK", psf_fwhm="2px",
                                 flux_unit="uJy"), img, str(path), grid)
    assert (default.mask[2, 2:5] == planes.bitmask("BAD")).all() and default.variance[3, 3] == pytest.approx(4.0)
    assert default.photo_calib == pytest.approx(1e3)


# -- footprints ----------------------------------------------------------------------------
def test_ellipse_spans_match_a_rasterised_mask():
    rng = np.random.default_rng(5)
    n = 40
    box = Box(0, 0, 59, 49)
    x, y = rng.uniform(-2, 62, n), rng.uniform(-2, 52, n)
    a, b, t = rng.uniform(0.3, 9, n), rng.uniform(0.3, 4, n), rng.uniform(0, np.pi, n)
    c, s = np.cos(t), np.sin(t)
    q = np.empty((n, 2, 2))
    q[:, 0, 0] = a * a * c * c + b * b * s * s
    q[:, 1, 1] = a * a * s * s + b * b * c * c
    q[:, 0, 1] = q[:, 1, 0] = (a * a - b * b) * c * s
    offsets, sy, sx0, sx1 = ellipse_spans(x, y, q, box)
    yy, xx = np.mgrid[box.min_y:box.max_y + 1, box.min_x:box.max_x + 1]
    for i in range(n):  # brute force per object: fine in a test
        d = np.stack([xx - x[i], yy - y[i]], -1)
        inside = np.einsum("...i,ij,...j->...", d, np.linalg.inv(q[i]), d) <= 1 + 1e-9
        xi = np.clip(np.floor(x[i] + 0.5), box.min_x, box.max_x)
        yi = np.clip(np.floor(y[i] + 0.5), box.min_y, box.max_y)
        rows = np.flatnonzero(np.abs(np.arange(box.min_y, box.max_y + 1) - yi) <= 1)
        for r in rows:  # the 3x3 box, merged into one span per row (convex hull of the row)
            cols = np.flatnonzero(inside[r] | (np.abs(xx[r] - xi) <= 1))
            inside[r, cols.min():cols.max() + 1] = True
        want = mask_to_spans(inside, box.min_x, box.min_y)
        sl = slice(offsets[i], offsets[i + 1])
        got = (sy[sl], sx0[sl], sx1[sl])
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=f"object {i}")
        assert offsets[i + 1] > offsets[i]


# -- CLI args and manifest -----------------------------------------------------------------
def test_band_groups_parse_into_specs():
    args = build_parser().parse_args([
        "ingest", "fits", "--repo", "out", "--catalog", "c.fits", "--x-col", "X", "--xy-origin", "1",
        "--band", "g", "--image", "g.fits:1", "--invvar", "g.fits:2", "--psf-fwhm", "1arcsec", "--zero-point", "27",
        "--patch-size", "500",
        "--band", "r", "--image", "r.fits", "--sigma", "0.1", "--psf", "p.fits", "--psf-oversampling", "2",
        "--flux-unit", "nJy", "--mask", "m.fits", "--mask-bits", "BAD=0,SAT=1",
    ])
    repo, bands, catalog, options = specs_from_args(args)
    assert repo == "out" and options == {"patch_size": 500}
    g, r = bands
    assert (g.name, g.image, g.invvar, g.psf_fwhm, g.zero_point) == ("g", "g.fits:1", "g.fits:2", "1arcsec", 27.0)
    assert (r.name, r.sigma, r.psf, r.psf_oversampling, r.flux_unit) == ("r", "0.1", "p.fits", 2, "nJy")
    assert r.mask_mapping() == {"BAD": 0, "SAT": 1} and g.mask is None
    assert (catalog.path, catalog.x, catalog.xy_origin) == ("c.fits", "X", 1)


def test_manifest_with_relative_paths_and_cli_overrides(synthetic, tmp_path, monkeypatch):
    s = synthetic
    Table({"ra": s.ra, "dec": s.dec, "ident": np.arange(s.x.size) + 7}).write(s.root / "cat.fits")
    (s.root / "ingest.toml").write_text(f"""
repo = "../repo"
patch_size = 48
[bands.g]
image = "g.fits:0"
variance = "g.fits[VARIANCE]"
psf-fwhm = "3.2px"
zero_point = 27.0
[bands.r]
image = "r.fits"
variance = "r.fits:VARIANCE"
psf_fwhm = 2.8
psf_fwhm_unit = "px"
zero_point = 28.5
[catalog]
path = "cat.fits"
id = "ident"
""")
    monkeypatch.chdir(tmp_path)  # relative names resolve against the manifest, not the working folder
    assert main(["ingest", "fits", "--manifest", str(s.root / "ingest.toml"), "--ref-band", "r",
                 "--patch-border", "4"]) == 0
    repo = Repository(s.root.parent / "repo")
    tract = repo.read_skymap()[0]
    assert (tract.patch_inner, tract.patch_border) == (48, 4)
    refs = sql(repo, "SELECT DISTINCT refBand FROM ref").to_pylist()
    assert refs == [{"refBand": "r"}]
    bad = s.root / "bad.toml"
    bad.write_text("[bands.g]\nimage = 'g.fits'\nvariance = 'g.fits:1'\npsf_fwhm = '3px'\ncolour = 'blue'\n")
    with pytest.raises(InputError, match="unknown key"):
        specs_from_args(build_parser().parse_args(["ingest", "fits", "--manifest", str(bad), "--catalog", "x"]))


# -- catalogs: SExtractor ASCII, shapes, parents -------------------------------------------
def test_sextractor_catalog_shapes_and_one_based_positions(synthetic, tmp_path):
    s = synthetic
    lines = ["#   1 NUMBER          Running object number",
             "#   2 X_IMAGE         Object position along x                        [pixel]",
             "#   3 Y_IMAGE         Object position along y                        [pixel]",
             "#   4 A_IMAGE         Profile RMS along major axis                   [pixel]",
             "#   5 B_IMAGE         Profile RMS along minor axis                   [pixel]",
             "#   6 THETA_IMAGE     Position angle (CCW/x)                         [deg]",
             "#   7 KRON_RADIUS     Kron apertures in units of A or B"]
    for i in range(s.x.size):
        lines.append(f"{i + 1} {s.x[i] + 1:.4f} {s.y[i] + 1:.4f} 2.0 1.0 90.0 3.5")
    cat = s.root / "image.cat"
    cat.write_text("\n".join(lines) + "\n")
    band = BandSpec(name="g", image=s.files["g"]["image"], variance=s.files["g"]["variance"], psf_fwhm="3px",
                    flux_unit="nJy")
    repo = ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=cat, positions="pixel"))
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas().sort_values("centroid_x")
    np.testing.assert_allclose(ref.centroid_x, np.sort(s.x), atol=1e-3)
    # theta = 90 deg: the major axis is along y
    np.testing.assert_allclose(ref.shape_xx, 1.0, atol=1e-9)
    np.testing.assert_allclose(ref.shape_yy, 4.0, atol=1e-9)
    if "kron_radius" in ref:
        # KRON_RADIUS x sqrt(A B) is the FLUX_AUTO ellipse, i.e. 2.5 x the reference Kron radius
        np.testing.assert_allclose(ref.kron_radius, 3.5 * np.sqrt(2.0) / 2.5)
    fp = pq.read_table(repo.footprints_path(DataId(0, 0, "g"))).to_pandas()
    heights = fp.bbox_max_y - fp.bbox_min_y + 1
    widths = fp.bbox_max_x - fp.bbox_min_x + 1
    assert (heights > widths).all()  # footprints follow the shape (elongated along y)


def test_parents_children_and_ids(synthetic, tmp_path):
    s = synthetic
    n = s.x.size
    ids = np.arange(1000, 1000 + n)
    parent = np.zeros(n, np.int64)
    parent[[1, 2]] = ids[0]  # rows 1 and 2 are children of row 0
    Table({"id": ids, "parent": parent, "ra": s.ra, "dec": s.dec}).write(s.root / "cat.fits")
    band = BandSpec(name="g", image=s.files["g"]["image"], variance=s.files["g"]["variance"], psf_fwhm="3px",
                    flux_unit="nJy")
    repo = ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=s.root / "cat.fits"))
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas()
    assert ref.id.tolist() == list(range(1, n + 1))  # packed ids: counters in catalog order
    assert ref.parent.tolist()[:4] == [0, 1, 1, 0]
    assert ref.deblend_nChild.tolist()[:4] == [2, 0, 0, 0]
    assert ref.detect_isPrimary.tolist()[:4] == [False, True, True, True]
    if "externalId" in load_schema("ref").names:
        assert ref.externalId.tolist() == ids.tolist()
    fp = pq.read_table(repo.footprints_path(DataId(0, 0, "g"))).to_pandas()
    assert fp.id.tolist() == ref.id.tolist() and fp.parent.tolist() == ref.parent.tolist()
    assert main(["run", "--repo", str(repo.root), "-q"]) == 0
    coadd = read_coadd(repo.coadd_path(DataId(0, 0, "g")))
    assert coadd.psf.images.shape[:2] == (1, 1) and coadd.bbox == Box(0, 0, 87, 71)


# -- skymap ----------------------------------------------------------------------------------
def test_skymap_round_trips_with_and_without_wcs_header():
    header = make_tan((50, 60), 0.3, ra=10.0, dec=-5.0).to_header(relax=True).tostring(sep="\n")
    tracts = (TractInfo(0, 10.0, -5.0, 0.3, 32, 4, 2, 2, wcs_header=header), TractInfo(1, 20.0, 0.0, 0.2, 100, 0, 1, 1))
    sky = SkyMap("t", tracts)
    table = load_schema("skymap").conform(sky.to_table(), where="test")
    back = SkyMap.from_table(table)
    assert back == sky
    assert back[0].wcs.wcs.crval[0] == 10.0 and back[0].wcs.wcs.crpix[0] == pytest.approx(30.5)
    # the simulator's TAN (no header) is unchanged, and files written before wcs_header still read
    old = table.drop_columns(["wcs_header"])
    assert SkyMap.from_table(old)[1].wcs.wcs.crpix[0] == pytest.approx(50.5)
    assert SkyMap.from_table(old)[0].wcs_header is None


def test_footprints_cover_the_catalog_in_every_band(synthetic, tmp_path):
    s = synthetic
    pq.write_table(pa.table({"x": s.x, "y": s.y}), s.root / "xy.parquet")
    bands = [BandSpec(name=b, image=s.files[b]["image"], variance=s.files[b]["variance"], psf_fwhm="3px",
                       flux_unit="nJy") for b in ("g", "r")]
    repo = ingest_fits(tmp_path / "repo", bands, CatalogSpec(path=s.root / "xy.parquet"), patch_size=40)
    tract = repo.read_skymap()[0]
    assert tract.patch_border == 10  # default: a quarter of a small patch
    for p in tract.patches():
        ref = pq.read_table(repo.ref_path(0, p.patch)).column("id").to_pylist()
        for b in ("g", "r"):
            fp = pq.read_table(repo.footprints_path(DataId(0, p.patch, b)))
            assert fp.column("id").to_pylist() == ref
            coadd = read_coadd(repo.coadd_path(DataId(0, p.patch, b)))
            assert coadd.bbox.min_x >= 0 and coadd.bbox.max_x <= 87 and coadd.bbox.max_y <= 71
            # heavy values are the coadd's pixels
            row = fp.slice(0, 1).to_pylist()[0] if fp.num_rows else None
            if row:
                y0, x0 = row["span_y"][0], row["span_x0"][0]
                assert row["values"][0] == pytest.approx(
                    float(coadd.image[y0 - coadd.bbox.min_y, x0 - coadd.bbox.min_x]))


def test_patches_without_objects_are_not_written(synthetic, tmp_path):
    s = synthetic
    pq.write_table(pa.table({"x": [5.0], "y": [5.0]}), s.root / "one.parquet")
    band = BandSpec(name="g", image=s.files["g"]["image"], variance=s.files["g"]["variance"], psf_fwhm="3px",
                    flux_unit="nJy")
    repo = ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=s.root / "one.parquet"), patch_size=40)
    assert repo.read_skymap()[0].n_patches == 6
    assert [p.name for p in (repo.root / "coadd" / "tract=0").iterdir()] == ["patch=0"]
    assert main(["run", "--repo", str(repo.root), "-q"]) == 0


@pytest.mark.parametrize("cmd", [["ingest"], ["ingest", "fits"]])
def test_ingest_help(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        main(cmd + ["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "usage: forcedphot ingest" in out
    if cmd[-1] == "fits":
        for option in ("--band", "--image", "--invvar", "--psf-fwhm", "--zero-point", "--flux-unit", "--catalog",
                       "--xy-origin", "--patch-size", "--manifest", "--overwrite", "--assume-njy", "--frame",
                       "--equinox", "--key", "--duplicates", "BUNIT", "PHOTFLAM+PHOTPLAM", "example:"):
            assert option in out


def test_external_ids_fill_the_externalId_column_and_reach_the_output(synthetic, tmp_path):
    """Integer catalog ids land in ref.externalId and forced_source.externalId; without integer ids,
    each row's 0-based row number does."""
    from forcedphot import query
    from forcedphot.runner import run_all

    s = synthetic
    band = BandSpec(name="g", image=s.files["g"]["image"], variance=s.files["g"]["variance"], psf_fwhm="3px",
                    flux_unit="nJy")
    big = (1 << 62) + np.arange(s.x.size)  # beyond float64's exact integers
    Table({"NUMBER": big, "ra": s.ra, "dec": s.dec}).write(s.root / "int.fits")
    repo = ingest_fits(tmp_path / "a", [band], CatalogSpec(path=s.root / "int.fits"))
    assert pq.read_table(repo.ref_path(0, 0)).column("externalId").to_pylist() == big.tolist()
    assert run_all(repo, progress=False).ok
    out = query.sql(repo, "SELECT externalId FROM forced_source ORDER BY objectId").column("externalId").to_pylist()
    assert out == big.tolist()
    Table({"name": [f"star{i}" for i in range(s.x.size)], "ra": s.ra, "dec": s.dec}).write(s.root / "str.fits")
    repo = ingest_fits(tmp_path / "b", [band], CatalogSpec(path=s.root / "str.fits", id="name"))
    assert pq.read_table(repo.ref_path(0, 0)).column("externalId").to_pylist() == list(range(s.x.size))


# -- calibration from FITS headers (issue 10) ------------------------------------------------
ARCSEC_SR = (np.pi / 180 / 3600) ** 2  # one arcsec^2 in steradians, by definition


def _header(**cards) -> fits.Header:
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    return h


def _calib(header, *, area_arcsec2=0.04, **kw):
    from forcedphot.ingest.calib import band_calibration

    return band_calibration(header=header, pixel_area_sr=area_arcsec2 * ARCSEC_SR, label="band t (t.fits)", **kw)


@pytest.mark.parametrize("bunit, njy", [("Jy", 1e9), ("mJy", 1e6), ("uJy", 1e3), ("nJy", 1.0),
                                         ("nmgy", 3631.0), ("nanomaggy", 3631.0), ("NANOMAGGIES", 3631.0),
                                         ("Jy/pixel", 1e9), ("erg/s/cm2/Hz", 1e32)])
def test_header_bunit_flux_densities(bunit, njy):
    """Spectral flux densities: 1 nanomaggy = 3631e-9 Jy, 1 erg/s/cm2/Hz = 1e23 Jy (definitions)."""
    cal = _calib(_header(BUNIT=bunit))
    assert cal.njy == pytest.approx(njy, rel=1e-12)
    assert (cal.source, cal.value) == ("header BUNIT", bunit)


def test_header_bunit_surface_brightness_uses_the_wcs_pixel_area(tmp_path):
    """MJy/sr and Jy/arcsec2 times the pixel solid angle of the grid's WCS (a sheared, rectangular pixel)."""
    w = make_tan((20, 30), 0.2, ra=10.0, dec=-30.0)
    w.wcs.cd = [[-0.2 / 3600, 0.05 / 3600], [0.0, 0.3 / 3600]]  # area = |det| = 0.06 arcsec^2
    grid = make_grid([("t", (20, 30), w)], pixel_scale=None)
    assert grid.pixel_area_sr == pytest.approx(0.06 * ARCSEC_SR, rel=1e-9)
    from forcedphot.ingest.calib import band_calibration

    for bunit, njy in [("MJy/sr", 1e15 * 0.06 * ARCSEC_SR), ("Jy/arcsec2", 1e9 * 0.06), ("uJy/arcsec**2", 60.0),
                       ("MJY/SR", 1e15 * 0.06 * ARCSEC_SR)]:
        cal = band_calibration(header=_header(BUNIT=bunit), pixel_area_sr=grid.pixel_area_sr, label="t")
        assert cal.njy == pytest.approx(njy, rel=1e-9), bunit
    # the Spitzer mosaic's README: 1 MJy/sr over a 1.2" pixel is 0.0338 mJy
    assert _calib(_header(BUNIT="MJy/sr"), area_arcsec2=1.44).njy == pytest.approx(33.85e3, rel=1e-3)


@pytest.mark.parametrize("cards, zp", [
    ({"MAGZERO": 27.0}, 27.0), ({"MAGZPT": 25.5}, 25.5), ({"MAGZP": 22.5}, 22.5), ({"ZEROPT": 30.0}, 30.0),
    ({"ZP": 28.1}, 28.1), ({"FLUXMAG0": 10 ** (0.4 * 27.0)}, 27.0),  # HSC: FLUXMAG0 = 63095734448 is zp 27
    ({"BUNIT": "ADU", "MAGZERO": 26.0}, 26.0), ({"BUNIT": "ELECTRONS/S", "ZP": 25.0}, 25.0),
])
def test_header_zero_point_keys(cards, zp):
    cal = _calib(_header(**cards))
    assert cal.zero_point == pytest.approx(zp, abs=1e-9)
    assert cal.njy == pytest.approx(10 ** (-0.4 * (zp - 31.4)), rel=1e-9)
    key = next(k for k in cards if k != "BUNIT")
    assert cal.source == f"header {key}"


def test_header_photflam_photplam_matches_the_hst_ab_formula(tmp_path):
    """STScI: ZP_AB = -2.5 log10(PHOTFLAM) - 21.10 - 5 log10(PHOTPLAM) + 18.692 (rounded constants: 1e-3 mag)."""
    for flam, plam in [(7.0723e-20, 8045.0), (1.52e-19, 4328.0), (3.0e-20, 15369.0)]:
        formula = -2.5 * np.log10(flam) - 21.10 - 5 * np.log10(plam) + 18.692
        cal = _calib(_header(BUNIT="ELECTRONS/S", PHOTFLAM=flam, PHOTPLAM=plam))
        assert cal.source == "header PHOTFLAM+PHOTPLAM"
        assert cal.zero_point == pytest.approx(formula, abs=1e-3)
    # counts (not a rate): divided by EXPTIME; the image in an extension, PHOT* in the primary header
    path = tmp_path / "drz.fits"
    primary = fits.PrimaryHDU(header=_header(PHOTFLAM=7.0723e-20, PHOTPLAM=8045.0, EXPTIME=400.0))
    fits.HDUList([primary, fits.ImageHDU(np.zeros((4, 4), np.float32), header=_header(BUNIT="ELECTRONS"),
                                         name="SCI")]).writeto(path)
    from forcedphot.ingest.calib import calibration_header
    from forcedphot.ingest.images import read_image

    _, header, _ = read_image(f"{path}:SCI")
    rate = _calib(_header(BUNIT="ELECTRONS/S", PHOTFLAM=7.0723e-20, PHOTPLAM=8045.0)).njy
    assert _calib(calibration_header(header, path)).njy == pytest.approx(rate / 400.0, rel=1e-12)
    assert _calib(_header(PHOTFNU=3.0e-7)).njy == pytest.approx(300.0, rel=1e-12)  # Jy per e-/s


def test_header_bunit_wins_over_a_disagreeing_zero_point_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="forcedphot.ingest"):
        cal = _calib(_header(BUNIT="nanomaggy", MAGZERO=22.5))  # 22.5 is the nanomaggy zero point: agree
    assert cal.njy == pytest.approx(3631.0) and not caplog.records
    with caplog.at_level(logging.WARNING, logger="forcedphot.ingest"):
        cal = _calib(_header(BUNIT="uJy", MAGZERO=27.0))
    assert cal.njy == pytest.approx(1e3) and "using BUNIT" in caplog.text


def test_options_override_the_header_with_a_message(caplog):
    with caplog.at_level(logging.INFO, logger="forcedphot.ingest"):
        cal = _calib(_header(BUNIT="MJy/sr"), zero_point=27.0)
    assert cal.njy == pytest.approx(zero_point_calib(27.0)) and cal.source == "option --zero-point"
    lines = [r for r in caplog.records if "overrides" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "--zero-point 27 overrides header BUNIT = 'MJy/sr'" in lines[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="forcedphot.ingest"):
        cal = _calib(_header(MAGZPT=30.0), flux_unit="uJy")
    assert cal.njy == pytest.approx(1e3)
    assert "--flux-unit uJy overrides header MAGZPT = 30" in caplog.text


def test_unknown_or_missing_units_are_errors_unless_assume_njy(caplog):
    with pytest.raises(InputError, match=r"band t \(t.fits\): BUNIT = 'furlong' is not a unit astropy knows.*"
                                         r"--assume-njy"):
        _calib(_header(BUNIT="furlong"))
    with pytest.raises(InputError, match="'K' is neither a flux density"):
        _calib(_header(BUNIT="K"))
    with pytest.raises(InputError, match="'ADU' is counts, which need a zero point"):
        _calib(_header(BUNIT="ADU"))
    with pytest.raises(InputError, match=r"no flux unit or zero point \(header keys read: BUNIT, MAGZERO"):
        _calib(_header(EXPTIME=10.0, BUNIT=""))  # an empty BUNIT is no unit
    with pytest.raises(InputError, match="PHOTFLAM"):
        _calib(_header(BUNIT="ELECTRONS", PHOTFLAM=1e-19, PHOTPLAM=5000.0))  # counts without EXPTIME
    with caplog.at_level(logging.WARNING, logger="forcedphot.ingest"):
        cal = _calib(_header(BUNIT="furlong"), assume_njy=True)
        none = _calib(_header(), assume_njy=True)
    assert cal.njy == none.njy == 1.0 and cal.source == "assumed (--assume-njy)"
    assert caplog.text.count("taken as nJy (--assume-njy)") == 2
    assert _calib(_header(BUNIT="MJy/sr"), assume_njy=True).source == "header BUNIT"  # a header unit still applies


def _write_unit_bands(root: Path):
    """Three bands of the same stars (known nJy): g in MJy/sr (BUNIT), r with MAGZERO, i in nJy with no unit."""
    rng = np.random.default_rng(21)
    shape, scale = (48, 56), 0.25
    gx, gy = np.meshgrid(np.linspace(10, shape[1] - 11, 3), np.linspace(10, shape[0] - 11, 2))  # isolated stars
    x, y = gx.ravel() + rng.uniform(-1, 1, 6), gy.ravel() + rng.uniform(-1, 1, 6)
    tan = make_tan(shape, scale, ra=40.0, dec=-20.0)
    truth = {b: rng.uniform(2e4, 2e5, x.size) for b in "gri"}  # nJy
    area_sr = scale ** 2 * ARCSEC_SR
    per_unit = {"g": 1e15 * area_sr, "r": zero_point_calib(28.0), "i": 1.0}  # nJy per image unit
    cards = {"g": {"BUNIT": "MJy/sr"}, "r": {"MAGZERO": 28.0}, "i": {}}
    sigma = {}
    argv = []
    for b in "gri":
        img = gaussian_image(shape, x, y, truth[b] / per_unit[b], 3.0)
        sigma[b] = 3e-4 * img.max()  # S/N > 500 for the faintest star
        img = img + rng.normal(0, sigma[b], shape)
        header = tan.to_header()
        header.update(cards[b])
        fits.writeto(root / f"{b}.fits", img.astype(np.float32), header=header)
        argv += ["--band", b, "--image", str(root / f"{b}.fits"), "--sigma", f"{sigma[b]:.9g}", "--psf-fwhm", "3px"]
    ra, dec = tan.all_pix2world(x, y, 0)
    Table({"ra": ra, "dec": dec}).write(root / "cat.fits")
    return argv + ["--catalog", str(root / "cat.fits")], ra, truth


def test_header_units_through_ingest_and_run_give_nJy(tmp_path, capsys):
    """BUNIT, MAGZERO and --assume-njy bands of the same stars all measure the injected nJy."""
    argv, ra, truth = _write_unit_bands(tmp_path)
    repo = tmp_path / "repo"
    code = main(["ingest", "fits", "--repo", str(repo), *argv])
    err = capsys.readouterr().err
    assert code == 2 and "band i" in err and "--assume-njy" in err and not repo.exists()
    assert main(["ingest", "fits", "--repo", str(repo), "--assume-njy", *argv]) == 0
    out = capsys.readouterr().out
    assert "band g: 1 image unit = " in out and "from header BUNIT = 'MJy/sr'" in out
    meta = Repository(repo).metadata()["ingest"]["bands"]
    assert {b: meta[b]["source"] for b in "gri"} == {"g": "header BUNIT", "r": "header MAGZERO",
                                                     "i": "assumed (--assume-njy)"}
    assert meta["r"]["zero_point_ab"] == pytest.approx(28.0)
    assert main(["run", "--repo", str(repo), "-q"]) == 0
    got = sql(repo, "SELECT band, coord_ra, psfFlux FROM forced_source WHERE deblend_nChild = 0 "
                    "ORDER BY band, coord_ra").to_pandas()
    order = np.argsort(ra)
    for b in "gri":
        ratio = got[got.band == b].psfFlux.to_numpy() / truth[b][order]
        print(f"band {b} ({meta[b]['source']}): psfFlux / truth nJy in [{ratio.min():.5f}, {ratio.max():.5f}]")
        assert np.all(np.abs(ratio - 1) < 0.01), (b, ratio)


def test_manifest_and_cli_carry_assume_njy_frame_and_equinox(tmp_path):
    (tmp_path / "m.toml").write_text("""
assume_njy = true
[bands.g]
image = "g.fits"
sigma = 0.1
psf_fwhm = "3px"
[catalog]
path = "cat.fits"
frame = "fk4"
equinox = "B1900"
""")
    args = build_parser().parse_args(["ingest", "fits", "--manifest", str(tmp_path / "m.toml"), "--repo", "r"])
    _, bands, catalog, options = specs_from_args(args)
    assert options == {"assume_njy": True} and (catalog.frame, catalog.equinox) == ("fk4", "B1900")
    args = build_parser().parse_args(["ingest", "fits", "--repo", "r", "--band", "g", "--image", "g.fits",
                                      "--sigma", "1", "--psf-fwhm", "3px", "--catalog", "c.fits",
                                      "--frame", "ecliptic", "--equinox", "J2010", "--assume-njy"])
    _, _, catalog, options = specs_from_args(args)
    assert options == {"assume_njy": True} and (catalog.frame, catalog.equinox) == ("ecliptic", "J2010")
    with pytest.raises(InputError, match="not an epoch"):
        CatalogSpec(path="c.fits", frame="fk5", equinox="yesterday")
    with pytest.raises(InputError, match="assume_njy must be true or false"):
        ingest_fits(tmp_path / "x", bands, catalog, assume_njy="yes")


def test_an_option_is_not_blocked_by_a_broken_header_key():
    bad = _header(MAGZERO="n/a")
    with pytest.raises(InputError, match="header MAGZERO = 'n/a' is not a number"):
        _calib(bad)
    assert _calib(bad, zero_point=25.0).njy == pytest.approx(zero_point_calib(25.0))


def test_manifest_and_cli_carry_id_column_key_and_duplicates(tmp_path):
    """The [catalog] table takes id, key and duplicates as the command line's --id-col, --key, --duplicates."""
    (tmp_path / "m.toml").write_text("""
[bands.g]
image = "g.fits"
sigma = 0.1
psf_fwhm = "3px"
[catalog]
path = "cat.fits"
id = "SRC"
key = "row"
duplicates = "drop"
""")
    args = build_parser().parse_args(["ingest", "fits", "--manifest", str(tmp_path / "m.toml"), "--repo", "r"])
    catalog = specs_from_args(args)[2]
    assert (catalog.id, catalog.key, catalog.duplicates) == ("SRC", "row", "drop")
    args = build_parser().parse_args(["ingest", "fits", "--manifest", str(tmp_path / "m.toml"), "--repo", "r",
                                      "--key", "id", "--duplicates", "flag"])
    catalog = specs_from_args(args)[2]
    assert (catalog.id, catalog.key, catalog.duplicates) == ("SRC", "id", "flag")
    with pytest.raises(InputError, match="duplicates must be refuse, flag or drop"):
        CatalogSpec(path="c.fits", duplicates="keep")
    with pytest.raises(InputError, match="key must be auto, id or row"):
        CatalogSpec(path="c.fits", key="name")
