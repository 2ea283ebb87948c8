"""A quantum's MeasurementContext as the task builds it, for comparing a plugin with its slow reference."""

from __future__ import annotations

import dataclasses

from forcedphot.cutouts import PaddedCoadd
from forcedphot.plan import plan_quanta
from forcedphot.plugins import PLUGINS, MeasurementContext
from forcedphot.quantum import load_quantum
from forcedphot.repository import Repository
from forcedphot.stages import SourcePixels
from forcedphot.task import ForcedPhotCoaddTask


def quantum_context(root, *, band: str = "i", index: int = 0, config=None, noise: bool = True, pad: int = 140):
    """(ctx, plain): the noise-replaced context after the centroid and shape slots, and its undeblended twin.

    ``ctx.padded`` / ``ctx.replacement`` serve plugins written against the padded planes (the
    references in this folder); ``ctx.pixels`` serves the compiled kernels.
    """
    repo = Repository(root)
    task = ForcedPhotCoaddTask(repo, config)
    config = task.config
    quantum = [q for q in plan_quanta(repo, bands=[band]) if q.ready][index]
    inputs = task.attach_footprints(quantum)
    coadd = inputs.coadd
    replacer = task.make_noise_replacer(inputs) if noise and config.noise_replacement else None
    original = PaddedCoadd(coadd, pad)
    padded = original if replacer is None else PaddedCoadd(coadd, pad, image=replacer.base)
    pixels = SourcePixels.build(coadd, inputs.n, replacer=replacer, footprints=inputs.ref["footprints"])
    same_pass = tuple(n for n in config.undeblended if PLUGINS[n].measures_undeblended)
    ctx = MeasurementContext(coadd, padded, config, inputs.ref, ref_wcs=task._ref_wcs(inputs), replacement=replacer,
                             pixels=pixels, undeblended=same_pass)
    for name in ("TransformedCentroid", "TransformedShape"):
        ctx.values.update(PLUGINS[name](config).measure(ctx))
    plain = dataclasses.replace(ctx, padded=original, replacement=None, values={}, cache=dict(ctx.cache),
                                pixels=dataclasses.replace(pixels, image=pixels.original, fp=pixels.fp_none),
                                undeblended=())
    return ctx, plain
