"""Naive circular apertures: the sum of pixels whose centres lie in the closed disk.

As afw's PixelRegion: for each row y, columns ceil(xc - d) .. floor(xc + d) with
d = sqrt(r^2 - (y - yc)^2). Each row is one run, summed with the row prefix sums, so the
cost per source grows with the radius, not its square. F = sum(I), err = sqrt(sum(V)).
"""

from __future__ import annotations

import numpy as np


def naive_aperture_sums(padded, x_local: np.ndarray, y_local: np.ndarray, radius: float):
    """(flux, variance, invalid pixel count) for centres in padded-array coordinates."""
    iy0 = np.floor(y_local + 0.5).astype(np.int64)
    m = int(np.ceil(radius)) + 1
    dy = np.arange(-m, m + 1)
    rows = iy0[:, None] + dy[None, :]
    d2 = radius * radius - (rows - y_local[:, None]) ** 2
    inside = d2 >= 0
    d = np.sqrt(np.where(inside, d2, 0.0))
    lo = np.ceil(x_local[:, None] - d).astype(np.int64)
    hi = np.floor(x_local[:, None] + d).astype(np.int64) + 1
    hi = np.where(inside, hi, lo)  # empty run
    return tuple(padded.run_sums(p, rows, lo, hi).sum(axis=1) for p in ("image", "variance", "invalid"))
