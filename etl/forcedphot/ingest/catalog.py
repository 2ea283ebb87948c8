"""The reference catalog: read any common table format, find the columns, place rows on the grid.

Formats are sniffed from the file's first bytes (FITS, Parquet, VOTable, SExtractor
ASCII with its ``#   1 NAME`` header, else CSV) so users need not say. Columns not
named explicitly are looked up among the names common surveys and tools use, exact
spelling first, then case-insensitively. Rows off the image are counted and skipped with
a warning: a catalog covering a larger area is normal; all rows off means a mistake
(wrong columns or origin) and is an error.
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


@dataclass
class RefObjects:
    """Catalog rows on the image, in catalog order, positions in tract (= image) pixels."""

    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    shape: np.ndarray | None  # (N, 2, 2) second moments, NaN rows where unknown
    kron: np.ndarray | None  # Kron radius sqrt(ab) in pixels, NaN where unknown
    external_id: np.ndarray | None  # int64 user ids (None when absent or not integers)
    parent: np.ndarray  # row index of the parent among these rows, -1 for none
    label: str  # the catalog file
    positions: dict | None = None  # how positions were read (columns, frame), for the repository's metadata

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


# -- ids and parents ---------------------------------------------------------------------
def _external_ids(values: np.ndarray | None, label: str) -> np.ndarray | None:
    if values is None:
        return None
    v = np.asarray(values)
    if v.dtype.kind in "iu":
        return v.astype(np.int64)
    if v.dtype.kind == "f" and np.all(np.isfinite(v)) and np.all(v == np.round(v)) and np.all(np.abs(v) < 2 ** 53):
        return v.astype(np.int64)
    log.warning("%s: catalog ids are not integers; externalId is left null", label)
    return None


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
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise InputError(f"{label}: ids are not unique; parent links need unique ids")
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
    parent = np.full(n, -1)
    if parent_c is not None:
        if id_c is None:
            raise InputError(f"{label}: a parent column ({parent_c}) needs an id column (--id-col)")
        parent = _parent_rows(columns[id_c], columns[parent_c], label)
    # keep rows on the image; re-index parents, dropping links to parents that were skipped
    keep = np.flatnonzero(on)
    new_index = np.full(n, -1)
    new_index[keep] = np.arange(keep.size)
    parent = np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)[keep]
    used = set(positions["columns"])  # l/b positions are not a shape's b
    shape = _shape({k: v for k, v in columns.items() if k not in used}, spec, label)
    kron = _kron(columns, spec, fmt, shape, label)
    ext = _external_ids(columns[id_c], label) if id_c else None
    return RefObjects(
        x=x[keep], y=y[keep], ra=np.asarray(ra, float)[keep], dec=np.asarray(dec, float)[keep],
        shape=shape[keep] if shape is not None else None, kron=kron[keep] if kron is not None else None,
        external_id=ext[keep] if ext is not None else None, parent=parent, label=label,
        positions=positions)


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
