"""Gathers of ragged (CSR) columns: one copy, in a new row order, with no per-element index arrays."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def csr_lengths(offsets, rows, first, lengths):
    """Element counts of the selected rows that fall in this chunk (rows first .. first + len(offsets) - 2)."""
    n_rows = offsets.size - 1
    for i in range(rows.size):
        r = rows[i] - first
        if 0 <= r < n_rows:
            lengths[i] = offsets[r + 1] - offsets[r]


@njit(cache=True)
def csr_gather(offsets, values, rows, first, new_offsets, out):
    """out[new_offsets[i]:new_offsets[i+1]] = values of row rows[i], for the rows in this chunk."""
    n_rows = offsets.size - 1
    for i in range(rows.size):
        r = rows[i] - first
        if 0 <= r < n_rows:
            start = offsets[r]
            dst = new_offsets[i]
            for k in range(offsets[r + 1] - start):
                out[dst + k] = values[start + k]


def gather_rows(chunks, rows: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (len(rows)+1,), values) of rows ``rows`` (-1: empty) of a ragged column, cast to ``dtype``.

    ``chunks``: the column as consecutive (offsets, values) pieces (an Arrow list column's chunks,
    zero-copy), so the column is never concatenated first.
    """
    rows = np.ascontiguousarray(rows, np.int64)
    lengths = np.zeros(rows.size, np.int64)
    first = 0
    for offsets, _ in chunks:
        csr_lengths(offsets, rows, first, lengths)
        first += offsets.size - 1
    new_offsets = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    out = np.empty(int(new_offsets[-1]), dtype)
    first = 0
    for offsets, values in chunks:
        csr_gather(offsets, values, rows, first, new_offsets, out)
        first += offsets.size - 1
    return new_offsets, out



def _warm():
    """The signatures the loaders compile (see forcedphot.compile): float32 heavy values read
    from a file (read-only), int32 spans, read-only or not, and the int64 spans of scarlet models."""
    offsets, rows = np.array([0, 1], np.int64), np.zeros(1, np.int64)
    for values, dtype in ((np.zeros(1, np.float32), np.float32), (np.zeros(1, np.int32), np.int32),
                          (np.zeros(1, np.int64), np.int32)):
        values.flags.writeable = False
        gather_rows([(offsets, values)], rows, dtype)
    gather_rows([(offsets, np.zeros(1, np.int32))], rows, np.int32)


WARMUP = [_warm]
