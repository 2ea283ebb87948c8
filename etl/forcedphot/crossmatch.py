"""Cross-match a user catalog against the repository's objects (astropy ``SkyCoord.match_to_catalog_sky``).

Each catalog row is matched to its nearest repository row; pairs farther apart than ``radius``
are dropped. The result is the catalog's columns, the matched repository row's columns and the
separation, one row per matched catalog row.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from forcedphot.cone import as_degrees
from forcedphot.errors import InputError
from forcedphot.tables import convert

SEPARATION = "separation_arcsec"


def _as_polars(table, what: str) -> pl.DataFrame:
    """A Polars copy of a Polars, pandas or astropy table (Quantity columns become their values)."""
    if isinstance(table, pl.DataFrame):
        return table
    if hasattr(table, "to_pandas") and hasattr(table, "colnames"):  # astropy Table / QTable
        from astropy.table import Table

        plain = Table({n: getattr(table[n], "value", table[n]) for n in table.colnames})
        return pl.from_pandas(plain.to_pandas())
    try:
        import pandas as pd

        if isinstance(table, pd.DataFrame):
            return pl.from_pandas(table)
    except ImportError:
        pass
    raise InputError(f"{what} must be a Polars, pandas or astropy table, not {type(table).__name__}")


def _coords(df: pl.DataFrame, ra: str, dec: str, what: str):
    from astropy.coordinates import SkyCoord

    missing = [c for c in (ra, dec) if c not in df.columns]
    if missing:
        raise InputError(f"{what} has no column(s) {missing} (columns: {', '.join(df.columns[:12])}...)")
    return SkyCoord(df[ra].to_numpy().astype(float), df[dec].to_numpy().astype(float), unit="deg")


def crossmatch(repo_table_or_repo, catalog, *, radius, ra_column: str = "ra", dec_column: str = "dec",
               table: str = "object", suffix: str = "_catalog", backend: str = "polars"):
    """Match every row of ``catalog`` to the nearest row of the repository's ``table`` within ``radius``.

    ``repo_table_or_repo``: a repository (path or Repository; its ``object`` or ``forced_source`` table is
    loaded) or a table already loaded with ``coord_ra``/``coord_dec`` (deg). ``catalog``: an astropy SkyCoord
    or a Polars/pandas/astropy table with ``ra_column``/``dec_column`` (deg). ``radius``: deg or an Angle.
    Catalog columns whose names clash with the repository's get ``suffix``. Adds ``separation_arcsec``.
    """
    from astropy.coordinates import SkyCoord

    radius_deg = as_degrees(radius, "radius")
    if not radius_deg > 0:
        raise InputError(f"radius must be positive, not {radius!r}")
    ours = _load(repo_table_or_repo, table)
    if isinstance(catalog, SkyCoord):
        icrs = catalog.icrs
        theirs = pl.DataFrame({ra_column: np.atleast_1d(icrs.ra.deg), dec_column: np.atleast_1d(icrs.dec.deg)})
    else:
        theirs = _as_polars(catalog, "catalog")
    cat_coords = _coords(theirs, ra_column, dec_column, "catalog")
    units = _units(table, ours)
    if ours.is_empty() or theirs.is_empty():
        return convert(_joined(theirs.head(0), ours.head(0), np.zeros(0, int), np.zeros(0), suffix), backend, units)
    index, sep, _ = cat_coords.match_to_catalog_sky(_coords(ours, "coord_ra", "coord_dec", "repository table"))
    keep = np.flatnonzero(sep.deg <= radius_deg)
    out = _joined(theirs[keep], ours, np.asarray(index)[keep], sep.arcsec[keep], suffix)
    return convert(out, backend, units)


def _joined(theirs: pl.DataFrame, ours: pl.DataFrame, index, sep_arcsec, suffix: str) -> pl.DataFrame:
    clash = set(theirs.columns) & (set(ours.columns) | {SEPARATION})
    theirs = theirs.rename({c: c + suffix for c in clash})
    matched = ours[np.asarray(index, dtype=np.int64)] if len(index) else ours.head(0)
    return pl.concat([theirs, matched, pl.DataFrame({SEPARATION: np.asarray(sep_arcsec, float)})], how="horizontal")


def _load(source, table: str) -> pl.DataFrame:
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") or hasattr(source, "manifest_path"):
        from forcedphot import query

        if table == "object":
            return query.load_object(source)
        if table == "forced_source":
            return query.load_forced_source(source)
        raise InputError(f"table must be 'object' or 'forced_source', not {table!r}")
    return _as_polars(source, "repository table")


def _units(table: str, ours: pl.DataFrame) -> dict[str, str | None]:
    from forcedphot.schema import load_schema

    units = {c.name: c.unit for c in load_schema("forced_source").columns}
    if table == "object" and "objectId" in ours.columns:
        from forcedphot.objects import object_columns, sort_bands

        bands = sort_bands({c.split("_", 1)[0] for c in ours.columns if c.endswith("_psfFlux")})
        units.update({c.name: c.unit for c in object_columns(bands)})
    units[SEPARATION] = "arcsec"
    return units
