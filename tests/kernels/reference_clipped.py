"""Slow reference (tests only): forcedphot.clipped as numpy had it before the numba kernels (commit 9e039fc).

Rows of a 2-D array are samples, NaN excluded; quantiles from a full sort of every row.
"""

from __future__ import annotations

import numpy as np

IQR_TO_SIGMA = 0.741301109252802


def _quantile_sorted(sorted_vals: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolated quantile of each row's first n values (rows sorted, NaN last)."""
    pos = np.clip((n - 1) * q, 0, None)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    rows = np.arange(sorted_vals.shape[0])
    a = sorted_vals[rows, lo]
    b = sorted_vals[rows, hi]
    return a + (b - a) * (pos - lo)


def _sorted_rows(values) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(values, finite mask, finite count, rows sorted with NaN last); float32 stays float32."""
    vals = np.asarray(values)
    vals = vals if vals.dtype in (np.float32, np.float64) else vals.astype(float)
    finite = np.isfinite(vals)
    return vals, finite, finite.sum(axis=1), np.sort(np.where(finite, vals, np.inf), axis=1)


def clipped_mean_std(values: np.ndarray, *, n_sigma: float = 3.0, n_iter: int = 3):
    """(mean, std, n_used) per row of ``values`` (NaN = excluded)."""
    vals, finite, n, srt = _sorted_rows(values)
    with np.errstate(invalid="ignore"):
        centre = _quantile_sorted(srt, n, 0.5)
        iqr = _quantile_sorted(srt, n, 0.75) - _quantile_sorted(srt, n, 0.25)
    half = n_sigma * IQR_TO_SIGMA * iqr
    mean = std = np.full(vals.shape[0], np.nan)
    used = n
    for _ in range(n_iter):
        keep = finite & (np.abs(vals - centre[:, None]) <= half[:, None])
        used = keep.sum(axis=1)
        x = np.where(keep, vals, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = x.sum(axis=1, dtype=np.float64) / used
            var = (np.where(keep, (vals - mean[:, None]) ** 2, 0.0)).sum(axis=1) / (used - 1)
        std = np.sqrt(var)
        centre, half = mean, n_sigma * std
    return mean, std, used


def masked_median(values: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for empty rows)."""
    _, _, n, srt = _sorted_rows(values)
    with np.errstate(invalid="ignore"):
        med = _quantile_sorted(srt, n, 0.5)
    return np.where(n > 0, med, np.nan)


def clipped_stats_1d(values: np.ndarray, *, n_sigma: float = 3.0, n_iter: int = 3) -> tuple[float, float]:
    """afw MEANCLIP / STDEVCLIP of one large sample (forcedphot.noise before the kernels)."""
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
