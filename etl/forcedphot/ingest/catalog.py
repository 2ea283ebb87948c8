"""The reference catalog: read any common table format, find the columns, place rows on the grid.

Formats are sniffed from the file's first bytes (FITS, Parquet, VOTable, SExtractor
ASCII with its ``#   1 NAME`` header, else CSV) so users need not say. Columns not
named explicitly are looked up among the names common surveys and tools use, exact
spelling first, then case-insensitively. Rows off the image are counted and skipped with
a warning: a catalog covering a larger area is normal; all rows off means a mistake
(wrong columns or origin) and is an error.

Every row keeps a key that joins the outputs back to it: ``externalId`` holds the id column's
integer ids or, without one (or with ``key="row"``), the row's 0-based number in the catalog file.
Ids must be unique. Rows at the same position as another row (within ``DUPLICATE_RADIUS_PX``,
a row and its catalog parent or child aside) are refused, dropped or flagged
(``CatalogSpec.duplicates``): their deblended fluxes would otherwise be an arbitrary split of one
object's flux, often zero for all but one of them.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forcedphot.errors import InputError
from forcedphot.ingest import frames
from forcedphot.ingest.grid import Grid
from forcedphot.ingest.images import oneline, parse_hdu_spec
from forcedphot.ingest.specs import CatalogSpec

log = logging.getLogger(__name__)

CANDIDATES = {
    "ra": ("coord_ra", "ra", "RA", "ALPHA_J2000", "ALPHAWIN_J2000", "RAJ2000", "RA_ICRS", "ra_deg", "ALPHA_SKY"),
    "dec": ("coord_dec", "dec", "DEC", "Dec", "DELTA_J2000", "DELTAWIN_J2000", "DEJ2000", "DE_ICRS", "dec_deg",
            "DELTA_SKY"),
    "x": ("centroid_x", "x", "X", "X_IMAGE", "XWIN_IMAGE", "xcentroid", "x_image", "xpos"),
    "y": ("centroid_y", "y", "Y", "Y_IMAGE", "YWIN_IMAGE", "ycentroid", "y_image", "ypos"),
    "id": ("id", "objectId", "object_id", "NUMBER", "source_id", "objid"),
    "parent": ("parent", "parent_id", "parentObjectId", "parent_object_id"),
    "xx": ("shape_xx", "X2_IMAGE", "xx", "ixx"),
    "yy": ("shape_yy", "Y2_IMAGE", "yy", "iyy"),
    "xy": ("shape_xy", "XY_IMAGE", "xy", "ixy"),
    "a": ("A_IMAGE", "a"),
    "b": ("B_IMAGE", "b"),
    "theta": ("THETA_IMAGE", "theta"),
    "kron": ("KRON_RADIUS", "kron_radius", "kronrad"),
}
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")
# Rows closer than this (tract pixels) are one position: two PSF models 0.1 px apart correlate to better than
# 0.996 for a FWHM of 2 px (exp(-d^2 / 4 sigma^2)), so no fit can split their flux; a close pair of real objects
# at 0.5 FWHM (>= 1 px on any sampled image) correlates to 0.71 and is deblended as usual.
DUPLICATE_RADIUS_PX = 0.1
NAMED = 10  # rows or ids named in one error or warning line


@dataclass
class RefObjects:
    """Catalog rows on the image, in catalog order, positions in tract (= image) pixels."""

    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    shape: np.ndarray | None  # (N, 2, 2) second moments, NaN rows where unknown
    kron: np.ndarray | None  # Kron radius sqrt(ab) in pixels, NaN where unknown
    external_id: np.ndarray  # int64 key of each row: its id, or its 0-based row in the file (see ``keys``)
    parent: np.ndarray  # row index of the parent among these rows, -1 for none
    label: str  # the catalog file
    positions: dict | None = None  # how positions were read (columns, frame), for the repository's metadata
    duplicate: np.ndarray | None = None  # True for rows kept at another row's position (duplicates="flag")
    keys: dict | None = None  # what external_id holds and what was done with duplicates, for the metadata
    # reference model ellipses from the catalog: {"exp": (N, 3), "dev": (N, 3)} (Qxx, Qyy, Qxy) in pixels^2, NaN
    # rows where unknown; None: fitted at ingest (forcedphot.refmodels)
    model_ellipses: dict | None = None

    def __len__(self) -> int:
        return self.x.size

    @property
    def n_child(self) -> np.ndarray:
        has = self.parent >= 0
        return np.bincount(self.parent[has], minlength=len(self)).astype(np.int32)

    def root(self) -> np.ndarray:
        """Top-level ancestor of every row (itself for top-level rows)."""
        root = np.arange(len(self))
        for _ in range(64):
            up = np.where(self.parent[root] >= 0, self.parent[root], root)
            if np.array_equal(up, root):
                return root
            root = up
        raise InputError(f"{self.label}: parent links form a cycle")


# -- reading --------------------------------------------------------------------------
def sniff_format(path: Path) -> str:
    name = path.name.lower()
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"SIMPLE") or name.endswith(FITS_SUFFIXES):
        return "fits"
    if head[:4] == b"PAR1" or name.endswith((".parquet", ".pq")):
        return "parquet"
    if b"<VOTABLE" in head.upper() or name.endswith((".vot", ".votable", ".xml")):
        return "votable"
    if re.match(rb"\s*#\s+1\s+\S+", head):
        return "sextractor"
    return "csv"


def _from_arrow(table) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.types as pat

    out = {}
    for name in table.column_names:
        col = table.column(name)
        if col.null_count and (pat.is_integer(col.type) or pat.is_floating(col.type)):
            col = col.cast(pa.float64())  # nulls -> NaN
        out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _from_astropy(table) -> dict[str, np.ndarray]:
    out = {}
    for name in table.colnames:
        col = table[name]
        if getattr(col, "mask", None) is not None and np.any(col.mask):
            data = np.ma.asarray(col)
            data = data.astype(float).filled(np.nan) if data.dtype.kind in "iuf" else data.astype(object).filled(None)
        else:
            data = np.asarray(col)
        out[name] = data
    return out


def read_table(spec: CatalogSpec) -> tuple[dict[str, np.ndarray], str, str]:
    """(columns, format, label) of a catalog file."""
    s = parse_hdu_spec(spec.path)
    label = s.label
    if not s.path.exists():
        raise InputError(f"{s.path}: catalog file not found")
    fmt = spec.format or sniff_format(s.path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return _from_arrow(pq.read_table(s.path)), fmt, label
        if fmt == "csv":
            import pyarrow.csv as pacsv

            return _from_arrow(pacsv.read_csv(s.path)), fmt, label
        from astropy.table import Table
        from astropy.utils.exceptions import AstropyWarning

        kwargs = {"hdu": s.hdu} if fmt == "fits" and s.hdu is not None else {}
        astropy_fmt = {"sextractor": "ascii.sextractor"}.get(fmt, fmt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            table = Table.read(s.path, format=astropy_fmt, **kwargs)
        return _from_astropy(table), fmt, label
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - readers raise many types; all mean "unreadable"
        raise InputError(f"{label}: cannot read catalog as {fmt} ({oneline(exc)})") from exc


def find_column(columns: dict, key: str, explicit: str | None, label: str) -> str | None:
    """The column for ``key``: the explicit name (must exist) or the first common name present."""
    names = list(columns)
    if explicit is not None:
        if explicit in columns:
            return explicit
        lower = {n.lower(): n for n in names}
        if explicit.lower() in lower:
            return lower[explicit.lower()]
        shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
        raise InputError(f"{label}: no column {explicit!r} for {key} (columns: {shown})")
    for cand in CANDIDATES[key]:
        if cand in columns and np.asarray(columns[cand]).ndim == 1:
            return cand
    lower = {n.lower(): n for n in names if np.asarray(columns[n]).ndim == 1}
    return next((lower[c.lower()] for c in CANDIDATES[key] if c.lower() in lower), None)


def _float(columns, name, label) -> np.ndarray:
    try:
        return np.asarray(columns[name], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{label}: column {name!r} is not numeric") from exc


# -- ids, keys and parents ----------------------------------------------------------------
def _integer_ids(values: np.ndarray) -> np.ndarray | None:
    """The ids as int64, or None when some are missing or not integers."""
    v = np.asarray(values)
    if v.dtype.kind in "iu":
        return v.astype(np.int64) if v.dtype.kind == "i" or not v.size or v.max() < 2 ** 63 else None
    if v.dtype.kind == "f" and np.all(np.isfinite(v)) and np.all(v == np.round(v)) and np.all(np.abs(v) < 2 ** 53):
        return v.astype(np.int64)
    return None


def _null_ids(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind == "f":
        return ~np.isfinite(v)
    if v.dtype.kind == "O":
        return np.array([x is None or (isinstance(x, float) and not np.isfinite(x)) for x in v], bool)
    return np.zeros(v.shape, bool)


def _listed(items: list[str], total: int) -> str:
    more = total - len(items)
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def check_unique_ids(values: np.ndarray, column: str, label: str, *, why: str) -> None:
    """Refuse repeated ids (nulls aside), naming the first ``NAMED`` of them with their 0-based rows."""
    v = np.asarray(values)
    rows = np.flatnonzero(~_null_ids(v))
    v = v[rows]
    if v.dtype.kind == "O":
        v = v.astype(str)
    elif v.dtype.kind == "f" and np.all(v == np.round(v)) and np.all(np.abs(v) < 2 ** 63):
        v = v.astype(np.int64)  # named as the integers they are
    order = np.argsort(v, kind="stable")  # equal ids stay in row order
    sv, sr = v[order], rows[order]
    starts = np.r_[0, np.flatnonzero(sv[1:] != sv[:-1]) + 1]
    counts = np.diff(np.r_[starts, sv.size])
    starts, counts = starts[counts > 1], counts[counts > 1]
    if not starts.size:
        return
    first = np.argsort(sr[starts], kind="stable")[:NAMED]  # the repeats met first in the file
    named = [f"{sv[starts[i]]} (rows {', '.join(str(r) for r in sr[starts[i]:starts[i] + counts[i]][:NAMED])})"
             for i in first]
    raise InputError(f"{label}: column {column!r} repeats ids: {_listed(named, starts.size)}; ids must be unique "
                     f"({why})")


def external_keys(ids: np.ndarray | None, column: str | None, key: str, n: int, label: str) -> tuple[np.ndarray, dict]:
    """(int64 key of every row, what it is): the id column's integers or the 0-based row numbers."""
    rows = np.arange(n, dtype=np.int64)
    if key == "row":
        return rows, {"externalId": "row"}
    ints = None if ids is None else _integer_ids(ids)
    if ints is not None:
        return ints, {"externalId": "id", "id_column": column}
    if key == "id":
        if column is None:
            raise InputError(f"{label}: --key id needs an id column (looked for {', '.join(CANDIDATES['id'])}); name "
                             "it with --id-col, or key rows by their row number with --key row")
        raise InputError(f"{label}: column {column!r} does not hold an integer id on every row (externalId is a "
                         "64-bit integer); key rows by their row number with --key row")
    if column is not None:
        log.warning("%s: column %s does not hold an integer id on every row; externalId holds each row's 0-based row "
                    "number in the catalog instead", label, column)
    else:
        log.info("%s: no id column; externalId holds each row's 0-based row number in the catalog", label)
    return rows, {"externalId": "row"}


