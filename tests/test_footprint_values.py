"""MappedArrays: the footprints' spans in a scratch file, mapped; the pages a step read leave the process
when it releases them, and the values stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forcedphot.footprint_values import MappedArrays

SMAPS = Path("/proc/self/smaps")


def _resident_kb(address: int) -> int:
    """Rss of the mapping of this process that holds ``address`` (Linux)."""
    inside = False
    for line in SMAPS.read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "Rss:":
            return int(line.split()[1])
    raise AssertionError("no mapping holds the address")


def test_arrays_come_back_equal_writable_and_with_their_dtypes():
    rng = np.random.default_rng(3)
    given = {"span_y": rng.integers(-5, 4000, 1001).astype(np.int32),
             "span_x0": rng.integers(0, 4000, 1001).astype(np.int32), "bbox": rng.integers(0, 9, (7, 4))}
    mapped = MappedArrays(given)
    for name, a in given.items():
        b = mapped.arrays[name]
        assert type(b) is np.ndarray and b.dtype == a.dtype and b.shape == a.shape and b.flags.writeable
        np.testing.assert_array_equal(b, a)
        assert b.ctypes.data % MappedArrays.ALIGN == 0
    mapped.release()
    for name, a in given.items():  # read back from the file after a release
        np.testing.assert_array_equal(mapped.arrays[name], a)


def test_empty_arrays_stay_in_memory():
    mapped = MappedArrays({"span_y": np.zeros(0, np.int32)})
    assert mapped.arrays["span_y"].size == 0
    mapped.release()


@pytest.mark.skipif(not SMAPS.exists(), reason="needs /proc/self/smaps (Linux) to read a mapping's resident pages")
def test_release_takes_the_read_pages_out_of_the_process():
    a = np.arange(8 << 20, dtype=np.int32)  # 32 MiB
    mapped = MappedArrays({"span_x1": a})
    del a
    span = mapped.arrays["span_x1"]
    assert int(span.sum(dtype=np.int64)) == (8 << 20) * ((8 << 20) - 1) // 2  # every page read
    assert _resident_kb(span.ctypes.data) >= 30 << 10
    mapped.release()
    assert _resident_kb(span.ctypes.data) < 1 << 10
    assert int(span[123456]) == 123456  # the values are still there
