"""Reading image HDUs named as ``file[:HDU]`` and their celestial WCS, with one-line errors.

Every failure (missing file, missing HDU, table instead of image, wrong dimensions)
becomes an :class:`InputError` naming the file and HDU, so a bad command line fails
before anything is written.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from forcedphot.errors import InputError

log = logging.getLogger(__name__)


def oneline(exc: BaseException) -> str:
    """An exception's text on one line (astropy and pyarrow messages can span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class HduSpec:
    """A FITS file and optionally one of its HDUs (index or EXTNAME)."""

    path: Path
    hdu: int | str | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.hdu is None else f"{self.path}[{self.hdu}]"


def parse_hdu_spec(spec) -> HduSpec:
    """``file``, ``file:HDU`` or ``file[HDU]``; HDU is an index or an EXTNAME.

    An existing file whose name contains ':' is taken whole, so odd names still work.
    """
    if isinstance(spec, HduSpec):
        return spec
    if isinstance(spec, Path):
        return HduSpec(spec)
    text = str(spec).strip()
    if not text:
        raise InputError("empty file name")
    if Path(text).exists():
        return HduSpec(Path(text))
    m = re.fullmatch(r"(.+)\[([^\[\]]+)\]", text)
    if m:
        path, hdu = m.groups()
    elif ":" in text:
        path, hdu = text.rsplit(":", 1)
    else:
        return HduSpec(Path(text))
    hdu = hdu.strip()
    if not hdu:
        raise InputError(f"{text}: empty HDU after ':'")
    return HduSpec(Path(path), int(hdu) if re.fullmatch(r"\d+", hdu) else hdu)


def _describe(hdul) -> str:
    parts = []
    for i, h in enumerate(hdul):
        shape = "x".join(str(n) for n in reversed(h.shape)) if getattr(h, "shape", None) else "no data"
        parts.append(f"{i} {h.name} ({shape})")
    return ", ".join(parts)


def _is_image(h) -> bool:
    return isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and h.data is not None


def read_image(spec, *, what: str = "image") -> tuple[np.ndarray, fits.Header, str]:
    """(2-D float32 data, header, label) of an image HDU; default: the first HDU holding an image."""
    s = parse_hdu_spec(spec)
    if not s.path.exists():
        raise InputError(f"{s.path}: {what} file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(s.path) as hdul:
                if s.hdu is None:
                    hdu = next((h for h in hdul if _is_image(h)), None)
                    if hdu is None:
                        raise InputError(f"{s.path}: no image HDU for the {what} (HDUs: {_describe(hdul)})")
                    label = s.label if hdu is hdul[0] else f"{s.path}[{hdul.index(hdu)}]"
                else:
                    try:
                        hdu = hdul[s.hdu]
                    except (KeyError, IndexError):
                        raise InputError(f"{s.path}: no HDU {s.hdu!r} for the {what} "
                                         f"(HDUs: {_describe(hdul)})") from None
                    label = s.label
                    if not _is_image(hdu):
                        raise InputError(f"{label}: HDU holds no image data for the {what} "
                                         f"(HDUs: {_describe(hdul)})")
                data = np.asarray(hdu.data)
                header = hdu.header.copy()
    except InputError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{s.label}: cannot read {what} as FITS ({oneline(exc)})") from exc
    while data.ndim > 2 and data.shape[0] == 1:  # degenerate leading axes (e.g. a 1-plane cube)
        data = data[0]
    if data.ndim != 2:
        raise InputError(f"{label}: {what} must be a 2-D image, found shape {data.shape}")
    return data, header, label


def read_plane(spec, *, what: str, shape: tuple[int, int], image_label: str) -> tuple[np.ndarray, str]:
    """An image plane that must share the band image's shape (variance, mask, background...)."""
    data, _, label = read_image(spec, what=what)
    if data.shape != shape:
        raise InputError(f"{label}: {what} shape {data.shape[1]}x{data.shape[0]} (WxH) differs from image "
                         f"{image_label} shape {shape[1]}x{shape[0]}")
    return data, label


def celestial_wcs(header: fits.Header, label: str) -> WCS | None:
    """The header's celestial WCS, or None (with a warning if a WCS is present but unusable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            w = WCS(header)
    except Exception as exc:  # astropy raises a variety of errors on broken WCS keywords
        log.warning("%s: cannot parse the WCS (%s); treating the image as having no WCS", label, oneline(exc))
        return None
    if not w.has_celestial:
        return None
    c = w.celestial
    if c.naxis != 2 or c.wcs.lng != 0:
        raise InputError(f"{label}: celestial WCS axes are not (longitude, latitude) along (x, y); "
                         f"CTYPE = {list(c.wcs.ctype)}")
    return c
