"""Stamps of the padded planes for the slow numpy references (tests only; the package reads no stamps).

:class:`ReferencePadded` adds to the package's :class:`~forcedphot.cutouts.PaddedCoadd` the index
helpers and row prefix sums (float64: the sum over any horizontal run of pixels in O(1)) the
references use; :class:`CutoutBatch` gathers (N, S, S) stamps of it; :func:`buckets` groups
sources by stamp size.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from forcedphot.cutouts import PaddedCoadd
from forcedphot.plugins.gaussian_flux import STAMP_HALF_SIZES


class ReferencePadded(PaddedCoadd):
    """The package's padded planes plus gathers by pixel offsets and row prefix sums."""

    def local_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest padded-array pixel (column, row) of tract positions (floor(x + 0.5))."""
        ix = np.floor(x + 0.5).astype(np.int64) - self.coadd.bbox.min_x + self.pad
        iy = np.floor(y + 0.5).astype(np.int64) - self.coadd.bbox.min_y + self.pad
        return ix, iy

    def flat_index(self, ix, iy, dx, dy) -> np.ndarray:
        """Flat indices of offsets (dx, dy) around centres (ix, iy): shape (N,) + dx.shape."""
        ix = np.asarray(ix)[(...,) + (None,) * np.ndim(dx)]
        iy = np.asarray(iy)[(...,) + (None,) * np.ndim(dy)]
        return (iy + dy) * self.shape[1] + (ix + dx)

    def gather(self, plane: str, flat: np.ndarray) -> np.ndarray:
        return np.take(getattr(self, plane).reshape(-1), flat)

    def run_sums(self, plane: str, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Sum of ``plane`` over columns [lo, hi) of padded-array rows, one value per (rows, lo, hi) element.

        Uses the row prefix sums: two lookups per run whatever its length. Empty runs (hi <= lo) give 0.
        """
        prefix = getattr(self, f"{plane}_rowsum")
        width = prefix.shape[1]
        empty = hi <= lo  # empty runs may lie anywhere: park them on a valid address
        rows = np.where(empty, 0, rows)
        lo = np.where(empty, 0, lo)
        hi = np.where(empty, 0, hi)
        flat = prefix.reshape(-1)
        base = rows * width
        return np.take(flat, base + hi) - np.take(flat, base + lo)

    @cached_property
    def image_rowsum(self) -> np.ndarray:
        return _row_prefix(self.image)

    @cached_property
    def variance_rowsum(self) -> np.ndarray:
        return _row_prefix(self.variance)

    @cached_property
    def invalid_rowsum(self) -> np.ndarray:
        return _row_prefix((~self.valid).astype(np.float64))


def _row_prefix(a: np.ndarray) -> np.ndarray:
    """(H, W+1) float64 with out[y, k] = sum(a[y, :k])."""
    out = np.zeros((a.shape[0], a.shape[1] + 1))
    np.cumsum(a, axis=1, dtype=np.float64, out=out[:, 1:])
    return out


def buckets(need: np.ndarray, *, sizes=STAMP_HALF_SIZES):
    """Group sources by the smallest stamp half-size >= need: yields (half, indices).

    Sources whose need is not finite or exceeds the largest size come last with half = None.
    """
    need = np.asarray(need, float)
    sizes = np.asarray(sizes)
    pos = np.searchsorted(sizes, np.where(np.isfinite(need), need, np.inf))
    for k, half in enumerate(sizes):
        idx = np.flatnonzero(pos == k)
        if idx.size:
            yield int(half), idx
    rest = np.flatnonzero(pos >= sizes.size)
    if rest.size:
        yield None, rest


class CutoutBatch:
    """Stamps (N, S, S) of a batch of sources, gathered once per plane on first use.

    Each plane is an Arrow fixed-shape tensor array sharing memory with a contiguous numpy
    array (``.image`` etc. are zero-copy views). ``valid`` is False on off-image and non-finite
    pixels. The gather is one fancy index into a sliding-window view of the padded plane.
    """

    PLANES = ("image", "variance", "mask", "valid")

    def __init__(self, padded: PaddedCoadd, ix: np.ndarray, iy: np.ndarray, half: int, *, fix_image=None):
        """``fix_image(stamps, half)`` may edit the gathered image stamps in place (noise replacement)."""
        self.padded = padded
        self.ix = np.asarray(ix) - half
        self.iy = np.asarray(iy) - half
        self.half = half
        self.size = 2 * half + 1
        self.fix_image = fix_image
        self.tensors: dict[str, pa.Array] = {}

    def tensor(self, name: str) -> pa.Array:
        if name not in self.tensors:
            plane = getattr(self.padded, name)
            if name == "valid":
                plane = plane.view(np.uint8)  # Arrow tensors hold numbers, not bits
            stamps = sliding_window_view(plane, (self.size, self.size))[self.iy, self.ix]
            if name == "image" and self.fix_image is not None:
                stamps = self.fix_image(np.array(stamps, dtype=np.float64), self.half).astype(np.float32)
            self.tensors[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(stamps))
        return self.tensors[name]

    def plane(self, name: str) -> np.ndarray:
        """Zero-copy (N, S, S) numpy view of one plane."""
        arr = self.tensor(name).to_numpy_ndarray()
        return arr.view(bool) if name == "valid" else arr

    @property
    def image(self) -> np.ndarray:
        return self.plane("image")

    @property
    def variance(self) -> np.ndarray:
        return self.plane("variance")

    @property
    def mask(self) -> np.ndarray:
        return self.plane("mask")

    @property
    def valid(self) -> np.ndarray:
        return self.plane("valid")

    def to_arrow(self) -> pa.Table:
        return pa.table({name: self.tensor(name) for name in self.PLANES})
