"""Cone searches: which patches a cone touches (through the skymap), then the exact angular cut.

A loader given a cone reads only the files of the patches whose outer box the cone touches,
so a small cone on a large repository reads a few files; the rows are then cut exactly by
angular distance (astropy ``SkyCoord.separation``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forcedphot.errors import InputError
from forcedphot.skymap import Box, SkyMap, TractInfo

# Pixel-space test of a cone against a box: the cone's radius in pixels is taken this much larger
# (and one pixel more) so projection and distortion never drop a patch the cone really touches.
_RADIUS_MARGIN = 1.05


@dataclass(frozen=True)
class Cone:
    """A circle on the sky: centre (ICRS, deg) and radius (deg)."""

    ra: float
    dec: float
    radius: float

    def separation(self, ra, dec) -> np.ndarray:
        """Angular distance (deg) of each (ra, dec) from the centre."""
        from astropy.coordinates import SkyCoord

        centre = SkyCoord(self.ra, self.dec, unit="deg")
        return centre.separation(SkyCoord(np.asarray(ra, float), np.asarray(dec, float), unit="deg")).deg

    def contains(self, ra, dec) -> np.ndarray:
        return self.separation(ra, dec) <= self.radius


def make_cone(*, ra=None, dec=None, radius=None, coord=None) -> Cone | None:
    """A :class:`Cone` from ``ra=, dec=, radius=`` (deg) or ``coord=`` (SkyCoord) with ``radius=`` (Angle or deg).

    None when no cone is asked for; ``InputError`` naming the bad value otherwise.
    """
    if coord is None and ra is None and dec is None and radius is None:
        return None
    if coord is not None:
        if ra is not None or dec is not None:
            raise InputError("give either coord= or ra=/dec=, not both")
        icrs = coord.icrs
        if not icrs.isscalar:
            raise InputError(f"coord must be one position, not {len(icrs)}")
        ra, dec = float(icrs.ra.deg), float(icrs.dec.deg)
    if ra is None or dec is None or radius is None:
        raise InputError(f"a cone needs ra, dec and radius (got ra={ra!r}, dec={dec!r}, radius={radius!r})")
    radius = as_degrees(radius, "radius")
    ra, dec = as_degrees(ra, "ra"), as_degrees(dec, "dec")
    if not (np.isfinite(radius) and 0 < radius <= 180):
        raise InputError(f"radius must be in (0, 180] deg, not {radius!r}")
    if not (np.isfinite(dec) and -90 <= dec <= 90) or not np.isfinite(ra):
        raise InputError(f"cone centre ra={ra!r}, dec={dec!r} is not a sky position in deg")
    return Cone(ra % 360.0, dec, radius)


def as_degrees(value, what: str) -> float:
    """A float in deg from a number, an astropy Angle or a Quantity of angle."""
    if hasattr(value, "unit"):
        import astropy.units as u

        try:
            return float(value.to_value(u.deg))
        except (u.UnitsError, TypeError) as exc:
            raise InputError(f"{what} must be an angle, not {value!r}") from exc
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of deg or an astropy Angle, not {value!r}") from None


def _box_distance(box: Box, x: float, y: float) -> float:
    """Pixel distance from (x, y) to the box's continuous extent (0 inside)."""
    dx = max(box.min_x - 0.5 - x, 0.0, x - (box.max_x + 0.5))
    dy = max(box.min_y - 0.5 - y, 0.0, y - (box.max_y + 0.5))
    return float(np.hypot(dx, dy))


def _tract_patches(tract: TractInfo, cone: Cone) -> list[int]:
    from astropy.wcs.utils import proj_plane_pixel_scales

    # a cone that cannot reach the tract at all (and may sit behind its tangent plane): no patch
    centre_ra, centre_dec = tract.pixel_to_sky((tract.width - 1) / 2, (tract.height - 1) / 2)
    scale = float(np.max(proj_plane_pixel_scales(tract.wcs.celestial)))  # deg per pixel
    half_diagonal = 0.5 * np.hypot(tract.width, tract.height) * scale + tract.patch_border * scale
    if cone.separation(centre_ra, centre_dec)[()] > _RADIUS_MARGIN * (half_diagonal + cone.radius):
        return []
    x, y = tract.sky_to_pixel(cone.ra, cone.dec)
    radius_pix = _RADIUS_MARGIN * cone.radius / scale + 1.0
    return [p.patch for p in tract.patches() if _box_distance(p.outer, float(x), float(y)) <= radius_pix]


def patches_in_cone(skymap: SkyMap, cone: Cone) -> set[tuple[int, int]]:
    """(tract, patch) of every patch whose outer box the cone touches."""
    return {(t.tract, p) for t in skymap.tracts for p in _tract_patches(t, cone)}
