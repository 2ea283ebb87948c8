"""ForcedPhotCoaddTask: forced measurement of one quantum, vectorised over all its sources.

Member equivalents of Rubin's ``lsst.drp.tasks.forcedPhotCoadd.ForcedPhotCoaddTask``:

=====================  ==========================================================
Rubin                  here
=====================  ==========================================================
runQuantum             :meth:`ForcedPhotCoaddTask.run_quantum`
fetchReferences        :meth:`fetch_references` (DuckDB join, ``sql/quantum_refs.sql``)
getExposure            :meth:`get_exposure` (memory-mapped Arrow coadd)
generateMeasCat        :meth:`generate_meas_cat`
attachFootprints       :meth:`attach_footprints` (raises ``MissingFootprintError``, a ``LookupError``)
makeIdFactory          :meth:`make_id_factory`
run                    :meth:`run`
writeOutput            :meth:`write_output` (atomic, schema-checked Parquet)
getSchemaCatalogs      :meth:`get_schema_catalogs`
metadata / timer       :attr:`metadata`, :meth:`timer`
canMultiprocess        :attr:`canMultiprocess` (quanta are independent processes)
=====================  ==========================================================
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from forcedphot import calibrate, threads
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import InputError, QuantumError
from forcedphot.ids import IdPacker
from forcedphot.io.parquet import write_parquet_batches
from forcedphot.outputs import forced_source_columns
from forcedphot.noise import NoiseReplacer, clipped_stats_1d
from forcedphot.layout import UNDEBLENDED
from forcedphot.plan import Quantum
from forcedphot.plugins import PLUGINS, MeasurementContext, ordered
from forcedphot.plugins.base import excluded_bits
from forcedphot.validity import flag_deblended, flag_invalid, unmeasurable_deblended
from forcedphot.provenance import input_fingerprints, make_provenance
from forcedphot.quantum import QuantumInputs, load_quantum, load_refs, read_footprints
from forcedphot.repository import DataId, Repository
from forcedphot.schema import load_schema
from forcedphot.stages import SourcePixels


# the kernel modules every quantum runs, whatever its plugins: the loaders' gathers (csr), pixel
# validity and the noise replacement (footprints, and background's clipped statistics)
STAGE_KERNELS = ("forcedphot.kernels.background", "forcedphot.kernels.csr", "forcedphot.kernels.footprints")
# rows per row group of a forced_source file: the writer holds one row group of finished rows at a
# time (not the quantum's table), and a point query with Parquet statistics reads one of them
OUTPUT_ROW_GROUP_ROWS = 8192


def kernel_modules(config: ForcedPhotConfig) -> list[str]:
    """The modules of :mod:`forcedphot.kernels` a run with ``config`` uses: compiled before it
    measures (:func:`forcedphot.compile.ensure_compiled`); the others are not."""
    names = set(STAGE_KERNELS)
    if config.footprint_dataset == "scarlet":
        names.add("forcedphot.kernels.psf")  # the PSF images the flux redistribution reads
    for cls in ordered(config.plugins):
        names.update(cls.kernel_modules)
    return sorted(names)


# glibc's heap policy for a measuring process: an allocation of 1 MiB or more (a chunk's columns, gathered
# footprints, the noise image) gets its own mapping and goes back to the system when freed. glibc's
# default raises this threshold to 32 MiB as large blocks are freed, and those blocks then stay in the
# heap between chunks: 40-50 MB of the peak at 80k objects. Smaller blocks (the kernels' per-source
# scratch) stay in the heap: a 128 KiB threshold cost 25% of the quantum in page faults.
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_heap = {"configured": False}


def configure_heap() -> None:
    """Set :data:`MMAP_THRESHOLD` once per process (glibc only; a ``MALLOC_MMAP_THRESHOLD_`` the user
    set stands)."""
    if _heap["configured"]:
        return
    _heap["configured"] = True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        pass


def release_free_memory() -> None:
    """Return freed heap memory to the system (glibc keeps it per thread arena otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass
class QuantumResult:
    data_id: DataId
    n_rows: int
    path: str
    timings: dict
    n_unmatched_footprints: int
    cpu_timings: dict = dataclasses.field(default_factory=dict)  # CPU seconds of each timed section


class ForcedPhotCoaddTask:
    """Forced measurement of one quantum of ``repo`` with ``config`` (default: the defaults).

    :meth:`run_quantum` locks, loads, measures, calibrates and writes one quantum; the other members
    are its steps, named as Rubin's (see the module docstring for the mapping).
    """

    _DefaultName = "forcedPhotCoadd"
    canMultiprocess = True

    def __init__(self, repo: Repository, config: ForcedPhotConfig | None = None):
        configure_heap()
        self.repo = repo
        self.config = config or ForcedPhotConfig()
        self.schema = load_schema("forced_source")
        self.plugins = [cls(self.config) for cls in ordered(self.config.plugins)]
        self.metadata: dict = {"timings": {}}
        self._sections: list[list[float]] = []  # the open timed sections, innermost last (see section)
        self._skymap = repo.read_skymap()
        self._packer = IdPacker(self._skymap.n_tracts, self._skymap.n_patches)

    # -- Rubin-style members -------------------------------------------------------
    @contextmanager
    def timer(self, name: str):
        threads.rebalance()  # every stage starts with this quantum's current share of the cores
        with self.section(name):
            yield

    @contextmanager
    def section(self, name: str):
        """Add the seconds of the block to ``metadata["timings"][name]``, less those of the sections
        timed inside it (each second is counted once: a shared stage that a plugin builds, timed
        as ``stage_<name>`` through ``MeasurementContext.timer``, is not also the plugin's)."""
        frame = [0.0, 0.0]  # wall and CPU seconds of the sections nested in this one
        self._sections.append(frame)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            self._sections.pop()
            if self._sections:
                self._sections[-1][0] += elapsed
                self._sections[-1][1] += cpu
            timings = self.metadata["timings"]
            timings[name] = timings.get(name, 0.0) + elapsed - frame[0]
            # the process's CPU seconds (every thread): what a plugin costs, however loaded the machine
            cpu_timings = self.metadata.setdefault("cpu_timings", {})
            cpu_timings[name] = cpu_timings.get(name, 0.0) + cpu - frame[1]

    def get_schema_catalogs(self) -> dict:
        return {"forced_source": self.schema}

    def make_id_factory(self, data_id: DataId) -> IdPacker:
        """The id packer of the skymap; ``catalog_id(tract, patch)`` is the quantum's seed id."""
        return self._packer

    def fetch_references(self, quantum: Quantum) -> pa.Table:
        coadd = self.get_exposure(quantum)
        return load_refs(quantum, read_footprints(quantum, coadd, self.config.footprint_dataset))[0]

    def get_exposure(self, quantum: Quantum):
        from forcedphot.io.coadd import read_coadd

        return read_coadd(quantum.coadd_file)

    def attach_footprints(self, quantum: Quantum) -> QuantumInputs:
        """Load the quantum with every reference matched to its footprint (``LookupError`` otherwise,
        unless ``missing_footprints = "reference"``)."""
        inputs = load_quantum(quantum, allow_missing_footprints=self.config.missing_footprints == "reference",
                              footprint_dataset=self.config.footprint_dataset, prepare=self._prepare())
        self.metadata["n_missing_footprints"] = int((~inputs.ref["has_footprint"]).sum())
        return inputs

    def _prepare(self):
        """What the loader computes from the coadd alone in a thread while it reads the rest: the noise
        replacement's clipped image statistics (a compiled parallel kernel: only on a numba threading
        layer that runs two at once, and with more than one thread), else nothing."""
        if not self.config.noise_replacement or threads.threads() < 2 or not threads.concurrent_kernels():
            return None
        return lambda coadd: {"noise_stats": clipped_stats_1d(coadd.image)}

    def generate_meas_cat(self, inputs: QuantumInputs) -> dict[str, np.ndarray]:
        """The identity columns of the output: reference ids (Rubin keeps object ids), data ID, copied columns."""
        ref, d = inputs.ref, inputs.quantum.data_id
        packed = self.make_id_factory(d).unpack(ref["id"])
        wrong = (packed["tract"] != d.tract) | (packed["patch"] != d.patch)
        if wrong.any():
            raise InputError(f"{d}: reference ids {ref['id'][wrong][:20].tolist()} do not pack tract={d.tract} "
                             f"patch={d.patch} ({inputs.quantum.ref_file})")
        n = inputs.n
        return {
            "objectId": ref["id"], "parentObjectId": ref["parent"], "externalId": ref["externalId"],
            "tract": np.full(n, d.tract, np.int64), "patch": np.full(n, d.patch, np.int64),
            "band": np.full(n, d.band, object), "coord_ra": ref["coord_ra"], "coord_dec": ref["coord_dec"],
            "refBand": ref["refBand"], "deblend_nChild": ref["deblend_nChild"],
            "deblend_zeroFlux": ref["deblend_zeroFlux"], "detect_isPrimary": ref["detect_isPrimary"],
            "detect_isDuplicate": ref["detect_isDuplicate"],
        }

    def run(self, meas_cat: dict, inputs: QuantumInputs) -> pa.Table:
        """Run every plugin over all sources (chunk by chunk where pixels are read), calibrate, return the table."""
        return pa.Table.from_batches(list(self.run_batches(meas_cat, inputs)), self.schema.arrow_schema())

    def run_batches(self, meas_cat: dict, inputs: QuantumInputs):
        """Yield the quantum's rows chunk by chunk, each chunk measured, corrected and calibrated to its
        final columns (a record batch of the forced_source schema), in reference order; at least one
        batch (empty for an empty patch).

        Only the chunk's columns are held: no whole-quantum output column exists, and
        :meth:`run_quantum` writes the batches as they come. Every step after the measurement is
        per source (general flags, aperture corrections, extendedness, calibration), so the rows are
        the same for any chunk size."""
        if inputs.n == 0:  # an empty patch: an empty, schema-complete table
            yield pa.RecordBatch.from_pylist([], schema=self.schema.arrow_schema())
            return
        coadd = inputs.coadd
        replacer = None
        footprints = inputs.ref["footprints"]
        if self.config.noise_replacement:
            with self.timer("noiseReplacer"):
                replacer = self.make_noise_replacer(inputs)
                footprints.release_pages()  # it wrote every footprint's spans
        with self.timer("pixels"):
            pixels = SourcePixels.build(coadd, inputs.n, replacer=replacer, footprints=footprints,
                                        chunked=True, excluded_bits=excluded_bits(coadd, self.config))
        # plugins that measure the original image in their own pass (sharing per-source products)
        same_pass = tuple(n for n in self.config.undeblended if PLUGINS[n].measures_undeblended)
        ctx = MeasurementContext(coadd, self.config, inputs.ref, ref_wcs=self._ref_wcs(inputs),
                                 replacement=replacer, pixels=pixels, undeblended=same_pass, timer=self.section)
        ctx.values.update(meas_cat)
        measure = [p for p in self.plugins if p.order < 3]
        after = [p for p in self.plugins if p.order >= 3]  # aperture corrections, classification
        for plugin in measure:
            if not plugin.reads_pixels:
                with self.timer(plugin.name):
                    ctx.values.update(plugin.measure(ctx))
        chunked = [p for p in measure if p.reads_pixels]
        # other undeblended copies: the same algorithm again on the original image (Rubin's `undeblended`)
        separate = [n for n in self.config.undeblended if n not in same_pass]
        unmeasurable = unmeasurable_deblended(inputs.ref, replaced=replacer is not None)
        declared = forced_source_columns()
        n, step = inputs.n, self.config.chunk_size
        for start in range(0, n, step):
            stop = min(n, start + step)
            with self.timer("footprints"):
                chunk_pixels = pixels.chunk(start, stop, replacer=replacer, footprints=footprints,
                                            coadd=coadd)
            part = ctx.chunk(start, stop, pixels=chunk_pixels)
            values = part.values
            for plugin in chunked:
                with self.timer(plugin.name):
                    values.update(plugin.measure(part))
            if separate:
                plain = dataclasses.replace(part, replacement=None, values={}, cache=dict(part.cache),
                                            pixels=dataclasses.replace(chunk_pixels, image=chunk_pixels.original,
                                                                       fp=chunk_pixels.fp_none))
                for name in separate:
                    with self.timer(f"undeblended_{name}"):
                        values.update({f"{UNDEBLENDED}{k}": v
                                       for k, v in PLUGINS[name](self.config).measure(plain).items()})
                plain = None
            flag_invalid(values)  # every number carries its flag (forcedphot/validity.py), before ApCorr reads them
            flag_deblended(values, unmeasurable[start:stop])
            part = dataclasses.replace(part, pixels=None, replacement=None, cache={})  # values only from here
            chunk_pixels = None
            for plugin in after:
                with self.timer(plugin.name):
                    values.update(plugin.measure(part))
            with self.timer("calibrate"):
                calibrate.calibrate(values, declared, coadd.photo_calib)
                flag_invalid(values)  # again on the final numbers (corrected and calibrated)
            with self.timer("table"):
                batch = self._to_batch(values, declared, stop - start)
            del part, values
            footprints.release_pages()  # the spans this chunk read
            release_free_memory()
            yield batch
            del batch

    def _to_batch(self, values: dict, declared, n: int) -> pa.RecordBatch:
        """One chunk's columns in the schema's order and types, each converted and released in turn."""
        arrays = {}
        for c in declared:
            field = self.schema.column(c.name)
            value = values.pop(c.name, None)
            if isinstance(value, pa.Array):  # nullable columns passed through from Arrow
                arrays[c.name] = value.cast(field.arrow_type)
            elif value is not None:
                arrays[c.name] = pa.array(value, type=field.arrow_type)  # NaN = measured but failed
            del value
        values.clear()
        schema = self.schema.arrow_schema()
        # declared by a plugin that is not configured: null
        return pa.RecordBatch.from_arrays([arrays[f.name] if f.name in arrays else pa.nulls(n, f.type) for f in schema],
                                          schema=schema)

    def make_noise_replacer(self, inputs: QuantumInputs) -> NoiseReplacer:
        """Noise for every footprint, seeded by the packed (tract, patch) id: the same in every band."""
        d = inputs.quantum.data_id
        exposure_id = self.make_id_factory(d).catalog_id(d.tract, d.patch)
        seed = exposure_id * self.config.noise_seed_multiplier or self.config.noise_seed_multiplier
        coadd = inputs.coadd
        replacer = NoiseReplacer(coadd.image, (coadd.bbox.min_x, coadd.bbox.min_y), inputs.ref["id"],
                                 inputs.ref["parent"], inputs.ref["footprints"], seed=seed,
                                 offset=self.config.noise_offset, stats=(inputs.prepared or {}).get("noise_stats"))
        self.metadata["noise"] = {"seed": int(seed), "exposure_id": int(exposure_id), "mean": replacer.mean,
                                  "sigma": replacer.sigma, "offset": self.config.noise_offset, "source": "measure"}
        return replacer

    def _ref_wcs(self, inputs: QuantumInputs):
        """The WCS of the reference centroids: the skymap tract's."""
        return self._skymap[inputs.quantum.data_id.tract].wcs

    def write_output(self, data_id: DataId, table, provenance: dict) -> str:
        """Write ``table`` (a table, or record batches consumed as they come) atomically and commit it to
        the tract's manifest."""
        from forcedphot.io.manifest import commit_quantum

        path = self.repo.forced_source_path(data_id)
        parts = [table] if isinstance(table, pa.Table) else table
        write_parquet_batches(parts, path, self.schema, provenance=provenance, row_group_size=OUTPUT_ROW_GROUP_ROWS)
        commit_quantum(self.repo.root, data_id.tract, data_id.patch, data_id.band, path)  # the tract's manifest
        return str(path)

    def input_files(self, quantum: Quantum) -> dict[str, str]:
        return quantum.input_files(self.config.footprint_dataset)

    def run_quantum(self, quantum: Quantum, *, inputs_fingerprint: dict | None = None,
                    locked: bool = False) -> QuantumResult:
        """Load, measure, calibrate and write one quantum; raises ForcedPhotError on bad input.

        ``locked``: the caller already holds the quantum's lock (the runner decides under it)."""
        if locked:
            return self._run_quantum(quantum, inputs_fingerprint)
        lock_path = self.repo.lock_path(quantum.data_id)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_path)).acquire(timeout=0):
                return self._run_quantum(quantum, inputs_fingerprint)
        except Timeout:
            raise QuantumError(f"{quantum.data_id}: locked by another run ({lock_path})") from None

    def _run_quantum(self, quantum: Quantum, inputs_fingerprint: dict | None) -> QuantumResult:
        self.metadata = {"timings": {}, "cpu_timings": {}}
        t0, c0 = time.perf_counter(), time.process_time()
        with self.timer("fingerprint"):
            fingerprint = inputs_fingerprint or input_fingerprints(self.input_files(quantum))
        with self.timer("load"):
            inputs = self.attach_footprints(quantum)
        meas_cat = self.generate_meas_cat(inputs)
        n_unmatched = int(inputs.unmatched_footprint_ids.size)
        n_rows = inputs.n
        batches = self.run_batches(meas_cat, inputs)
        try:
            head = [next(batches)]  # the noise replacement is made: the provenance can record it
            del inputs, meas_cat  # the generator holds them until its last chunk, then unmaps the planes
            prov = make_provenance(data_id=quantum.data_id, config=self.config, inputs=fingerprint,
                                   schema_version=self.schema.version,
                                   extra={"n_rows": n_rows, "noise": self.metadata.get("noise"),
                                          "n_missing_footprints": self.metadata.get("n_missing_footprints", 0),
                                          "n_unmatched_footprints": n_unmatched})
            # the chunks are measured as the writer asks for them (their sections are timed apart)
            with self.timer("write"):
                path = self.write_output(quantum.data_id, _handed_on(head, batches), prov)
        finally:
            batches.close()
        self.metadata["timings"]["total"] = time.perf_counter() - t0
        self.metadata["cpu_timings"]["total"] = time.process_time() - c0
        return QuantumResult(quantum.data_id, n_rows, path, dict(self.metadata["timings"]), n_unmatched,
                             dict(self.metadata["cpu_timings"]))


def _handed_on(head: list, rest):
    """``head``'s one item, then ``rest``: the item is popped, so only its consumer holds it."""
    yield head.pop()
    yield from rest


__all__ = ["ForcedPhotCoaddTask", "QuantumResult", "PLUGINS"]
