import numpy as np
import pytest

from forcedphot.flags import MaskPlanes


def test_bitmask_and_decode_round_trip():
    planes = MaskPlanes()
    value = planes.bitmask("SAT", "NO_DATA")
    assert value == (1 << 1) | (1 << 8)
    assert planes.decode(value) == ["SAT", "NO_DATA"]
    arr = planes.decode_array(np.array([value, 0]))
    assert arr["SAT"].tolist() == [True, False] and not arr["BAD"].any()


def test_unknown_plane_and_shared_bits_are_errors():
    with pytest.raises(KeyError, match="NOPE"):
        MaskPlanes().bitmask("NOPE")
    with pytest.raises(ValueError, match="share a bit"):
        MaskPlanes({"A": 1, "B": 1})
    assert MaskPlanes.from_json(MaskPlanes().to_json()) == MaskPlanes()
