"""Reference model columns of ``ref`` (CModel's initial, exp and dev ellipses and fit region): filled by
simulate and by ingest (fitted on the reference band, or mapped from a catalog's Rubin-style columns),
read as nulls from ref files written before ref 1.4.0."""

from __future__ import annotations

from types import SimpleNamespace

import galsim
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from forcedphot.ingest import BandSpec, CatalogSpec, ingest_fits
from forcedphot.plan import plan_quanta
from forcedphot.query import sql
from forcedphot.refmodels import ELLIPSE_COLUMNS, FLAG_COLUMNS, REF_COLUMNS, sky_ellipses_to_pixels
from forcedphot.repository import Repository
from forcedphot.schema import META_VERSION, load_schema
from forcedphot.sim.recipe import load_recipe
from forcedphot.sim.survey import make_sources
from forcedphot.skymap import Box, TractInfo

SHAPE = (140, 180)
SCALE = 0.2  # arcsec per pixel
FWHM_PX = 3.5
# exp galaxies: (x, y, r_e px, g, beta deg) and one star
GALAXIES = [(40.2, 45.7, 4.0, 0.3, 30.0), (110.4, 40.1, 6.0, 0.15, 120.0), (60.3, 105.2, 3.0, 0.4, 75.0)]
STAR = (140.0, 100.0)


def rotated_tan(angle_deg: float) -> WCS:
    """A TAN WCS, east-left, rotated by ``angle_deg`` on the sky (so pixel angles differ from sky angles)."""
    t = WCS(naxis=2)
    t.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    t.wcs.crval = [150.0, 30.0]
    t.wcs.crpix = [SHAPE[1] / 2, SHAPE[0] / 2]
    s = SCALE / 3600.0
    c, sn = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    t.wcs.cd = np.array([[-s, 0.0], [0.0, s]]) @ np.array([[c, -sn], [sn, c]])
    t.wcs.cunit = ["deg", "deg"]
    return t


def truth_q(r_e, g, beta_deg):
    """Half-light ellipse in pixels of GalSim's sheared profile (determinant radius r_e)."""
    a, b = r_e * np.sqrt((1 + g) / (1 - g)), r_e * np.sqrt((1 - g) / (1 + g))
    t = np.deg2rad(beta_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([a * a * c * c + b * b * s * s, a * a * s * s + b * b * c * c, (a * a - b * b) * c * s])


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("refmodels")
    wcs = rotated_tan(25.0)
    psf = galsim.Gaussian(fwhm=FWHM_PX)
    image = np.zeros(SHAPE)
    c = ((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2)
    for x, y, r_e, g, beta in GALAXIES:
        gal = galsim.Sersic(1, half_light_radius=r_e, trunc=4 * r_e, flux_untruncated=True, flux=5000.0)
        gal = gal.shear(g=g, beta=beta * galsim.degrees)
        image += galsim.Convolve(gal, psf).drawImage(nx=SHAPE[1], ny=SHAPE[0], scale=1.0,
                                                     offset=(x - c[0], y - c[1])).array
    image += psf.withFlux(3000.0).drawImage(nx=SHAPE[1], ny=SHAPE[0], scale=1.0,
                                            offset=(STAR[0] - c[0], STAR[1] - c[1])).array
    sigma = 0.05
    image += np.random.default_rng(1).normal(0, sigma, SHAPE)
    path = root / "r.fits"
    fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), header=wcs.to_header())]).writeto(path)
    band = BandSpec(name="r", image=f"{path}:0", sigma=sigma, psf_fwhm=f"{FWHM_PX}px", zero_point=31.4)
    x = np.array([g[0] for g in GALAXIES] + [STAR[0]])
    y = np.array([g[1] for g in GALAXIES] + [STAR[1]])
    ra, dec = wcs.all_pix2world(x, y, 0)
    q = np.array([truth_q(*g[2:]) for g in GALAXIES])
    return SimpleNamespace(root=root, wcs=wcs, band=band, x=x, y=y, ra=ra, dec=dec, q=q)


def _ref(repo):
    return sql(repo, "SELECT * FROM ref WHERE externalId IS NOT NULL ORDER BY externalId").to_pandas()


def radius(q):
    return (q[..., 0] * q[..., 1] - q[..., 2] ** 2) ** 0.25


