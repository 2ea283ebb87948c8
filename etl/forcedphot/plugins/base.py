"""Measurement plugins: each declares its output columns next to its kernel.

A plugin measures *all* sources of a quantum at once and returns one array per declared
column. It never raises for a single source: it sets that source's flags and NaN.
Column kinds drive calibration: ``flux`` and ``fluxErr`` columns are in image units when
measured and in nJy after :mod:`forcedphot.calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from forcedphot.io.coadd import Coadd
from forcedphot.stages import ForcedCentres, PsfMixtures, SourcePixels

if TYPE_CHECKING:  # plugins read a config they are given; they import no config module
    from forcedphot.config import ForcedPhotConfig


@dataclass(frozen=True)
class Column:
    name: str
    datatype: str  # Felis datatype
    description: str
    unit: str | None = None
    kind: str = "value"  # "flux", "fluxErr", "variance" (scaled by calib^2), "flag" or "value"

    def __post_init__(self):
        if self.kind == "flag" and self.datatype != "boolean":
            raise ValueError(f"flag column {self.name} must be boolean")


def flag(name: str, description: str) -> Column:
    return Column(name, "boolean", description, kind="flag")


def excluded_bits(coadd: Coadd, config: ForcedPhotConfig) -> int:
    """Mask bits of ``psf_bad_mask_planes``: left out of PSF fits, flagging the fluxes that sum over them."""
    planes = config.psf_bad_mask_planes
    return coadd.mask_planes.bitmask(*planes) if planes else 0


@dataclass
class MeasurementContext:
    """What every plugin sees for one quantum: the coadd, the references and the forced centroids."""

    coadd: Coadd
    config: ForcedPhotConfig
    ref: dict  # column name -> numpy array (reference catalog joined with footprints)
    x: np.ndarray | None = None  # forced centroid, tract pixels (set by TransformedCentroid)
    y: np.ndarray | None = None
    usable: np.ndarray | None = None  # finite centroid on the coadd
    ref_wcs: object | None = None  # WCS of the reference centroids (the skymap tract's)
    shape: np.ndarray | None = None  # (N, 2, 2) forced shape, coadd pixels (set by TransformedShape)
    shape_ok: np.ndarray | None = None
    values: dict = field(default_factory=dict)  # outputs of the plugins run so far
    replacement: object | None = None  # NoiseReplacer: each source sees its own heavy, others as noise
    cache: dict = field(default_factory=dict)
    pixels: SourcePixels | None = None  # the planes and own footprints compiled kernels read
    undeblended: tuple[str, ...] = ()  # plugins that also measure the original image in the same pass
    # name -> context manager timing a block (the task's ``section``): the cached stages below are
    # timed as ``stage_<name>`` apart from the plugin that first asks for them; None: not timed
    timer: object | None = None

    @property
    def n(self) -> int:
        return len(self.ref["id"])

    def chunk(self, start: int, stop: int, *, pixels: SourcePixels) -> "MeasurementContext":
        """This context for sources start..stop-1 (views; ``pixels`` holds their own footprints)."""
        sl = slice(start, stop)
        return MeasurementContext(
            self.coadd, self.config, {k: _rows(v, start, stop) for k, v in self.ref.items() if k != "footprints"},
            x=_rows(self.x, start, stop), y=_rows(self.y, start, stop), usable=_rows(self.usable, start, stop),
            ref_wcs=self.ref_wcs, shape=None if self.shape is None else self.shape[sl],
            shape_ok=_rows(self.shape_ok, start, stop), values={k: _rows(v, start, stop) for k, v in self.values.items()},
            replacement=self.replacement, pixels=pixels, undeblended=self.undeblended, timer=self.timer)

    def stage(self, key: str, build):
        """``self.cache[key]``, made by ``build()`` the first time (timed as ``stage_<key>`` when
        ``timer`` is set)."""
        if key not in self.cache:
            if self.timer is None:
                self.cache[key] = build()
            else:
                with self.timer(f"stage_{key}"):
                    self.cache[key] = build()
        return self.cache[key]

    def centres(self) -> ForcedCentres:
        """The forced centroids in coadd-local pixels, as kernels read them (cached)."""
        b = self.coadd.bbox
        return self.stage("centres", lambda: ForcedCentres.build(self.x, self.y, self.usable, b.min_x, b.min_y))

    def sub_pixel(self) -> tuple[np.ndarray, np.ndarray]:
        """Offset of each forced centroid from its nearest pixel, in [-0.5, 0.5]."""
        x = np.where(self.usable, self.x, 0.0)
        y = np.where(self.usable, self.y, 0.0)
        return x - np.floor(x + 0.5), y - np.floor(y + 0.5)

    def psf_moments(self) -> np.ndarray:
        """(N, 2, 2) PSF model moments at the forced centroids (cached)."""
        def build():
            x = np.where(self.usable, self.x, self.coadd.bbox.min_x)
            y = np.where(self.usable, self.y, self.coadd.bbox.min_y)
            return self.coadd.psf.moments_at(x, y)

        return self.stage("psf_moments", build)

    def psf_mixtures(self) -> PsfMixtures:
        """Each source's PSF as a Gaussian mixture at its forced centroid (the stage; cached)."""
        return self.stage("psf_mixtures", lambda: PsfMixtures.build(self.coadd.psf, self.x, self.y, self.usable))


