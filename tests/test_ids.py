import numpy as np
import pytest

from forcedphot.ids import IdPacker


def test_pack_unpack_round_trip_and_bit_budget():
    packer = IdPacker(n_tracts=18938, n_patches=100)  # Rubin lsst_cells_v1
    assert packer.data_bits == 21 and packer.counter_bits == 36
    ids = packer.make_ids(5063, 42, np.array([1, 2, 12345]))
    out = packer.unpack(ids)
    assert (out["tract"] == 5063).all() and (out["patch"] == 42).all()
    assert out["counter"].tolist() == [1, 2, 12345]
    assert (ids > 0).all() and ids.dtype == np.int64


def test_counter_overflow_and_bad_data_id():
    packer = IdPacker(2, 4)
    with pytest.raises(OverflowError):
        packer.make_ids(0, 0, np.array([1 << packer.counter_bits]))
    with pytest.raises(ValueError, match="tract=2"):
        packer.catalog_id(2, 0)
