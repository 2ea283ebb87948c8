"""Footprint and plane kernels: the validity plane, span expansion and mask ORs over footprints."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def valid_pixels(image, variance, mask, no_data):
    """uint8 plane: 1 where image and variance are finite and NO_DATA is not set."""
    h, w = image.shape
    out = np.empty((h, w), np.uint8)
    for y in prange(h):
        for x in range(w):
            out[y, x] = np.isfinite(image[y, x]) and np.isfinite(variance[y, x]) and (mask[y, x] & no_data) == 0
    return out