def _rows(value, start: int, stop: int):
    """Rows start..stop-1 of a per-source value: an array, an Arrow array, or a CSR tuple (offsets, *flat)."""
    if value is None:
        return None
    if isinstance(value, tuple):  # e.g. ref["footprint_spans"]: (offsets (N+1,), y, x0, x1)
        offsets = value[0]
        a, b = offsets[start], offsets[stop]
        return (offsets[start:stop + 1] - a, *(v[a:b] for v in value[1:]))
    if hasattr(value, "slice") and not isinstance(value, np.ndarray):  # pyarrow.Array
        return value.slice(start, stop - start)
    return value[start:stop]


class Plugin:
    """Base class: ``name``, ``columns(config)`` and ``measure(ctx)``; a subclass registers itself with
    :func:`register` (its module only has to be in :mod:`forcedphot.plugins`)."""

    name: str = ""
    order: float = 2.0  # Rubin execution order: centroid 0, shape 1, flux 2, apCorr 3
    pad: int = 0  # padding this plugin needs around the image
    # True: measure() also returns the "undeblended_" columns when ctx.undeblended names the plugin,
    # from the same pass (per-source products such as PSF images or sinc coefficients made once)
    measures_undeblended: bool = False
    # False: needs no pixels (reference positions and shapes only); runs once over the whole
    # quantum before the chunks that read pixels and footprints
    reads_pixels: bool = True
    # the modules of forcedphot.kernels whose kernels measure() runs: a run compiles them before
    # measuring when its config names this plugin (forcedphot.task.kernel_modules)
    kernel_modules: tuple[str, ...] = ()

    @classmethod
    def columns(cls, config: ForcedPhotConfig) -> tuple[Column, ...]:
        raise NotImplementedError

    @classmethod
    def padding(cls, config: ForcedPhotConfig) -> int:
        return cls.pad

    def __init__(self, config: ForcedPhotConfig):
        self.config = config

    def measure(self, ctx: MeasurementContext) -> dict[str, np.ndarray]:
        raise NotImplementedError


PLUGINS: dict[str, type[Plugin]] = {}  # the registry: name -> class, filled by @register as plugin modules load


def register(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: add a plugin to :data:`PLUGINS` under its ``name`` (unique)."""
    if not cls.name:
        raise ValueError(f"plugin {cls.__qualname__} has no name")
    known = PLUGINS.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"plugin name {cls.name!r} taken by {known.__module__}.{known.__qualname__}")
    PLUGINS[cls.name] = cls
    return cls
