"""The ingest deblender: blends of overlapping footprints, parent rows, flux-conserving PSF-model heavies.

Synthetic: three blended Gaussian stars (and one isolated) in two bands, through ingest,
the footprints Parquet, ``forcedphot run`` and SQL. Real: the HSC COSMOS blends of
``../shared/data/real/hsc`` (skipped when absent), 88 and 8 peaks.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from forcedphot.cli import main
from forcedphot.errors import InputError
from forcedphot.footprint import spans_to_pixels
from forcedphot.ingest import deblend
from forcedphot.ingest import BandSpec, CatalogSpec, ingest_fits
from forcedphot.ingest.deblend import Blends, fit_band, plan_blends
from forcedphot.ingest.psfimage import gaussian_psf
from forcedphot.ingest.footprints import ellipse_spans
from forcedphot.ingest.grid import make_tan
from forcedphot.query import sql
from forcedphot.repository import DataId, Repository
from forcedphot.skymap import Box
from tests.ingest.synth import REAL_DATA, gaussian_image, ingest_hsc_npz

SHAPE = (64, 80)
FWHM = {"g": 3.0, "r": 2.6}
ZP = {"g": 27.0, "r": 27.0}
SIGMA = 0.05
# three stars blended pairwise (footprints: 2 FWHM circles) and one isolated star
X = np.array([30.3, 35.6, 31.8, 62.2])
Y = np.array([30.6, 31.9, 36.1, 20.4])
COUNTS = {"g": np.array([4000.0, 1500.0, 900.0, 2000.0]), "r": np.array([5000.0, 1200.0, 2500.0, 1800.0])}
BLENDED = [0, 1, 2]


def _njy(band, counts):
    return counts * 10 ** (-0.4 * (ZP[band] - 31.4))


def _footprints(repo: Repository, band: str, patch: int = 0):
    return pq.read_table(repo.footprints_path(DataId(0, patch, band))).to_pandas()


def _check_conservation(repo: Repository, ref, band: str, patch: int = 0) -> float:
    """Children's heavies add up to their parent's pixels (same spans); returns the worst error / parent total."""
    fp = _footprints(repo, band, patch).set_index("id")
    worst = 0.0
    for pid in ref.id[ref.deblend_nChild > 0]:
        parent = fp.loc[pid]
        kids = fp[fp.parent == pid]
        assert len(kids) == int(ref.deblend_nChild[ref.id == pid].iloc[0])
        for col in ("span_y", "span_x0", "span_x1"):
            for spans in kids[col]:
                np.testing.assert_array_equal(spans, parent[col])
        total = np.sum(np.stack(list(kids["values"])).astype(np.float64), axis=0)
        values = np.asarray(parent["values"], np.float64)
        finite = np.isfinite(values)
        assert np.array_equal(np.isfinite(total), finite)
        err = np.abs(total - values)[finite]
        assert np.all(err <= 1e-5 * np.abs(values[finite]) + 1e-30), (band, pid, err.max())
        worst = max(worst, float(err.max() / np.abs(values[finite]).sum()))
    return worst


@pytest.fixture
def blend_inputs(tmp_path):
    rng = np.random.default_rng(11)
    tan = make_tan(SHAPE, 0.2, ra=30.0, dec=-10.0)
    bands = []
    for b in ("g", "r"):
        img = gaussian_image(SHAPE, X, Y, COUNTS[b], FWHM[b]) + rng.normal(0, SIGMA, SHAPE)
        path = tmp_path / f"{b}.fits"
        fits.writeto(path, img.astype(np.float32), header=tan.to_header())
        bands.append(BandSpec(name=b, image=path, sigma=SIGMA, psf_fwhm=f"{FWHM[b]}px", zero_point=ZP[b]))
    ra, dec = tan.all_pix2world(X, Y, 0)
    Table({"id": np.arange(1, X.size + 1), "ra": ra, "dec": dec}).write(tmp_path / "cat.fits")
    return bands, CatalogSpec(path=tmp_path / "cat.fits")


def test_blend_of_three_stars_conserves_flux_and_deblends(blend_inputs, tmp_path):
    bands, catalog = blend_inputs
    repo = ingest_fits(tmp_path / "repo", bands, catalog, ref_band="r")
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas()
    assert len(ref) == X.size + 1  # one new parent, after the catalog rows
    parent = ref.iloc[-1]
    assert parent.id == X.size + 1 and parent.parent == 0 and parent.deblend_nChild == 3
    assert not parent.detect_isPrimary
    assert ref.parent.tolist() == [parent.id] * 3 + [0, 0]
    assert ref.deblend_nChild.tolist()[:4] == [0, 0, 0, 0]
    assert ref.detect_isPrimary.tolist()[:4] == [True] * 4
    # the parent sits at the flux-weighted (reference band) centre of its children, with their spread as shape
    w = COUNTS["r"][BLENDED]
    assert parent.centroid_x == pytest.approx(np.average(X[BLENDED], weights=w), abs=0.05)
    assert parent.centroid_y == pytest.approx(np.average(Y[BLENDED], weights=w), abs=0.05)
    psf_var = (FWHM["r"] / (2 * np.sqrt(2 * np.log(2)))) ** 2
    cx, cy = np.average(X[BLENDED], weights=w), np.average(Y[BLENDED], weights=w)
    assert parent.shape_xx == pytest.approx(np.average((X[BLENDED] - cx) ** 2, weights=w) + psf_var, rel=0.05)
    assert parent.shape_yy == pytest.approx(np.average((Y[BLENDED] - cy) ** 2, weights=w) + psf_var, rel=0.05)
    if "externalId" in ref:
        assert ref.externalId.isna().tolist() == [False] * 4 + [True]
    for band in ("g", "r"):
        fp = _footprints(repo, band)
        assert fp.id.tolist() == ref.id.tolist() and fp.parent.tolist() == ref.parent.tolist()
        assert _check_conservation(repo, ref, band) < 1e-6
        # the isolated star keeps its own footprint with the image pixels
        iso = fp[fp.id == 4].iloc[0]
        assert np.asarray(iso["values"]).sum() == pytest.approx(COUNTS[band][3], rel=0.02)
    assert main(["run", "--repo", str(repo.root), "-q"]) == 0
    got = sql(repo.root, """
        SELECT f.band, f.objectId, f.parentObjectId, f.deblend_nChild, f.psfFlux, f.undeblended_psfFlux
        FROM forced_source f JOIN ref r ON f.objectId = r.id ORDER BY f.band, f.objectId
    """).to_pandas()
    assert len(got) == 2 * (X.size + 1)
    for band in ("g", "r"):
        g = got[got.band == band]
        truth = _njy(band, COUNTS[band][BLENDED])
        blended = g[g.objectId.isin([1, 2, 3])]
        deblended_err = np.abs(blended.psfFlux.to_numpy() / truth - 1)
        undeblended_err = np.abs(blended.undeblended_psfFlux.to_numpy() / truth - 1)
        assert np.all(deblended_err < undeblended_err), (band, deblended_err, undeblended_err)
        assert np.all(deblended_err < 0.03), (band, deblended_err)
        iso = g[g.objectId == 4].iloc[0]
        assert iso.psfFlux == pytest.approx(_njy(band, COUNTS[band][3]), rel=0.01)


def test_deblend_none_keeps_one_footprint_per_object(blend_inputs, tmp_path, capsys):
    bands, catalog = blend_inputs
    argv = ["ingest", "fits", "--repo", str(tmp_path / "repo"), "--deblend", "none", "--catalog", str(catalog.path)]
    for b in bands:
        argv += ["--band", b.name, "--image", str(b.image), "--sigma", str(SIGMA), "--psf-fwhm", b.psf_fwhm,
                 "--zero-point", str(ZP[b.name])]
    assert main(argv) == 0
    assert f"{X.size} reference rows" in capsys.readouterr().out
    repo = Repository(tmp_path / "repo")
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas()
    assert ref.parent.tolist() == [0] * X.size and ref.deblend_nChild.tolist() == [0] * X.size
    with pytest.raises(InputError, match="deblend"):
        ingest_fits(tmp_path / "other", bands, catalog, deblend="scarlet")


def test_catalog_family_is_deblended_under_its_own_parent(blend_inputs, tmp_path):
    """Catalog parents are kept; an overlapping catalog-isolated object joins the family."""
    bands, catalog = blend_inputs
    tan = make_tan(SHAPE, 0.2, ra=30.0, dec=-10.0)
    x, y = np.r_[X, 33.0], np.r_[Y, 33.0]  # row 4: the catalog's parent of rows 0 and 1
    ra, dec = tan.all_pix2world(x, y, 0)
    Table({"id": np.arange(1, 6), "parent": [5, 5, 0, 0, 0], "ra": ra, "dec": dec}).write(tmp_path / "fam.fits")
    repo = ingest_fits(tmp_path / "repo", bands, CatalogSpec(path=tmp_path / "fam.fits"))
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas()
    assert len(ref) == 5  # no new parent
    assert ref.parent.tolist() == [5, 5, 5, 0, 0] and ref.deblend_nChild.tolist() == [0, 0, 0, 0, 3]
    for band in ("g", "r"):
        _check_conservation(repo, ref, band)
    assert main(["run", "--repo", str(repo.root), "-q"]) == 0


def test_far_pixels_go_to_the_nearest_peak():
    """Where every fitted model is 0 (outside all stamps), the ratio is 1 for the nearest child; elsewhere ratios sum to 1."""
    box = Box(0, 0, 199, 9)
    x, y = np.array([5.0, 12.0]), np.array([5.0, 5.0])
    q = np.broadcast_to(np.diag([150.0 ** 2, 3.0 ** 2]), (2, 2, 2)).copy()
    spans = ellipse_spans(x, y, q, box)
    blends: Blends = plan_blends(np.array([-1, -1]), spans, box)
    assert blends.n_blends == 1 and blends.n_new == 1 and blends.children.tolist() == [0, 1]
    psf = gaussian_psf(2.0)
    image = gaussian_image((10, 200), x, y, [100.0, 50.0], 2.0)
    fit = fit_band(blends, x, y, np.zeros((2, 2, 2)), psf, image, np.ones((10, 200)), box)
    np.testing.assert_allclose(fit.flux, [100.0, 50.0], rtol=1e-6)
    assert not fit.zero_flux.any()
    ys, xs, _ = blends.union_pixels()
    first, second = fit.ratios[:xs.size], fit.ratios[xs.size:]
    np.testing.assert_allclose(first + second, 1.0, atol=1e-15)
    far = np.abs(xs - 8.5) > 40
    assert far.any()
    np.testing.assert_array_equal(first[far], (xs[far] < 8.5).astype(float))
    assert first[(xs == 5) & (ys == 5)][0] == pytest.approx(1.0, abs=1e-6)


def test_blends_are_the_connected_components_of_shared_pixels(monkeypatch):
    rng = np.random.default_rng(5)
    box = Box(0, 0, 59, 49)
    n = 40
    x, y = rng.uniform(0, 60, n), rng.uniform(0, 50, n)
    q = np.eye(2) * rng.uniform(1, 12, n)[:, None, None]
    spans = ellipse_spans(x, y, q, box)
    blends = plan_blends(np.full(n, -1), spans, box)
    # brute force: objects i, j overlap when their pixel sets intersect; components by repeated merging
    offsets, sy, sx0, sx1 = spans
    pix = [set(zip(*spans_to_pixels(sy[a:b], sx0[a:b], sx1[a:b]))) for a, b in zip(offsets[:-1], offsets[1:])]
    label = np.arange(n)
    for _ in range(n):
        for i in range(n):
            for j in range(i + 1, n):
                if pix[i] & pix[j]:
                    label[i] = label[j] = min(label[i], label[j])
    groups = {frozenset(np.flatnonzero(label == g)) for g in np.unique(label) if (label == g).sum() > 1}
    got = {frozenset(blends.children[a:b]) for a, b in zip(blends.child_offsets[:-1], blends.child_offsets[1:])}
    assert got == groups and blends.n_new == len(groups)
    for b, members in enumerate(blends.children[a:c] for a, c in zip(blends.child_offsets[:-1],
                                                                      blends.child_offsets[1:])):
        o, uy, ux0, ux1 = blends.union
        union = set(zip(*spans_to_pixels(uy[o[b]:o[b + 1]], ux0[o[b]:o[b + 1]], ux1[o[b]:o[b + 1]])))
        assert union == set().union(*(pix[i] for i in members))
    # blends over the size limits are left alone
    monkeypatch.setattr(deblend, "MAX_CHILDREN", 2)
    capped = plan_blends(np.full(n, -1), spans, box)
    assert capped.n_blends == sum(len(g) <= 2 for g in groups)
    assert capped.n_skipped == sum(len(g) > 2 for g in groups) > 0


# -- real data ----------------------------------------------------------------------------------
HSC = REAL_DATA / "hsc"
needs_real = pytest.mark.skipif(not HSC.is_dir(), reason=f"real test data not found at {HSC} "
                                                         "(expected ../shared/data/real/hsc beside the clone)")


@pytest.mark.realdata
@needs_real
@pytest.mark.parametrize("name, n_peaks", [("43158172147389364", 88), ("43158172147386355", 8)])
def test_hsc_blends_conserve_flux_in_every_band(tmp_path, name, n_peaks):
    _, peaks = ingest_hsc_npz(HSC / f"deblender_{name}.npz", tmp_path)
    assert len(peaks) == n_peaks
    repo = Repository(tmp_path / "repo")
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas()
    parents = ref[ref.deblend_nChild > 0]
    assert (ref.deblend_nChild == 0).sum() == n_peaks  # every peak is a child or isolated
    assert len(parents) >= 1 and (ref.parent > 0).sum() == parents.deblend_nChild.sum()
    assert set(ref.parent[ref.parent > 0]) == set(parents.id)
    worst = {band: _check_conservation(repo, ref, band) for band in "grizy"}
    print(f"\nHSC {name}: {n_peaks} peaks, {len(parents)} blends, largest {parents.deblend_nChild.max()} children; "
          f"worst conservation error (of the parent's total) per band: "
          + ", ".join(f"{b} {e:.1e}" for b, e in worst.items()))
    assert all(e < 1e-5 for e in worst.values()), worst
    assert main(["run", "--repo", str(repo.root), "-q"]) == 0
    rows = sql(repo.root, "SELECT band, count(*) AS n FROM forced_source GROUP BY band ORDER BY band").to_pylist()
    assert rows == [{"band": b, "n": len(ref)} for b in sorted("grizy")]


def test_model_stamps_are_the_psf_flux_shift_and_exact_galaxy_profiles():
    """PSF-only models equal PsfGrid's shifted PSF images; Gaussian and exponential components equal an
    independent Fourier rendering of the pixel-integrated, PSF-convolved galaxy (tests.ingest.synth)."""
    from forcedphot.ingest.deblend import model_stamps
    from forcedphot.psf import PsfGrid
    from tests.ingest.synth import GALAXY, galaxy_image, galaxy_moments

    fwhm = 3.0
    psf = gaussian_psf(fwhm)
    k = psf.shape[0]
    x, y = np.array([10.3, 20.5, 7.0]), np.array([5.45, 8.2, 9.0])
    dx, dy = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
    grid = PsfGrid([0.0], [0.0], psf[None, None]).images_at(x, y)
    np.testing.assert_allclose(model_stamps(psf, dx, dy, np.zeros((3, 2, 2)), k // 2), grid, atol=1e-14)
    sigma2 = (fwhm / (2 * np.sqrt(2 * np.log(2)))) ** 2
    intrinsic = galaxy_moments(fwhm=fwhm, **GALAXY) - np.eye(2) * (sigma2 + 1 / 12)
    for profile in ("gauss", "exp"):
        m = model_stamps(psf, np.array([0.3]), np.array([-0.2]), intrinsic[None], 24, profile=profile)[0]
        ref = galaxy_image((49, 49), 24.3, 23.8, 1.0, profile=profile, fwhm=fwhm, **GALAXY)
        assert m.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.abs(m - ref).max() < 1e-4 * ref.max(), profile


def test_a_child_with_no_flux_is_flagged_and_gets_nothing(tmp_path):
    """A catalog object on an over-subtracted (negative) patch of sky beside a bright star: its least-squares
    amplitude is negative, so the non-negative fit gives it 0: zero heavy values and deblend_zeroFlux. Its
    forced_source row carries deblend_zeroFlux and the general flag of every deblended measurement (psfFlux
    ~ 0 is no measurement of it); its undeblended measurements and the star's stand."""
    tan = make_tan(SHAPE, 0.2, ra=30.0, dec=-10.0)
    x, y = np.array([30.3, 33.1]), np.array([30.6, 31.4])
    img = (gaussian_image(SHAPE, x, y, [5000.0, -50.0], 3.0)
           + np.random.default_rng(2).normal(0, SIGMA, SHAPE))
    fits.writeto(tmp_path / "r.fits", img.astype(np.float32), header=tan.to_header())
    ra, dec = tan.all_pix2world(x, y, 0)
    Table({"id": [1, 2], "ra": ra, "dec": dec}).write(tmp_path / "cat.fits")
    band = BandSpec(name="r", image=tmp_path / "r.fits", sigma=SIGMA, psf_fwhm="3px", zero_point=27.0)
    repo = ingest_fits(tmp_path / "repo", [band], CatalogSpec(path=tmp_path / "cat.fits"))
    ref = pq.read_table(repo.ref_path(0, 0)).to_pandas()
    fp = _footprints(repo, "r").set_index("id")
    star, empty, parent = ref.id
    assert fp.loc[parent, "deblend_zeroFlux"] is None or np.isnan(fp.loc[parent, "deblend_zeroFlux"])
    assert fp.loc[star, "deblend_zeroFlux"] == False and fp.loc[empty, "deblend_zeroFlux"] == True  # noqa: E712
    assert np.all(np.asarray(fp.loc[empty, "values"]) == 0)
    np.testing.assert_array_equal(fp.loc[star, "values"], fp.loc[parent, "values"])
    _check_conservation(repo, ref, "r")
    assert main(["run", "--repo", str(repo.root), "-q"]) == 0
    out = sql(repo, """SELECT objectId, deblend_zeroFlux, psfFlux_flag, ap03Flux_flag, kronFlux_flag,
                              gaussianFlux_flag, undeblended_psfFlux_flag FROM forced_source""").to_pandas()
    out = out.set_index("objectId")
    assert out.loc[empty].drop("undeblended_psfFlux_flag").tolist() == [True] * 5
    assert out.loc[star].tolist() == [False] * 6
    assert not out.loc[empty, "undeblended_psfFlux_flag"] and out.loc[parent, "deblend_zeroFlux"] is None
