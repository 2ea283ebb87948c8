"""Photometric calibration of an ingested band: nJy per image unit (the coadd's ``photo_calib``).

From an AB zero point (the magnitude of one image unit) or from a flux unit that astropy
understands: spectral flux densities (nJy, uJy, Jy, erg/s/cm2/Hz, maggies) convert
directly; surface brightnesses (MJy/sr, Jy/arcsec2) are multiplied by the pixel solid
angle of the grid's WCS. :func:`band_calibration` picks the source: the band's options
(``--zero-point``/``--flux-unit``), else the image header (``BUNIT``, then the zero-point
keys of :data:`ZERO_POINT_KEYS`, ``FLUXMAG0``, ``PHOTFLAM``+``PHOTPLAM``, ``PHOTFNU``), else
nJy only when the user says so (``assume_njy``): a silent default made fluxes wrong by
factors of 10^4 for MJy/sr images.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.io import fits

from forcedphot.errors import InputError

log = logging.getLogger(__name__)

AB_NJY = 31.4  # AB magnitude of 1 nJy
_EQUIV = u.zero_point_flux(3631 * u.Jy)  # maggies
ZERO_POINT_KEYS = ("MAGZERO", "MAGZPT", "MAGZP", "ZEROPT", "ZP")  # AB magnitude of one image unit
HEADER_KEYS = ("BUNIT", *ZERO_POINT_KEYS, "FLUXMAG0", "PHOTFLAM+PHOTPLAM", "PHOTFNU")
COUNT_UNITS = (u.ct, u.electron, u.adu, u.DN, u.photon)
# header spellings astropy does not parse (matched case-insensitively, word by word)
_ALIASES = {"electrons": "electron", "electron": "electron", "e-": "electron", "e": "electron",
            "counts": "ct", "count": "ct", "cts": "ct", "ct": "ct", "adu": "adu", "adus": "adu", "dn": "DN",
            "nanomaggy": "nmgy", "nanomaggies": "nmgy", "nmgy": "nmgy", "maggy": "mgy", "maggies": "mgy",
            "sec": "s", "s": "s"}


@dataclass(frozen=True)
class Calibration:
    """nJy per image unit and where it came from (recorded in the repository's metadata)."""

    njy: float
    source: str  # "option --zero-point", "header BUNIT", "header PHOTFLAM+PHOTPLAM", "assumed (--assume-njy)"
    value: str  # the unit or zero point as given, e.g. "MJy/sr", "27.0"

    @property
    def zero_point(self) -> float:
        """The equivalent AB zero point (magnitude of one image unit)."""
        return AB_NJY - 2.5 * float(np.log10(self.njy))

    def describe(self) -> str:
        if self.source.startswith("assumed"):
            return self.source
        return f"{self.source} = {self.value!r}" if self.source.endswith("BUNIT") else f"{self.source} = {self.value}"

    def as_dict(self) -> dict:
        return {"photo_calib_nJy": self.njy, "zero_point_ab": round(self.zero_point, 6), "source": self.source,
                "value": self.value, "from": self.describe()}


def zero_point_calib(zero_point: float) -> float:
    """nJy of one image unit whose AB magnitude is ``zero_point``."""
    return float(10.0 ** (-0.4 * (float(zero_point) - AB_NJY)))


def parse_unit(text: str) -> u.UnitBase | None:
    """An astropy unit from a header or option string (FITS, generic, then common header spellings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        for fmt in ("fits", "generic"):
            try:
                return u.Unit(text, format=fmt)
            except (ValueError, TypeError):
                pass
        fixed = re.sub(r"[A-Za-z]+-?", lambda m: _ALIASES.get(m.group(0).lower(), m.group(0)), text)
        fixed = "MJy/sr" if text.strip().upper() == "MJY/SR" else fixed
        try:
            return u.Unit(fixed, format="generic")
        except (ValueError, TypeError):
            return None


def is_counts(un: u.UnitBase) -> bool:
    """Counts, electrons, ADU or DN, optionally per second (a zero point is needed)."""
    bases = un.decompose().bases
    return bool(bases) and all(b in COUNT_UNITS or b == u.s for b in bases) and any(b in COUNT_UNITS for b in bases)


def _flux_njy(un: u.UnitBase, pixel_area_sr: float) -> float | None:
    """nJy of one image unit for a flux density, flux per pixel or surface brightness unit, else None."""
    if un.is_equivalent(u.nJy, equivalencies=_EQUIV):
        return float(un.to(u.nJy, equivalencies=_EQUIV))
    if (un * u.pix).is_equivalent(u.nJy, equivalencies=_EQUIV):  # Jy/pixel
        return float((un * u.pix).to(u.nJy, equivalencies=_EQUIV))
    if un.is_equivalent(u.nJy / u.sr, equivalencies=_EQUIV):
        return float((un * u.sr).to(u.nJy, equivalencies=_EQUIV) * pixel_area_sr)
    return None


def unit_calib(unit: str, *, pixel_area_sr: float, label: str) -> float:
    """nJy of one image unit for a flux-density or surface-brightness unit."""
    un = parse_unit(str(unit))
    if un is None:
        raise InputError(f"{label}: unknown flux unit {unit!r} (astropy cannot parse it)")
    value = _flux_njy(un, pixel_area_sr)
    if value is None:
        raise InputError(f"{label}: flux unit {unit!r} is neither a flux density (like nJy) nor a surface "
                         "brightness (like MJy/sr)")
    return value


def photo_calib(*, zero_point=None, flux_unit=None, pixel_area_sr: float, label: str) -> float:
    """nJy per image unit from an option's zero point or flux unit (1 when neither is given)."""
    if zero_point is not None and flux_unit is not None:
        raise InputError(f"{label}: give a zero point or a flux unit, not both")
    if zero_point is not None:
        try:
            value = zero_point_calib(float(zero_point))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{label}: zero point {zero_point!r} is not a number") from exc
    elif flux_unit is not None:
        value = unit_calib(str(flux_unit), pixel_area_sr=pixel_area_sr, label=label)
    else:
        value = 1.0
    return _positive(value, label)


def _positive(value: float, label: str) -> float:
    if not (np.isfinite(value) and value > 0):
        raise InputError(f"{label}: calibration {value!r} nJy per image unit is not a positive number")
    return float(value)


# -- headers ------------------------------------------------------------------------------
def calibration_header(header: fits.Header, image_path) -> fits.Header:
    """The image HDU's header, completed by the file's primary header (HST keeps PHOT* there too)."""
    merged = fits.Header(header, copy=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            primary = fits.getheader(image_path, 0)
    except (OSError, ValueError, IndexError):
        return merged
    for key in ("BUNIT", *ZERO_POINT_KEYS, "FLUXMAG0", "PHOTFLAM", "PHOTPLAM", "PHOTFNU", "EXPTIME"):
        if key not in merged and key in primary:
            merged[key] = primary[key]
    return merged


def _number(header, key: str, label: str) -> float | None:
    if key not in header or header[key] is None or str(header[key]).strip() == "":
        return None
    try:
        value = float(header[key])
    except (TypeError, ValueError):
        raise InputError(f"{label}: header {key} = {header[key]!r} is not a number") from None
    if not np.isfinite(value):
        raise InputError(f"{label}: header {key} = {header[key]!r} is not finite")
    return value


def _per_second(calib: Calibration, bunit: u.UnitBase | None, header, label: str) -> Calibration:
    """PHOTFLAM and PHOTFNU are per count rate: an image in counts (not per second) is divided by EXPTIME."""
    if bunit is None or not is_counts(bunit) or u.s in bunit.decompose().bases:
        return calib
    exptime = _number(header, "EXPTIME", label)
    if not exptime or exptime <= 0:
        raise InputError(f"{label}: {calib.source} is per count rate but BUNIT = {header['BUNIT']!r} is counts "
                         "and there is no positive EXPTIME; give --zero-point or --flux-unit")
    return Calibration(calib.njy / exptime, f"{calib.source}/EXPTIME", f"{calib.value} / {exptime:g} s")


def header_calibration(header, *, pixel_area_sr: float, label: str) -> tuple[Calibration | None, str | None]:
    """(calibration from the header or None, why the header's BUNIT could not be used or None)."""
    bunit_text = str(header.get("BUNIT", "") or "").strip()
    bunit = parse_unit(bunit_text) if bunit_text else None
    problem = None
    from_unit = None
    if bunit_text:
        njy = _flux_njy(bunit, pixel_area_sr) if bunit is not None else None
        if njy is not None:
            from_unit = Calibration(_positive(njy, label), "header BUNIT", bunit_text)
        elif bunit is None:
            problem = f"BUNIT = {bunit_text!r} is not a unit astropy knows"
        elif not is_counts(bunit) and bunit != u.dimensionless_unscaled:
            problem = f"BUNIT = {bunit_text!r} is neither a flux density, a surface brightness nor counts"
        else:
            problem = f"BUNIT = {bunit_text!r} is counts, which need a zero point"
    from_zp = None
    for key in ZERO_POINT_KEYS:
        zp = _number(header, key, label)
        if zp is not None:
            from_zp = Calibration(zero_point_calib(zp), f"header {key}", f"{zp:g}")
            break
    if from_zp is None and (fm0 := _number(header, "FLUXMAG0", label)) is not None:
        if fm0 <= 0:
            raise InputError(f"{label}: header FLUXMAG0 = {fm0!r} must be positive")
        from_zp = Calibration(zero_point_calib(2.5 * np.log10(fm0)), "header FLUXMAG0", f"{fm0:g}")
    if from_zp is None:
        flam, plam = _number(header, "PHOTFLAM", label), _number(header, "PHOTPLAM", label)
        if flam is not None and plam is not None:
            if flam <= 0 or plam <= 0:
                raise InputError(f"{label}: header PHOTFLAM = {flam!r} and PHOTPLAM = {plam!r} must be positive")
            f_lambda = flam * u.erg / u.s / u.cm ** 2 / u.AA  # of 1 e-/s, at the pivot wavelength
            njy = f_lambda.to(u.nJy, equivalencies=u.spectral_density(plam * u.AA)).value
            from_zp = _per_second(Calibration(float(njy), "header PHOTFLAM+PHOTPLAM", f"{flam:g}, {plam:g} A"),
                                  bunit, header, label)
        elif (fnu := _number(header, "PHOTFNU", label)) is not None:
            if fnu <= 0:
                raise InputError(f"{label}: header PHOTFNU = {fnu!r} must be positive")
            from_zp = _per_second(Calibration(fnu * 1e9, "header PHOTFNU", f"{fnu:g} Jy"), bunit, header, label)
    if from_unit is not None:
        if from_zp is not None and abs(np.log(from_zp.njy / from_unit.njy)) > 1e-3:
            log.warning("%s: header %s gives %.6g nJy per image unit, %s gives %.6g; using BUNIT", label,
                        from_zp.describe(), from_zp.njy, from_unit.describe(), from_unit.njy)
        return from_unit, None
    if from_zp is not None:
        if problem:
            log.info("%s: %s; using %s", label, problem, from_zp.describe())
        return from_zp, None
    return None, problem


def band_calibration(*, zero_point=None, flux_unit=None, header=None, pixel_area_sr: float, label: str,
                     assume_njy: bool = False) -> Calibration:
    """The band's calibration: its options over its header; nJy only with ``assume_njy``."""
    given = zero_point is not None or flux_unit is not None
    try:
        from_header, problem = (header_calibration(header, pixel_area_sr=pixel_area_sr, label=label)
                                if header is not None else (None, None))
    except InputError as exc:
        if not given:
            raise
        log.info("%s: header calibration ignored (%s)", label, exc)  # a broken key does not block the option
        from_header, problem = None, None
    if given:
        njy = photo_calib(zero_point=zero_point, flux_unit=flux_unit, pixel_area_sr=pixel_area_sr, label=label)
        option = ("option --zero-point", f"{float(zero_point):g}") if zero_point is not None else \
            ("option --flux-unit", str(flux_unit))
        chosen = Calibration(njy, *option)
        if from_header is not None:
            level = logging.WARNING if abs(np.log(njy / from_header.njy)) > 1e-3 else logging.INFO
            log.log(level, "%s: %s %s overrides %s (%.6g nJy per image unit instead of %.6g)", label,
                    option[0].removeprefix("option "), option[1], from_header.describe(), njy, from_header.njy)
        return chosen
    if from_header is not None:
        log.info("%s: %.6g nJy per image unit from %s", label, from_header.njy, from_header.describe())
        return from_header
    if problem is None:
        problem = f"no flux unit or zero point (header keys read: {', '.join(HEADER_KEYS)})"
    if assume_njy:
        log.warning("%s: %s; image units taken as nJy (--assume-njy)", label, problem)
        return Calibration(1.0, "assumed (--assume-njy)", "nJy")
    raise InputError(f"{label}: {problem}; give --zero-point or --flux-unit, or --assume-njy if the pixels are nJy")
