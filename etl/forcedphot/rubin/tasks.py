"""forcedphot as Rubin PipelineTasks: ``ForcedPhotCoaddTask`` (per band) and ``ForcedPhotObjectTask`` (per patch).

``ForcedPhotCoaddTask.run`` rebuilds forcedphot's inputs of one (tract, patch, band) quantum from the
butler datasets (:mod:`forcedphot.rubin.datasets`) in a private scratch repository and measures it with
forcedphot's own engine (:class:`forcedphot.task.ForcedPhotCoaddTask`, the one ``forcedphot run`` uses):
the same code path, so the same numbers. ``ForcedPhotObjectTask`` joins a patch's per-band outputs into
the ``object`` table with forcedphot's ``object`` view (:func:`forcedphot.query.load_object`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import lsst.pipe.base.connectionTypes as cT
from lsst.pex.config import Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct

from forcedphot.rubin import datasets as ds
from forcedphot.rubin.config import make_fields, to_forcedphot


class ForcedPhotCoaddConnections(PipelineTaskConnections, dimensions=ds.BAND_DIMENSIONS):
    sky_map = cT.Input(doc="forcedphot's skymap table (tract WCS, patch boxes): id packing, noise seeds, reference WCS",
                       name=ds.SKYMAP, storageClass="ArrowTable", dimensions=("skymap",))
    ref_cat = cT.Input(doc="reference catalog of the patch (forcedphot's ref columns)", name=ds.REF,
                       storageClass="ArrowTable", dimensions=ds.PATCH_DIMENSIONS)
    exposure = cT.Input(doc="coadd image, mask planes and variance", name=ds.COADD, storageClass="MaskedImageV2",
                        dimensions=ds.BAND_DIMENSIONS)
    psf = cT.Input(doc="the coadd's PSF grid (node positions and images)", name=ds.COADD_PSF,
                   storageClass="ArrowTable", dimensions=ds.BAND_DIMENSIONS)
    cell_coadd = cT.Input(doc="the coadd as an lsst.images CellCoadd: image, mask planes, variance and per-cell PSFs "
                               "(used instead of exposure and psf when use_cell_coadd is set)", name=ds.CELL_COADD,
                          storageClass="CellCoadd", dimensions=ds.BAND_DIMENSIONS)
    calib = cT.Input(doc="the coadd's photometric calibration, WCS, mask registry, aperture corrections and input "
                         "polygons", name=ds.COADD_CALIB, storageClass="ArrowTable", dimensions=ds.BAND_DIMENSIONS)
    footprints = cT.Input(doc="heavy footprints of the band", name=ds.FOOTPRINTS, storageClass="ArrowTable",
                          dimensions=ds.BAND_DIMENSIONS)
    meas_cat = cT.Output(doc="forced photometry of every reference (forcedphot's forced_source columns)",
                         name=ds.FORCED_SOURCE, storageClass="ArrowTable", dimensions=ds.BAND_DIMENSIONS)

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and config.use_cell_coadd:  # the CellCoadd holds the pixels and the PSF
            del self.exposure
            del self.psf
        else:
            del self.cell_coadd


class ForcedPhotCoaddConfig(PipelineTaskConfig, pipelineConnections=ForcedPhotCoaddConnections):
    """Fields generated from :class:`forcedphot.config.ForcedPhotConfig` (see :mod:`forcedphot.rubin.config`)."""

    use_cell_coadd = Field(doc="read the coadd as an lsst.images CellCoadd (connection cell_coadd, storage class "
                               "CellCoadd): its image, mask planes, variance and per-cell PSFs, the PSF grid having "
                               "one node per cell centre; the exposure and psf connections are then not used",
                           dtype=bool, default=False)

    def validate(self):
        super().validate()
        if self.footprint_dataset != "heavy":
            raise ValueError("footprint_dataset: only 'heavy' (the forcedphot_footprints dataset) in a Rubin pipeline")
        to_forcedphot(self)  # pydantic's checks, one line naming the option


for _name, _field in make_fields().items():
    setattr(ForcedPhotCoaddConfig, _name, _field)


def _scratch_repo(root: Path, sky_map: pa.Table):
    from forcedphot.io.parquet import write_parquet
    from forcedphot.repository import Repository
    from forcedphot.schema import load_schema

    repo = Repository(root).create(description="scratch repository of a forcedphot PipelineTask quantum")
    write_parquet(sky_map, repo.skymap_path(), load_schema("skymap"))
    return repo


class ForcedPhotCoaddTask(PipelineTask):
    """Forced photometry of one (skymap, tract, patch, band) with forcedphot's engine."""

    ConfigClass = ForcedPhotCoaddConfig
    _DefaultName = "forcedPhotCoadd"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(**inputs, tract=int(data_id["tract"]), patch=int(data_id["patch"]),
                           band=str(data_id["band"]))
        butlerQC.put(outputs, outputRefs)

    def run(self, sky_map: pa.Table, ref_cat: pa.Table, calib: pa.Table, footprints: pa.Table, exposure=None,
            psf: pa.Table | None = None, cell_coadd=None, *, tract: int, patch: int, band: str) -> Struct:
        """Measure the quantum; ``meas_cat`` is the forced_source table ``forcedphot run`` writes. The coadd is
        ``exposure`` (MaskedImageV2) with its ``psf`` table, or ``cell_coadd`` (CellCoadd, its cells' PSFs)."""
        from forcedphot.io.coadd import write_coadd
        from forcedphot.io.parquet import write_parquet
        from forcedphot.plan import Quantum
        from forcedphot.repository import DataId
        from forcedphot.schema import load_schema
        from forcedphot.task import ForcedPhotCoaddTask as Engine

        if cell_coadd is not None:
            coadd = ds.coadd_from_cell_coadd(cell_coadd, calib)
        elif exposure is not None and psf is not None:
            coadd = ds.coadd_from_datasets(exposure, psf, calib)
        else:
            raise ValueError(f"tract={tract} patch={patch} band={band}: give exposure and psf, or cell_coadd")
        data_id = DataId(tract, patch, band)
        if (coadd.tract, coadd.patch, coadd.band) != (tract, patch, band):
            raise ValueError(f"{data_id}: the coadd datasets hold {coadd.data_id}")
        with tempfile.TemporaryDirectory(prefix="forcedphot-quantum-") as tmp:
            repo = _scratch_repo(Path(tmp), sky_map)
            write_parquet(ref_cat, repo.ref_path(tract, patch), load_schema("ref"))
            write_parquet(footprints, repo.footprints_path(data_id), load_schema("footprints"))
            write_coadd(coadd, repo.coadd_path(data_id))
            quantum = Quantum(data_id, str(repo.ref_path(tract, patch)), str(repo.footprints_path(data_id)),
                              str(repo.coadd_path(data_id)), ())
            engine = Engine(repo, to_forcedphot(self.config))
            result = engine.run_quantum(quantum)
            table = pq.read_table(result.path)
        for name, seconds in result.timings.items():
            self.metadata[f"timing_{name}"] = float(seconds)
        self.metadata["n_rows"] = table.num_rows
        return Struct(meas_cat=table)


