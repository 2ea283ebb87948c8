"""``forcedphot ingest rubin``: Rubin deep_coadd files (read with lsst.images) and Object / deepCoadd_ref tables.

The files are written in Rubin's layout from a simulated tiny survey whose PSF is the same everywhere
(``psf_variation = psf_ellipticity = 0``), so the PSF a user supplies is the simulator's exactly: the
undeblended PSF fluxes (measured on the original image at the reference position, independent of footprints)
must then come out equal to the simulated repository's, and any difference is the reader's (pixels, mask,
variance, positions through the SIP WCS and the pixel origin).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lsst.images  # the rubin extra, in the test extra: a missing package fails here, it never skips

from forcedphot.cli import main  # noqa: E402
from forcedphot.config import ForcedPhotConfig  # noqa: E402
from forcedphot.flags import DEFAULT_MASK_PLANES  # noqa: E402
from forcedphot.ingest.rubin import ingest_rubin, read_deep_coadd, rubin_catalog  # noqa: E402
from forcedphot.io.coadd import read_coadd  # noqa: E402
from forcedphot.query import sql  # noqa: E402
from forcedphot.repository import Repository  # noqa: E402
from forcedphot.runner import run_all  # noqa: E402
from forcedphot.sim.recipe import load_recipe  # noqa: E402
from forcedphot.sim.survey import simulate  # noqa: E402
from tests.ingest.rubin_files import (RUBIN_BITS, object_table, psf_file, tract_sip_wcs,  # noqa: E402
                                      write_deep_coadd)

BANDS = ("g", "r", "i", "z")
XY0 = (-24, -24)  # the tiny tract's patch 0 outer box starts there: the files' union box


class Survey:
    def __init__(self, root: Path):
        self.root = root
        self.sim = root / "sim"
        self.files = root / "files"
        self.files.mkdir()
        self.coadds = {}
        self.paths = {}
        for f in sorted(glob.glob(str(self.sim / "coadd" / "**" / "*.arrow"), recursive=True)):
            c = read_coadd(f)
            self.coadds[c.patch, c.band] = c
        self.sip = tract_sip_wcs(self.coadds[0, "i"].wcs)
        for (patch, band), c in self.coadds.items():
            self.paths[patch, band] = write_deep_coadd(self.files / f"deep_coadd_0_{patch}_{band}.fits", c, self.sip)
        self.psf = {b: psf_file(self.files / f"psf_{b}.fits", self.coadds[0, b]) for b in BANDS}
        self.ref = pa.concat_tables([pq.read_table(p) for p in
                                     sorted(glob.glob(str(self.sim / "ref" / "**" / "*.parquet"), recursive=True))])
        self.object = object_table(self.files / "object.parquet", self.ref, self.sip)

    def coadd_args(self, bands=BANDS, patches=(0, 1, 2, 3)):
        return [str(self.paths[p, b]) for p in patches for b in bands]

    def psf_args(self, bands=BANDS):
        out = []
        for b in bands:
            out += ["--psf", f"{b}={self.psf[b]}"]
        return out


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Survey:
    root = tmp_path_factory.mktemp("rubin")
    simulate(load_recipe("tiny", psf_variation=0.0, psf_ellipticity=0.0), root / "sim", progress=False)
    s = Survey(root)
    summary = run_all(Repository(s.sim), ForcedPhotConfig(), progress=False)
    assert summary.ok, summary.failed
    return s


def _fails(capsys, argv, *expected):
    code = main(["ingest", "rubin", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("forcedphot: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    for piece in expected:
        assert str(piece) in errors[0], (piece, errors[0])
    return errors[0]


# -- the reader against lsst.images ----------------------------------------------------------------------
def test_lsst_images_and_forcedphot_read_the_same_pixels_planes_and_sky(survey):
    import astropy.units as u
    from lsst.images import MaskedImage
    from lsst.images import GeneralFrame, get_legacy_non_cell_coadd_mask_planes

    legacy_map = get_legacy_non_cell_coadd_mask_planes()  # Rubin's own names: SAT -> SATURATED, CR -> COSMIC_RAY ...
    legacy_map["STREAK"] = lsst.images.MaskPlane("STREAK", "streak")
    for patch, band in ((0, "g"), (3, "i")):
        path = survey.paths[patch, band]
        sim = survey.coadds[patch, band]
        mi = MaskedImage.read_legacy(str(path), plane_map=legacy_map, fits_wcs_frame=GeneralFrame(unit=u.pix))
        ours = read_deep_coadd(path)
        # pixels, origin, unit
        assert (ours.x0, ours.y0) == (mi.bbox.x.start, mi.bbox.y.start) == (sim.bbox.min_x, sim.bbox.min_y)
        assert (ours.band, ours.tract, ours.patch) == (band, 0, patch)
        assert ours.unit == str(mi.unit) == "nJy"
        np.testing.assert_array_equal(ours.image, mi.image.array)
        np.testing.assert_array_equal(ours.variance, mi.variance.array)
        np.testing.assert_allclose(ours.image, sim.image * sim.photo_calib, rtol=1e-6)
        # every plane: lsst.images' (Rubin's new name) == forcedphot's bit of the legacy name == the simulator's
        set_somewhere = 0
        for legacy, plane in legacy_map.items():
            theirs = mi.mask.get(plane.name)
            if legacy in DEFAULT_MASK_PLANES:
                bit = DEFAULT_MASK_PLANES[legacy]
                np.testing.assert_array_equal((ours.mask >> bit) & 1, theirs.astype(int), err_msg=legacy)
                np.testing.assert_array_equal((np.asarray(sim.mask) >> bit) & 1, theirs.astype(int), err_msg=legacy)
                set_somewhere += bool(theirs.any())
            elif legacy in RUBIN_BITS:  # Rubin-only planes are left out, counted
                assert ours.planes[legacy] == int(theirs.sum()), legacy
        assert set_somewhere >= 2  # the test sees real planes (DETECTED, NO_DATA, BAD ...), not empty ones
        assert ours.planes["CROSSTALK"] > 0
        # sky positions of tract pixels: lsst.images' projection, forcedphot's WCS of the array, the SIP truth
        rng = np.random.default_rng(patch)
        x = rng.uniform(ours.x0, ours.x0 + ours.shape[1] - 1, 50)
        y = rng.uniform(ours.y0, ours.y0 + ours.shape[0] - 1, 50)
        sky = mi.image.sky_projection.pixel_to_sky(lsst.images.XY(x, y))
        ra, dec = ours.wcs.all_pix2world(x - ours.x0, y - ours.y0, 0)
        ra_t, dec_t = survey.sip.all_pix2world(x, y, 0)
        sep = np.hypot((ra - sky.ra.deg) * np.cos(np.deg2rad(dec)), dec - sky.dec.deg) * 3.6e6  # mas
        sep_t = np.hypot((ra - ra_t) * np.cos(np.deg2rad(dec)), dec - dec_t) * 3.6e6
        assert sep.max() < 0.1 and sep_t.max() < 0.1, (sep.max(), sep_t.max())
        # ... and the SIP terms matter at this level (a TAN-only reader would be off by > 1 mas here)
        tan = sim.wcs.all_pix2world(x, y, 0)
        assert np.hypot((tan[0] - ra_t) * np.cos(np.deg2rad(dec)), tan[1] - dec_t).max() * 3.6e6 > 1.0


# -- ingest + run = the simulated repository ---------------------------------------------------------------
def test_ingest_and_run_reproduce_the_simulated_fluxes(survey, tmp_path, capsys):
    repo = tmp_path / "rubin"
    assert main(["ingest", "rubin", "--repo", str(repo), "--coadd", *survey.coadd_args(),
                 "--catalog", str(survey.object), *survey.psf_args()]) == 0
    out = capsys.readouterr().out
    assert "Object table" in out and "id <- objectId" in out and "(-24, -24)" in out
    meta = Repository(repo).metadata()["ingest"]
    assert meta["rubin"]["xy0"] == list(XY0) and meta["rubin"]["flavour"] == "Object"
    assert meta["bands"]["i"]["photo_calib_nJy"] == 1.0
    assert "deep_coadd_0_3_i.fits[IMAGE]" in meta["bands"]["i"]["image"]
    assert meta["catalog"]["path"] == str(survey.object)
    assert main(["run", "--repo", str(repo), "-q"]) == 0
    # positions: the catalog's RA/Dec through the files' SIP WCS land on the simulated centroids (tract = ours + xy0)
    pos = sql(repo, "SELECT externalId AS oid, centroid_x + -24 AS x, centroid_y + -24 AS y FROM ref "
                    "WHERE externalId IS NOT NULL").to_pandas()
    truth = sql(survey.sim, "SELECT id AS oid, centroid_x AS x, centroid_y AS y FROM ref WHERE detect_isPrimary"
                ).to_pandas().merge(pos, on="oid", suffixes=("_sim", "_rubin"))
    assert len(truth) == len(pos) == survey.ref.filter(survey.ref["detect_isPrimary"]).num_rows
    assert np.hypot(truth.x_sim - truth.x_rubin, truth.y_sim - truth.y_rubin).max() < 1e-4
    # fluxes: the undeblended PSF flux of every primary object, every band, equal to the simulated repository's
    q = ("SELECT {key} AS oid, band, undeblended_psfFlux AS f, undeblended_psfFluxErr AS e, undeblended_psfFlux_flag "
         "AS flag, psfFlux AS p, psfFlux_flag AS pflag FROM forced_source WHERE detect_isPrimary")
    a = sql(survey.sim, q.format(key="objectId")).to_pandas()
    b = sql(repo, q.format(key="externalId")).to_pandas()
    m = a.merge(b, on=["oid", "band"], suffixes=("_sim", "_rubin"))
    assert len(m) == len(a) == len(b) == 4 * len(truth)
    np.testing.assert_array_equal(m.flag_sim, m.flag_rubin)
    ok = ~m.flag_sim
    assert ok.sum() > 0.9 * len(m)
    np.testing.assert_allclose(m.f_rubin[ok], m.f_sim[ok], rtol=1e-5, atol=1e-3 * m.e_sim[ok].min())
    np.testing.assert_allclose(m.e_rubin[ok], m.e_sim[ok], rtol=1e-5)
    # PixelFlags' Rubin plane lists see the planes mapped by name: the 3x3-centre flags (footprint-free) are the
    # simulated repository's, and some are set (the bad column, the no-data box, the saturated star)
    fsql = ("SELECT {key} AS oid, band, COLUMNS('pixelFlags_.*Center(All)?$') FROM forced_source "
            "WHERE detect_isPrimary")
    fa = sql(survey.sim, fsql.format(key="objectId")).to_pandas()
    fb = sql(repo, fsql.format(key="externalId")).to_pandas()
    fm = fa.merge(fb, on=["oid", "band"], suffixes=("_sim", "_rubin"))
    flags = [c for c in fa.columns if c.startswith("pixelFlags_")]
    assert len(flags) >= 20 and len(fm) == len(fa)
    for c in flags:
        np.testing.assert_array_equal(fm[c + "_rubin"], fm[c + "_sim"], err_msg=c)
    assert sum(bool(fa[c].any()) for c in flags) >= 3, [c for c in flags if fa[c].any()]
    # the deblended psfFlux differs only through the footprints (the simulator's against ingest's own deblender):
    # for objects without a neighbour in either, it agrees too
    iso = sql(survey.sim, "SELECT id AS oid FROM ref WHERE detect_isPrimary AND parent IS NULL OR parent = 0"
              ).to_pandas()
    iso_b = sql(repo, "SELECT externalId AS oid FROM ref WHERE externalId IS NOT NULL AND (parent IS NULL OR "
                      "parent = 0)").to_pandas()
    both = m[m.oid.isin(iso.oid) & m.oid.isin(iso_b.oid) & ~m.pflag_sim & ~m.pflag_rubin]
    assert len(both) > 100
    d = np.abs(both.p_rubin - both.p_sim) / both.e_sim
    assert np.median(d) < 0.05, np.median(d)


# -- Rubin's Object table as lsst-sdm-schemas defines it ------------------------------------------------------
def _sdm_object_schema():
    from pathlib import Path as P

    import lsst.sdm.schemas
    from felis.datamodel import Schema

    path = P(lsst.sdm.schemas.__file__).parent / "lsstcam.yaml"
    schema = Schema.from_uri(str(path), context={"dereference_resources": True, "id_generation": True})
    return next(t for t in schema.tables if t.name == "Object")


ARROW = {"long": pa.int64(), "int": pa.int32(), "short": pa.int16(), "byte": pa.int8(), "double": pa.float64(),
         "float": pa.float32(), "boolean": pa.bool_(), "char": pa.string(), "string": pa.string(),
         "text": pa.string(), "unicode": pa.string(), "timestamp": pa.timestamp("us")}


def test_object_table_with_the_sdm_schema_columns_maps_without_options(survey, tmp_path):
    from forcedphot.refmodels import sky_ellipses_to_pixels

    obj = _sdm_object_schema()
    cols = {c.name: c for c in obj.columns}
    # the units the mapping relies on, as the schema states them (a change there must fail here)
    unit = {n: getattr(cols[n], "ivoa_unit", None) for n in ("coord_ra", "shape_xx", "i_kronRad",
                                                              "i_cModel_exp_reff_major", "g_cModel_dev_reff_minor")}
    assert unit == {"coord_ra": "deg", "shape_xx": "pixel**2", "i_kronRad": "pixel",
                    "i_cModel_exp_reff_major": "arcsec",
                    "g_cModel_dev_reff_minor": "arcsec"}, unit
    for n in ("objectId", "parentObjectId", "refBand", "i_cModel_exp_theta", "g_cModel_dev_theta"):
        assert n in cols, n
    assert "Position angle" in cols["i_cModel_exp_theta"].description
    src = pq.read_table(survey.object)
    n = src.num_rows
    rng = np.random.default_rng(5)
    ref_band = np.where(rng.uniform(size=n) < 0.5, "i", "g")
    values = {"objectId": src["objectId"], "parentObjectId": src["parentObjectId"], "coord_ra": src["coord_ra"],
              "coord_dec": src["coord_dec"], "refBand": pa.array(ref_band)}
    for k in ("shape_xx", "shape_yy", "shape_xy"):
        values[k] = src[k]
    ell = {}
    for b in ("g", "i"):
        values[f"{b}_kronRad"] = pa.array(rng.uniform(2, 4, n))
        for stage in ("exp", "dev"):
            major = rng.uniform(0.3, 1.2, n)
            e = (major, major * rng.uniform(0.4, 1.0, n), rng.uniform(-90, 90, n))
            ell[b, stage] = e
            for part, v in zip(("reff_major", "reff_minor", "theta"), e):
                values[f"{b}_cModel_{stage}_{part}"] = pa.array(v)
    arrays = {}
    for name, c in cols.items():  # every column of Rubin's Object, in the schema's types; the rest null
        typ = ARROW.get(str(c.datatype.value if hasattr(c.datatype, "value") else c.datatype), pa.string())
        arrays[name] = values[name].cast(typ) if name in values else pa.nulls(n, typ)
    assert len(arrays) > 1000
    path = tmp_path / "Object.parquet"
    pq.write_table(pa.table(arrays), path)

    cat = rubin_catalog(path)
    assert cat.flavour == "Object"
    assert cat.mapped["id"] == "objectId" and cat.mapped["cmodel_exp_theta"] == "{refBand}_cModel_exp_theta"
    assert cat.mapped["kron_radius"] == "{refBand}_kronRad"
    # one band, two patches suffice here
    files = [survey.paths[p, b] for p in (0, 1) for b in ("g", "i")]
    repo = ingest_rubin(tmp_path / "repo", files, path, psf={b: survey.psf[b] for b in ("g", "i")})
    ref = sql(repo.root, "SELECT externalId, centroid_x, centroid_y, kron_radius, cModel_exp_xx, cModel_exp_yy, "
                         "cModel_exp_xy, cModel_dev_xx, refBand FROM ref WHERE externalId IS NOT NULL").to_pandas()
    assert set(ref.refBand) == {"i"} or set(ref.refBand) == {"g"}  # one reference band per repository (the commonest)
    row = {int(k): i for i, k in enumerate(src["objectId"].to_numpy())}
    idx = np.array([row[int(k)] for k in ref.externalId])
    assert len(idx) > 50
    wcs = Repository(repo.root).read_skymap().tracts[0].wcs
    for stage, col in (("exp", "cModel_exp_"), ("dev", "cModel_dev_")):
        want = np.full((len(idx), 3), np.nan)
        for b in ("g", "i"):
            rows = ref_band[idx] == b
            a, bb, t = (v[idx][rows].astype(np.float32).astype(float) for v in ell[b, stage])  # as stored: float
            want[rows] = sky_ellipses_to_pixels(wcs, ref.centroid_x[rows], ref.centroid_y[rows], a, bb, t)
        np.testing.assert_allclose(ref[col + "xx"], want[:, 0], rtol=1e-6)
        if stage == "exp":
            np.testing.assert_allclose(ref[col + "yy"], want[:, 1], rtol=1e-6)
            np.testing.assert_allclose(ref[col + "xy"], want[:, 2], rtol=1e-6, atol=1e-9)
    kron = np.where(ref_band[idx] == "i", values["i_kronRad"].to_numpy()[idx], values["g_kronRad"].to_numpy()[idx])
    np.testing.assert_allclose(ref.kron_radius, kron.astype(np.float32), rtol=1e-6)


# -- deepCoadd_ref: afw names, radians, parents, detect_isPrimary ---------------------------------------------
def test_deep_coadd_refs_of_two_patches_keep_primary_rows_and_families(survey, tmp_path):
    """Two patches' deepCoadd_ref tables concatenated: every border object is in both (a duplicate at one position);
    the rows Rubin's Object would hold (primary, plus the parents of primary rows) are ingested, each once."""
    tables = [pq.read_table(next(glob.iglob(str(survey.sim / "ref" / "tract=0" / f"patch={p}" / "*.parquet"))))
              for p in (0, 1)]
    t = pa.concat_tables(tables).to_pydict()
    ra, dec = survey.sip.all_pix2world(np.asarray(t["centroid_x"]), np.asarray(t["centroid_y"]), 0)
    ids = np.asarray(t["id"], np.int64)
    parents = np.asarray([p or 0 for p in t["parent"]], np.int64)
    primary = np.asarray(t["detect_isPrimary"], bool)
    path = tmp_path / "deepCoadd_ref.parquet"
    pq.write_table(pa.table({"id": ids, "parent": parents, "coord_ra": np.deg2rad(ra), "coord_dec": np.deg2rad(dec),
                             "base_SdssShape_xx": t["shape_xx"], "base_SdssShape_yy": t["shape_yy"],
                             "base_SdssShape_xy": t["shape_xy"], "deblend_nChild": t["deblend_nChild"],
                             "detect_isPrimary": primary}), path)
    cat = rubin_catalog(path)
    assert cat.flavour == "deepCoadd_ref" and cat.mapped["coord_ra"] == "coord_ra (rad)"
    assert cat.mapped["shape_xx"] == "base_SdssShape_xx" and cat.mapped["parent"] == "parent"
    kept_parents = set(parents[primary & (parents != 0)])
    want = primary | np.isin(ids, list(kept_parents))
    assert 0 < (~want).sum() and kept_parents  # border duplicates and non-primary leaves exist, and families
    np.testing.assert_array_equal(np.sort(cat.columns["id"]), np.sort(ids[want]))
    files = [survey.paths[p, "i"] for p in (0, 1)]
    repo = ingest_rubin(tmp_path / "repo", files, path, psf={"i": survey.psf["i"]})  # no duplicate refusal
    got = sql(repo.root, "SELECT externalId, centroid_x + -24 AS x, centroid_y + -24 AS y, deblend_nChild, "
                         "detect_isPrimary FROM ref WHERE externalId IS NOT NULL").to_pandas().set_index("externalId")
    assert sorted(got.index) == sorted(ids[want].tolist())
    x, y = np.asarray(t["centroid_x"]), np.asarray(t["centroid_y"])
    for i in np.flatnonzero(want):
        assert abs(got.x[ids[i]] - x[i]) < 1e-4 and abs(got.y[ids[i]] - y[i]) < 1e-4
    for p in kept_parents:  # catalog families kept: the parent has at least its primary children
        assert got.deblend_nChild[p] >= (primary & (parents == p)).sum() > 0
        assert not got.detect_isPrimary[p]
    leaves = ids[primary]
    assert got.detect_isPrimary[leaves].all()  # Rubin's primary rows are primary here too