def _no_parent(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind == "f":
        return ~np.isfinite(v) | (v == 0) | (v == -1)
    if v.dtype.kind in "iu":
        return (v == 0) | (v == -1)
    s = np.char.strip(v.astype(str))
    return np.isin(s, ["", "0", "-1", "None", "nan", "NaN"])


def _parent_rows(ids: np.ndarray, parents: np.ndarray, label: str) -> np.ndarray:
    """Row index of each row's parent (by id), -1 for none."""
    ids = np.asarray(ids)
    parents = np.asarray(parents)
    if ids.dtype.kind != parents.dtype.kind and {ids.dtype.kind, parents.dtype.kind} <= set("iuf"):
        ids, parents = ids.astype(np.float64), parents.astype(np.float64)
    elif ids.dtype.kind != parents.dtype.kind:
        ids, parents = ids.astype(str), parents.astype(str)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):  # distinct ids equal as float64
        raise InputError(f"{label}: ids are not unique once compared with the parent column's type; parent links "
                         "need unique ids")
    none = _no_parent(parents)
    pos = np.clip(np.searchsorted(sorted_ids, parents), 0, max(ids.size - 1, 0))
    found = (sorted_ids[pos] == parents) & ~none if ids.size else np.zeros(parents.shape, bool)
    unknown = ~none & ~found
    if unknown.any():
        log.warning("%s: %d rows name a parent id that is not in the catalog; treated as isolated",
                    label, int(unknown.sum()))
    rows = np.where(found, order[pos], -1)
    if np.any(rows == np.arange(rows.size)):
        raise InputError(f"{label}: some rows are their own parent")
    return rows


