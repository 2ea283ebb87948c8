"""The plugin registry: name -> class, run in Rubin's execution order (centroid first)."""

from __future__ import annotations

from forcedphot.plugins.aperture import CircularApertureFlux
from forcedphot.plugins.base import Column, MeasurementContext, Plugin
from forcedphot.plugins.centroid import TransformedCentroid
from forcedphot.plugins.pixel_flags import PixelFlags
from forcedphot.plugins.psf_flux import PsfFlux

PLUGINS: dict[str, type[Plugin]] = {
    cls.name: cls for cls in (TransformedCentroid, PixelFlags, PsfFlux, CircularApertureFlux)
}


def ordered(names) -> list[type[Plugin]]:
    """Plugin classes sorted by (order, name); TransformedCentroid is always first."""
    classes = {PLUGINS[n] for n in names} | {TransformedCentroid}
    return sorted(classes, key=lambda c: (c.order, c.name))


__all__ = ["PLUGINS", "Column", "MeasurementContext", "Plugin", "ordered"]
