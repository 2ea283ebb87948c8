"""Comparing output tables in tests."""

import numpy as np


def assert_same_values(got, want, where: str = "") -> None:
    """Same schema and the same value in every column; NaN equals NaN (failed measurements are NaN)."""
    assert got.schema.equals(want.schema), where
    for name in want.column_names:
        np.testing.assert_array_equal(got.column(name).to_numpy(zero_copy_only=False),
                                      want.column(name).to_numpy(zero_copy_only=False), err_msg=f"{where}: {name}")
