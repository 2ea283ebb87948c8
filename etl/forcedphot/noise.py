"""Noise replacement for a whole quantum at once: each source measured as if alone.

Rubin's NoiseReplacer (meas_base) fills every footprint with Gaussian noise of the image's
clipped mean and sigma, then for each source in turn inserts its own heavy footprint,
measures, and puts the noise back. Here the noise image B is built once (footprints in
catalogue order, each with a noise draw the size of its bounding box, the last writer
winning where footprints overlap), and a source's image is B with the heavy values of the
footprint it uses put back: its own heavy (children: their deblended pixels; parents and
isolated objects: the original pixels), else its nearest ancestor's. Compiled kernels read
that footprint from ``SourcePixels.fp`` (:mod:`forcedphot.kernels.pixels`); this class holds
only B and the footprint each source uses. (The slow numpy references in ``tests/kernels`` add
the sparse correction heavy - B to stamps of B instead.)

Building B works from the spans: the clipped statistics of the image are compiled
(:func:`forcedphot.kernels.background.clipped_stats_flat`, equal to the numpy recipe bit for
bit), the normals are drawn in chunks of footprints of bounded size from one generator
(consecutive ``standard_normal`` calls continue one stream, so the values are those of one
big draw) and written span by span (:func:`forcedphot.kernels.footprints.write_noise`); a thread
draws the next chunks while the statistics run and the previous chunk is written. The task computes
the statistics earlier, in a thread while the quantum loads (``ForcedPhotCoaddTask._prepare``), and
passes them in (``stats``): the same function on the same image, so the same bits.

The noise comes from numpy's PCG64 seeded with the packed (tract, patch) id times
``noise_seed_multiplier``: every band of a patch gets the same stream, and runs repeat
exactly. (Rubin uses GSL's MT19937 with the same seed rule; the draws differ.)
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from forcedphot import threads
from forcedphot.errors import InputError

DRAW_CHUNK = 1 << 22  # normals drawn at once (32 MB); a larger footprint bounding box is drawn alone


def clipped_stats_1d(values: np.ndarray, *, n_sigma: float = 3.0, n_iter: int = 3) -> tuple[float, float]:
    """afw MEANCLIP / STDEVCLIP of one large sample: quantile clip, then mean +- n_sigma std (compiled).

    Equal bit for bit to the numpy recipe: np.quantile (linear) of the finite values, then
    ``kept.mean()`` and ``kept.std(ddof=1)`` of the values within the clip, ``n_iter`` times.
    """
    from forcedphot.kernels.background import clipped_stats_flat

    return clipped_stats_flat(values, n_sigma=n_sigma, n_iter=n_iter)


@dataclass
class HeavyFootprints:
    """Footprints of a quantum's references (row i = reference i), flattened CSR-style.

    The heavy values are either in memory (``value_offsets``, ``values``) or in a
    :class:`~forcedphot.footprint_values.HeavyValueStore` that chunks gather from (the loader's way).
    """

    has: np.ndarray  # (N,) bool
    span_offsets: np.ndarray  # (N+1,)
    span_y: np.ndarray
    span_x0: np.ndarray
    span_x1: np.ndarray
    bbox: np.ndarray  # (N, 4) min_x, min_y, max_x, max_y
    value_offsets: np.ndarray | None = None  # (N+1,)
    values: np.ndarray | None = None  # heavy pixel values, span order
    store: object | None = None  # HeavyValueStore, when the values are not in memory
    # (span pixels, spans outside the bbox, stored value count differs) per footprint, when the
    # loader computed them while gathering
    checked: tuple | None = None
    # the MappedArrays the spans live in (the loader's way), None when they are in memory
    mapped: object | None = None

    def release_pages(self) -> None:
        """Drop the span pages read so far from the process (mapped spans; nothing otherwise)."""
        if self.mapped is not None:
            self.mapped.release()

    def heavy(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(value offsets, values) of footprints ``rows`` (default: all, in row order), CSR."""
        from forcedphot.kernels.csr import gather_rows

        if rows is None and self.values is not None:
            return self.value_offsets, self.values
        rows = np.arange(self.has.size) if rows is None else np.asarray(rows, np.int64)
        if self.store is not None:
            return self.store.gather(rows)
        return gather_rows([(np.asarray(self.value_offsets, np.int64), self.values)], rows, np.float32)

    def nonfinite_values(self) -> tuple[np.ndarray, np.ndarray]:
        """(value offsets, indices of the non-finite heavy values), both in reference (row) order."""
        if self.store is not None:
            return self.store.nonfinite_by_reference()
        block = 1 << 22
        bad = [np.flatnonzero(~np.isfinite(self.values[i:i + block])) + i for i in range(0, self.values.size, block)]
        return self.value_offsets, np.concatenate(bad) if bad else np.zeros(0, np.int64)

    def span_pixels(self) -> np.ndarray:
        """(N,) number of span pixels of each footprint (from the spans, no per-pixel arrays)."""
        return self._span_checks()[0]

    def _span_checks(self) -> tuple[np.ndarray, np.ndarray]:
        from forcedphot.kernels.footprints import span_checks

        if self.checked is not None:
            return self.checked[:2]
        return span_checks(np.ascontiguousarray(self.span_offsets, np.int64), self.span_y, self.span_x0,
                           self.span_x1, np.ascontiguousarray(self.bbox, np.int64))

    def draw_offsets(self) -> np.ndarray:
        """(N+1,) start of each footprint's noise draw: one bounding box of normals per footprint."""
        bw = self.bbox[:, 2] - self.bbox[:, 0] + 1
        bh = self.bbox[:, 3] - self.bbox[:, 1] + 1
        return np.r_[0, np.cumsum(np.where(self.has, bw * bh, 0))].astype(np.int64)

    def check(self, ids: np.ndarray, where: str) -> None:
        """Spans and heavy values must agree in size; spans must lie in the bounding box."""
        if self.checked is None:
            n_pix, outside = self._span_checks()
            bad = self.has & (n_pix != np.diff(self.heavy()[0]))
        else:
            n_pix, outside, bad = self.checked
            bad = self.has & bad
        if bad.any():
            raise InputError(f"{where}: footprints of ids {ids[bad][:20].tolist()} have {n_pix[bad][:20].tolist()} "
                             "span pixels but a different number of heavy values")
        if outside.any():
            raise InputError(f"{where}: footprint spans outside their bounding box for ids "
                             f"{np.unique(ids[outside.astype(bool)])[:20].tolist()}")


class NoiseReplacer:
    """The noise image B of a quantum and the footprint each source is measured with (module docstring)."""

    def __init__(self, image: np.ndarray, origin: tuple[int, int], ids: np.ndarray, parents: np.ndarray,
                 footprints: HeavyFootprints, *, seed: int, offset: float = 0.0, stats: tuple | None = None):
        """``stats``: ``clipped_stats_1d(image)`` if the caller has it already (the task computes it while
        the quantum loads)."""
        self.origin = origin  # tract (x, y) of image[0, 0]
        self.footprints = footprints
        draws = noise_draws(footprints, seed)
        if threads.threads() > 1:  # drawn in a thread while the (compiled) statistics run; one thread: in turn
            draws = _Prefetch(draws)
        try:
            self.mean, self.sigma = clipped_stats_1d(image) if stats is None else stats
            self.mean += offset
            self.base = noise_image(image, origin, footprints, draws, self.mean, self.sigma)
        finally:
            if isinstance(draws, _Prefetch):
                draws.close()
        self.used = _used_footprints(ids, parents, footprints.has)


def noise_draws(footprints: HeavyFootprints, seed: int):
    """Yield (f0, f1, z): consecutive footprints f0..f1-1 and their normals, one bounding box each.

    One PCG64 stream in catalogue order; a chunk draws <= DRAW_CHUNK normals (a larger box alone).
    """
    draw_off = footprints.draw_offsets()
    n = footprints.has.size
    rng = np.random.default_rng(np.random.PCG64(seed))
    cuts = np.unique(np.r_[0, np.searchsorted(draw_off, np.arange(0, draw_off[-1], DRAW_CHUNK), side="right") - 1, n])
    for f0, f1 in zip(cuts[:-1], cuts[1:]):
        yield int(f0), int(f1), rng.standard_normal(int(draw_off[f1] - draw_off[f0]))


def noise_image(image: np.ndarray, origin: tuple[int, int], footprints: HeavyFootprints, draws, mean: float,
                sigma: float) -> np.ndarray:
    """B: a float32 copy of ``image`` with every footprint's pixels replaced by noise (module docstring).

    ``draws``: the chunks of :func:`noise_draws` (a seed: draw them here).
    """
    from forcedphot.kernels.footprints import write_noise

    if isinstance(draws, (int, np.integer)):
        draws = noise_draws(footprints, int(draws))
    base = np.array(image, dtype=np.float32, copy=True)
    draw_off = footprints.draw_offsets()
    has = np.ascontiguousarray(footprints.has, np.uint8)
    bbox = np.ascontiguousarray(footprints.bbox, np.int64)
    for f0, f1, z in draws:
        write_noise(base, z, draw_off[f0], draw_off, bbox, has, footprints.span_offsets, footprints.span_y,
                    footprints.span_x0, footprints.span_x1, f0, f1, origin[0], origin[1], float(mean), float(sigma))
    return base


class _Prefetch:
    """Iterate ``items`` up to ``depth`` steps ahead in a thread (numpy's draws and the compiled
    statistics both release the GIL, so the draws overlap the statistics)."""

    def __init__(self, items, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, items):
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer
            self._put(("error", exc))

    def __iter__(self):
        while True:
            kind, item = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


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
