"""Per-quantum products that several plugins share, computed once and named.

:class:`SourcePixels` is what every compiled kernel reads: the coadd planes in coadd-local
pixels (no padded copies), one validity plane, and each source's own footprint for noise
replacement (see :mod:`forcedphot.kernels.pixels`). :class:`ForcedCentres` holds the forced
centroids as kernels want them: nearest local pixel and sub-pixel offset. :class:`PsfMixtures`
is each source's PSF as a few Gaussians, which model fits (CModel) convolve their profiles with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from forcedphot.io.coadd import Coadd
from forcedphot.kernels.pixels import no_footprints
from forcedphot.psf import MAX_RESIDUAL, MIXTURE_FAILED, MIXTURE_POOR, N_COMPONENTS, PsfGrid


@dataclass(frozen=True)
class SourcePixels:
    image: np.ndarray  # (H, W) float32: what deblended measurements see (noise image B, or the coadd's)
    original: np.ndarray  # (H, W) float32: the coadd's image (undeblended measurements)
    variance: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) int32
    # (H, W) uint8, nonzero where valid (finite image, finite positive variance, NO_DATA not set);
    # with ``excluded`` bits it is their class plane (footprints.pixel_classes: 2 = valid but in one of
    # them), so the quantum holds one such plane: every kernel reads it as validity (nonzero)
    valid: np.ndarray
    no_data: int  # the NO_DATA bit
    fp: tuple  # own footprints (kernels.pixels layout); every used = -1 without noise replacement
    fp_none: tuple  # no footprints: the undeblended image
    # plane-wide products made once and shared by every chunk (replace() keeps the same dict)
    shared: dict = field(default_factory=dict, compare=False, repr=False)
    excluded: int = 0  # the mask bits ``valid`` classifies (see :meth:`classes`)

    @classmethod
    def build(cls, coadd: Coadd, n: int, *, replacer=None, footprints=None, chunked: bool = False,
              excluded_bits: int = 0) -> "SourcePixels":
        """``chunked``: leave ``fp`` to :meth:`chunk` (the task measures chunk by chunk);
        ``excluded_bits``: classify them in the validity plane (the plugins' ``classes(excluded_bits)``)."""
        from forcedphot.kernels.footprints import pixel_classes

        no_data = coadd.mask_planes.bitmask("NO_DATA")
        valid = valid_plane(coadd.image, coadd.variance, coadd.mask, no_data)
        excluded = int(excluded_bits) & ~no_data
        if excluded:
            valid = pixel_classes(valid, coadd.mask, np.int32(excluded))
        none = no_footprints(n)
        if replacer is None:
            return cls(coadd.image, coadd.image, coadd.variance, coadd.mask, valid, no_data, none, none,
                       excluded=excluded)
        fp = None if chunked else local_footprints(footprints, replacer.used, coadd.bbox.min_x, coadd.bbox.min_y)
        return cls(replacer.base, coadd.image, coadd.variance, coadd.mask, valid, no_data, fp, none, excluded=excluded)

    def chunk(self, start: int, stop: int, *, replacer=None, footprints=None, coadd: Coadd) -> "SourcePixels":
        """These planes for sources start..stop-1, with their own footprints (see :func:`chunk_footprints`)."""
        none = no_footprints(stop - start)
        if replacer is None:
            return replace(self, fp=none, fp_none=none)
        fp = chunk_footprints(footprints, replacer.used, start, stop, coadd.bbox.min_x, coadd.bbox.min_y)
        return replace(self, fp=fp, fp_none=none)

    def classes(self, bits: int) -> np.ndarray:
        """uint8 plane: 0 invalid, 1 valid, 2 valid with one of mask ``bits`` (footprints.pixel_classes);
        ``valid`` itself when ``bits`` add nothing to it or are the ones it classifies. Made once per
        bits for the whole quantum."""
        from forcedphot.kernels.footprints import pixel_classes

        if int(bits) & ~self.no_data in (0, self.excluded):
            return self.valid
        key = ("classes", int(bits))
        if key not in self.shared:
            self.shared[key] = pixel_classes(self.valid, self.mask, np.int32(bits))
        return self.shared[key]

    def planes(self, *, undeblended: bool = False) -> tuple:
        """(image, variance, mask, valid, fp) for the deblended or the undeblended measurement."""
        if undeblended:
            return self.original, self.variance, self.mask, self.valid, self.fp_none
        return self.image, self.variance, self.mask, self.valid, self.fp


def valid_plane(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, no_data: int) -> np.ndarray:
    from forcedphot.kernels.footprints import valid_pixels

    return valid_pixels(image, variance, mask, np.int32(no_data))


def local_footprints(footprints, used: np.ndarray, min_x: int, min_y: int) -> tuple:
    """The ``fp`` tuple of every source in coadd-local pixels (int32 spans), as kernels read it."""
    value_offsets, values = footprints.heavy()
    return (np.ascontiguousarray(used, np.int64), np.ascontiguousarray(footprints.span_offsets, np.int64),
            (footprints.span_y - min_y).astype(np.int32), (footprints.span_x0 - min_x).astype(np.int32),
            (footprints.span_x1 - min_x).astype(np.int32), np.ascontiguousarray(value_offsets, np.int64),
            np.ascontiguousarray(values, np.float32))


def chunk_footprints(footprints, used: np.ndarray, start: int, stop: int, min_x: int, min_y: int) -> tuple:
    """The ``fp`` tuple of sources start..stop-1: only the footprints they use (their own or an
    ancestor's), re-indexed, with their heavy values gathered now (one chunk in memory at a time)."""
    from forcedphot.kernels.csr import gather_rows

    u = np.asarray(used[start:stop], np.int64)
    rows, local = np.unique(u[u >= 0], return_inverse=True)
    used_local = np.full(u.size, -1, np.int64)
    used_local[u >= 0] = local
    offsets = np.ascontiguousarray(footprints.span_offsets, np.int64)
    span_off, sy = gather_rows([(offsets, footprints.span_y)], rows, np.int32)
    _, sx0 = gather_rows([(offsets, footprints.span_x0)], rows, np.int32)
    _, sx1 = gather_rows([(offsets, footprints.span_x1)], rows, np.int32)
    sy -= np.int32(min_y)
    sx0 -= np.int32(min_x)
    sx1 -= np.int32(min_x)
    value_offsets, values = footprints.heavy(rows)
    return used_local, span_off, sy, sx0, sx1, value_offsets, values


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


@dataclass(frozen=True)
class PsfMixtures:
    """Each source's PSF as a mixture of Gaussians (the role of Rubin's DoubleShapeletPsfApprox).

    Fitted once to every PSF grid node image (:meth:`forcedphot.psf.PsfGrid.node_mixtures`, cached
    on the grid) and blended to each source like the PSF images (:meth:`forcedphot.psf.PsfGrid.mixtures_at`).
    A source without a usable centroid has NaN components and ``MIXTURE_FAILED``.
    """

    amp: np.ndarray  # (N, M) component fluxes (the PSF image sums to 1), smallest component first
    centre: np.ndarray  # (N, M, 2) component centres (x, y), offsets from the source's position, pixels
    cov: np.ndarray  # (N, M, 3) covariances (xx, yy, xy), pixels^2
    residual: np.ndarray  # (N,) the largest sum|mixture - image| / sum|image| of the nodes blended
    flags: np.ndarray  # (N,) int32: MIXTURE_FAILED | MIXTURE_MAX_ITER | MIXTURE_POOR of those nodes

    @property
    def flag(self) -> np.ndarray:
        """(N,) bool: no mixture, or one that misplaces more than the allowed residual of the PSF's light."""
        return (self.flags & (MIXTURE_FAILED | MIXTURE_POOR)) != 0

    @classmethod
    def build(cls, psf: PsfGrid, x: np.ndarray, y: np.ndarray, usable: np.ndarray, *,
              n_components: int = N_COMPONENTS, max_residual: float = MAX_RESIDUAL) -> "PsfMixtures":
        """The mixtures at tract pixel (x, y) of the sources with ``usable`` centroids."""
        ok = np.asarray(usable, bool)
        xs = np.where(ok, x, psf.x[0])
        ys = np.where(ok, y, psf.y[0])
        amp, centre, cov, residual, flags = psf.mixtures_at(xs, ys, n_components, max_residual=max_residual)
        amp[~ok] = np.nan
        centre[~ok] = np.nan
        cov[~ok] = np.nan
        residual[~ok] = np.nan
        flags[~ok] = MIXTURE_FAILED
        return cls(amp, centre, cov, residual, flags)
