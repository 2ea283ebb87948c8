"""The loaders' output types: Polars (default), pandas, or an astropy ``QTable`` with the units of ``schemas/``.

Magnitudes (``*Mag`` columns, unit ``mag`` in the schema) become AB magnitudes (``u.ABmag``); their errors
and colours stay plain ``mag`` differences. NULLs become masked entries.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

BACKENDS = ("polars", "pandas", "astropy")


def astropy_unit(name: str, unit: str | None):
    """The astropy unit of column ``name`` whose schema unit is ``unit`` (None: dimensionless)."""
    import astropy.units as u

    if not unit:
        return None
    if unit == "mag" and name.endswith("Mag"):
        return u.ABmag
    return u.Unit(unit)


def to_qtable(table: pa.Table, units: dict[str, str | None]):
    """``table`` as a QTable; columns with a unit are Quantities (masked where NULL)."""
    from astropy.table import MaskedColumn, QTable

    out = QTable()
    for name in table.column_names:
        col = table.column(name)
        values = col.to_numpy(zero_copy_only=False)
        if col.null_count:
            mask = col.is_null().to_numpy(zero_copy_only=False)
            filler = False if pa.types.is_boolean(col.type) else ("" if pa.types.is_string(col.type) else 0)
            values = np.ma.masked_array(col.fill_null(filler).to_numpy(zero_copy_only=False), mask=mask)
        unit = astropy_unit(name, units.get(name))
        if unit is None:
            out[name] = MaskedColumn(values) if np.ma.isMaskedArray(values) else values
        else:
            quantity = np.ma.getdata(values).astype(float) << unit
            if np.ma.isMaskedArray(values):
                from astropy.utils.masked import Masked

                quantity = Masked(quantity, mask=np.ma.getmaskarray(values))
            out[name] = quantity
    return out


def convert(df: pl.DataFrame, backend: str, units: dict[str, str | None]):
    """``df`` as the requested backend's table."""
    if backend == "polars":
        return df
    if backend == "pandas":
        return df.to_pandas()
    if backend == "astropy":
        return to_qtable(df.to_arrow(), units)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
