"""Noise replacement for a whole quantum at once: each source measured as if alone.

Rubin's NoiseReplacer (meas_base) fills every footprint with Gaussian noise of the image's
clipped mean and sigma, then for each source in turn inserts its own heavy footprint,
measures, and puts the noise back. Here the noise image B is built once (footprints in
catalogue order, each with a noise draw the size of its bounding box, the last writer
winning where footprints overlap), and a source's image is B plus a sparse correction,
delta = heavy - B on the pixels of the footprint it uses: its own heavy (children: their
deblended pixels; parents and isolated objects: the original pixels), else its nearest
ancestor's. Plugins read stamps with the correction added (:meth:`apply_to_stamps`) or add
sum(w * delta) to sums over B (:meth:`weighted_correction`). No Python loop over sources.

The noise comes from numpy's PCG64 seeded with the packed (tract, patch) id times
``noise_seed_multiplier``: every band of a patch gets the same stream, and runs repeat
exactly. (Rubin uses GSL's MT19937 with the same seed rule; the draws differ.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forcedphot.clipped import IQR_TO_SIGMA
from forcedphot.errors import InputError
from forcedphot.footprint import spans_to_owned_pixels


def clipped_stats_1d(values: np.ndarray, *, n_sigma: float = 3.0, n_iter: int = 3) -> tuple[float, float]:
    """afw MEANCLIP / STDEVCLIP of one large sample (quantiles by partition, not a full sort)."""
    v = values[np.isfinite(values)].astype(np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    centre, half = q50, n_sigma * IQR_TO_SIGMA * (q75 - q25)
    mean = std = float("nan")
    for _ in range(n_iter):
        kept = v[np.abs(v - centre) <= half]
        if kept.size < 2:
            break
        mean, std = float(kept.mean()), float(kept.std(ddof=1))
        centre, half = mean, n_sigma * std
    return mean, std


@dataclass
class HeavyFootprints:
    """Footprints of a quantum's references (row i = reference i), flattened CSR-style."""

    has: np.ndarray  # (N,) bool
    span_offsets: np.ndarray  # (N+1,)
    span_y: np.ndarray
    span_x0: np.ndarray
    span_x1: np.ndarray
    value_offsets: np.ndarray  # (N+1,)
    values: np.ndarray  # heavy pixel values, span order
    bbox: np.ndarray  # (N, 4) min_x, min_y, max_x, max_y

    def pixels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(owner, y, x, pixel offsets (N+1,)) of every footprint pixel, in span order."""
        owner, ys, xs = spans_to_owned_pixels(self.span_offsets, self.span_y, self.span_x0, self.span_x1)
        counts = np.bincount(owner, minlength=self.has.size)
        return owner, ys, xs, np.r_[0, np.cumsum(counts)]

    def check(self, ids: np.ndarray, where: str) -> None:
        """Spans and heavy values must agree in size; spans must lie in the bounding box."""
        owner, ys, xs, pix_off = self.pixels()
        n_pix = np.diff(pix_off)
        n_val = np.diff(self.value_offsets)
        bad = self.has & (n_pix != n_val)
        if bad.any():
            raise InputError(f"{where}: footprints of ids {ids[bad][:20].tolist()} have {n_pix[bad][:20].tolist()} "
                             f"span pixels but {n_val[bad][:20].tolist()} heavy values")
        b = self.bbox[owner]
        outside = (xs < b[:, 0]) | (xs > b[:, 2]) | (ys < b[:, 1]) | (ys > b[:, 3])
        if outside.any():
            raise InputError(f"{where}: footprint spans outside their bounding box for ids "
                             f"{np.unique(ids[owner[outside]])[:20].tolist()}")


class NoiseReplacer:
    """The noise image B of a quantum and each source's sparse correction (see module docstring)."""

    def __init__(self, image: np.ndarray, origin: tuple[int, int], ids: np.ndarray, parents: np.ndarray,
                 footprints: HeavyFootprints, *, seed: int, offset: float = 0.0):
        self.origin = origin  # tract (x, y) of image[0, 0]
        h, w = image.shape
        self.mean, self.sigma = clipped_stats_1d(image.reshape(-1))
        self.mean += offset
        owner, ys, xs, pix_off = footprints.pixels()
        lx, ly = xs - origin[0], ys - origin[1]
        on = (lx >= 0) & (lx < w) & (ly >= 0) & (ly < h)
        # one noise draw per footprint bbox, in catalogue order, from one generator
        bw = footprints.bbox[:, 2] - footprints.bbox[:, 0] + 1
        bh = footprints.bbox[:, 3] - footprints.bbox[:, 1] + 1
        area = np.where(footprints.has, bw * bh, 0)
        draw_off = np.r_[0, np.cumsum(area)]
        z = np.random.default_rng(np.random.PCG64(seed)).standard_normal(int(draw_off[-1]))
        b = footprints.bbox[owner]
        noise_at = z[draw_off[owner] + (ys - b[:, 1]) * bw[owner] + (xs - b[:, 0])] * self.sigma + self.mean
        flat = ly * w + lx
        base = np.array(image, dtype=np.float32, copy=True)
        # last writer wins where footprints overlap: keep the last occurrence of every pixel
        keep = np.flatnonzero(on)
        rev = keep[::-1]
        _, first_in_rev = np.unique(flat[rev], return_index=True)
        last = rev[first_in_rev]
        base.reshape(-1)[flat[last]] = noise_at[last]
        self.base = base
        # each footprint's correction: heavy - B on its (on-image) pixels
        heavy = footprints.values.astype(np.float64)
        delta = np.where(on, heavy - base.reshape(-1)[np.where(on, flat, 0)], 0.0)
        self._pix_off, self._lx, self._ly, self._delta = pix_off, lx, ly, delta
        self._on = on
        self.used = _used_footprints(ids, parents, footprints.has)

    def _segments(self, rows: np.ndarray):
        """(position in rows, local x, local y, delta) of the footprint pixels each row uses."""
        fp = self.used[rows]
        has = fp >= 0
        pos = np.flatnonzero(has)
        fp = fp[has]
        starts, ends = self._pix_off[fp], self._pix_off[fp + 1]
        lengths = ends - starts
        idx = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
        keep = self._on[idx]
        idx = idx[keep]
        return np.repeat(pos, lengths)[keep], self._lx[idx], self._ly[idx], self._delta[idx]

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


def _used_footprints(ids: np.ndarray, parents: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Row of the footprint each source is measured with: its own, else its nearest ancestor's (-1: none)."""
    order = np.argsort(ids)
    row_of = lambda q: np.where(  # noqa: E731 - a small vectorised id -> row map
        (pos := np.clip(np.searchsorted(ids[order], q), 0, ids.size - 1)) >= 0,
        np.where(ids[order][pos] == q, order[pos], -1), -1)
    used = np.where(has, np.arange(ids.size), -1)
    current = np.arange(ids.size)
    for _ in range(16):  # blend hierarchies are shallow
        todo = used < 0
        if not todo.any():
            break
        par = row_of(parents[current])
        par = np.where(todo & (parents[current] != 0), par, -1)
        step = par >= 0
        current = np.where(step, par, current)
        used = np.where(todo & step & has[np.maximum(current, 0)], current, used)
        if not step.any():
            break
    return used