# -- shapes ------------------------------------------------------------------------------
def _shape(columns, spec: CatalogSpec, label: str) -> np.ndarray | None:
    names = {k: find_column(columns, k, getattr(spec, k), label) for k in ("xx", "yy", "xy", "a", "b", "theta")}
    explicit_ab = any(getattr(spec, k) for k in ("a", "b", "theta"))
    if all(names[k] for k in ("xx", "yy", "xy")) and not explicit_ab:
        xx, yy, xy = (_float(columns, names[k], label) for k in ("xx", "yy", "xy"))
    elif all(names[k] for k in ("a", "b", "theta")):
        a, b, t = (_float(columns, names[k], label) for k in ("a", "b", "theta"))
        if spec.theta_unit == "deg":
            t = np.deg2rad(t)
        c, s = np.cos(t), np.sin(t)
        xx = a * a * c * c + b * b * s * s
        yy = a * a * s * s + b * b * c * c
        xy = (a * a - b * b) * c * s
    else:
        partial = [k for k, v in names.items() if v and getattr(spec, k)]
        if partial:
            raise InputError(f"{label}: shape needs all of xx, yy, xy or all of a, b, theta (got {partial})")
        return None
    m = np.stack([np.stack([xx, xy], -1), np.stack([xy, yy], -1)], -2)
    det = xx * yy - xy * xy
    bad = ~(np.isfinite(det) & (det > 0) & (xx > 0) & (yy > 0))
    m[bad] = np.nan
    return m


