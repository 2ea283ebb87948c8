"""Print a query for `forcedphot sql --file` that compares measurements with a catalog's own values.

    python datasets/real/reference_sql.py CATALOG QUERY.sql --columns NUMBER,FLUX_APER --as sex > q.sql
    forcedphot sql --repo REPO --file q.sql

`forcedphot sql` opens no file but the repository's, so the catalog columns travel inside the query:
the output is `WITH <as>(<columns>) AS (VALUES ...)` followed by QUERY.sql, which joins `<as>` to
`forced_source` by `externalId`: the catalog's integer id column, or for catalogs ingested without one
the row's 0-based number in the file (`--row NAME` adds it as column NAME), or by position with
`--sky LON,LAT` (adds ICRS `ra`, `dec` columns, deg, converted with astropy from `--frame`). The catalog
is any table astropy reads (SExtractor ASCII, VOTable, CSV, FITS).
"""

import argparse
import math
import sys

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

FORMATS = {".cat": "ascii.sextractor", ".csv": "ascii.csv", ".xml": "votable", ".vot": "votable"}


def sql_literal(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.17e}" if math.isfinite(value) else "NULL"  # a DOUBLE literal, not DECIMAL
    return "'" + str(value).replace("'", "''") + "'"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("catalog")
    p.add_argument("query", help="SQL file whose SELECT uses the catalog as the table named by --as")
    p.add_argument("--columns", required=True, help="comma-separated catalog columns to carry")
    p.add_argument("--row", metavar="NAME", help="also carry each row's 0-based number in the file as column NAME "
                                                 "(externalId of a catalog ingested without an id column)")
    p.add_argument("--as", dest="name", default="cat", help="name of the catalog table in the query")
    p.add_argument("--sky", help="LON,LAT columns (deg) to convert to ICRS ra, dec")
    p.add_argument("--frame", default="icrs", help="astropy frame of --sky (default icrs)")
    args = p.parse_args(argv)
    suffix = "." + args.catalog.rsplit(".", 1)[-1].lower()
    table = Table.read(args.catalog, format=FORMATS.get(suffix))
    names = args.columns.split(",")
    missing = [n for n in names + (args.sky.split(",") if args.sky else []) if n not in table.colnames]
    if missing:
        sys.exit(f"{args.catalog}: no column(s) {missing}; it has {table.colnames}")
    cols = [np.asarray(table[n]) for n in names]
    if args.row:
        names, cols = [args.row] + names, [np.arange(len(table))] + cols
    if args.sky:
        lon, lat = args.sky.split(",")
        icrs = SkyCoord(np.asarray(table[lon], float) * u.deg, np.asarray(table[lat], float) * u.deg,
                        frame=args.frame).icrs
        names, cols = names + ["ra", "dec"], cols + [icrs.ra.deg, icrs.dec.deg]
    rows = ",\n  ".join("(" + ", ".join(sql_literal(c[i].item()) for c in cols) + ")" for i in range(len(table)))
    with open(args.query) as f:
        query = f.read()
    print(f"-- {len(table)} rows of {args.catalog}\nWITH {args.name}({', '.join(names)}) AS (VALUES\n  {rows})\n{query}")


if __name__ == "__main__":
    main()