# -- refusals: exit 2, one line naming the file and the HDU ---------------------------------------------------
def test_afw_psf_is_refused_naming_its_hdu(survey, tmp_path, capsys):
    _fails(capsys, ["--repo", str(tmp_path / "r"), "--coadd", str(survey.paths[0, "i"]), "--catalog",
                    str(survey.object)],
           f"{survey.paths[0, 'i']}[5 COADDPSF] (afw CoaddPsf)", "needs lsst.afw", "--psf FILE", "--psf estimate")
    assert not (tmp_path / "r").exists()


def test_missing_mask_hdu_is_refused(survey, tmp_path, capsys):
    bad = write_deep_coadd(tmp_path / "no_mask.fits", survey.coadds[0, "i"], survey.sip, hdus=("IMAGE", "VARIANCE"))
    _fails(capsys, ["--repo", str(tmp_path / "r"), "--coadd", str(bad), "--catalog", str(survey.object),
                    "--psf", str(survey.psf["i"])], f"{bad}[2]: no MASK HDU", "IMAGE, MASK and VARIANCE")


def test_unknown_mask_plane_is_refused_unless_dropped(survey, tmp_path, capsys):
    bad = write_deep_coadd(tmp_path / "odd_plane.fits", survey.coadds[0, "i"], survey.sip, extra_plane="MY_PLANE")
    _fails(capsys, ["--repo", str(tmp_path / "r"), "--coadd", str(bad), "--catalog", str(survey.object),
                    "--psf", str(survey.psf["i"])], f"{bad}[2 MASK]", "MY_PLANE", "--drop-mask-plane")
    ours = read_deep_coadd(bad, drop_planes=("MY_PLANE",))
    assert ours.planes["MY_PLANE"] == 0 and ours.band == "i"


