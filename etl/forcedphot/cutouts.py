"""Padded copies of a coadd's planes for the numpy exact-aperture sums.

:func:`forcedphot.plugins.aperture_exact.exact_aperture_sums` reads stamps around any on-image
centre without bounds checks, so the planes are padded once (by the largest aperture). Padding
pixels carry NO_DATA and contribute zero; non-finite and NO_DATA pixels are zeroed and marked
invalid. The measurement task does not use these copies (its compiled kernels read the coadd's
own planes, :mod:`forcedphot.stages`); the bench's numpy aperture fallback does.
"""

from __future__ import annotations

import numpy as np

from forcedphot.io.coadd import Coadd


class PaddedCoadd:
    def __init__(self, coadd: Coadd, pad: int, *, image: np.ndarray | None = None):
        """``image`` replaces the coadd's image plane (e.g. the noise-replaced image)."""
        self.coadd = coadd
        self.pad = int(pad)
        h, w = coadd.image.shape
        self.shape = (h + 2 * self.pad, w + 2 * self.pad)
        no_data = coadd.mask_planes.bitmask("NO_DATA")
        p = self.pad
        valid = np.isfinite(coadd.image) & np.isfinite(coadd.variance) & (coadd.mask & no_data == 0)
        self.image = np.zeros(self.shape, np.float32)
        self.image[p:p + h, p:p + w] = np.where(valid, coadd.image if image is None else image, 0)
        self.variance = np.zeros(self.shape, np.float32)
        self.variance[p:p + h, p:p + w] = np.where(valid, coadd.variance, 0)
        self.mask = np.full(self.shape, no_data, np.int32)
        self.mask[p:p + h, p:p + w] = coadd.mask | np.where(valid, 0, no_data).astype(np.int32)
        self.valid = np.zeros(self.shape, bool)
        self.valid[p:p + h, p:p + w] = valid
