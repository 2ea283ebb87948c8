"""The plugin registry: name -> class, run in Rubin's execution order (centroid first).

Each plugin registers itself (``@register`` from :mod:`forcedphot.plugins.base`); importing this
package imports every module in it, so a new plugin module needs no list edited here.
"""

from __future__ import annotations

import importlib
import pkgutil

from forcedphot.plugins.base import PLUGINS, Column, MeasurementContext, Plugin, register

for _info in pkgutil.iter_modules(__path__, __name__ + "."):  # sorted by name: a fixed registration order
    importlib.import_module(_info.name)

REQUIRED = ("TransformedCentroid", "TransformedShape")  # the slots every other plugin reads


def ordered(names) -> list[type[Plugin]]:
    """Plugin classes sorted by (order, name), after the centroid and shape slots they depend on."""
    classes = {PLUGINS[n] for n in names} | {PLUGINS[n] for n in REQUIRED}
    slots = [PLUGINS[n] for n in REQUIRED]
    rest = sorted(classes - set(slots), key=lambda c: (c.order, c.name))
    return slots + rest


DEFAULT_PLUGINS = tuple(c.name for c in ordered(PLUGINS))  # every registered plugin, in run order

__all__ = ["PLUGINS", "DEFAULT_PLUGINS", "Column", "MeasurementContext", "Plugin", "ordered", "register"]