def test_ingest_fits_the_reference_models(field):
    cat = field.root / "positions.csv"
    pacsv.write_csv(pa.table({"id": np.arange(1, field.x.size + 1), "ra": field.ra, "dec": field.dec}), cat)
    repo = ingest_fits(field.root / "fitted", [field.band], CatalogSpec(path=cat, deblend="none"))
    ref = _ref(repo)
    assert len(ref) == field.x.size
    assert not ref.cModel_ref_flag.astype(bool).any()
    got = ref[["cModel_exp_xx", "cModel_exp_yy", "cModel_exp_xy"]].to_numpy(float)
    n = len(GALAXIES)
    np.testing.assert_allclose(radius(got[:n]), radius(field.q), rtol=0.05)
    np.testing.assert_allclose(got[:n, 2] / radius(field.q) ** 2, field.q[:, 2] / radius(field.q) ** 2, atol=0.05)
    assert radius(got[n]) < 0.5  # the star
    region = ref[["cModel_region_xx", "cModel_region_yy", "cModel_region_xy"]].to_numpy(float)
    assert (radius(region) > radius(got)).all()  # E1 = alpha^2 D + 4P holds the half-light ellipse
    for c in FLAG_COLUMNS:
        assert ref[c].notna().all(), c
    # the shared-ellipse rule is visible: a stage holding the other profile's ellipse says so
    for st, other in (("exp", "dev"), ("dev", "exp")):
        shared = ref[f"cModel_{st}_sharedEllipse"].to_numpy(bool)
        assert ref[f"cModel_{st}_sharedEllipse"].notna().all()
        same = np.all(ref[[f"cModel_{st}_{c}" for c in ("xx", "yy", "xy")]].to_numpy(float)
                      == ref[[f"cModel_{other}_{c}" for c in ("xx", "yy", "xy")]].to_numpy(float), axis=1)
        assert (same[shared]).all(), st


def test_ingest_maps_a_catalogs_rubin_columns_through_the_wcs(field):
    """Semi-axes in arcsec and position angles east of north (computed here from the pixel ellipse's axis
    mapped through the WCS) come back as the pixel ellipses."""
    n = len(GALAXIES)
    a = np.array([g[2] * np.sqrt((1 + g[3]) / (1 - g[3])) for g in GALAXIES])
    b = np.array([g[2] * np.sqrt((1 - g[3]) / (1 + g[3])) for g in GALAXIES])
    beta = np.deg2rad([g[4] for g in GALAXIES])
    x, y = field.x[:n], field.y[:n]
    ra0, dec0 = field.wcs.all_pix2world(x, y, 0)
    ra1, dec1 = field.wcs.all_pix2world(x + 1e-3 * np.cos(beta), y + 1e-3 * np.sin(beta), 0)
    pa_deg = np.degrees(np.arctan2((ra1 - ra0) * np.cos(np.deg2rad(dec0)), dec1 - dec0))  # east of north
    cols = {"id": np.arange(1, n + 1), "ra": field.ra[:n], "dec": field.dec[:n]}
    for stage in ("exp", "dev"):
        cols.update({f"r_cModel_{stage}_reff_major": a * SCALE, f"r_cModel_{stage}_reff_minor": b * SCALE,
                     f"r_cModel_{stage}_reff_theta": pa_deg})
    cat = field.root / "rubin.csv"
    pacsv.write_csv(pa.table(cols), cat)
    spec = CatalogSpec(path=cat, deblend="none",
                       cmodel_exp="r_cModel_exp_reff_major,r_cModel_exp_reff_minor,r_cModel_exp_reff_theta",
                       cmodel_dev="r_cModel_dev_reff_major,r_cModel_dev_reff_minor,r_cModel_dev_reff_theta")
    ref = _ref(ingest_fits(field.root / "mapped", [field.band], spec))
    for stage in ("exp", "dev"):
        got = ref[[f"cModel_{stage}_xx", f"cModel_{stage}_yy", f"cModel_{stage}_xy"]].to_numpy(float)
        np.testing.assert_allclose(got, field.q, rtol=1e-4, atol=1e-4 * field.q.max())
    assert ref.cModel_initial_xx.isna().all() and ref.cModel_exp_flag.isna().all()
    assert ref.cModel_region_xx.notna().all() and not ref.cModel_ref_flag.astype(bool).any()
    # the conversion alone, pure rotation + scale: the WCS's own pixel scale
    q = sky_ellipses_to_pixels(field.wcs, x, y, a * SCALE, b * SCALE, pa_deg)
    np.testing.assert_allclose(radius(q), np.sqrt(a * b), rtol=1e-6)


