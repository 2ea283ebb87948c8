"""What to ingest: one BandSpec per band and one CatalogSpec, the same for the CLI, TOML and Python.

File options are ``"path"``, ``"path:HDU"`` or ``"path[HDU]"`` (HDU: index or EXTNAME).
Catalog column options left as None are looked up among common names (see
:mod:`forcedphot.ingest.catalog`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from forcedphot.errors import InputError
from forcedphot.flags import DEFAULT_MASK_PLANES
from forcedphot.ingest.estimate import is_estimate

BAND_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,8}")  # a partition value and an 8-char schema column


@dataclass(frozen=True, kw_only=True)
class BandSpec:
    name: str
    image: str | Path
    variance: str | Path | float | None = None  # exactly one of variance, invvar, sigma (plane or constant)
    invvar: str | Path | float | None = None
    sigma: str | Path | float | None = None  # ... or "estimate": the background RMS (forcedphot.ingest.estimate)
    mask: str | Path | None = None  # integer plane; nonzero -> BAD unless mask_bits maps bits to planes
    mask_bits: str | dict | None = None  # "BAD=0,SAT=1" or {"BAD": 0, "SAT": 1}: plane name -> input bit
    background: str | Path | float | None = None  # a plane to subtract, a constant, or "estimate"
    background_box: int | None = None  # box size (pixels) of the background/sigma estimate; None: from the PSF
    psf: str | Path | None = None  # PSF image, "estimate" (from catalog stars; psf_fwhm is then a first guess), or
    psf_fwhm: str | float | None = None  # "1.1arcsec", "3px", or a number in psf_fwhm_unit
    psf_fwhm_unit: str | None = None  # "arcsec" or "px" for a numeric psf_fwhm
    psf_oversampling: int | None = None  # integer oversampling of the PSF image (binned down); None: from its
    #                                       header's pixel scale, else 1
    psf_scale_mismatch: str = "resample"  # PSF header scale != image scale: resample, refuse, or ignore the header
    zero_point: float | None = None  # AB magnitude of one image unit, or
    flux_unit: str | None = None  # astropy unit of one image unit (nJy, uJy, MJy/sr...)
    # a spatially varying PSF (Python only, e.g. a CellCoadd's cells from ingest rubin): a forcedphot.psf.PsfGrid
    # whose nodes are in the image's 0-based pixels; psf_grid_record says where it came from (repository.json)
    psf_grid: object | None = None
    psf_grid_record: dict | None = None

    def __post_init__(self):
        if not BAND_NAME.fullmatch(str(self.name)):
            raise InputError(f"band name {self.name!r}: use 1-8 letters, digits or _.+-")
        noise = [n for n in ("variance", "invvar", "sigma") if getattr(self, n) is not None]
        if len(noise) != 1:
            raise InputError(f"band {self.name} ({self.image}): give exactly one of variance, invvar or sigma "
                             f"(got {noise or 'none'}); --sigma estimate measures the background noise")
        for n in ("variance", "invvar"):
            if is_estimate(getattr(self, n)):
                raise InputError(f"band {self.name}: {n} cannot be estimated; use --sigma estimate")
        if self.background_box is not None and not (is_estimate(self.background) or is_estimate(self.sigma)):
            raise InputError(f"band {self.name}: --background-box applies to --background estimate or "
                             "--sigma estimate only")
        if self.psf_scale_mismatch not in ("resample", "refuse", "ignore"):
            raise InputError(f"band {self.name}: PSF scale mismatch must be resample, refuse or ignore, "
                             f"not {self.psf_scale_mismatch!r}")
        if self.psf is not None and self.psf_fwhm is not None and not is_estimate(self.psf):
            raise InputError(f"band {self.name}: give a PSF image or a PSF FWHM, not both")
        if self.psf_grid is not None and (self.psf is not None or self.psf_fwhm is not None):
            raise InputError(f"band {self.name}: give a PSF grid or a PSF image or FWHM, not both")
        if self.psf is None and self.psf_fwhm is None and self.psf_grid is None:
            raise InputError(f"band {self.name} ({self.image}): no PSF; give a PSF image (--psf FILE[:HDU]), "
                             "a Gaussian FWHM (--psf-fwhm 1.1arcsec or 3px) or --psf estimate")
        if self.zero_point is not None and self.flux_unit is not None:
            raise InputError(f"band {self.name}: give a zero point or a flux unit, not both")
        self.mask_mapping()  # fail early on a malformed mapping

    @property
    def noise(self) -> tuple[str, str | Path]:
        """(kind, file) of the noise plane: kind is variance, invvar or sigma."""
        return next((n, getattr(self, n)) for n in ("variance", "invvar", "sigma") if getattr(self, n) is not None)

    def mask_mapping(self) -> dict[str, int] | None:
        """Output plane -> input bit, or None for "any nonzero bit is BAD"."""
        return parse_mask_bits(self.mask_bits, where=f"band {self.name}")


def parse_mask_bits(value, *, where: str) -> dict[str, int] | None:
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        items = {}
        for part in value.split(","):
            if not part.strip():
                continue
            name, sep, bit = part.partition("=")
            if not sep:
                raise InputError(f"{where}: mask bits {value!r}: expected PLANE=BIT pairs like BAD=0,SAT=1")
            items[name.strip()] = bit.strip()
        value = items
    out = {}
    for name, bit in dict(value).items():
        if name not in DEFAULT_MASK_PLANES:
            raise InputError(f"{where}: unknown mask plane {name!r}; known: {', '.join(DEFAULT_MASK_PLANES)}")
        try:
            b = int(bit)
        except (TypeError, ValueError):
            raise InputError(f"{where}: mask bit for {name} must be an integer, not {bit!r}") from None
        if not 0 <= b < 63:
            raise InputError(f"{where}: mask bit {b} for {name} is outside 0..62")
        out[name] = b
    return out


@dataclass(frozen=True, kw_only=True)
class CatalogSpec:
    path: str | Path  # FITS table (path[:HDU]), Parquet, CSV, SExtractor ASCII or VOTable
    format: str | None = None  # fits, parquet, csv, sextractor, votable or any astropy format; None: sniff
    ra: str | None = None  # column names (None: common names)
    dec: str | None = None
    x: str | None = None
    y: str | None = None
    id: str | None = None
    parent: str | None = None  # parent's id; null, 0, -1 or "" for no parent
    key: str = "auto"  # what externalId holds: "id" (the id column's integers), "row" (0-based row in the file),
    #                    "auto": id when the catalog has an integer id column, else row
    duplicates: str = "refuse"  # rows at the same position (catalog.DUPLICATE_RADIUS_PX): refuse, flag or drop
    xx: str | None = None  # second moments, pixels^2 ...
    yy: str | None = None
    xy: str | None = None
    a: str | None = None  # ... or semi-axes (pixels) and position angle
    b: str | None = None
    theta: str | None = None
    theta_unit: str = "deg"  # of theta, counter-clockwise from +x (SExtractor THETA_IMAGE)
    kron: str | None = None  # Kron radius column
    kron_unit: str | None = None  # "pix" (sqrt(ab) in pixels) or "shape" (units of the shape's semi-axes,
    #                               SExtractor KRON_RADIUS); None: "shape" for KRON_RADIUS/SExtractor, else "pix"
    xy_origin: int | None = None  # 0 or 1 (pixel centre of the first pixel); None: 1 for SExtractor, else 0
    positions: str = "auto"  # "sky" (ra/dec through the WCS), "pixel" (x/y) or auto
    frame: str | None = None  # sky frame of ra/dec: icrs, fk5, fk4, galactic, ecliptic ...; None: from the
    #                           column names (l/b: galactic, ELON/ELAT: ecliptic ...), else icrs
    equinox: str | float | None = None  # of an fk4/fk5/ecliptic frame: J2000, B1950 ... (default: the frame's)
    deblend: str = "peaks"  # "peaks": fit, then split overlapping footprints by the fitted models (ingest.deblend),
    #                         "none": every object its own footprint with the image pixels
    # reference model ellipses from the catalog (instead of fitted at ingest): "MAJOR,MINOR,THETA" column names of
    # the exp and dev half-light ellipses, semi-axes in arcsec and position angle in degrees east of north
    # (Rubin's cModel_{exp,dev}_reff_major/_minor/_theta), converted to pixels through the local WCS
    cmodel_exp: str | None = None
    cmodel_dev: str | None = None

    def __post_init__(self):
        if self.xy_origin not in (None, 0, 1):
            raise InputError(f"{self.path}: xy origin must be 0 or 1, not {self.xy_origin!r}")
        if self.positions not in ("auto", "sky", "pixel"):
            raise InputError(f"{self.path}: positions must be auto, sky or pixel, not {self.positions!r}")
        if self.kron_unit not in (None, "pix", "shape"):
            raise InputError(f"{self.path}: Kron unit must be pix or shape, not {self.kron_unit!r}")
        if self.key not in ("auto", "id", "row"):
            raise InputError(f"{self.path}: key must be auto, id or row, not {self.key!r}")
        if self.duplicates not in ("refuse", "flag", "drop"):
            raise InputError(f"{self.path}: duplicates must be refuse, flag or drop, not {self.duplicates!r}")
        if self.deblend not in ("peaks", "none"):
            raise InputError(f"{self.path}: deblend must be peaks or none, not {self.deblend!r}")
        for k in ("cmodel_exp", "cmodel_dev"):
            v = getattr(self, k)
            if v is not None and len([c for c in str(v).split(",") if c.strip()]) != 3:
                raise InputError(f"{self.path}: {k} needs three column names MAJOR,MINOR,THETA, not {v!r}")
        if self.frame is not None:
            from forcedphot.ingest.frames import frame_name, make_frame

            make_frame(frame_name(self.frame, where=str(self.path)), self.equinox, where=str(self.path))
        if self.theta_unit not in ("deg", "rad"):
            raise InputError(f"{self.path}: theta unit must be deg or rad, not {self.theta_unit!r}")


BAND_FIELDS = tuple(f.name for f in fields(BandSpec) if f.name not in ("psf_grid", "psf_grid_record"))  # CLI/TOML
CATALOG_FIELDS = tuple(f.name for f in fields(CatalogSpec))
