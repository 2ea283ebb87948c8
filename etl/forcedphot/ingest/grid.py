"""The common pixel grid of all bands: shape, ICRS WCS of the 0-based image frame, pixel scale.

The tract frame of an ingested repository *is* this grid, so forced positions, patch
boxes and footprints are plain image pixels. Bands must agree on shape and WCS (checked
by mapping a lattice of pixels through both WCSs); an image without a celestial WCS gets
a TAN WCS at a user-given pixel scale so the rest of the pipeline always has sky
coordinates, and positions must then come from catalog x/y.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area, proj_plane_pixel_scales, wcs_to_celestial_frame

from forcedphot.errors import InputError
from forcedphot.ingest.images import oneline

log = logging.getLogger(__name__)

DEFAULT_RA, DEFAULT_DEC = 180.0, 0.0  # tangent point of the made-up WCS of an image without one
WCS_TOLERANCE_PIX = 0.01  # bands whose WCSs disagree by more than this are on different grids
ICRS_LIKE = ("icrs", "fk5")  # ICRS and FK5 J2000 (which differ by < 0.1 arcsec) are used as is


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int]  # (H, W)
    wcs: WCS  # ICRS, pixel (0-based) <-> sky; use all_pix2world / all_world2pix
    has_sky: bool  # False: made-up TAN (no celestial WCS in the inputs)
    pixel_scale: float  # arcsec per pixel (geometric mean at the reference point)
    label: str  # the image that defined the grid

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def pixel_area_sr(self) -> float:
        return float(proj_plane_pixel_area(self.wcs)) * (np.pi / 180.0) ** 2

    def contains(self, x, y) -> np.ndarray:
        """Finite positions on the image (pixel edges at -0.5 and W - 0.5)."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        with np.errstate(invalid="ignore"):
            return (np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < self.width - 0.5)
                    & (y >= -0.5) & (y < self.height - 0.5))

    def header_text(self) -> str:
        """The WCS as newline-separated FITS cards (what the skymap and coadds store)."""
        return self.wcs.to_header(relax=True).tostring(sep="\n").strip()


def _lattice(shape, n=7):
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, h - 1, n), np.linspace(0, w - 1, n), indexing="ij")
    return xx.ravel(), yy.ravel()


def _to_icrs(wcs: WCS, shape, label: str) -> WCS:
    """The WCS itself if equatorial; otherwise an ICRS TAN-SIP fit to it (forced positions are ICRS)."""
    try:
        native = wcs_to_celestial_frame(wcs)
        frame = native.name
    except ValueError:
        native, frame = None, "unknown"
    if frame in ICRS_LIKE and (frame == "icrs" or native.equinox == Time("J2000")):
        return wcs
    if frame == "fk5":
        frame = f"fk5 {native.equinox.jyear_str}"
    from astropy.wcs.utils import fit_wcs_from_points

    xx, yy = _lattice(shape, 25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        sky = wcs.pixel_to_world(xx, yy).icrs
        fit = fit_wcs_from_points((xx, yy), sky, projection="TAN", sip_degree=3)
        cx, cy = _lattice(shape, 40)
        check = wcs.pixel_to_world(cx, cy).icrs
        fx, fy = fit.all_world2pix(check.ra.deg, check.dec.deg, 0)
    resid = float(np.max(np.hypot(fx - cx, fy - cy)))
    log.warning("%s: %s WCS refit as ICRS TAN-SIP for forced positions (max residual %.3g px)", label, frame, resid)
    if resid > 0.05:
        raise InputError(f"{label}: cannot represent the {frame} WCS as ICRS TAN-SIP (residual {resid:.3g} px)")
    return fit


def _same_grid(a: WCS, b: WCS, shape) -> float:
    """Largest pixel offset when mapping a lattice through WCS a to the sky and back through b."""
    xx, yy = _lattice(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        ra, dec = a.all_pix2world(xx, yy, 0)
        bx, by = b.all_world2pix(ra, dec, 0)
    return float(np.nanmax(np.hypot(bx - xx, by - yy)))


def make_tan(shape, pixel_scale: float, ra: float = DEFAULT_RA, dec: float = DEFAULT_DEC) -> WCS:
    """A north-up, east-left TAN WCS centred on the image."""
    h, w = shape
    t = WCS(naxis=2)
    t.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    t.wcs.crval = [ra, dec]
    t.wcs.crpix = [(w - 1) / 2 + 1, (h - 1) / 2 + 1]
    s = pixel_scale / 3600.0
    t.wcs.cd = [[-s, 0.0], [0.0, s]]
    t.wcs.cunit = ["deg", "deg"]
    t.wcs.radesys = "ICRS"
    return t


def make_grid(images: list[tuple[str, tuple[int, int], WCS | None]], *, pixel_scale: float | None) -> Grid:
    """The shared grid of ``(label, shape, celestial WCS or None)`` for every band image."""
    label0, shape, _ = images[0]
    for label, s, _ in images[1:]:
        if s != shape:
            raise InputError(f"{label}: image shape {s[1]}x{s[0]} (WxH) differs from {label0} "
                             f"shape {shape[1]}x{shape[0]}; all bands must share one pixel grid")
    with_wcs = [(label, w) for label, _, w in images if w is not None]
    if with_wcs:
        ref_label, ref = with_wcs[0]
        for label, w in with_wcs[1:]:
            try:
                off = _same_grid(ref, w, shape)
            except Exception as exc:  # noqa: BLE001 - astropy convergence errors and the like
                raise InputError(f"{label}: cannot compare its WCS with {ref_label} ({oneline(exc)})") from exc
            if not off <= WCS_TOLERANCE_PIX:
                raise InputError(f"{label}: WCS differs from {ref_label} by {off:.3g} px; "
                                 "all bands must share one pixel grid (resample them first)")
        missing = [label for label, _, w in images if w is None]
        if missing:
            log.warning("%s: no celestial WCS; assuming the grid of %s", ", ".join(missing), ref_label)
        if pixel_scale is not None:
            log.warning("%s has a celestial WCS; --pixel-scale %g is ignored", ref_label, pixel_scale)
        wcs = _to_icrs(ref, shape, ref_label)
        scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs)))) * 3600.0
        return Grid(shape, wcs, True, scale, ref_label)
    if pixel_scale is None:
        raise InputError(f"{label0}: no celestial WCS in any band image; give the pixel scale "
                         "(--pixel-scale ARCSEC) to build a TAN WCS, and catalog x/y positions")
    if not (np.isfinite(pixel_scale) and pixel_scale > 0):
        raise InputError(f"pixel scale must be positive, not {pixel_scale}")
    log.warning("%s: no celestial WCS; using a TAN WCS at %g arcsec/px centred on (ra, dec) = (%g, %g); "
                "positions come from catalog x/y", label0, pixel_scale, DEFAULT_RA, DEFAULT_DEC)
    return Grid(shape, make_tan(shape, pixel_scale), False, float(pixel_scale), label0)
