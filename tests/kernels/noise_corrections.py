"""The sparse noise-replacement corrections the slow numpy references add to stamps of B (tests only).

A source's image is the noise image B of a :class:`forcedphot.noise.NoiseReplacer` with the heavy
values of the footprint it uses put back. The references read stamps of B and add
delta = heavy - B over that footprint's on-image pixels (:meth:`NoiseCorrections.apply_to_stamps`,
:meth:`~NoiseCorrections.weighted_correction`, :meth:`~NoiseCorrections.values_at`). Every
footprint pixel is expanded once, on first use; the package itself never does this.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from forcedphot.footprint import spans_to_owned_pixels


def footprint_pixels(footprints) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(owner, y, x, pixel offsets (N+1,)) of every pixel of a HeavyFootprints, in span order."""
    owner, ys, xs = spans_to_owned_pixels(footprints.span_offsets, footprints.span_y, footprints.span_x0,
                                          footprints.span_x1)
    counts = np.bincount(owner, minlength=footprints.has.size)
    return owner, ys, xs, np.r_[0, np.cumsum(counts)]


class NoiseCorrections:
    """delta = heavy - B of the footprint each source of ``replacer`` uses (module docstring)."""

    def __init__(self, replacer):
        self.replacer = replacer

    @cached_property
    def _pixels(self):
        """(pixel offsets, local x, local y, delta, on-image) of every footprint pixel."""
        r = self.replacer
        h, w = r.base.shape
        owner, ys, xs, pix_off = footprint_pixels(r.footprints)
        lx, ly = xs - r.origin[0], ys - r.origin[1]
        on = (lx >= 0) & (lx < w) & (ly >= 0) & (ly < h)
        flat = ly * w + lx
        heavy = r.footprints.heavy()[1].astype(np.float64)
        delta = np.where(on, heavy - r.base.reshape(-1)[np.where(on, flat, 0)], 0.0)
        return pix_off, lx, ly, delta, on

    def _segments(self, rows: np.ndarray):
        """(position in rows, local x, local y, delta) of the footprint pixels each row uses."""
        pix_off, all_lx, all_ly, all_delta, all_on = self._pixels
        fp = self.replacer.used[rows]
        has = fp >= 0
        pos = np.flatnonzero(has)
        fp = fp[has]
        starts, ends = pix_off[fp], pix_off[fp + 1]
        lengths = ends - starts
        idx = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
        keep = all_on[idx]
        idx = idx[keep]
        return np.repeat(pos, lengths)[keep], all_lx[idx], all_ly[idx], all_delta[idx]

    def apply_to_stamps(self, stamps: np.ndarray, rows: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: int):
        """Add each row's correction to its stamp (n, 2h+1, 2h+1) centred on image pixel (cx, cy)."""
        owner, lx, ly, delta = self._segments(rows)
        sx = lx - (cx[owner] - half)
        sy = ly - (cy[owner] - half)
        size = 2 * half + 1
        inside = (sx >= 0) & (sx < size) & (sy >= 0) & (sy < size)
        np.add.at(stamps, (owner[inside], sy[inside], sx[inside]), delta[inside])
        return stamps

    def weighted_correction(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, weight) -> np.ndarray:
        """sum(w * delta) per row, with w = weight(owner, dx, dy) at offsets from image position (x, y)."""
        owner, lx, ly, delta = self._segments(rows)
        w = weight(owner, lx - x[owner], ly - y[owner])
        return np.bincount(owner, weights=w * delta, minlength=rows.size)

    def values_at(self, rows: np.ndarray, cx: np.ndarray, cy: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                  base_values: np.ndarray) -> np.ndarray:
        """Add corrections to values gathered at integer offsets (dx, dy) (shared by all rows) from (cx, cy)."""
        h = int(max(np.abs(dx).max(), np.abs(dy).max()))
        lut = np.full((2 * h + 1, 2 * h + 1), -1, np.int64)
        lut[dy + h, dx + h] = np.arange(dx.size)
        owner, lx, ly, delta = self._segments(rows)
        ox, oy = lx - cx[owner] + h, ly - cy[owner] + h
        inside = (ox >= 0) & (ox <= 2 * h) & (oy >= 0) & (oy <= 2 * h)
        col = np.full(owner.size, -1)
        col[inside] = lut[oy[inside], ox[inside]]
        hit = col >= 0
        out = base_values.astype(np.float64, copy=True)
        np.add.at(out, (owner[hit], col[hit]), delta[hit])
        return out
