"""Fixed facts of the forced_source table's layout, read by the config and by the plugins.

The config validates options against them (radii, pixelFlags planes, undeblended plugins) and
the plugins declare their columns from them. They live here, below both, so that neither
imports the other for them: the plugins read no config module, and the config imports the
plugin registry only when it validates plugin names (see ``tests/test_imports.py``).
"""

from __future__ import annotations

# The forced_source schema carries a column group for each of these radii (pixels), as Rubin's
# obs_lsst apertures.py; a run measures the configured subset and leaves the others null.
STANDARD_APERTURE_RADII = (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0)
UNDEBLENDED_PLUGINS = ("PsfFlux", "CircularApertureFlux", "KronFlux")  # undeblended copies in the schema
UNDEBLENDED = "undeblended_"  # prefix of the undeblended copies' columns
# columns of those plugins with no undeblended copy: the same value in every row (forced_source 2.0 removed it)
UNDEBLENDED_SKIP = frozenset({"kronRad"})
PIXEL_FLAG_PLANES = ("BAD", "CR", "EDGE", "INTRP", "NO_DATA", "SAT", "SUSPECT",
                     "CLIPPED", "SENSOR_EDGE", "REJECTED", "INEXACT_PSF")  # planes with pixelFlags columns

# ConvolvedFlux (plugins/convolved.py): target seeings as FWHM in pixels (obs_lsst's 0.7, 1.0, 1.3,
# 1.6 arcsec at 0.2 arcsec/px) and aperture radii (meas_extensions_convolved's); here so that the
# simulator's aperture corrections name the same columns without importing the plugins.
CONVOLVED_TARGET_FWHMS = (3.5, 5.0, 6.5, 8.0)
CONVOLVED_RADII = (3.3, 4.5, 6.0)


def aperture_name(radius: float) -> str:
    """Rubin Object-table style prefix: 3 -> 'ap03', 4.5 -> 'ap04p5'."""
    whole = int(radius)
    frac = round((radius - whole) * 10)
    return f"ap{whole:02d}" + (f"p{frac}" if frac else "")


def convolved_flux_names(k: int) -> list[str]:
    """ConvolvedFlux's flux columns of target k: the circles, then the Kron ellipse."""
    return [f"convolved{k}_{aperture_name(r)}Flux" for r in CONVOLVED_RADII] + [f"convolved{k}_kronFlux"]
