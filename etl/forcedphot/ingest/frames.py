"""Catalog sky frames: which columns hold the positions, in which frame, and their image pixels.

A catalog's positions may be equatorial (ICRS, FK5, FK4), galactic, ecliptic or
supergalactic. The frame is ``--frame`` (with ``--equinox`` for FK4/FK5/ecliptic), else
told by the column names (``l``/``b``, ``GLON``/``GLAT``: galactic; ``ELON``/``ELAT``,
``lambda``/``beta``: ecliptic; ``RAB1950``: FK4), else ICRS. Positions are converted with
astropy's ``SkyCoord`` to the frame of the image WCS, so coord_ra/coord_dec and the pixel
positions agree with the tract WCS the forced centroids use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import ICRS, SkyCoord, frame_transform_graph
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs.utils import wcs_to_celestial_frame

from forcedphot.errors import InputError
from forcedphot.ingest.grid import Grid

ECLIPTIC = "barycentricmeanecliptic"  # "ecliptic": the mean ecliptic and equinox (J2000 by default)
ALIASES = {"ecliptic": ECLIPTIC, "ecl": ECLIPTIC, "gal": "galactic", "j2000": "fk5", "b1950": "fk4"}
FRAMES = ("icrs", "fk5", "fk4", "fk4noeterms", "galactic", "supergalactic", "barycentricmeanecliptic",
          "barycentrictrueecliptic", "geocentricmeanecliptic", "geocentrictrueecliptic", "heliocentricmeanecliptic",
          "heliocentrictrueecliptic")
# frame family -> (longitude, latitude) column pairs, matched case-insensitively
PAIRS = {
    "galactic": (("l", "b"), ("GLON", "GLAT"), ("gal_l", "gal_b"), ("lii", "bii"), ("_Glon", "_Glat"),
                 ("GAL_LONG", "GAL_LAT")),
    "ecliptic": (("ELON", "ELAT"), ("lambda", "beta"), ("ecl_lon", "ecl_lat"), ("_Elon", "_Elat"),
                 ("ELONG", "ELAT"), ("ecliptic_lon", "ecliptic_lat")),
    "fk4": (("RAB1950", "DEB1950"), ("_RAB1950", "_DEB1950"), ("RA_B1950", "DEC_B1950"), ("RA1950", "DEC1950")),
    "supergalactic": (("SGL", "SGB"), ("SGLON", "SGLAT")),
}
DEFAULT_FRAME = {"galactic": "galactic", "ecliptic": ECLIPTIC, "fk4": "fk4", "supergalactic": "supergalactic"}


@dataclass(frozen=True)
class SkyColumns:
    """Longitude and latitude columns (deg) of the catalog and their frame."""

    lon: str
    lat: str
    frame: str  # a name of FRAMES
    how: str  # why this frame: "--frame", "column names", "default"


def frame_name(frame: str, *, where: str) -> str:
    name = ALIASES.get(str(frame).strip().lower(), str(frame).strip().lower())
    if name not in FRAMES:
        raise InputError(f"{where}: unknown sky frame {frame!r}; use icrs, fk5, fk4, galactic, ecliptic, "
                         f"supergalactic or one of {', '.join(FRAMES[6:])}")
    return name


def family(name: str) -> str:
    if name in ("icrs", "fk5"):
        return "equatorial"
    if name.startswith("fk4"):
        return "fk4"
    return "ecliptic" if name.endswith("ecliptic") else name


def _pair(columns: dict, fam: str) -> tuple[str, str] | None:
    lower = {n.lower(): n for n in columns if np.asarray(columns[n]).ndim == 1}
    for lon, lat in PAIRS.get(fam, ()):
        if lon.lower() in lower and lat.lower() in lower:
            return lower[lon.lower()], lower[lat.lower()]
    return None


def _family_of(lon: str, lat: str) -> str | None:
    """The frame family whose column names these are (``l``/``b`` -> galactic), or None."""
    for fam, pairs in PAIRS.items():
        if (lon.lower(), lat.lower()) in {(a.lower(), b.lower()) for a, b in pairs}:
            return fam
    return None


def sky_columns(columns: dict, found: tuple[str | None, str | None], *, explicit: bool, frame: str | None,
                label: str) -> SkyColumns | None:
    """The position columns and frame; ``found``: the RA/Dec columns named or found by common names."""
    lon, lat = found
    if frame is not None:
        name = frame_name(frame, where=label)
        if explicit and lon and lat:
            return SkyColumns(lon, lat, name, "--frame")
        pair = _pair(columns, family(name))
        if pair is None and family(name) in ("equatorial", "fk4") and lon and lat:
            pair = (lon, lat)
        if pair is None:
            tried = [f"{a}/{b}" for a, b in PAIRS.get(family(name), ())] or ["ra/dec like RA, ALPHA_J2000"]
            raise InputError(f"{label}: no {name} position columns (looked for {', '.join(tried)}); "
                             "name them with --ra-col/--dec-col")
        return SkyColumns(*pair, name, "--frame")
    if lon and lat:
        fam = _family_of(lon, lat)
        if fam is not None:
            return SkyColumns(lon, lat, DEFAULT_FRAME[fam], "column names")
        return SkyColumns(lon, lat, "icrs", "default")
    if explicit:
        return None
    for fam in PAIRS:
        pair = _pair(columns, fam)
        if pair is not None:
            return SkyColumns(*pair, DEFAULT_FRAME[fam], "column names")
    return None


def make_frame(name: str, equinox=None, *, where: str):
    """An astropy frame instance; ``equinox`` (J2000, B1950, 2000 ...) for the frames that have one."""
    cls = frame_transform_graph.lookup_name(name)
    if equinox is None:
        return cls()
    if "equinox" not in cls.frame_attributes:
        raise InputError(f"{where}: the {name} frame has no equinox; drop --equinox {equinox}")
    text = str(equinox).strip()
    try:
        float(text)
        text = ("B" if family(name) == "fk4" else "J") + text
    except ValueError:
        pass
    try:
        t = Time(text)
    except (ValueError, TypeError):
        raise InputError(f"{where}: equinox {equinox!r} is not an epoch like J2000 or B1950") from None
    return cls(equinox=t)


def image_frame(grid: Grid):
    try:
        return wcs_to_celestial_frame(grid.wcs)
    except ValueError:
        return ICRS()


def to_image(lon: np.ndarray, lat: np.ndarray, frame, grid: Grid) -> tuple[np.ndarray, ...]:
    """(x, y, ra, dec): pixels of the image and lon/lat in the WCS's frame (NaN where unplaceable)."""
    target = image_frame(grid)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", AstropyWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # all_world2pix on far-away points: All-NaN slices
        sky = SkyCoord(lon * u.deg, lat * u.deg, frame=frame).transform_to(target)
        ra, dec = sky.spherical.lon.deg, sky.spherical.lat.deg
        x, y = grid.wcs.all_world2pix(ra, dec, 0, quiet=True)
    return np.asarray(x, float), np.asarray(y, float), np.asarray(ra, float), np.asarray(dec, float)


