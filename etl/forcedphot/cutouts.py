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
