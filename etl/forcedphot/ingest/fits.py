"""``forcedphot ingest fits``: per-band FITS coadds plus a reference catalog -> a new repository.

The repository is exactly what ``forcedphot run`` reads from a simulated survey: one
tract whose pixel frame is the images' 0-based pixel frame (its WCS is the images' WCS,
stored in the skymap), square patches with overlapping outer boxes, and per patch a
reference catalog, per patch and band a coadd cut from the images and one footprint per
reference object. Everything is read and checked before anything is written, and the
repository is assembled in a sibling folder and moved into place at the end, so a
failed ingest never leaves a half-written (or half-overwritten) repository.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from forcedphot.errors import InputError
from forcedphot.flags import MaskPlanes
from forcedphot.ids import IdPacker
from forcedphot.ingest.catalog import RefObjects, load_catalog
from forcedphot.ingest.footprints import ellipse_spans, footprint_ellipses, footprint_table
from forcedphot.ingest.grid import Grid, make_grid
from forcedphot.ingest.images import celestial_wcs, read_image
from forcedphot.ingest.planes import BandData, load_band
from forcedphot.ingest.specs import BandSpec, CatalogSpec
from forcedphot.io.coadd import Coadd, write_coadd
from forcedphot.io.parquet import write_parquet
from forcedphot.psf import PsfGrid
from forcedphot.repository import DataId, Repository
from forcedphot.schema import load_schema
from forcedphot.skymap import Box, PatchInfo, SkyMap, TractInfo

log = logging.getLogger(__name__)

TRACT = 0
DEFAULT_BORDER = 100  # Rubin's patch border, capped at a quarter of the patch for small patches

__all__ = ["BandSpec", "CatalogSpec", "ingest_fits"]


def ingest_fits(repo_root, bands: list[BandSpec], catalog: CatalogSpec, *, patch_size: int | None = None,
                patch_border: int | None = None, pixel_scale: float | None = None, ref_band: str | None = None,
                overwrite: bool = False) -> Repository:
    """Write a new repository at ``repo_root`` from per-band FITS images and a catalog.

    ``patch_size`` (pixels, default: one patch covering the image) and ``patch_border``
    (default: 0 for one patch, else min(100, patch_size // 4)) define the patches;
    ``pixel_scale`` (arcsec) is needed only when the images have no celestial WCS;
    ``ref_band`` (default: the first band) is recorded as every object's refBand.
    """
    bands = list(bands)
    if not bands:
        raise InputError("no bands to ingest; give at least one --band NAME --image FILE")
    names = [b.name for b in bands]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"band(s) {dup} given more than once")
    ref_band = ref_band or names[0]
    if ref_band not in names:
        raise InputError(f"reference band {ref_band!r} is not among the bands {names}")
    root = Path(repo_root)
    _check_target(root, overwrite)
    target = root.resolve()

    images = [read_image(b.image, what=f"band {b.name} image") for b in bands]
    grid = make_grid([(label, data.shape, celestial_wcs(header, label)) for data, header, label in images],
                     pixel_scale=pixel_scale)
    data = [load_band(spec, img, label, grid) for spec, (img, _, label) in zip(bands, images)]
    del images
    objects = load_catalog(catalog, grid)
    tract = _make_tract(grid, patch_size, patch_border)
    skymap = SkyMap(f"fits-{Path(str(data[0].label)).stem}"[:64], (tract,))

    tmp = target.parent / f".{target.name}.ingest-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        repo = Repository(tmp).create(description=f"ingested from FITS: bands {names}, catalog {objects.label}")
        repo.write_skymap(skymap)
        packer = IdPacker(skymap.n_tracts, skymap.n_patches)
        fwhm = max(b.psf_fwhm for b in data)
        for p in tract.patches():
            _write_patch(repo, tract, p, packer, grid, data, objects, ref_band, fwhm)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("ingested %d objects in %d band(s) into %s (%d patches)", len(objects), len(data), root,
             tract.n_patches)
    return Repository(root)


# -- target folder ----------------------------------------------------------------------
def _check_target(root: Path, overwrite: bool) -> None:
    repo = Repository(root)
    if repo.exists():
        if not overwrite:
            raise InputError(f"{root}: repository exists; pass --overwrite to replace it")
        return
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(f"{root}: exists and is not an empty folder or a forcedphot repository; "
                         "choose a new --repo")


def _move_into_place(tmp: Path, root: Path) -> None:
    """Replace ``root`` by ``tmp`` (the old repository is removed only after the swap)."""
    old = None
    if root.exists():
        if Repository(root).exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            root.rename(old)
        else:
            root.rmdir()  # empty folder (checked before)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- geometry -----------------------------------------------------------------------------
def _make_tract(grid: Grid, patch_size: int | None, patch_border: int | None) -> TractInfo:
    h, w = grid.shape
    if patch_size is None:
        size, nx, ny = max(w, h), 1, 1
    else:
        size = int(patch_size)
        if size < 16:
            raise InputError(f"patch size {patch_size} is too small (at least 16 px)")
        nx, ny = -(-w // size), -(-h // size)
    if patch_border is None:
        border = 0 if nx * ny == 1 else min(DEFAULT_BORDER, size // 4)
    else:
        border = int(patch_border)
        if border < 0:
            raise InputError(f"patch border must be >= 0, not {patch_border}")
    ra, dec = grid.wcs.all_pix2world((w - 1) / 2, (h - 1) / 2, 0)
    return TractInfo(TRACT, float(ra), float(dec), grid.pixel_scale, size, border, nx, ny,
                     wcs_header=grid.header_text())


def _image_box(grid: Grid) -> Box:
    return Box(0, 0, grid.width - 1, grid.height - 1)


def _clip(box: Box, to: Box) -> Box:
    return Box(max(box.min_x, to.min_x), max(box.min_y, to.min_y), min(box.max_x, to.max_x), min(box.max_y, to.max_y))


# -- one patch ----------------------------------------------------------------------------
def _members(objects: RefObjects, p: PatchInfo) -> np.ndarray:
    """Rows in the patch: a family (parent and children) goes where its top-level object's outer box is."""
    root = objects.root()
    return np.flatnonzero(p.outer.contains(objects.x[root], objects.y[root]))


def with_null_columns(table: pa.Table, dataset: str) -> pa.Table:
    """Add the schema's nullable columns that ``table`` lacks, as nulls (optional columns of minor versions)."""
    for c in load_schema(dataset).columns:
        if c.name not in table.column_names and c.nullable:
            table = table.append_column(c.name, pa.nulls(table.num_rows, c.arrow_type))
    return table


def ref_table(objects: RefObjects, rows: np.ndarray, ids: np.ndarray, parent_ids: np.ndarray, p: PatchInfo,
              ref_band: str) -> pa.Table:
    """Reference rows: the ref schema's columns (optional ones this catalog cannot fill are null)."""
    n = rows.size
    inner = p.inner.contains(objects.x[rows], objects.y[rows])
    n_child = objects.n_child[rows]
    if objects.shape is not None:
        s = objects.shape[rows]
        shape = {k: pa.array(s[:, i, j], pa.float64(), from_pandas=True)
                 for k, (i, j) in {"shape_xx": (0, 0), "shape_yy": (1, 1), "shape_xy": (0, 1)}.items()}
    else:
        shape = {k: pa.nulls(n, pa.float64()) for k in ("shape_xx", "shape_yy", "shape_xy")}
    cols = {
        "id": pa.array(ids, pa.int64()), "parent": pa.array(parent_ids, pa.int64()),
        "tract": pa.array(np.full(n, p.tract, np.int64)), "patch": pa.array(np.full(n, p.patch, np.int64)),
        "coord_ra": pa.array(objects.ra[rows]), "coord_dec": pa.array(objects.dec[rows]),
        "centroid_x": pa.array(objects.x[rows]), "centroid_y": pa.array(objects.y[rows]),
        **shape,
        "deblend_nChild": pa.array(n_child, pa.int32()),
        "detect_isPrimary": pa.array(inner & (n_child == 0)),
        "detect_isPatchInner": pa.array(inner),
        "refBand": pa.array(np.full(n, ref_band, object), pa.string()),
    }
    names = load_schema("ref").names
    if "kron_radius" in names and objects.kron is not None:
        cols["kron_radius"] = pa.array(objects.kron[rows], pa.float64(), from_pandas=True)
    if "externalId" in names and objects.external_id is not None:
        cols["externalId"] = pa.array(objects.external_id[rows], pa.int64())
    return with_null_columns(pa.table(cols), "ref")


def _write_patch(repo: Repository, tract: TractInfo, p: PatchInfo, packer: IdPacker, grid: Grid,
                 bands: list[BandData], objects: RefObjects, ref_band: str, fwhm: float) -> None:
    rows = _members(objects, p)
    if rows.size == 0:  # nothing to measure: no quantum (run would have an empty one)
        log.info("patch %d: no reference objects; not written", p.patch)
        return
    ids = packer.make_ids(tract.tract, p.patch, np.arange(1, rows.size + 1))
    packed_of_row = np.zeros(len(objects), np.int64)
    packed_of_row[rows] = ids
    parent_rows = objects.parent[rows]
    parent_ids = np.where(parent_rows >= 0, packed_of_row[np.maximum(parent_rows, 0)], 0)
    write_parquet(ref_table(objects, rows, ids, parent_ids, p, ref_band), repo.ref_path(tract.tract, p.patch),
                  load_schema("ref"))
    cut = _clip(p.outer, _image_box(grid))
    shape = objects.shape[rows] if objects.shape is not None else None
    kron = objects.kron[rows] if objects.kron is not None else None
    q = footprint_ellipses(shape, kron, rows.size, fwhm)
    spans = ellipse_spans(objects.x[rows], objects.y[rows], q, cut)
    sl = np.s_[cut.min_y:cut.max_y + 1, cut.min_x:cut.max_x + 1]
    planes = MaskPlanes()
    for b in bands:
        data_id = DataId(tract.tract, p.patch, b.name)
        fp = footprint_table(ids=ids, parents=parent_ids, tract=tract.tract, patch=p.patch, band=b.name,
                             spans=spans, image=b.image[sl], image_box=cut)
        write_parquet(with_null_columns(fp, "footprints"), repo.footprints_path(data_id), load_schema("footprints"))
        psf = PsfGrid([(cut.min_x + cut.max_x) / 2], [(cut.min_y + cut.max_y) / 2], b.psf[None, None])
        write_coadd(Coadd(tract=tract.tract, patch=p.patch, band=b.name, bbox=cut, image=b.image[sl],
                          mask=b.mask[sl], variance=b.variance[sl], wcs=tract.wcs, psf=psf,
                          photo_calib=b.photo_calib, mask_planes=planes),
                    repo.coadd_path(data_id))
    log.info("patch %d: %d objects", p.patch, rows.size)