# -- duplicate positions -------------------------------------------------------------------
def _related(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True where row a is an ancestor of row b or b of a (``parent``: row of each row's parent, -1 for none)."""
    out = np.zeros(a.size, bool)
    for lo, hi in ((a, b), (b, a)):
        up = parent[hi]
        for _ in range(64):
            out |= up == lo
            if not (up >= 0).any():
                break
            up = np.where(up >= 0, parent[np.maximum(up, 0)], -1)
    return out


def coincident_groups(x: np.ndarray, y: np.ndarray, rows: np.ndarray, parent: np.ndarray,
                      radius: float = DUPLICATE_RADIUS_PX) -> list[np.ndarray]:
    """Groups of ``rows`` within ``radius`` pixels of each other (linked pairs, a row and its ancestors aside),
    each sorted, in the order of their first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if rows.size < 2:
        return []
    pairs = cKDTree(np.stack([x[rows], y[rows]], 1)).query_pairs(radius, output_type="ndarray")
    pairs = pairs[~_related(parent, rows[pairs[:, 0]], rows[pairs[:, 1]])] if pairs.size else pairs
    if not pairs.size:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(rows.size, rows.size))
    _, component = connected_components(graph, directed=False)
    members = np.unique(pairs)
    groups = [rows[members[component[members] == c]] for c in np.unique(component[members])]
    return sorted((np.sort(g) for g in groups), key=lambda g: g[0])


def _describe(groups: list[np.ndarray], keys: np.ndarray | None) -> str:
    """``rows 3 and 9 (ids 17 and 23), ...`` for the first ``NAMED`` groups."""
    out = []
    for g in groups[:NAMED]:
        text = "rows " + " and ".join(str(r) for r in g)
        if keys is not None:
            text += " (ids " + " and ".join(str(k) for k in keys[g]) + ")"
        out.append(text)
    return _listed(out, len(groups))


def handle_duplicates(x: np.ndarray, y: np.ndarray, on: np.ndarray, parent: np.ndarray, keys: np.ndarray | None,
                      mode: str, label: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows to keep, rows flagged as duplicates, metadata) for rows at one position, by ``mode``:
    refuse (an error naming them), drop (all but the first of each group, in catalog order) or flag."""
    groups = coincident_groups(x, y, np.flatnonzero(on), parent)
    record = {"mode": mode, "radius_px": DUPLICATE_RADIUS_PX, "groups": len(groups)}
    flagged = np.zeros(x.size, bool)
    if not groups:
        return on, flagged, record
    n_rows = sum(g.size for g in groups)
    where = (f"{len(groups)} group{'s' if len(groups) > 1 else ''} of rows at one position (within "
             f"{DUPLICATE_RADIUS_PX} px): {_describe(groups, keys)}")
    if mode == "refuse":
        raise InputError(f"{label}: {where}; their deblended fluxes would split one object's flux arbitrarily: remove "
                         "the repeats, or pass --duplicates drop (keep the first of each) or --duplicates flag (keep "
                         "all, flagged)")
    if mode == "drop":
        dropped = np.concatenate([g[1:] for g in groups])
        on = on.copy()
        on[dropped] = False
        record["rows"] = dropped.tolist()
        log.warning("%s: %s; kept the first of each, dropped %d rows (no output for them)", label, where, dropped.size)
    else:
        flagged[np.concatenate(groups)] = True
        record["rows"] = np.flatnonzero(flagged).tolist()
        log.warning("%s: %s; all %d kept with detect_isDuplicate and their deblended measurements flagged", label,
                    where, n_rows)
    return on, flagged, record


# -- positions ---------------------------------------------------------------------------
def load_catalog(spec: CatalogSpec, grid: Grid) -> RefObjects:
    """The catalog's rows on the grid, with positions in both frames, shapes, ids and parents."""
    columns, fmt, label = read_table(spec)
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        raise InputError(f"{label}: catalog has no rows")
    ra_c, dec_c = (find_column(columns, k, getattr(spec, k), label) for k in ("ra", "dec"))
    x_c, y_c = (find_column(columns, k, getattr(spec, k), label) for k in ("x", "y"))
    sky = frames.sky_columns(columns, (ra_c, dec_c), explicit=spec.ra is not None and spec.dec is not None,
                             frame=spec.frame, label=label)
    has_sky, has_pix = sky is not None, bool(x_c and y_c)
    mode = spec.positions
    if mode == "auto":
        mode = "sky" if has_sky and grid.has_sky else "pixel" if has_pix else "sky" if has_sky else None
    if mode is None:
        raise InputError(f"{label}: no position columns (looked for ra/dec like {', '.join(CANDIDATES['ra'][:4])}, "
                         f"l/b, GLON/GLAT, ELON/ELAT and x/y like {', '.join(CANDIDATES['x'][:4])}); name them "
                         "with --ra-col/--dec-col (and --frame) or --x-col/--y-col")
    if mode == "sky":
        if not has_sky:
            raise InputError(f"{label}: no RA/Dec columns for sky positions; name them with --ra-col/--dec-col")
        if not grid.has_sky:
            raise InputError(f"{label}: the images have no celestial WCS, so RA/Dec cannot be placed on them; "
                             "use catalog x/y (--positions pixel)")
        frame = frames.make_frame(sky.frame, spec.equinox, where=label)
        lon, lat = _float(columns, sky.lon, label), _float(columns, sky.lat, label)
        x, y, ra, dec = frames.to_image(lon, lat, frame, grid)
        target = frames.image_frame(grid).name
        positions = {"mode": "sky", "columns": [sky.lon, sky.lat], "frame": sky.frame, "frame_from": sky.how,
                     "equinox": None if spec.equinox is None else str(spec.equinox), "image_frame": target}
        log.info("%s: positions from %s/%s (%s, frame from %s) through the WCS (%s)", label, sky.lon, sky.lat,
                 sky.frame, sky.how, target)
    else:
        if not has_pix:
            raise InputError(f"{label}: no x/y columns for pixel positions; name them with --x-col/--y-col")
        origin = spec.xy_origin
        if origin is None:
            origin = 1 if fmt == "sextractor" or x_c.upper().endswith("_IMAGE") else 0
            if origin:
                log.info("%s: %s/%s taken as 1-based (SExtractor); override with --xy-origin", label, x_c, y_c)
        x = _float(columns, x_c, label) - origin
        y = _float(columns, y_c, label) - origin
        with np.errstate(invalid="ignore"):
            ra, dec = grid.wcs.all_pix2world(x, y, 0)
        positions = {"mode": "pixel", "columns": [x_c, y_c], "xy_origin": origin}
    x, y = np.asarray(x, float), np.asarray(y, float)
    on = grid.contains(x, y)
    if not on.any():
        if mode == "sky":
            raise InputError(frames.miss_message(sky, frame, lon, lat, grid, n, label))
        raise InputError(f"{label}: none of the {n} catalog rows falls on the image "
                         f"({grid.width}x{grid.height} px); check the position columns and --xy-origin")
    if not on.all():
        log.warning("%s: %d of %d catalog rows are off the image or have no position; skipped",
                    label, int((~on).sum()), n)
    id_c = find_column(columns, "id", spec.id, label)
    parent_c = find_column(columns, "parent", spec.parent, label)
    if id_c is not None and (spec.key != "row" or parent_c is not None):
        uses = [use for use, on_ in (("the outputs' key (externalId)", spec.key != "row"),
                                     ("the parent links", parent_c is not None)) if on_]
        check_unique_ids(columns[id_c], id_c, label, why=f"{' and '.join(uses)}: fix the catalog, or name another id "
                         "column with --id-col" + ("" if parent_c is not None else
                                                   ", or key rows by their row number with --key row"))
    parent = np.full(n, -1)
    if parent_c is not None:
        if id_c is None:
            raise InputError(f"{label}: a parent column ({parent_c}) needs an id column (--id-col)")
        parent = _parent_rows(columns[id_c], columns[parent_c], label)
    ext, keys = external_keys(columns[id_c] if id_c else None, id_c, spec.key, n, label)
    on, duplicate, keys["duplicates"] = handle_duplicates(x, y, on, parent, ext if keys["externalId"] == "id" else None,
                                                          spec.duplicates, label)
    # keep rows on the image; re-index parents, dropping links to parents that were skipped
    keep = np.flatnonzero(on)
    new_index = np.full(n, -1)
    new_index[keep] = np.arange(keep.size)
    parent = np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)[keep]
    used = set(positions["columns"])  # l/b positions are not a shape's b
    shape = _shape({k: v for k, v in columns.items() if k not in used}, spec, label)
    kron = _kron(columns, spec, fmt, shape, label)
    models = _model_ellipses(columns, spec, grid, x[keep], y[keep], label, keep)
    return RefObjects(
        x=x[keep], y=y[keep], ra=np.asarray(ra, float)[keep], dec=np.asarray(dec, float)[keep],
        shape=shape[keep] if shape is not None else None, kron=kron[keep] if kron is not None else None,
        external_id=ext[keep], parent=parent, label=label, positions=positions, duplicate=duplicate[keep],
        keys=keys, model_ellipses=models)


def _model_ellipses(columns, spec: CatalogSpec, grid: Grid, x: np.ndarray, y: np.ndarray, label: str,
                    keep: np.ndarray) -> dict | None:
    """The catalog's exp/dev half-light ellipses (--cmodel-exp-cols, --cmodel-dev-cols) in pixels of the rows
    ``keep`` (on the image, at ``x``, ``y``), or None."""
    from forcedphot.refmodels import sky_ellipses_to_pixels

    if spec.cmodel_exp is None and spec.cmodel_dev is None:
        return None
    if not grid.has_sky:
        raise InputError(f"{label}: catalog model ellipses (--cmodel-exp-cols/--cmodel-dev-cols) are in arcsec and "
                         "degrees on the sky, but the images have no celestial WCS")
    out = {}
    for stage, names in (("exp", spec.cmodel_exp), ("dev", spec.cmodel_dev)):
        if names is None:
            out[stage] = np.full((x.size, 3), np.nan)
            continue
        cols = [c.strip() for c in names.split(",")]
        missing = [c for c in cols if c not in columns]
        if missing:
            raise InputError(f"{label}: no column(s) {missing} for the {stage} model ellipse (--cmodel-{stage}-cols)")
        a, b, theta = (_float(columns, c, label)[keep] for c in cols)  # the rows on the image, as x and y
        out[stage] = sky_ellipses_to_pixels(grid.wcs, x, y, a, b, theta)
    log.info("%s: reference model ellipses (exp, dev) from the catalog's columns", label)
    return out


SEXTRACTOR_KRON_FACTOR = 2.5  # PHOT_AUTOPARAMS k, folded into KRON_RADIUS


def _kron(columns, spec: CatalogSpec, fmt: str, shape: np.ndarray | None, label: str) -> np.ndarray | None:
    """Kron radius sqrt(ab) in pixels, before the 2.5 aperture factor (the ref convention).

    SExtractor's KRON_RADIUS is in units of the shape's A and B and already includes its
    PHOT_AUTOPARAMS factor (2.5): its FLUX_AUTO ellipse is KRON_RADIUS x (A, B), so it is divided by 2.5.
    """
    name = find_column(columns, "kron", spec.kron, label)
    if name is None:
        return None
    value = _float(columns, name, label)
    unit = spec.kron_unit or ("shape" if fmt == "sextractor" or name.upper() == "KRON_RADIUS" else "pix")
    if unit == "pix":
        return value
    if shape is None:
        log.warning("%s: Kron radius %s is in units of the shape, but the catalog has no shape; ignored",
                    label, name)
        return None
    with np.errstate(invalid="ignore"):
        sqrt_ab = (shape[:, 0, 0] * shape[:, 1, 1] - shape[:, 0, 1] ** 2) ** 0.25
    return value * sqrt_ab / SEXTRACTOR_KRON_FACTOR
