"""PSF fluxes of isolated simulated stars agree with the truth within their errors."""

import numpy as np

from forcedphot import query


def test_psf_flux_pulls_of_isolated_stars(star_field_repo):
    pulls = query.sql(star_field_repo, """
        SELECT f.band, t.id, (f.psfFlux - t.flux) / f.psfFluxErr AS pull
        FROM forced_source f JOIN truth t ON f.objectId = t.id AND f.band = t.band
        WHERE t.is_star AND t.n_neighbours = 0 AND f.detect_isPrimary AND f.parentObjectId = 0
          AND NOT f.psfFlux_flag AND NOT f.pixelFlags_saturatedCenter
    """).to_pydict()
    n_stars = len(set(pulls["id"]))
    p = np.array(pulls["pull"])
    print(f"isolated stars: {n_stars}, measurements: {p.size}, mean pull {p.mean():+.3f}, std {p.std(ddof=1):.3f}")
    assert n_stars >= 200
    assert abs(p.mean()) < 0.1
    assert abs(p.std(ddof=1) - 1) < 0.1
    for band in sorted(set(pulls["band"])):
        b = p[np.array(pulls["band"]) == band]
        print(f"  {band}: n={b.size} mean {b.mean():+.3f} std {b.std(ddof=1):.3f}")


def test_psf_fit_area_and_pixels_of_isolated_stars(star_field_repo):
    """Effective PSF area (sum P)^2 / sum P^2 matches the simulated PSF widths; full boxes are used."""
    t = query.sql(star_field_repo, """
        SELECT f.psfFlux_npixels AS npix, f.psfFlux_area AS area, f.psfFluxErr AS err, f.band
        FROM forced_source f JOIN truth t ON f.objectId = t.id AND f.band = t.band
        WHERE t.is_star AND t.n_neighbours = 0 AND f.detect_isPrimary AND NOT f.psfFlux_flag""").to_pydict()
    assert (np.array(t["npix"]) == 33 * 33).all()
    # 4 pi sigma^2 for core FWHM 0.65-0.85 arcsec at 0.2 arcsec/pixel, broadened by the 12% wing
    area = np.array(t["area"])
    assert (area > 4 * np.pi * 1.3**2).all() and (area < 4 * np.pi * 2.6**2).all()
    assert (np.array(t["err"]) > 0).all()
