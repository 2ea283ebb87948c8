"""Batch access to the pixels around every source of a quantum.

The coadd planes are padded once (by the largest stamp or aperture) so that a stamp of
any source whose centre is on the image is a plain gather with no bounds checks. Padding
pixels carry NO_DATA and contribute zero. Non-finite pixels are zeroed in the working
copies and marked invalid. Row prefix sums (float64) give the sum over any horizontal
run of pixels in O(1): apertures use them for their fully covered interior.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pyarrow as pa

from forcedphot.io.coadd import Coadd


class PaddedCoadd:
    def __init__(self, coadd: Coadd, pad: int):
        self.coadd = coadd
        self.pad = int(pad)
        h, w = coadd.image.shape
        self.shape = (h + 2 * self.pad, w + 2 * self.pad)
        no_data = coadd.mask_planes.bitmask("NO_DATA")
        p = self.pad
        valid = np.isfinite(coadd.image) & np.isfinite(coadd.variance)
        self.image = np.zeros(self.shape, np.float32)
        self.image[p:p + h, p:p + w] = np.where(valid, coadd.image, 0)
        self.variance = np.zeros(self.shape, np.float32)
        self.variance[p:p + h, p:p + w] = np.where(valid, coadd.variance, 0)
        self.mask = np.full(self.shape, no_data, np.int32)
        self.mask[p:p + h, p:p + w] = coadd.mask | np.where(valid, 0, no_data).astype(np.int32)
        self.valid = np.zeros(self.shape, bool)
        self.valid[p:p + h, p:p + w] = valid

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


class CutoutBatch:
    """Image, variance and mask stamps (N, S, S) of a batch of sources, gathered once.

    The planes are Arrow fixed-shape tensor arrays sharing memory with contiguous numpy
    arrays (``.image`` etc. are zero-copy views), so a batch can be handed to Arrow
    consumers (IPC files, Polars) as is. ``valid`` is False on off-image and non-finite pixels.
    """

    PLANES = ("image", "variance", "mask", "valid")

    def __init__(self, padded: PaddedCoadd, ix: np.ndarray, iy: np.ndarray, half: int):
        ar = np.arange(-half, half + 1)
        dy, dx = np.meshgrid(ar, ar, indexing="ij")
        flat = padded.flat_index(ix, iy, dx, dy)
        self.size = 2 * half + 1
        self.tensors = {}
        for p in self.PLANES:
            stamps = padded.gather(p, flat)
            if p == "valid":
                stamps = stamps.view(np.uint8)  # Arrow tensors hold numbers, not bits
            self.tensors[p] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(stamps))

    def plane(self, name: str) -> np.ndarray:
        """Zero-copy (N, S, S) numpy view of one plane."""
        arr = self.tensors[name].to_numpy_ndarray()
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
        return pa.table(self.tensors)
