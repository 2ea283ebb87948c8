"""Gathers of ragged (CSR) columns: one copy, in a new row order, with no per-element index arrays."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def csr_lengths(offsets, rows):
    """Element count of each selected row (-1: an empty row)."""
    out = np.zeros(rows.size, np.int64)
    for i in range(rows.size):
        r = rows[i]
        if r >= 0:
            out[i] = offsets[r + 1] - offsets[r]
    return out


@njit(cache=True)
def csr_gather(offsets, values, rows, new_offsets, out):
    """out[new_offsets[i]:new_offsets[i+1]] = values of row rows[i] (nothing for rows[i] < 0)."""
    for i in range(rows.size):
        r = rows[i]
        if r >= 0:
            start = offsets[r]
            dst = new_offsets[i]
            for k in range(offsets[r + 1] - start):
                out[dst + k] = values[start + k]


def gather_rows(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (len(rows)+1,), values) of the ragged column's rows ``rows`` (-1: empty), cast to ``dtype``."""
    lengths = csr_lengths(offsets, rows)
    new_offsets = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    out = np.empty(int(new_offsets[-1]), dtype)
    csr_gather(offsets, values, rows, new_offsets, out)
    return new_offsets, out
