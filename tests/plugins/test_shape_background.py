"""Shapes, centroids, local background, variance, input counts and extendedness on simulated data."""

import numpy as np

from forcedphot import query
from forcedphot.io.coadd import read_coadd
from forcedphot.repository import DataId, Repository
from forcedphot.sim import load_recipe

ISOLATED_STAR = ("t.is_star AND t.n_neighbours = 0 AND f.detect_isPrimary AND f.parentObjectId = 0 "
                 "AND NOT f.pixelFlags_saturatedCenter")


def _stars(repo, columns):
    return query.sql(repo, f"""SELECT f.band, t.flux, t.x, t.y, f.psfFlux / f.psfFluxErr AS snr, {', '.join(columns)}
        FROM forced_source f JOIN truth t ON t.id = f.objectId AND t.band = f.band JOIN ref r ON r.id = f.objectId
        WHERE {ISOLATED_STAR}""").to_pandas()


def test_transformed_shape_is_the_reference_shape_on_the_same_wcs(measured_tiny_repo):
    t = query.sql(measured_tiny_repo, """SELECT f.shape_xx, f.shape_yy, f.shape_xy, r.shape_xx AS rxx,
        r.shape_yy AS ryy, r.shape_xy AS rxy FROM forced_source f JOIN ref r ON r.id = f.objectId""").to_pandas()
    np.testing.assert_allclose(t[["shape_xx", "shape_yy", "shape_xy"]].to_numpy(),
                               t[["rxx", "ryy", "rxy"]].to_numpy(), rtol=1e-6, atol=1e-6)


def test_sdss_shape_of_stars_matches_the_psf_model(star_field_noiseless_repo):
    t = _stars(star_field_noiseless_repo, ["f.sdssShape_xx", "f.sdssShape_yy", "f.sdssShape_xy", "f.sdssShape_psf_xx",
                                            "f.sdssShape_psf_yy", "f.sdssShape_flag"])
    assert (~t.sdssShape_flag).mean() > 0.98
    t = t[~t.sdssShape_flag]
    # a star's adaptive moments are the PSF's (both measured the same way: image vs model)
    np.testing.assert_allclose(np.median(t.sdssShape_xx / t.sdssShape_psf_xx), 1, atol=0.01)
    np.testing.assert_allclose(np.median(t.sdssShape_yy / t.sdssShape_psf_yy), 1, atol=0.01)


def test_sdss_centroid_recovers_true_positions(star_field_repo):
    t = _stars(star_field_repo, ["f.sdssCentroid_x", "f.sdssCentroid_y", "f.sdssCentroid_xErr", "f.sdssCentroid_flag"])
    bright = t[(t.snr > 50) & ~t.sdssCentroid_flag]
    assert len(bright) > 200
    assert np.median(np.abs(bright.sdssCentroid_x - bright.x)) < 0.03
    assert np.median(np.abs(bright.sdssCentroid_y - bright.y)) < 0.03


def test_local_background_and_variance_match_the_simulated_sky(star_field_repo):
    recipe = load_recipe("tiny")
    t = _stars(star_field_repo, ["f.localBackground", "f.localBackground_stdev", "f.localVariance",
                                 "f.localBackground_flag", "f.localVariance_flag"])
    for band, g in t.groupby("band"):
        sky = recipe.sky_sigma_njy[band]
        g = g[~g.localBackground_flag & ~g.localVariance_flag]
        # the simulated sky is zero; faint wings of stars and galaxies in the annulus add a little
        assert abs(np.median(g.localBackground)) < 0.15 * sky
        assert 0.95 * sky < np.median(g.localBackground_stdev) < 1.15 * sky
        # the variance plane is sky^2 plus the Poisson variance of faint undetected wings
        assert 0.999 * sky**2 < np.median(g.localVariance) < 1.06 * sky**2


def test_input_count_matches_an_independent_polygon_count(measured_tiny_repo):
    repo = Repository(measured_tiny_repo)
    coadd = read_coadd(repo.coadd_path(DataId(0, 1, "g")))
    t = query.sql(repo, "SELECT centroid_x, centroid_y, inputCount FROM forced_source "
                        "WHERE tract = 0 AND patch = 1 AND band = 'g' AND NOT centroid_flag").to_pandas()
    expected = np.zeros(len(t), int)
    for inp in coadd.inputs.inputs:  # convex quadrilaterals: inside = same side of all four edges
        px, py = np.array(inp.x), np.array(inp.y)
        cross = [(px[(k + 1) % 4] - px[k]) * (t.centroid_y - py[k]) - (py[(k + 1) % 4] - py[k]) * (t.centroid_x - px[k])
                 for k in range(4)]
        expected += (np.all(np.array(cross) > 0, axis=0) | np.all(np.array(cross) < 0, axis=0)).astype(int)
    np.testing.assert_array_equal(t.inputCount.to_numpy(), expected)
    assert t.inputCount.max() <= 8 and t.inputCount.min() >= 0


def test_extendedness_separates_stars_from_galaxies(star_field_repo):
    t = query.sql(star_field_repo, """SELECT t.is_star, f.extendedness, f.psfFlux / f.psfFluxErr AS snr
        FROM forced_source f JOIN truth t ON t.id = f.objectId AND t.band = f.band
        WHERE f.detect_isPrimary AND f.parentObjectId = 0 AND NOT f.extendedness_flag""").to_pandas()
    bright = t[t.snr > 30]
    stars, galaxies = bright[bright.is_star], bright[~bright.is_star]
    assert (stars.extendedness == 0).mean() > 0.9
    assert (galaxies.extendedness == 1).mean() > 0.6


def test_input_count_flags(tiny_repo_master):
    """noInputs: the coadd records no inputs (Rubin's meaning; inputCount null) or none covers the centroid."""
    import dataclasses

    from forcedphot.plugins.input_count import InputCount
    from tests.kernels.context import quantum_context

    ctx, _ = quantum_context(tiny_repo_master, band="g", index=1)
    out = InputCount(ctx.config).measure(ctx)
    assert ctx.usable.all() or (out["inputCount_flag"][~ctx.usable]).all()
    none = ctx.usable & (out["inputCount"] == 0)
    np.testing.assert_array_equal(out["inputCount_flag_noInputs"], none)
    np.testing.assert_array_equal(out["inputCount_flag"], ~ctx.usable | none)
    assert (out["inputCount"][ctx.usable] > 0).sum() > 20
    bare = InputCount(ctx.config).measure(dataclasses.replace(ctx, coadd=dataclasses.replace(ctx.coadd, inputs=None)))
    assert bare["inputCount"].mask.all()
    assert bare["inputCount_flag"].all() and bare["inputCount_flag_noInputs"].all()