def test_a_catalog_that_is_not_rubins_is_refused(survey, tmp_path, capsys):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"ra": [150.0], "dec": [2.0]}), path)
    _fails(capsys, ["--repo", str(tmp_path / "r"), "--coadd", str(survey.paths[0, "i"]), "--catalog", str(path),
                    "--psf", str(survey.psf["i"])], str(path), "neither a Rubin Object", "ingest fits")


def test_band_from_the_physical_filter_or_the_option(survey, tmp_path):
    f = write_deep_coadd(tmp_path / "no_band.fits", survey.coadds[0, "r"], survey.sip, band_card=False)
    assert read_deep_coadd(f).band == "r"  # FILTER = 'r_sim' (Rubin's physical filter: band_suffix)
    assert read_deep_coadd(f, band="x").band == "x"


def test_psf_options_per_band(survey, tmp_path, capsys):
    _fails(capsys, ["--repo", str(tmp_path / "r"), "--coadd", str(survey.paths[0, "i"]), "--catalog",
                    str(survey.object), "--psf", f"i={survey.psf['i']}", "--psf-fwhm", "i=3px"],
           "--psf and --psf-fwhm both given for i")
    _fails(capsys, ["--repo", str(tmp_path / "r"), "--coadd", str(survey.paths[0, "i"]), "--catalog",
                    str(survey.object), "--psf", f"q={survey.psf['i']}"], "--psf names band(s) q", "bands are i")
    # a Gaussian PSF for the band, no PSF file: the afw PSF is not needed
    assert main(["ingest", "rubin", "--repo", str(tmp_path / "g"), "--coadd", str(survey.paths[0, "i"]),
                 "--catalog", str(survey.object), "--psf-fwhm", "i=3.5px"]) == 0
    psf = Repository(tmp_path / "g").metadata()["ingest"]["bands"]["i"]["psf"]
    assert psf == {"gaussian_fwhm_px": 3.5}
    # into the same repository again, with the PSF image: refused without --overwrite, then its inputs replaced
    again = ["ingest", "rubin", "--repo", str(tmp_path / "g"), "--coadd", str(survey.paths[0, "i"]), "--catalog",
             str(survey.object), "--psf", str(survey.psf["i"])]
    assert main(again) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    meta = Repository(tmp_path / "g").metadata()["ingest"]
    assert meta["bands"]["i"]["psf"]["file"] == str(survey.psf["i"]) and meta["rubin"]["xy0"] == list(XY0)


def test_without_lsst_images_one_line_says_what_to_install(survey, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lsst.images", None)  # import lsst.images raises ImportError
    _fails(capsys, ["--repo", str(tmp_path / "r"), "--coadd", str(survey.paths[0, "i"]), "--catalog",
                    str(survey.object), "--psf", str(survey.psf["i"])], "pip install 'forcedphot[rubin]'")