class ForcedPhotObjectConnections(PipelineTaskConnections, dimensions=ds.PATCH_DIMENSIONS):
    sky_map = cT.Input(doc="forcedphot's skymap table", name=ds.SKYMAP, storageClass="ArrowTable",
                       dimensions=("skymap",))
    meas_cats = cT.Input(doc="the patch's forced_source tables, one per band", name=ds.FORCED_SOURCE,
                         storageClass="ArrowTable", dimensions=ds.BAND_DIMENSIONS, multiple=True)
    object_table = cT.Output(doc="one row per object of the patch, <band>_<column> columns (forcedphot's object view)",
                             name=ds.OBJECT, storageClass="ArrowTable", dimensions=ds.PATCH_DIMENSIONS)


class ForcedPhotObjectConfig(PipelineTaskConfig, pipelineConnections=ForcedPhotObjectConnections):
    primary_only = Field(doc="keep only detect_isPrimary objects (forcedphot's object view default); False keeps the "
                             "copies in patch overlaps and deblended parents too", dtype=bool, default=False)


class ForcedPhotObjectTask(PipelineTask):
    """The per-patch object table from the patch's per-band forced_source tables."""

    ConfigClass = ForcedPhotObjectConfig
    _DefaultName = "forcedPhotObject"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        sky_map = butlerQC.get(inputRefs.sky_map)
        tables = {str(ref.dataId["band"]): butlerQC.get(ref) for ref in inputRefs.meas_cats}
        data_id = butlerQC.quantum.dataId
        butlerQC.put(self.run(sky_map, tables, tract=int(data_id["tract"]), patch=int(data_id["patch"])), outputRefs)

    def run(self, sky_map: pa.Table, meas_cats: dict[str, pa.Table], *, tract: int, patch: int) -> Struct:
        from forcedphot.io.parquet import write_parquet
        from forcedphot.query import load_object
        from forcedphot.repository import DataId
        from forcedphot.schema import load_schema

        schema = load_schema("forced_source")
        with tempfile.TemporaryDirectory(prefix="forcedphot-object-") as tmp:
            repo = _scratch_repo(Path(tmp), sky_map)
            for band, table in meas_cats.items():
                write_parquet(table, repo.forced_source_path(DataId(tract, patch, band)), schema)
            table = load_object(repo, tract=tract, patch=patch, primary_only=self.config.primary_only,
                                backend="polars").to_arrow() if meas_cats else None
        if table is None:
            raise ValueError(f"tract={tract} patch={patch}: no forced_source table")
        return Struct(object_table=table)