def _span(v: np.ndarray) -> str:
    v = v[np.isfinite(v)]
    return f"{v.min():.4f}..{v.max():.4f}" if v.size else "no finite values"


def miss_message(cols: SkyColumns, frame, lon: np.ndarray, lat: np.ndarray, grid: Grid, n: int, label: str) -> str:
    """One line: which frame and columns were tried, where the rows are and where the image is."""
    h, w = grid.shape
    target = image_frame(grid)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        c_ra, c_dec = grid.wcs.all_pix2world([(w - 1) / 2, 0.0], [(h - 1) / 2, 0.0], 0)
        centre = SkyCoord(c_ra * u.deg, c_dec * u.deg, frame=target)
        radius = centre[0].separation(centre[1]).deg
        shown = [(cols.frame, frame), (target.name, target), ("icrs", ICRS()), ("galactic", "galactic")]
        seen, parts = set(), []
        for name, fr in shown:  # the catalog's frame, the image's, and ICRS and galactic as landmarks
            if name not in seen:
                seen.add(name)
                p = centre[0].transform_to(fr).spherical
                parts.append(f"({p.lon.deg:.4f}, {p.lat.deg:.4f}) {name}")
    where = "the image centre is " + " = ".join(parts)
    return (f"{label}: none of the {n} catalog rows falls on the image ({w}x{h} px): tried {cols.frame} "
            f"positions (frame from {cols.how}) in columns {cols.lon}/{cols.lat}, which span {_span(lon)} / "
            f"{_span(lat)} deg; {where}, radius {radius:.3g} deg; check --frame and --ra-col/--dec-col")