def test_simulate_fits_the_reference_models(tiny_repo_master):
    """Every simulated object has the columns, flags set wherever an ellipse is null; the isolated galaxies'
    ellipse of their own profile (exp or dev, from the simulator's sources regenerated from the seed) has
    about their true half-light radius (the medians; faint and clipped ones scatter), stars small radii."""
    recipe = load_recipe("tiny")
    tract = TractInfo(0, recipe.ra, recipe.dec, recipe.pixel_scale, recipe.patch_inner, recipe.patch_border,
                      recipe.n_patch_x, recipe.n_patch_y)
    ps = tract.patches()
    region = Box(min(p.outer.min_x for p in ps), min(p.outer.min_y for p in ps), max(p.outer.max_x for p in ps),
                 max(p.outer.max_y for p in ps))
    src = make_sources(recipe, np.random.default_rng(recipe.seed), region)  # as _simulate_into draws them
    ref = sql(Repository(tiny_repo_master),
              "SELECT r.*, t.source_id, t.is_star FROM ref r JOIN truth t ON r.id = t.id AND t.band = r.refBand "
              "WHERE r.deblend_nChild = 0 AND r.parent = 0").to_pandas()
    np.testing.assert_allclose(src.x[ref.source_id], ref.centroid_x)
    for stage in ("initial", "exp", "dev", "region"):
        null = ref[f"cModel_{stage}_xx"].isna()
        assert ref.cModel_ref_flag[null].all()
        if stage != "region":
            assert ref[f"cModel_{stage}_flag"][null].all()
    good = ~ref.cModel_ref_flag.astype(bool)
    assert good.mean() > 0.7
    true_r = np.linalg.det(src.gal_cov[ref.source_id]) ** 0.25
    for kind, (lo, hi) in (("exp", (0.9, 1.1)), ("dev", (0.75, 1.05))):
        sel = good & (src.gal_kind[ref.source_id] == kind)
        r = radius(ref.loc[sel, [f"cModel_{kind}_xx", f"cModel_{kind}_yy", f"cModel_{kind}_xy"]].to_numpy(float))
        assert sel.sum() >= 5 and lo < np.median(r / true_r[sel]) < hi, (kind, np.median(r / true_r[sel]))
    stars = ref[good & ref.is_star]
    assert (radius(stars[["cModel_exp_xx", "cModel_exp_yy", "cModel_exp_xy"]].to_numpy(float)) < 1.0).mean() > 0.9


def test_old_ref_files_are_read_with_null_reference_models(tiny_repo, tmp_path):
    """A ref file of 1.3.0 (without the cModel columns) joins to its footprints with the columns null."""
    from forcedphot.quantum import load_refs

    quantum = next(q for q in plan_quanta(Repository(tiny_repo)))
    table = pq.read_table(quantum.ref_file)
    old = table.drop_columns([c for c in REF_COLUMNS]).replace_schema_metadata(
        {**table.schema.metadata, META_VERSION: b"1.3.0"})
    path = tmp_path / "ref.parquet"
    pq.write_table(old, path)
    fp = pq.read_table(quantum.footprints_file)
    got, _ = load_refs(SimpleNamespace(ref_file=str(path), data_id=quantum.data_id), fp)
    new, _ = load_refs(quantum, fp)
    assert load_schema("ref").version == "1.5.0"
    for c in REF_COLUMNS:
        assert got.column(c).null_count == got.num_rows, c
        assert new.column(c).null_count < new.num_rows, c
    assert set(ELLIPSE_COLUMNS) <= set(got.column_names)


def test_ingest_fits_blended_children_on_the_deblended_image(tmp_path):
    """Two overlapping exp galaxies, deblended at ingest (peaks): each child is fitted on the noise-replaced
    reference band with its own heavy footprint, and recovers its radius to 20% (with both galaxies' light
    in one footprint each, deblend none, the fainter one comes out larger)."""
    wcs = rotated_tan(0.0)
    psf = galsim.Gaussian(fwhm=3.5)
    gals = [(50.2, 50.3, 4.0, 0.3, 20.0, 5000.0), (61.0, 54.0, 3.0, 0.2, 100.0, 3000.0)]
    image = np.zeros(SHAPE)
    c = ((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2)
    for x, y, r_e, g, beta, flux in gals:
        gal = galsim.Sersic(1, half_light_radius=r_e, trunc=4 * r_e, flux_untruncated=True, flux=flux)
        gal = gal.shear(g=g, beta=beta * galsim.degrees)
        image += galsim.Convolve(gal, psf).drawImage(nx=SHAPE[1], ny=SHAPE[0], scale=1.0,
                                                     offset=(x - c[0], y - c[1])).array
    image += np.random.default_rng(2).normal(0, 0.05, SHAPE)
    path = tmp_path / "r.fits"
    fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), header=wcs.to_header())]).writeto(path)
    band = BandSpec(name="r", image=f"{path}:0", sigma=0.05, psf_fwhm="3.5px", zero_point=31.4)
    x, y = np.array([g[0] for g in gals]), np.array([g[1] for g in gals])
    ra, dec = wcs.all_pix2world(x, y, 0)
    pacsv.write_csv(pa.table({"id": [1, 2], "ra": ra, "dec": dec}), tmp_path / "c.csv")
    true_r = np.array([g[2] for g in gals])
    got = {}
    for deblend in ("peaks", "none"):
        ref = _ref(ingest_fits(tmp_path / deblend, [band], CatalogSpec(path=tmp_path / "c.csv", deblend=deblend)))
        assert len(ref) == 2 and not ref.cModel_ref_flag.astype(bool).any()
        got[deblend] = radius(ref[["cModel_exp_xx", "cModel_exp_yy", "cModel_exp_xy"]].to_numpy(float)) / true_r
    assert (ref.parent == 0).all()  # none: no blend
    np.testing.assert_allclose(got["peaks"], 1.0, atol=0.2)
    assert abs(got["peaks"][1] - 1) < abs(got["none"][1] - 1)
