"""InputCount: how many input images cover each forced position (the coadd's input polygons).

``inputCount_flag_noInputs`` is Rubin's "no coadd inputs were recorded" (a coadd without input
polygons, e.g. an ingested FITS file: inputCount null) and also a centroid that no input covers
(inputCount 0; Rubin records 0 there without a flag).
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag, register


@register
class InputCount(Plugin):
    name = "InputCount"

    @classmethod
    def columns(cls, config):
        return (
            Column("inputCount", "int", "Number of input images whose valid polygon contains the forced centroid; null without input polygons."),
            flag("inputCount_flag", "General failure: no usable centroid, no input polygons stored with the coadd, or no inputs."),
            flag("inputCount_flag_noInputs", "No coadd inputs: the coadd has no input polygons recorded (Rubin's meaning), or none covers the centroid."),
        )

    def measure(self, ctx: MeasurementContext):
        inputs = ctx.coadd.inputs
        if inputs is None:
            return {"inputCount": np.ma.masked_all(ctx.n, np.int32), "inputCount_flag": np.ones(ctx.n, bool),
                    "inputCount_flag_noInputs": np.ones(ctx.n, bool)}
        count = np.where(ctx.usable, inputs.count(np.where(ctx.usable, ctx.x, np.nan), np.where(ctx.usable, ctx.y, np.nan)), 0)
        none = ctx.usable & (count == 0)
        return {"inputCount": count.astype(np.int32), "inputCount_flag": ~ctx.usable | none, "inputCount_flag_noInputs": none}
