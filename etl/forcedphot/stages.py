"""Per-quantum products that several plugins share, computed once and named.

:class:`SourcePixels` is what every compiled kernel reads: the coadd planes in coadd-local
pixels (no padded copies), one validity plane, and each source's own footprint for noise
replacement (see :mod:`forcedphot.kernels.pixels`). :class:`ForcedCentres` holds the forced
centroids as kernels want them: nearest local pixel and sub-pixel offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forcedphot.io.coadd import Coadd
from forcedphot.kernels.pixels import no_footprints


@dataclass(frozen=True)
class SourcePixels:
    image: np.ndarray  # (H, W) float32: what deblended measurements see (noise image B, or the coadd's)
    original: np.ndarray  # (H, W) float32: the coadd's image (undeblended measurements)
    variance: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) int32
    valid: np.ndarray  # (H, W) uint8: finite image, finite positive variance, NO_DATA not set
    no_data: int  # the NO_DATA bit
    fp: tuple  # own footprints (kernels.pixels layout); every used = -1 without noise replacement
    fp_none: tuple  # no footprints: the undeblended image

    @classmethod
    def build(cls, coadd: Coadd, n: int, *, replacer=None, footprints=None) -> "SourcePixels":
        no_data = coadd.mask_planes.bitmask("NO_DATA")
        valid = valid_plane(coadd.image, coadd.variance, coadd.mask, no_data)
        none = no_footprints(n)
        if replacer is None:
            return cls(coadd.image, coadd.image, coadd.variance, coadd.mask, valid, no_data, none, none)
        fp = local_footprints(footprints, replacer.used, coadd.bbox.min_x, coadd.bbox.min_y)
        return cls(replacer.base, coadd.image, coadd.variance, coadd.mask, valid, no_data, fp, none)

    def planes(self, *, undeblended: bool = False) -> tuple:
        """(image, variance, mask, valid, fp) for the deblended or the undeblended measurement."""
        if undeblended:
            return self.original, self.variance, self.mask, self.valid, self.fp_none
        return self.image, self.variance, self.mask, self.valid, self.fp


def valid_plane(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, no_data: int) -> np.ndarray:
    from forcedphot.kernels.footprints import valid_pixels

    return valid_pixels(image, variance, mask, np.int32(no_data))


def local_footprints(footprints, used: np.ndarray, min_x: int, min_y: int) -> tuple:
    """The ``fp`` tuple in coadd-local pixels (int32 spans), as kernels read it."""
    return (np.ascontiguousarray(used, np.int64), np.ascontiguousarray(footprints.span_offsets, np.int64),
            (footprints.span_y - min_y).astype(np.int32), (footprints.span_x0 - min_x).astype(np.int32),
            (footprints.span_x1 - min_x).astype(np.int32), np.ascontiguousarray(footprints.value_offsets, np.int64),
            np.ascontiguousarray(footprints.values, np.float32))


@dataclass(frozen=True)
class ForcedCentres:
    """Forced centroids in coadd-local pixels: nearest pixel (cx, cy), offset (fx, fy) in [-0.5, 0.5].

    Unusable sources (``usable`` 0) sit at pixel (0, 0) with zero offset; kernels skip them.
    """

    cx: np.ndarray  # (N,) int64
    cy: np.ndarray
    fx: np.ndarray  # (N,) float64
    fy: np.ndarray
    xl: np.ndarray  # (N,) float64 local position cx + fx
    yl: np.ndarray
    usable: np.ndarray  # (N,) uint8

    @classmethod
    def build(cls, x: np.ndarray, y: np.ndarray, usable: np.ndarray, min_x: int, min_y: int) -> "ForcedCentres":
        xl = np.where(usable, x - min_x, 0.0)
        yl = np.where(usable, y - min_y, 0.0)
        cx = np.floor(xl + 0.5)
        cy = np.floor(yl + 0.5)
        return cls(cx.astype(np.int64), cy.astype(np.int64), xl - cx, yl - cy, xl, yl, usable.astype(np.uint8))
