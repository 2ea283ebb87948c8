"""Calibration: image units -> nJy (flux and fluxErr columns), and AB magnitudes.

m_AB = -2.5 log10(f / nJy) + 31.4;  sigma_m = (2.5 / ln 10) sigma_f / f  (NaN where f <= 0).
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column

AB_NJY = 31.4
MAG_COLUMNS = {"psfFlux": "psfMag", "gaussianFlux": "gaussianMag", "kronFlux": "kronMag", "cModelFlux": "cModelMag"}  # flux -> magnitude


def columns() -> tuple[Column, ...]:
    cols = []
    for flux, mag in MAG_COLUMNS.items():
        cols += [
            Column(mag, "double", f"AB magnitude of {flux}: -2.5 log10({flux} / nJy) + 31.4; NaN if {flux} <= 0 or failed.", "mag"),
            Column(f"{mag}Err", "double", f"Uncertainty of {mag}: (2.5 / ln 10) {flux}Err / {flux}.", "mag"),
        ]
    return tuple(cols)


def njy_to_ab(flux, flux_err) -> tuple[np.ndarray, np.ndarray]:
    flux = np.asarray(flux, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = flux > 0
        mag = np.where(pos, -2.5 * np.log10(np.where(pos, flux, 1.0)) + AB_NJY, np.nan)
        err = np.where(pos, 2.5 / np.log(10) * np.asarray(flux_err, float) / np.where(pos, flux, 1.0), np.nan)
    return mag, err


def calibrate(values: dict[str, np.ndarray], declared: tuple[Column, ...], photo_calib: float) -> dict[str, np.ndarray]:
    """Scale flux-kind columns to nJy in place and add magnitudes."""
    for c in declared:
        if c.kind in ("flux", "fluxErr") and c.name in values:
            values[c.name] = values[c.name] * photo_calib
        elif c.kind == "variance" and c.name in values:
            values[c.name] = values[c.name] * photo_calib ** 2
    for flux, mag in MAG_COLUMNS.items():
        if flux in values and values[flux] is not None:
            values[mag], values[f"{mag}Err"] = njy_to_ab(values[flux], values[f"{flux}Err"])
    return values
