"""Heavy footprint values of a quantum, decoded once and gathered chunk by chunk.

The heavy values are the bulk of a quantum's inputs (4 bytes per footprint pixel; children of a
blend each carry the pixels of their parent's footprint, so a crowded patch holds several times
its own pixel count). They are decoded from Parquet once, batch by batch, into an unnamed
scratch file (unlinked at creation: nothing is left behind, even when the process is killed),
and each measurement chunk gathers the values of the footprints its sources use. The process
then holds one chunk's values at a time; the rest stays in the operating system's file cache.

The footprints' spans (:class:`MappedArrays`) are kept the same way, but mapped whole: every
reader sees plain arrays, and the pages a step touched leave the process when it calls
:meth:`MappedArrays.release` (the task does after the noise replacement and after each chunk).
"""

from __future__ import annotations

import mmap
import tempfile

import numpy as np


class HeavyValueStore:
    """Values of every stored footprint in file order, and each reference's footprint row."""

    def __init__(self, file, row_offsets: np.ndarray, ref_rows: np.ndarray, nonfinite: np.ndarray | None = None):
        self._file = file
        # file-order indices of the non-finite values (found while decoding; checks.check_pixels)
        self.nonfinite = np.zeros(0, np.int64) if nonfinite is None else nonfinite
        self.row_offsets = row_offsets  # (n_footprints + 1,) int64: values of footprint row f
        self.ref_rows = ref_rows  # (N,) int64: footprint row of reference i, -1 when it has none

    @classmethod
    def from_chunks(cls, chunks, ref_rows: np.ndarray) -> "HeavyValueStore":
        """``chunks``: (offsets, values) of consecutive footprint rows (e.g. decoded Parquet batches)."""
        file = tempfile.TemporaryFile(prefix="forcedphot-heavy-")
        parts, bad, total = [np.zeros(1, np.int64)], [np.zeros(0, np.int64)], 0
        for offsets, values in chunks:
            offsets = np.asarray(offsets, np.int64)
            piece = np.ascontiguousarray(values[offsets[0]:offsets[-1]], np.float32)
            file.write(memoryview(piece))
            parts.append(offsets[1:] - offsets[0] + total)
            bad.append(np.flatnonzero(~np.isfinite(piece)) + total)
            total += piece.size
        file.flush()
        return cls(file, np.concatenate(parts), np.ascontiguousarray(ref_rows, np.int64), np.concatenate(bad))

    def nonfinite_by_reference(self) -> tuple[np.ndarray, np.ndarray]:
        """(value offsets in reference order, reference-order indices of the non-finite values)."""
        value_offsets = np.r_[0, np.cumsum(self.lengths())].astype(np.int64)
        f = np.searchsorted(self.row_offsets, self.nonfinite, side="right") - 1
        ref_of_row = np.full(self.row_offsets.size - 1, -1, np.int64)
        has = self.ref_rows >= 0
        ref_of_row[self.ref_rows[has]] = np.flatnonzero(has)
        r = ref_of_row[f]
        keep = r >= 0  # values of footprints no reference uses are never measured
        return value_offsets, value_offsets[r[keep]] + (self.nonfinite - self.row_offsets[f])[keep]

    def lengths(self) -> np.ndarray:
        """(N,) number of stored values of each reference's footprint (0 without one)."""
        r = np.maximum(self.ref_rows, 0)
        return np.where(self.ref_rows >= 0, self.row_offsets[r + 1] - self.row_offsets[r], 0)

    def gather(self, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offsets (len(refs)+1,), values float32) of the footprints of references ``refs``, CSR."""
        from forcedphot.kernels.csr import gather_rows

        rows = self.ref_rows[np.asarray(refs, np.int64)]
        total = int(self.row_offsets[-1])
        if total == 0:
            return np.zeros(rows.size + 1, np.int64), np.zeros(0, np.float32)
        mapped = np.memmap(self._file, dtype=np.float32, mode="r", shape=(total,))
        try:  # a plain view of the mapping for the compiled gather; unmapped right after
            return gather_rows([(self.row_offsets, mapped.view(np.ndarray))], rows, np.float32)
        finally:
            del mapped

    def close(self) -> None:
        self._file.close()


class MappedArrays:
    """Arrays written once to an unnamed scratch file (unlinked at creation) and mapped back: each is
    an ordinary writable ndarray. The pages a reader touches are the process's memory until
    :meth:`release` drops them from its mapping; the data stays in the file (the operating system's
    file cache, written to disk under memory pressure) and the next read maps it back in."""

    ALIGN = 64

    def __init__(self, arrays: dict[str, np.ndarray]):
        arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        layout, total = {}, 0
        for name, a in arrays.items():
            layout[name] = (total, a.dtype, a.shape)
            total += -(-a.nbytes // self.ALIGN) * self.ALIGN
        self._map = None
        if total == 0:  # nothing to map (an empty quantum): the arrays stay as they are
            self.arrays = arrays
            return
        with tempfile.TemporaryFile(prefix="forcedphot-spans-") as file:
            for name, a in arrays.items():
                file.seek(layout[name][0])
                file.write(memoryview(a.reshape(-1)).cast("B"))
            file.truncate(total)
            file.flush()
            self._map = mmap.mmap(file.fileno(), total, access=mmap.ACCESS_WRITE)  # keeps the file open
        self.arrays = {name: np.frombuffer(self._map, dtype, int(np.prod(shape)), offset).reshape(shape)
                       for name, (offset, dtype, shape) in layout.items()}

    def release(self) -> None:
        """Drop the pages read so far from this process (they are read back from the file when needed); where
        the platform has no ``madvise``, they stay mapped (more memory, the same values)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)
