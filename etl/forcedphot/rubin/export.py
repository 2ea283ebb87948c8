"""``forcedphot export butler``: a Rubin butler repository (SQLite registry) from a forcedphot repository.

Dimension records:

* ``skymap``: the forcedphot skymap's name, the sha256 of its table as ``hash``, ``tract_max`` (tract ids
  run 0..n-1 as forcedphot's), ``patch_nx_max``/``patch_ny_max``;
* ``tract`` / ``patch``: forcedphot's ids (patch = patch_y * n_patch_x + patch_x, Rubin's sequential index;
  ``cell_x``/``cell_y`` = patch_x/patch_y), regions = the outer pixel boxes (pixel edges) of the tract and of
  each patch taken to the sky through the tract WCS (SIP included), as ``lsst.sphgeom.ConvexPolygon``;
* bands: Rubin reaches ``band`` through an instrument and its physical filters, so one instrument record
  :data:`INSTRUMENT` ("ForcedPhot") is inserted with one physical filter per band, named as the band
  (physical_filter ``r`` -> band ``r``).

Datasets (:mod:`forcedphot.rubin.datasets`) go into one input RUN collection (default :data:`INPUT_RUN`) for
every quantum whose inputs are complete (heavy footprints; scarlet-style model data are not exported).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from forcedphot.errors import InputError
from forcedphot.io.targets import check_target
from forcedphot.rubin import datasets as ds

INSTRUMENT = "ForcedPhot"
INPUT_RUN = "forcedphot/inputs"


def _foreign(path: Path) -> str | None:
    return None if (path / "butler.yaml").exists() else "not a butler repository (no butler.yaml)"


def sky_polygon(tract, box):
    """The pixel box's edges (+-0.5) through the tract WCS as a convex polygon on the sphere."""
    from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

    xs = np.array([box.min_x - 0.5, box.max_x + 0.5, box.max_x + 0.5, box.min_x - 0.5])
    ys = np.array([box.min_y - 0.5, box.min_y - 0.5, box.max_y + 0.5, box.max_y + 0.5])
    ra, dec = tract.pixel_to_sky(xs, ys)
    return ConvexPolygon.convexHull([UnitVector3d(LonLat.fromDegrees(float(r), float(d))) for r, d in zip(ra, dec)])


def register_dimensions(butler, skymap, skymap_hash: bytes, bands) -> None:
    from forcedphot.skymap import Box

    reg = butler.registry
    reg.syncDimensionData("skymap", {"name": skymap.name, "hash": skymap_hash, "tract_max": skymap.n_tracts,
                                     "patch_nx_max": max(t.n_patch_x for t in skymap.tracts),
                                     "patch_ny_max": max(t.n_patch_y for t in skymap.tracts)})
    for t in skymap.tracts:
        reg.syncDimensionData("tract", {"skymap": skymap.name, "id": t.tract,
                                        "region": sky_polygon(t, Box(0, 0, t.width - 1, t.height - 1))})
        for p in t.patches():
            reg.syncDimensionData("patch", {"skymap": skymap.name, "tract": t.tract, "id": p.patch,
                                            "cell_x": p.patch_x, "cell_y": p.patch_y,
                                            "region": sky_polygon(t, p.outer)})
    reg.syncDimensionData("instrument", {"name": INSTRUMENT, "visit_max": 1, "visit_system": 0, "exposure_max": 1,
                                         "detector_max": 1, "class_name": None})
    for band in bands:
        reg.syncDimensionData("physical_filter", {"instrument": INSTRUMENT, "name": band, "band": band})


def register_dataset_types(butler, *, cell_coadd: bool = False) -> None:
    from lsst.daf.butler import DatasetType

    for name, storage_class, dimensions in (ds.CELL_INPUT_TYPES if cell_coadd else ds.INPUT_TYPES):
        butler.registry.registerDatasetType(DatasetType(name, dimensions, storage_class, universe=butler.dimensions))


