"""A quantum's MeasurementContext as the task builds it, for comparing a plugin with its slow reference."""

from __future__ import annotations

import dataclasses

import numpy as np

from forcedphot.plan import plan_quanta
from forcedphot.plugins import PLUGINS, MeasurementContext
from forcedphot.repository import Repository
from forcedphot.stages import SourcePixels
from forcedphot.task import ForcedPhotCoaddTask
from tests.kernels.cutouts import CutoutBatch, ReferencePadded
from tests.kernels.noise_corrections import NoiseCorrections


@dataclasses.dataclass
class ReferenceContext(MeasurementContext):
    """The task's context plus what the numpy references read: padded planes and stamps of them.

    ``padded``: the (noise-replaced) image padded; ``noise``: the sparse corrections of
    ``replacement`` (made from it when not given; None without noise replacement).
    """

    padded: ReferencePadded | None = None
    noise: object | None = None

    def __post_init__(self):
        if self.replacement is None and self.noise is not None:
            raise ValueError("ReferenceContext: noise corrections without a NoiseReplacer")
        if self.replacement is not None and self.noise is None:
            self.noise = NoiseCorrections(self.replacement)

    def cutouts(self, rows: np.ndarray, half: int) -> CutoutBatch:
        """Stamps around sources ``rows``, each with its own footprint inserted when noise-replacing."""
        ix, iy = self.centre_index()
        fix = None
        if self.noise is not None:
            p = self.padded.pad
            lx, ly = ix[rows] - p, iy[rows] - p  # image-array pixel of each centre

            def fix(stamps, h):
                return self.noise.apply_to_stamps(stamps, rows, lx, ly, h)

        return CutoutBatch(self.padded, ix[rows], iy[rows], half, fix_image=fix)

    def footprint_correction(self, rows: np.ndarray, weight) -> np.ndarray:
        """sum(w * (own heavy - noise)) for sums taken over the noise-replaced image (0 without replacement).

        ``weight(owner, dx, dy)``: aperture weight of pixels at offsets (dx, dy) from the centroid of
        ``rows[owner]``.
        """
        if self.noise is None:
            return np.zeros(rows.size)
        x = self.x[rows] - self.coadd.bbox.min_x
        y = self.y[rows] - self.coadd.bbox.min_y
        return self.noise.weighted_correction(rows, x, y, weight)

    def centre_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Padded-array pixel of every usable centroid (unusable ones parked at the padded origin)."""
        key = "centre_index"
        if key not in self.cache:
            x = np.where(self.usable, self.x, self.coadd.bbox.min_x)
            y = np.where(self.usable, self.y, self.coadd.bbox.min_y)
            self.cache[key] = self.padded.local_index(x, y)
        return self.cache[key]


def quantum_context(root, *, band: str = "i", index: int = 0, config=None, noise: bool = True, pad: int = 140):
    """(ctx, plain): the noise-replaced context after the centroid and shape slots, and its undeblended twin.

    ``ctx.padded`` / ``ctx.noise`` serve plugins written against the padded planes (the
    references in this folder); ``ctx.pixels`` serves the compiled kernels.
    """
    repo = Repository(root)
    task = ForcedPhotCoaddTask(repo, config)
    config = task.config
    quantum = [q for q in plan_quanta(repo, bands=[band]) if q.ready][index]
    inputs = task.attach_footprints(quantum)
    coadd = inputs.coadd
    replacer = task.make_noise_replacer(inputs) if noise and config.noise_replacement else None
    original = ReferencePadded(coadd, pad)
    padded = original if replacer is None else ReferencePadded(coadd, pad, image=replacer.base)
    pixels = SourcePixels.build(coadd, inputs.n, replacer=replacer, footprints=inputs.ref["footprints"])
    same_pass = tuple(n for n in config.undeblended if PLUGINS[n].measures_undeblended)
    ctx = ReferenceContext(coadd, config, inputs.ref, ref_wcs=task._ref_wcs(inputs), replacement=replacer,
                           pixels=pixels, undeblended=same_pass, padded=padded)
    for name in ("TransformedCentroid", "TransformedShape"):
        ctx.values.update(PLUGINS[name](config).measure(ctx))
    plain = dataclasses.replace(ctx, padded=original, replacement=None, noise=None, values={}, cache=dict(ctx.cache),
                                pixels=dataclasses.replace(pixels, image=pixels.original, fp=pixels.fp_none),
                                undeblended=())
    return ctx, plain
