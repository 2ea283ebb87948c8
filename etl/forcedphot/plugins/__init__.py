"""The plugin registry: name -> class, run in Rubin's execution order (centroid first)."""

from __future__ import annotations

from forcedphot.plugins.ap_corr import ApCorr, Extendedness
from forcedphot.plugins.aperture import CircularApertureFlux
from forcedphot.plugins.base import Column, MeasurementContext, Plugin
from forcedphot.plugins.centroid import TransformedCentroid
from forcedphot.plugins.gaussian_flux import GaussianFlux
from forcedphot.plugins.input_count import InputCount
from forcedphot.plugins.kron import KronFlux
from forcedphot.plugins.local_background import LocalBackground
from forcedphot.plugins.pixel_flags import PixelFlags
from forcedphot.plugins.psf_flux import PsfFlux
from forcedphot.plugins.sdss_centroid import SdssCentroid
from forcedphot.plugins.sdss_shape import SdssShape
from forcedphot.plugins.shape import TransformedShape
from forcedphot.plugins.variance import Variance

PLUGINS: dict[str, type[Plugin]] = {
    cls.name: cls for cls in (TransformedCentroid, SdssCentroid, TransformedShape, SdssShape, InputCount,
                              PixelFlags, PsfFlux, GaussianFlux, CircularApertureFlux, LocalBackground, Variance,
                              KronFlux, ApCorr, Extendedness)
}
DEFAULT_PLUGINS = tuple(PLUGINS)
REQUIRED = ("TransformedCentroid", "TransformedShape")  # the slots every other plugin reads


def ordered(names) -> list[type[Plugin]]:
    """Plugin classes sorted by (order, name), after the centroid and shape slots they depend on."""
    classes = {PLUGINS[n] for n in names} | {PLUGINS[n] for n in REQUIRED}
    slots = [PLUGINS[n] for n in REQUIRED]
    rest = sorted(classes - set(slots), key=lambda c: (c.order, c.name))
    return slots + rest


__all__ = ["PLUGINS", "DEFAULT_PLUGINS", "Column", "MeasurementContext", "Plugin", "ordered"]