def export_butler(repo_root: str | Path, butler_root: str | Path, *, run: str = INPUT_RUN, cell_coadd: bool = False,
                  cell_size: int = ds.DEFAULT_CELL_SIZE) -> dict:
    """Create (or add to) the butler at ``butler_root`` and put ``repo_root``'s inputs into ``run``.

    ``cell_coadd``: each coadd and its PSF go in as one ``CellCoadd`` (``forcedphot_cell_coadd``, cells of
    ``cell_size`` pixels from the coadd's first pixel, each cell's PSF the PSF grid's at its centre:
    :func:`forcedphot.rubin.datasets.coadd_to_cell_coadd`) instead of ``forcedphot_coadd`` and
    ``forcedphot_coadd_psf``; run the task with ``use_cell_coadd``.

    Returns counts: {"quanta": n, "patches": n, "datasets": n, "run": run}."""
    from lsst.daf.butler import Butler, MissingCollectionError

    from forcedphot.io.coadd import read_coadd
    from forcedphot.io.parquet import read_parquet
    from forcedphot.plan import plan_quanta
    from forcedphot.repository import Repository
    from forcedphot.schema import load_schema
    from forcedphot.skymap import Box

    repo = Repository(repo_root)
    repo.check()
    quanta = [q for q in plan_quanta(repo) if q.ready]
    if not quanta:
        raise InputError(f"{repo.root}: no quantum with complete inputs to export")
    butler_root = Path(butler_root)
    if not check_target(butler_root, overwrite=True, foreign=_foreign) or not (butler_root / "butler.yaml").exists():
        Butler.makeRepo(str(butler_root))
    butler = Butler.from_config(str(butler_root), writeable=True)
    try:
        butler.registry.queryCollections(run)
        raise InputError(f"{butler_root}: collection {run!r} exists already; pass another --run")
    except MissingCollectionError:
        pass
    skymap_table = read_parquet(repo.skymap_path(), load_schema("skymap"))
    skymap = repo.read_skymap()
    skymap_hash = hashlib.sha256(Path(repo.skymap_path()).read_bytes()).digest()
    bands = sorted({q.data_id.band for q in quanta})
    register_dimensions(butler, skymap, skymap_hash, bands)
    register_dataset_types(butler, cell_coadd=cell_coadd)
    butler.registry.registerRun(run)
    n = 0
    butler.put(skymap_table, ds.SKYMAP, {"skymap": skymap.name}, run=run)
    n += 1
    patches = sorted({(q.data_id.tract, q.data_id.patch): q.ref_file for q in quanta}.items())
    for (tract, patch), ref_file in patches:
        butler.put(read_parquet(ref_file, load_schema("ref")), ds.REF,
                   {"skymap": skymap.name, "tract": tract, "patch": patch}, run=run)
        n += 1
    for q in quanta:
        d = q.data_id
        data_id = {"skymap": skymap.name, "tract": d.tract, "patch": d.patch, "band": d.band}
        coadd = read_coadd(q.coadd_file)
        if cell_coadd:
            tract = next(t for t in skymap.tracts if t.tract == d.tract)
            butler.put(ds.coadd_to_cell_coadd(coadd, skymap=skymap.name, cell_size=cell_size,
                                              tract_box=Box(0, 0, tract.width - 1, tract.height - 1)),
                       ds.CELL_COADD, data_id, run=run)
            n -= 1
        else:
            butler.put(ds.coadd_to_masked_image(coadd), ds.COADD, data_id, run=run)
            butler.put(ds.psf_table(coadd), ds.COADD_PSF, data_id, run=run)
        butler.put(ds.calib_table(coadd), ds.COADD_CALIB, data_id, run=run)
        butler.put(read_parquet(q.footprints_file, load_schema("footprints")), ds.FOOTPRINTS, data_id, run=run)
        n += 4
    return {"quanta": len(quanta), "patches": len(patches), "datasets": n, "run": run, "skymap": skymap.name,
            "instrument": INSTRUMENT, "bands": bands}
