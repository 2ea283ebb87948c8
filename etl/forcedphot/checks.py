"""Load-time checks of a quantum's inputs: bad input fails the quantum in one line, before it is measured.

Called by :func:`forcedphot.quantum.load_quantum`. Each failure raises :class:`InputError`
naming the file and the data ID or object ids (the runner then fails that quantum alone).
Checks are vectorised over the quantum (numpy in bounded blocks, or the span kernels):
no per-pixel int64 arrays.

* :func:`verify_files`: the reference file's content checksum and page CRCs (DuckDB reads it
  for the join and does not verify them; footprints and coadds are verified by their readers).
* :func:`check_references`: unique reference and footprint ids, finite positions.
* :func:`check_pixels`: heavy footprint values finite wherever the coadd pixel is valid; coadd
  pixels whose variance is not finite and positive are invalid (``kernels.footprints.valid_pixels``),
  so the measurements that touch them are flagged: they are counted in a warning, not failed.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forcedphot.errors import InputError
from forcedphot.io.parquet import ChecksumError, verify_checksum

log = logging.getLogger(__name__)

REQUIRED_FINITE = ("coord_ra", "coord_dec", "centroid_x", "centroid_y")  # non-nullable float columns of ref
SHOWN = 20  # ids named in a message
ROW_BLOCK = 256  # coadd rows per block of the variance scan


def _ids(ids: np.ndarray) -> str:
    more = f" (+{ids.size - SHOWN} more)" if ids.size > SHOWN else ""
    return f"{ids[:SHOWN].tolist()}{more}"


def verify_files(quantum) -> None:
    """The reference file's sha256 and page CRCs (the footprint and coadd readers verify theirs)."""
    path = quantum.ref_file
    verify_checksum(path)
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        for _ in pf.iter_batches(batch_size=65536, use_threads=False):
            pass
    except (OSError, pa.ArrowInvalid) as exc:
        raise ChecksumError(f"{path}: corrupted Parquet pages ({exc})") from exc
    finally:  # the pool would keep the decoded batches' pages (~60 MB at 80,000 references) through the load
        pa.default_memory_pool().release_unused()


def duplicated(ids: np.ndarray) -> np.ndarray:
    """The values that occur more than once, sorted."""
    s = np.sort(ids)
    return np.unique(s[1:][s[1:] == s[:-1]])


def check_references(quantum, footprint_table: pa.Table, table: pa.Table) -> None:
    """Unique footprint ids, unique reference ids and finite reference positions."""
    d = quantum.data_id
    fp_dup = duplicated(footprint_table.column("id").to_numpy())
    if fp_dup.size:
        raise InputError(f"{quantum.footprints_file}: {fp_dup.size} duplicate footprint id(s) {_ids(fp_dup)} ({d})")
    ids = table.column("id").to_numpy()
    dup = duplicated(ids)
    if dup.size:
        raise InputError(f"{quantum.ref_file}: {dup.size} duplicate reference id(s) {_ids(dup)} ({d})")
    for name in REQUIRED_FINITE:
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError(f"{quantum.ref_file}: {name} is not finite for reference id(s) {_ids(ids[bad])} ({d})")


def _pixel_of_values(footprints, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tract (x, y) of heavy values ``index`` (values are in span order; spans and values agree in size)."""
    lengths = np.maximum(footprints.span_x1 - footprints.span_x0 + 1, 0)
    starts = np.r_[0, np.cumsum(lengths)]  # one int64 per span, not per pixel
    span = np.searchsorted(starts, index, side="right") - 1
    return footprints.span_x0[span] + (index - starts[span]), footprints.span_y[span]


def _valid_at(coadd, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The validity rule of ``kernels.footprints.valid_pixels`` at tract pixels (x, y); off the coadd: False."""
    b = coadd.bbox
    lx, ly = x - b.min_x, y - b.min_y
    on = (lx >= 0) & (lx < b.width) & (ly >= 0) & (ly < b.height)
    lx, ly = np.where(on, lx, 0), np.where(on, ly, 0)
    no_data = coadd.mask_planes.bitmask("NO_DATA")
    var = coadd.variance[ly, lx]
    with np.errstate(invalid="ignore"):
        return (on & np.isfinite(coadd.image[ly, lx]) & np.isfinite(var) & (var > 0)
                & ((coadd.mask[ly, lx] & no_data) == 0))


def check_pixels(quantum, coadd, footprints, ids: np.ndarray, n_bad_variance: int | None = None) -> int:
    """Heavy values finite where the coadd is valid (else fail); count the pixels whose variance makes them invalid
    (``n_bad_variance``: that count, computed already, e.g. in a thread while the loader read the footprints)."""
    value_offsets, bad = footprints.nonfinite_values()
    if bad.size:
        aligned = np.array_equal(np.r_[0, np.cumsum(np.maximum(footprints.span_x1 - footprints.span_x0 + 1, 0))]
                                 [footprints.span_offsets], value_offsets)
        x, y = _pixel_of_values(footprints, bad) if aligned else (None, None)
        at_valid = _valid_at(coadd, x, y) if aligned else np.ones(bad.size, bool)
        if at_valid.any():
            owner = np.unique(np.searchsorted(value_offsets, bad[at_valid], side="right") - 1)
            raise InputError(f"{quantum.footprints_file}: non-finite heavy footprint values on valid coadd pixels "
                             f"for id(s) {_ids(ids[owner])} ({quantum.data_id})")
    n_bad = bad_variance_pixels(coadd) if n_bad_variance is None else n_bad_variance
    if n_bad:
        log.warning("%s: %d pixel(s) with finite image but non-finite or non-positive variance are invalid; "
                    "measurements that touch them are flagged (%s)", quantum.coadd_file, n_bad, quantum.data_id)
    return n_bad


def bad_variance_pixels(coadd) -> int:
    """Pixels the variance alone makes invalid: finite image, NO_DATA unset, variance not finite or <= 0."""
    no_data = coadd.mask_planes.bitmask("NO_DATA")
    n = 0
    for y0 in range(0, coadd.bbox.height, ROW_BLOCK):
        image, var = coadd.image[y0:y0 + ROW_BLOCK], coadd.variance[y0:y0 + ROW_BLOCK]
        with np.errstate(invalid="ignore"):
            bad = ~(var > 0) | ~np.isfinite(var)
        bad &= np.isfinite(image) & ((coadd.mask[y0:y0 + ROW_BLOCK] & no_data) == 0)
        n += int(np.count_nonzero(bad))
    return n
