"""Sigma-clipped statistics of many pixel sets at once (afw's MEANCLIP / STDEVCLIP).

Rows of a 2-D array are independent samples; NaN marks excluded pixels. Iteration 0 clips
at median +- 3 * 0.7413 * IQR (quantiles linearly interpolated between the sorted finite
values), later ones at mean +- 3 * std of the previous iteration; the variance is the
unbiased n/(n-1) sample variance. Sums are float64; values keep their float32 or float64 type.

The statistics are compiled (:mod:`forcedphot.kernels.background`: each row sorted, the
clip intervals bisected, rows in parallel); plugins call the same per-sample kernels on
their own pixels. Quantiles and medians are numpy's exactly; means and standard deviations
differ from numpy's sums at the rounding level (about 1e-15 relative; a value within rounding
of a later clip edge could fall on the other side). The numpy definition is kept with the
tests (``tests/kernels/reference_clipped.py``).
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels.background import IQR_TO_SIGMA, clipped_rows, clipped_rows64, median_rows, median_rows64

__all__ = ["IQR_TO_SIGMA", "clipped_mean_std", "masked_median"]


def _rows(values) -> np.ndarray:
    """Rows as a contiguous 2-D array; float32 stays float32, float64 float64, anything else -> float64."""
    v = np.asarray(values)
    v = v if v.dtype in (np.float32, np.float64) else v.astype(np.float64)
    return np.ascontiguousarray(v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v.reshape(1, -1))


def clipped_mean_std(values: np.ndarray, *, n_sigma: float = 3.0, n_iter: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, n_used) per row of ``values`` (NaN = excluded)."""
    rows = _rows(values)
    kernel = clipped_rows if rows.dtype == np.float32 else clipped_rows64
    return kernel(rows, float(n_sigma), int(n_iter))


def masked_median(values: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for empty rows)."""
    rows = _rows(values)
    return (median_rows if rows.dtype == np.float32 else median_rows64)(rows)
