"""Every number carries its flag: the general ``_flag`` rule applied centrally to every flux-like column.

For each declared ``flux`` / ``fluxErr`` / ``variance`` column (deblended and ``undeblended_``),
a non-finite value, a non-finite error or an error <= 0 (a variance: a value <= 0) sets that
measurement's general flag.
:class:`forcedphot.task.ForcedPhotCoaddTask.run` applies it after the measurement plugins (so
``ApCorr`` and ``Extendedness`` see it) and again after calibration; plugins set their specific
flags (edge, truncation, no good pixels...) themselves.

Rows whose deblended pixels hold no measurement of their own (:func:`unmeasurable_deblended`: a blend
child the deblender gave zero flux, a catalog row kept at another row's position) get the general
flag of every measurement of the deblended image (:func:`flag_deblended`); their ``undeblended_``
measurements of the original image stand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FLUX_KINDS = ("flux", "fluxErr", "variance")


@dataclass(frozen=True)
class Measurement:
    value: str  # column of the number
    error: str | None  # its uncertainty column, if declared
    flag: str  # the general failure flag
    positive: bool = False  # a variance: must be > 0 itself


# flux columns whose general flag follows Rubin's naming rather than <name>_flag (CModel's)
GENERAL_FLAGS = {"cModelFlux": "cModel_flag", "cModelFlux_inner": "cModel_flag",
                 "cModel_expFlux": "cModel_exp_flag", "cModel_expFlux_inner": "cModel_exp_flag",
                 "cModel_devFlux": "cModel_dev_flag", "cModel_devFlux_inner": "cModel_dev_flag"}


def general_flag(name: str, names: set[str]) -> str | None:
    """``<name>_flag`` if declared, else the flag of its group (``sdssShape_flux`` -> ``sdssShape_flag``);
    :data:`GENERAL_FLAGS` first."""
    for candidate in (GENERAL_FLAGS.get(name), f"{name}_flag", f"{name.rsplit('_', 1)[0]}_flag" if "_" in name else None):
        if candidate in names:
            return candidate
    return None


def measurements(columns) -> tuple[Measurement, ...]:
    """The (value, error, flag) triples of the flux-like columns among ``columns`` (Column declarations)."""
    names = {c.name for c in columns}
    kinds = {c.name: c.kind for c in columns}
    out = []
    for c in columns:
        if c.kind not in FLUX_KINDS or (c.name.endswith("Err") and c.name[:-3] in kinds):
            continue  # an error column belongs to its value's measurement
        error = f"{c.name}Err" if kinds.get(f"{c.name}Err") in FLUX_KINDS else None
        flag = general_flag(c.name, names)
        if flag is None:
            raise ValueError(f"flux-like column {c.name} has no general flag")
        out.append(Measurement(c.name, error, flag, positive=c.kind == "variance"))
    return tuple(out)


@lru_cache(maxsize=1)
def forced_source_measurements() -> tuple[Measurement, ...]:
    from forcedphot.outputs import forced_source_columns

    return measurements(forced_source_columns())


def invalid(value: np.ndarray, error: np.ndarray | None, *, positive: bool = False) -> np.ndarray:
    """True where the number cannot be used: non-finite value, non-finite error or error <= 0."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(value) & (value > 0)) if positive else ~np.isfinite(value)
        if error is not None:
            bad |= ~(np.isfinite(error) & (error > 0))
    return bad


def flag_invalid(values: dict, measured=None) -> dict:
    """Set the general flag of every measurement in ``values`` whose number or error is unusable (in place)."""
    for m in measured or forced_source_measurements():
        value, flag = values.get(m.value), values.get(m.flag)
        if value is None or flag is None or not isinstance(value, np.ndarray):
            continue  # plugin not configured
        error = values.get(m.error) if m.error else None
        error = None if error is None else np.asarray(error, float)
        values[m.flag] = np.asarray(flag, bool) | invalid(np.asarray(value, float), error, positive=m.positive)
    return values


def _true(ref: dict, name: str, n: int) -> np.ndarray:
    """A nullable boolean reference column as bools (null or absent: False)."""
    v = ref.get(name)
    if v is None:
        return np.zeros(n, bool)
    v = np.asarray(v)
    return v.astype(bool) if v.dtype == bool else np.equal(v, True).astype(bool)


def unmeasurable_deblended(ref: dict, *, replaced: bool) -> np.ndarray:
    """Rows whose deblended measurements describe no object: ``deblend_zeroFlux`` children (when the
    deblended image is measured, ``replaced``) and ``detect_isDuplicate`` rows (their share of one
    object's flux is arbitrary)."""
    n = len(ref["id"])
    zero = _true(ref, "deblend_zeroFlux", n) if replaced else np.zeros(n, bool)
    return zero | _true(ref, "detect_isDuplicate", n)


def flag_deblended(values: dict, rows: np.ndarray, measured=None) -> dict:
    """Set the general flag of every measurement of the deblended image (not ``undeblended_``) on ``rows``."""
    if not rows.any():
        return values
    for m in measured or forced_source_measurements():
        flag = values.get(m.flag)
        if m.value.startswith("undeblended_") or flag is None or not isinstance(values.get(m.value), np.ndarray):
            continue
        values[m.flag] = np.asarray(flag, bool) | rows
    return values
