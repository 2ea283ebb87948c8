"""Footprints as run-length spans (y, x0, x1 inclusive), the afw SpanSet layout."""

from __future__ import annotations

import numpy as np


def mask_to_spans(mask: np.ndarray, x0: int, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spans of a boolean mask whose pixel [0, 0] is at (x0, y0); rows ascending, x ascending."""
    m = np.asarray(mask, bool)
    padded = np.zeros((m.shape[0], m.shape[1] + 2), np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    starts = np.argwhere(d == 1)  # (row, col) where a run starts
    ends = np.argwhere(d == -1)  # col is one past the run's last pixel
    return ((starts[:, 0] + y0).astype(np.int32), (starts[:, 1] + x0).astype(np.int32),
            (ends[:, 1] - 1 + x0).astype(np.int32))


def spans_npix(x0: np.ndarray, x1: np.ndarray) -> int:
    return int(np.sum(np.asarray(x1) - np.asarray(x0) + 1))


def spans_to_pixels(y: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (ys, xs) pixels of a footprint, in span order (the order of heavy values)."""
    lengths = np.asarray(x1) - np.asarray(x0) + 1
    ys = np.repeat(y, lengths)
    starts = np.repeat(np.asarray(x0) - np.cumsum(np.r_[0, lengths[:-1]]), lengths)
    xs = starts + np.arange(lengths.sum())
    return ys, xs


def spans_to_owned_pixels(offsets: np.ndarray, y: np.ndarray, x0: np.ndarray, x1: np.ndarray):
    """(owner, ys, xs) of every pixel of many footprints whose spans are grouped by ``offsets`` (N+1,).

    Per-pixel int64 arrays: for tests and the lazy corrections of ``NoiseReplacer``; the measurement
    kernels work from the spans (:mod:`forcedphot.kernels.footprints`).
    """
    span_owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    ys, xs = spans_to_pixels(y, x0, x1)
    return np.repeat(span_owner, np.asarray(x1) - np.asarray(x0) + 1), ys, xs
