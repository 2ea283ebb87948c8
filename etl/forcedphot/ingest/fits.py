"""``forcedphot ingest fits``: per-band FITS coadds plus a reference catalog -> a new repository.

The repository is exactly what ``forcedphot run`` reads from a simulated survey: one
tract whose pixel frame is the images' 0-based pixel frame (its WCS is the images' WCS,
stored in the skymap), square patches with overlapping outer boxes, and per patch a
reference catalog, per patch and band a coadd cut from the images and one footprint per
reference object. Objects whose footprints overlap are deblended by default (a new parent
per blend, children's heavy footprints split by jointly fitted PSF and shape models; see
:mod:`forcedphot.ingest.deblend`). Everything is read and checked before anything is written, and the
repository is assembled in a sibling folder and moved into place at the end, so a
failed ingest never leaves a half-written (or half-overwritten) repository.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from forcedphot import refmodels
from forcedphot.errors import InputError
from forcedphot.flags import MaskPlanes
from forcedphot.ids import IdPacker
from forcedphot.ingest import deblend as db
from forcedphot.ingest.calib import band_calibration, calibration_header
from forcedphot.ingest.catalog import RefObjects, load_catalog
from forcedphot.ingest.footprints import ellipse_spans, footprint_ellipses, footprint_table
from forcedphot.ingest.grid import Grid, make_grid
from forcedphot.ingest.images import celestial_wcs, parse_hdu_spec, read_image
from forcedphot.ingest.planes import BandData, load_band
from forcedphot.ingest.refmeasure import RefMeasurements, default_reference_band, measure_references
from forcedphot.ingest.specs import BandSpec, CatalogSpec
from forcedphot.ingest.estimate import write_psf_fits
from forcedphot.io.coadd import Coadd, write_coadd
from forcedphot.io.parquet import write_parquet
from forcedphot.repository import DataId, Repository
from forcedphot.repository_inputs import check_inputs_target, writing_inputs
from forcedphot.schema import load_schema
from forcedphot.skymap import Box, PatchInfo, SkyMap, TractInfo

log = logging.getLogger(__name__)

TRACT = 0
EXISTS = "repository exists; pass --overwrite to replace its inputs"
INGEST_DIR = "ingest"  # inside the repository: what ingest estimated (PSF FITS files)
DEFAULT_BORDER = 100  # Rubin's patch border, capped at a quarter of the patch for small patches

__all__ = ["BandSpec", "CatalogSpec", "ingest_fits"]


def ingest_fits(repo_root, bands: list[BandSpec], catalog: CatalogSpec, *, patch_size: int | None = None,
                patch_border: int | None = None, pixel_scale: float | None = None, ref_band: str | None = None,
                overwrite: bool = False, deblend: str | None = None, assume_njy: bool = False,
                metadata_hook=None) -> Repository:
    """Write a new repository at ``repo_root`` from per-band FITS images and a catalog.

    With ``overwrite``, an existing repository there gets the new inputs: only the files whose
    bytes changed are replaced, its outputs and run history are kept (stale outputs are re-measured
    by the next run); a folder holding anything forcedphot did not write is refused
    (:mod:`forcedphot.repository_inputs`).

    ``patch_size`` (pixels, default: one patch covering the image) and ``patch_border``
    (default: 0 for one patch, else min(100, patch_size // 4)) define the patches;
    ``pixel_scale`` (arcsec) is needed only when the images have no celestial WCS;
    ``ref_band`` (default: the first of i, r, z, y, g, u present, else the first band, as Rubin) is
    recorded as every object's refBand, and rows without a shape or Kron radius are measured on it
    (:mod:`forcedphot.ingest.refmeasure`);
    ``deblend`` ("peaks" or "none"; default: the catalog spec's, "peaks") deblends objects
    whose footprints overlap (:mod:`forcedphot.ingest.deblend`); ``assume_njy`` takes the
    pixels of bands whose options and header give no flux unit or zero point as nJy
    (otherwise an error). The calibrations, catalog frame and each band's planes (files,
    constants or estimates) are recorded in the repository's ``repository.json`` under
    ``ingest``; ``--psf estimate`` PSFs are also written as ``ingest/psf_<band>.fits``. ``metadata_hook`` (a
    function of that metadata dict, returning it) lets a front end (``ingest rubin``) name its own inputs there.
    """
    if not isinstance(assume_njy, bool):
        raise InputError(f"assume_njy must be true or false, not {assume_njy!r}")
    method = catalog.deblend if deblend is None else deblend
    if method not in db.DEBLEND_METHODS:
        raise InputError(f"deblend must be one of {', '.join(db.DEBLEND_METHODS)}, not {method!r}")
    bands = list(bands)
    if not bands:
        raise InputError("no bands to ingest; give at least one --band NAME --image FILE")
    names = [b.name for b in bands]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"band(s) {dup} given more than once")
    ref_band = ref_band or default_reference_band(names)
    if ref_band not in names:
        raise InputError(f"reference band {ref_band!r} is not among the bands {names}")
    root = Path(repo_root)
    check_inputs_target(root, overwrite=overwrite, exists=EXISTS)  # before reading any image
    target = root.resolve()

    images = [read_image(b.image, what=f"band {b.name} image") for b in bands]
    grid = make_grid([(label, data.shape, celestial_wcs(header, label)) for data, header, label in images],
                     pixel_scale=pixel_scale)
    calibs = [band_calibration(zero_point=spec.zero_point, flux_unit=spec.flux_unit,
                               header=calibration_header(header, parse_hdu_spec(spec.image).path),
                               pixel_area_sr=grid.pixel_area_sr, label=f"band {spec.name} ({label})",
                               assume_njy=assume_njy)
              for spec, (_, header, label) in zip(bands, images)]
    objects = load_catalog(catalog, grid)
    leaves = objects.n_child == 0  # catalog parents sit on their children: not candidates for estimates
    positions = (objects.x[leaves], objects.y[leaves])
    data = [load_band(spec, img, label, grid, calibration=cal, positions=positions)
            for spec, (img, _, label), cal in zip(bands, images, calibs)]
    del images
    # footprints and the deblender keep the catalog's geometry; the ref table gets the measured values
    refs, measured = measure_references(objects, next(b for b in data if b.name == ref_band))
    # CModel's reference model ellipses from the catalog's columns (else fitted per patch on the deblended image)
    ref_models = (None if refs.model_ellipses is None else
                  refmodels.ingest_reference_models(refs, next(b for b in data if b.name == ref_band)))
    for b in data:
        if b.psf_estimate is not None:
            b.record["psf"]["estimate"]["file"] = f"{INGEST_DIR}/psf_{b.name}.fits"
    metadata = {"ingest": {"bands": {b.name: {"image": b.label, **cal.as_dict(), **b.record}
                                     for b, cal in zip(data, calibs)},
                           "catalog": {"path": objects.label, **(objects.positions or {}), **(objects.keys or {})}}}
    if metadata_hook is not None:
        metadata = metadata_hook(metadata)
    tract = _make_tract(grid, patch_size, patch_border)
    skymap = SkyMap(f"fits-{Path(str(data[0].label)).stem}"[:64], (tract,))

    # assembled next to the target; a new repository is renamed into place, an existing one gets the files that
    # changed (its outputs and run history are kept)
    with writing_inputs(target, overwrite=overwrite, command="forcedphot ingest fits", exists=EXISTS) as update:
        repo = Repository(update.staging).create(
            description=f"ingested from FITS: bands {names}, catalog {objects.label}", metadata=metadata)
        _write_estimated_psfs(repo, root, data)
        repo.write_skymap(skymap)
        packer = IdPacker(skymap.n_tracts, skymap.n_patches)
        fwhm = max(b.psf_fwhm for b in data)
        models = _Models(data, objects, ref_band) if method == "peaks" else None
        for p in tract.patches():
            _write_patch(repo, tract, p, packer, grid, data, objects, ref_band, fwhm, models, refs, measured,
                         ref_models)
    log.info("ingested %d objects in %d band(s) into %s (%d patches)%s", len(objects), len(data), root,
             tract.n_patches, update.describe())
    return Repository(root)


# -- estimated PSFs -----------------------------------------------------------------------
def _write_estimated_psfs(repo: Repository, root: Path, bands: list[BandData]) -> None:
    """Each ``--psf estimate`` PSF as ``ingest/psf_<band>.fits`` in the repository, with one warning line."""
    for b in bands:
        e = b.psf_estimate
        if e is None:
            continue
        name = f"psf_{b.name}.fits"
        (repo.root / INGEST_DIR).mkdir(exist_ok=True)
        write_psf_fits(repo.root / INGEST_DIR / name, e, band=b.name, label=b.label)
        off = (f"; star centres are offset from the catalog positions by median (dx, dy) = ({e.offset[0]:.2f}, "
               f"{e.offset[1]:.2f}) px" if np.hypot(*e.offset) > 0.1 else "")
        log.warning("band %s (%s): PSF estimated with photutils EPSFBuilder from %d stars (of %d catalog objects; "
                    "%d px cutouts, oversampling %d): FWHM %.3g px%s; written to %s", b.name, b.label, e.n_stars,
                    e.n_candidates, e.size, e.oversampling, e.fwhm, off, root / INGEST_DIR / name)


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


@dataclass
class NewParents:
    """Blend parents made by the deblender (no catalog row): positions, shapes and child counts."""

    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    shape: np.ndarray  # (m, 2, 2)
    n_child: np.ndarray


def ref_table(objects: RefObjects, rows: np.ndarray, ids: np.ndarray, parent_ids: np.ndarray, p: PatchInfo,
              ref_band: str, *, n_child: np.ndarray | None = None, new: NewParents | None = None,
              measured: RefMeasurements | None = None, ref_models: dict | None = None) -> pa.Table:
    """Reference rows: the ref schema's columns (optional ones this catalog cannot fill are null).

    ``ids`` and ``parent_ids`` cover ``rows`` then the ``new`` parents; ``n_child`` (default:
    from the catalog's links) is the catalog rows' deblend_nChild; ``measured``: the ingest
    measurement flags of ``rows`` (null where not measured and for the new parents); ``ref_models``: the
    cModel_* columns of ``rows`` and the new parents (:mod:`forcedphot.refmodels`; flags as object
    arrays, None = null).
    """
    m = 0 if new is None else new.x.size
    n = rows.size + m
    if new is None:
        new = NewParents(*(np.zeros(0),) * 4, np.zeros((0, 2, 2)), np.zeros(0, np.int32))
    x, y = np.r_[objects.x[rows], new.x], np.r_[objects.y[rows], new.y]
    inner = p.inner.contains(x, y)
    n_child = np.r_[objects.n_child[rows] if n_child is None else n_child, new.n_child].astype(np.int32)
    s = np.concatenate([objects.shape[rows] if objects.shape is not None else np.full((rows.size, 2, 2), np.nan),
                        new.shape])
    if objects.shape is not None or m:
        shape = {k: pa.array(s[:, i, j], pa.float64(), from_pandas=True)
                 for k, (i, j) in {"shape_xx": (0, 0), "shape_yy": (1, 1), "shape_xy": (0, 1)}.items()}
    else:
        shape = {k: pa.nulls(n, pa.float64()) for k in ("shape_xx", "shape_yy", "shape_xy")}
    cols = {
        "id": pa.array(ids, pa.int64()), "parent": pa.array(parent_ids, pa.int64()),
        "tract": pa.array(np.full(n, p.tract, np.int64)), "patch": pa.array(np.full(n, p.patch, np.int64)),
        "coord_ra": pa.array(np.r_[objects.ra[rows], new.ra]), "coord_dec": pa.array(np.r_[objects.dec[rows], new.dec]),
        "centroid_x": pa.array(x), "centroid_y": pa.array(y),
        **shape,
        "deblend_nChild": pa.array(n_child, pa.int32()),
        "detect_isPrimary": pa.array(inner & (n_child == 0)),
        "detect_isPatchInner": pa.array(inner),
        "refBand": pa.array(np.full(n, ref_band, object), pa.string()),
    }
    names = load_schema("ref").names
    if "kron_radius" in names and objects.kron is not None:
        with np.errstate(invalid="ignore"):  # a Gaussian's Kron radius for the new parents, as the simulator's
            det = new.shape[:, 0, 0] * new.shape[:, 1, 1] - new.shape[:, 0, 1] ** 2
            kron = np.r_[objects.kron[rows], np.sqrt(np.pi / 2) * det ** 0.25]
        cols["kron_radius"] = pa.array(kron, pa.float64(), from_pandas=True)
    if measured is not None:
        for col, flag, done in (("shape_flag", measured.shape_flag, measured.shape_measured),
                                ("kron_radius_flag", measured.kron_flag, measured.kron_measured)):
            if col in names and done.any():
                cols[col] = pa.array(np.r_[flag, np.zeros(m, bool)], pa.bool_(), mask=~np.r_[done, np.zeros(m, bool)])
    if ref_models is not None:
        for col, v in ref_models.items():
            if col in names:
                typ = pa.bool_() if v.dtype == object else pa.float64()
                cols[col] = pa.array(v, typ, from_pandas=True)
    new_rows = np.r_[np.zeros(rows.size, bool), np.ones(m, bool)]  # no catalog row: null key and flag
    cols["externalId"] = pa.array(np.r_[objects.external_id[rows], np.zeros(m, np.int64)], pa.int64(), mask=new_rows)
    if objects.duplicate is not None:
        cols["detect_isDuplicate"] = pa.array(np.r_[objects.duplicate[rows], np.zeros(m, bool)], pa.bool_(),
                                              mask=new_rows)
    return with_null_columns(pa.table(cols), "ref")


class _Models:
    """Per-band deblender models: the band's PSF image (and moments) convolved with the objects' intrinsic shapes."""

    def __init__(self, bands: list[BandData], objects: RefObjects, ref_band: str):
        self.psf = {b.name: db.psf_moments(b.psf, b.psf_fwhm) for b in bands}
        self.intrinsic = db.intrinsic_shapes(objects.shape, len(objects), self.psf[ref_band])
        self.ref_band = ref_band

    def cov(self, band: str, rows: np.ndarray) -> np.ndarray:
        return self.psf[band] + self.intrinsic[rows]

    def fit(self, blends: db.Blends, band: BandData, rows: np.ndarray, x: np.ndarray, y: np.ndarray,
            sl, cut: Box) -> db.BandFit:
        return db.fit_band(blends, x, y, self.intrinsic[rows], band.psf, band.image[sl], band.variance[sl], cut,
                           psf_cov=self.psf[band.name])


def _band_footprints(blends, fit, band: BandData, rows, x, y, sl, cut: Box, ids, parent_ids, tract: TractInfo,
                     p: PatchInfo, models) -> pa.Table:
    """The band's footprint table: heavy values the image times the deblender's ratios (``fit``: the band's
    deblender fit if made already)."""
    scale, zero_flux = None, None
    if blends.n_blends:
        fit = fit if fit is not None else models.fit(blends, band, rows, x, y, sl, cut)
        scale = db.row_scale(blends, fit.ratios)
        zero_flux = db.row_zero_flux(blends, fit)
    return footprint_table(ids=ids, parents=parent_ids, tract=tract.tract, patch=p.patch, band=band.name,
                           spans=blends.spans, image=band.image[sl], image_box=cut, scale=scale, zero_flux=zero_flux)


def _fit_reference_models(refs: RefObjects, rows: np.ndarray, new, blends, fp: pa.Table, band: BandData, sl,
                          cut: Box, p: PatchInfo) -> dict:
    """CModel's reference models of the patch's rows and new parents, fitted on the reference band's
    deblended image (noise replacement with these footprints, :func:`forcedphot.refmodels.fit_with_footprints`)."""
    n_new = 0 if new is None else new.x.size
    x = np.r_[refs.x[rows], new.x] if n_new else refs.x[rows]
    y = np.r_[refs.y[rows], new.y] if n_new else refs.y[rows]
    s = (np.full((rows.size, 2, 2), np.nan) if refs.shape is None else refs.shape[rows])
    kron = np.full(rows.size, np.nan) if refs.kron is None else np.asarray(refs.kron, float)[rows]
    if n_new:
        s = np.concatenate([s, new.shape])
        with np.errstate(invalid="ignore"):  # a Gaussian's Kron radius, as ref_table's
            det = new.shape[:, 0, 0] * new.shape[:, 1, 1] - new.shape[:, 0, 1] ** 2
            kron = np.r_[kron, np.sqrt(np.pi / 2) * det ** 0.25]
    shape = np.stack([s[:, 0, 0], s[:, 1, 1], s[:, 0, 1]], -1)
    values = fp.column("values").combine_chunks()
    psf = band.psf_grid_for(cut)
    cols = refmodels.fit_with_footprints(band.image[sl], band.variance[sl], band.mask[sl], psf, x, y, shape, kron,
                                         blends.spans, values.offsets.to_numpy(), values.values.to_numpy(),
                                         min_x=cut.min_x, min_y=cut.min_y, seed=[p.tract, p.patch, 4])
    return {c: (np.asarray(v, object) if c in refmodels.BOOL_COLUMNS else v) for c, v in cols.items()}


def _write_patch(repo: Repository, tract: TractInfo, p: PatchInfo, packer: IdPacker, grid: Grid,
                 bands: list[BandData], objects: RefObjects, ref_band: str, fwhm: float,
                 models: _Models | None, refs: RefObjects, measured: RefMeasurements,
                 ref_models: dict | None = None) -> None:
    rows = _members(objects, p)
    if rows.size == 0:  # nothing to measure: no quantum (run would have an empty one)
        log.info("patch %d: no reference objects; not written", p.patch)
        return
    local = np.full(len(objects), -1, np.int64)
    local[rows] = np.arange(rows.size)
    parent_rows = objects.parent[rows]
    local_parent = np.where(parent_rows >= 0, local[np.maximum(parent_rows, 0)], -1)
    cut = _clip(p.outer, _image_box(grid))
    sl = np.s_[cut.min_y:cut.max_y + 1, cut.min_x:cut.max_x + 1]
    shape = objects.shape[rows] if objects.shape is not None else None
    kron = objects.kron[rows] if objects.kron is not None else None
    q = footprint_ellipses(shape, kron, rows.size, fwhm)
    spans = ellipse_spans(objects.x[rows], objects.y[rows], q, cut)
    blends = db.plan_blends(local_parent, spans, cut) if models is not None else db.no_blends(local_parent, spans)
    ids = packer.make_ids(tract.tract, p.patch, np.arange(1, blends.n_rows + 1))
    parent_ids = np.where(blends.parent >= 0, ids[np.maximum(blends.parent, 0)], 0)
    x, y = objects.x[rows], objects.y[rows]
    fits, new = {}, None  # fits: the reference band's, kept for its footprints; other bands' one at a time
    if blends.n_blends:
        ref = next(b for b in bands if b.name == ref_band)
        fits[ref_band] = models.fit(blends, ref, rows, x, y, sl, cut)
        flux = db.child_fluxes(blends, fits[ref_band].ratios, ref.image[sl], cut)
        nx, ny, nshape = db.new_parent_geometry(blends, x, y, models.cov(ref_band, rows), flux)
        nra, ndec = grid.wcs.all_pix2world(nx, ny, 0) if nx.size else (np.zeros(0), np.zeros(0))
        new = NewParents(nx, ny, np.asarray(nra, float), np.asarray(ndec, float), nshape,
                         blends.n_child[blends.n_members:])
        log.info("patch %d: %d blends (%d new parents), the largest with %d children", p.patch, blends.n_blends,
                 blends.n_new, int(np.diff(blends.child_offsets).max()))
    if blends.n_untouched:
        log.warning("patch %d: %d groups of catalog families and the objects overlapping them hold several families "
                    "or a hierarchy deeper than parent-child; not deblended (each object keeps its own footprint)",
                    p.patch, blends.n_untouched)
    if blends.n_skipped:
        log.warning("patch %d: %d blends exceed the deblender's limits (%d children, %d pixels, %d pixels x children; "
                    "the largest has %d children); not deblended (each object keeps its own footprint)", p.patch,
                    blends.n_skipped, db.MAX_CHILDREN, db.MAX_AREA, db.MAX_AREA_TIMES_CHILDREN, blends.largest_skipped)
    # the reference band's footprints first: the reference model fits measure each object on them
    ref_data = next(b for b in bands if b.name == ref_band)
    tables = {ref_band: _band_footprints(blends, fits.pop(ref_band, None), ref_data, rows, x, y, sl, cut, ids,
                                         parent_ids, tract, p, models)}
    n_new = 0 if new is None else new.x.size
    if ref_models is not None:  # the catalog's ellipses; none for the deblender's parents
        patch_models = {c: np.r_[v[rows], np.full(n_new, None if v.dtype == object else np.nan, v.dtype)]
                        for c, v in ref_models.items()}
    else:
        patch_models = _fit_reference_models(refs, rows, new, blends, tables[ref_band], ref_data, sl, cut, p)
    write_parquet(ref_table(refs, rows, ids, parent_ids, p, ref_band, n_child=blends.n_child[:rows.size], new=new,
                            measured=measured.rows(rows),
                            ref_models=patch_models),
                  repo.ref_path(tract.tract, p.patch), load_schema("ref"))
    planes = MaskPlanes()
    for b in bands:
        data_id = DataId(tract.tract, p.patch, b.name)
        fp = tables.pop(b.name) if b.name in tables else _band_footprints(blends, None, b, rows, x, y, sl, cut, ids,
                                                                          parent_ids, tract, p, models)
        write_parquet(with_null_columns(fp, "footprints"), repo.footprints_path(data_id), load_schema("footprints"))
        psf = b.psf_grid_for(cut)
        write_coadd(Coadd(tract=tract.tract, patch=p.patch, band=b.name, bbox=cut, image=b.image[sl],
                          mask=b.mask[sl], variance=b.variance[sl], wcs=tract.wcs, psf=psf,
                          photo_calib=b.photo_calib, mask_planes=planes),
                    repo.coadd_path(data_id))
    log.info("patch %d: %d objects", p.patch, blends.n_rows)
