"""Slow reference (tests only): the noise image B as forcedphot.noise built it before the kernels (commit 9e039fc).

Every footprint pixel expanded to int64/float64 arrays (owner, y, x, noise), one normal draw for
all bounding boxes at once, last writer kept by ``np.unique`` on the reversed pixel list.
"""

from __future__ import annotations

import numpy as np

from forcedphot.footprint import spans_to_owned_pixels
from tests.kernels.reference_clipped import clipped_stats_1d


def reference_noise_image(image: np.ndarray, origin: tuple[int, int], footprints, *, seed: int,
                          offset: float = 0.0) -> tuple[np.ndarray, float, float]:
    """(base, mean, sigma) of the old NoiseReplacer."""
    h, w = image.shape
    mean, sigma = clipped_stats_1d(image.reshape(-1))
    mean += offset
    owner, ys, xs = spans_to_owned_pixels(footprints.span_offsets, footprints.span_y, footprints.span_x0,
                                          footprints.span_x1)
    lx, ly = xs - origin[0], ys - origin[1]
    on = (lx >= 0) & (lx < w) & (ly >= 0) & (ly < h)
    bw = footprints.bbox[:, 2] - footprints.bbox[:, 0] + 1
    bh = footprints.bbox[:, 3] - footprints.bbox[:, 1] + 1
    area = np.where(footprints.has, bw * bh, 0)
    draw_off = np.r_[0, np.cumsum(area)]
    z = np.random.default_rng(np.random.PCG64(seed)).standard_normal(int(draw_off[-1]))
    b = footprints.bbox[owner]
    noise_at = z[draw_off[owner] + (ys - b[:, 1]) * bw[owner] + (xs - b[:, 0])] * sigma + mean
    flat = ly * w + lx
    base = np.array(image, dtype=np.float32, copy=True)
    keep = np.flatnonzero(on)
    rev = keep[::-1]
    _, first_in_rev = np.unique(flat[rev], return_index=True)
    last = rev[first_in_rev]
    base.reshape(-1)[flat[last]] = noise_at[last]
    return base, mean, sigma
