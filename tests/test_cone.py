"""Cone searches prune patches through the skymap and cut rows exactly; crossmatch against a user catalog."""

from __future__ import annotations

import shutil

import astropy.units as u
import numpy as np
import polars as pl
import pytest
from astropy.coordinates import Angle, SkyCoord

from forcedphot import query
from forcedphot.cone import make_cone, patches_in_cone
from forcedphot.errors import InputError
from forcedphot.repository import Repository


@pytest.fixture(scope="module")
def skymap(measured_tiny_repo):
    return Repository(measured_tiny_repo).read_skymap()


def _patch_centre(skymap, patch: int):
    tract = skymap.tracts[0]
    box = tract.patch(patch).inner
    ra, dec = tract.pixel_to_sky((box.min_x + box.max_x) / 2, (box.min_y + box.max_y) / 2)
    scale = tract.pixel_scale / 3600.0
    return tract, float(ra), float(dec), scale


def _brute_force(df: pl.DataFrame, ra: float, dec: float, radius: float) -> pl.DataFrame:
    sep = SkyCoord(ra, dec, unit="deg").separation(
        SkyCoord(df["coord_ra"].to_numpy(), df["coord_dec"].to_numpy(), unit="deg")).deg
    return df.filter(pl.Series(sep <= radius))


def test_a_small_cone_reads_only_its_patch(measured_tiny_repo, skymap, tmp_path):
    tract, ra, dec, scale = _patch_centre(skymap, 0)
    radius = 0.1 * tract.patch_inner * scale
    assert patches_in_cone(skymap, make_cone(ra=ra, dec=dec, radius=radius)) == {(tract.tract, 0)}
    # every other patch's files made unreadable: the cone must not open them
    repo = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, repo)
    broken = [p for p in (repo / "forced_source").glob("**/*.parquet") if "patch=0" not in p.parts]
    assert broken
    for path in broken:
        path.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        query.load_forced_source(repo)
    got = query.load_forced_source(repo, ra=ra, dec=dec, radius=radius)
    want = _brute_force(query.load_forced_source(measured_tiny_repo, patch=0), ra, dec, radius)
    assert got.height == want.height > 0
    assert got.sort("objectId", "band").equals(want.sort("objectId", "band"))
    objects = query.load_object(repo, coord=SkyCoord(ra * u.deg, dec * u.deg), radius=Angle(radius, u.deg))
    assert objects.height == want.filter(pl.col("detect_isPrimary"))["objectId"].n_unique() > 0


def test_a_cone_over_patch_corners_equals_the_exact_cut(measured_tiny_repo, skymap):
    tract = skymap.tracts[0]
    ra, dec = (float(v) for v in tract.pixel_to_sky((tract.width - 1) / 2, (tract.height - 1) / 2))
    radius = 0.3 * tract.patch_inner * tract.pixel_scale / 3600.0
    assert len(patches_in_cone(skymap, make_cone(ra=ra, dec=dec, radius=radius))) == tract.n_patches
    full = query.load_forced_source(measured_tiny_repo)
    got = query.load_forced_source(measured_tiny_repo, ra=ra, dec=dec, radius=radius, columns=["objectId", "band"])
    want = _brute_force(full, ra, dec, radius)
    assert 0 < got.height == want.height < full.height
    assert got.sort("objectId", "band").equals(want.select("objectId", "band").sort("objectId", "band"))
    objects = query.load_object(measured_tiny_repo, ra=ra, dec=dec, radius=radius, backend="astropy")
    every = query.load_object(measured_tiny_repo)
    assert len(objects) == _brute_force(every, ra, dec, radius).height > 0
    far = query.load_forced_source(measured_tiny_repo, ra=(ra + 180) % 360, dec=-dec, radius=radius)
    assert far.height == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"ra": 10.0, "dec": 0.0}, "needs ra, dec and radius"),
    ({"ra": 10.0, "dec": 95.0, "radius": 0.1}, "not a sky position"),
    ({"ra": 10.0, "dec": 0.0, "radius": -1}, "radius must be"),
    ({"ra": 10.0, "dec": 0.0, "radius": 3 * u.m}, "radius must be an angle"),
])
def test_bad_cones_are_one_line(measured_tiny_repo, kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        query.load_forced_source(measured_tiny_repo, **kwargs)
    assert "\n" not in str(info.value)


def test_crossmatch_finds_shifted_objects(measured_tiny_repo):
    objects = query.load_object(measured_tiny_repo)
    rng = np.random.default_rng(3)
    picked = objects.sample(n=min(25, objects.height), seed=5)
    shift = 0.2 / 3600  # deg
    catalog = pl.DataFrame({"name": [f"t{i}" for i in range(picked.height)],
                            "ra": picked["coord_ra"] + shift / np.cos(np.radians(picked["coord_dec"])),
                            "dec": picked["coord_dec"],
                            "objectId": rng.integers(0, 10, picked.height)})  # a clashing column name
    catalog = pl.concat([catalog, pl.DataFrame({"name": ["far"], "ra": [(objects["coord_ra"][0] + 90) % 360],
                                                "dec": [0.0], "objectId": [0]})])
    matched = query.crossmatch(measured_tiny_repo, catalog, radius=Angle(1, u.arcsec))
    assert matched.height == picked.height  # the far row has no match
    assert "far" not in matched["name"].to_list()
    assert (matched["objectId_catalog"].to_numpy() == catalog["objectId"][:picked.height].to_numpy()).all()
    assert np.allclose(matched["separation_arcsec"].to_numpy(), 0.2, atol=1e-3)
    assert (matched["objectId"].to_numpy() == picked["objectId"].to_numpy()).all()
    # a SkyCoord catalog against an already loaded table, as an astropy table with units
    coords = SkyCoord(catalog["ra"].to_numpy() * u.deg, catalog["dec"].to_numpy() * u.deg)
    table = query.crossmatch(objects, coords, radius=0.5 / 3600, backend="astropy")
    assert len(table) == picked.height and table["separation_arcsec"].unit == u.arcsec
    none = query.crossmatch(objects, coords, radius=0.1 / 3600)
    assert none.height == 0 and "separation_arcsec" in none.columns


def test_crossmatch_refuses_a_catalog_without_coordinates(measured_tiny_repo):
    with pytest.raises(InputError, match=r"catalog has no column\(s\) \['ra'\]"):
        query.crossmatch(measured_tiny_repo, pl.DataFrame({"RA": [1.0], "dec": [2.0]}), radius=1 / 3600)
