"""Photometric calibration of an ingested band: nJy per image unit (the coadd's ``photo_calib``).

From an AB zero point (the magnitude of one image unit) or from a flux unit that astropy
understands: spectral flux densities (nJy, uJy, Jy, erg/s/cm2/Hz, maggies) convert
directly; surface brightnesses (MJy/sr, Jy/arcsec2) are multiplied by the pixel solid
angle of the grid's WCS.
"""

from __future__ import annotations

import logging

import numpy as np
from astropy import units as u

from forcedphot.errors import InputError

log = logging.getLogger(__name__)

AB_NJY = 31.4  # AB magnitude of 1 nJy
_EQUIV = u.zero_point_flux(3631 * u.Jy)  # maggies


def zero_point_calib(zero_point: float) -> float:
    """nJy of one image unit whose AB magnitude is ``zero_point``."""
    return float(10.0 ** (-0.4 * (float(zero_point) - AB_NJY)))


def unit_calib(unit: str, *, pixel_area_sr: float, label: str) -> float:
    """nJy of one image unit for a flux-density or surface-brightness unit."""
    try:
        un = u.Unit(unit)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{label}: unknown flux unit {unit!r} (astropy cannot parse it)") from exc
    if un.is_equivalent(u.nJy, equivalencies=_EQUIV):
        return float(un.to(u.nJy, equivalencies=_EQUIV))
    if un.is_equivalent(u.nJy / u.sr, equivalencies=_EQUIV):
        return float((un * u.sr).to(u.nJy, equivalencies=_EQUIV) * pixel_area_sr)
    raise InputError(f"{label}: flux unit {unit!r} is neither a flux density (like nJy) nor a surface "
                     "brightness (like MJy/sr)")


def photo_calib(*, zero_point=None, flux_unit=None, pixel_area_sr: float, label: str) -> float:
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
        log.warning("%s: no zero point or flux unit; image units are taken as nJy (zero point %.1f)", label, AB_NJY)
        value = 1.0
    if not (np.isfinite(value) and value > 0):
        raise InputError(f"{label}: calibration {value!r} nJy per image unit is not a positive number")
    return value
