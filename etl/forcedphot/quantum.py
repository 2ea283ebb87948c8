"""The quantum loader: one (tract, patch, band)'s coadd (memory-mapped) and references joined to footprints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from forcedphot import checks, exits, threads
from forcedphot.duck import query_arrow
from forcedphot.errors import InputError, MissingFootprintError
from forcedphot.io.coadd import Coadd, open_coadd
from forcedphot.io.parquet import iter_column, read_parquet
from forcedphot.footprint_values import HeavyValueStore, MappedArrays
from forcedphot.noise import HeavyFootprints
from forcedphot.plan import Quantum
from forcedphot.resources import read_sql
from forcedphot.scarlet import derive_footprints
from forcedphot.schema import load_schema

SPAN_COLUMNS = ("fp_row", "fp_min_x", "fp_min_y", "fp_max_x", "fp_max_y")  # footprint columns of the join
LIST_COLUMNS = ("span_y", "span_x0", "span_x1", "values")  # ragged footprint columns, gathered by fp_row
ARROW_COLUMNS = ("externalId",)  # kept as Arrow arrays: nullable 64-bit integers do not survive numpy


@dataclass
class QuantumInputs:
    quantum: Quantum
    coadd: Coadd
    ref: dict  # column -> numpy array; "footprint_spans" -> (offsets, y, x0, x1)
    unmatched_footprint_ids: np.ndarray
    prepared: object = None  # what load_quantum's ``prepare`` made of the coadd (None without one)

    @property
    def n(self) -> int:
        return len(self.ref["id"])


def _file_schema(path: str) -> pa.Schema:
    """The Arrow schema of a Parquet input; a file that is not one (e.g. truncated) is one line naming it."""
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())})") from exc


def _check_version(path: str, dataset: str) -> None:
    load_schema(dataset).check_metadata(_file_schema(path).metadata, where=path)


def _ragged(column) -> list[tuple[np.ndarray, np.ndarray]]:
    """A list column (chunked or not) as (offsets, flat values) per chunk, zero-copy where Arrow allows."""
    return [_ragged_chunk(chunk) for chunk in getattr(column, "chunks", [column])]


def _ragged_chunk(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    if chunk.null_count:
        chunk = pc.fill_null(chunk, pa.scalar([], chunk.type))
    offsets = chunk.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    # values of a sliced chunk are the whole buffer: offsets index into it as they are
    return offsets, chunk.values.to_numpy(zero_copy_only=False)


def _footprint_spans(table: pa.Table, footprints: pa.Table, has: np.ndarray) -> tuple:
    """(rows, bbox, span offsets, spans, (span pixels, spans outside the bbox)) of each reference's
    footprint in reference order: gathered from the footprint table, checked, then moved to a
    :class:`MappedArrays` (the process holds the pages a step reads until it releases them), so the
    gathered copies are gone before the heavy values stream."""
    from forcedphot.kernels.csr import gather_rows
    from forcedphot.kernels.footprints import span_checks

    rows = np.where(has, table.column("fp_row").fill_null(-1).to_numpy(zero_copy_only=False), -1).astype(np.int64)
    bbox = np.stack([table.column(c).fill_null(0).to_numpy() for c in ("fp_min_x", "fp_min_y", "fp_max_x",
                                                                        "fp_max_y")], axis=1).astype(np.int64)
    spans = {name: gather_rows(_ragged(footprints.column(name)), rows, np.int32) for name in LIST_COLUMNS[:3]}
    checked = span_checks(spans["span_y"][0], spans["span_y"][1], spans["span_x0"][1], spans["span_x1"][1], bbox)
    mapped = MappedArrays({name: spans[name][1] for name in LIST_COLUMNS[:3]})  # spans to the scratch file
    return rows, bbox, spans["span_y"][0], mapped, checked


def _footprints(spans: tuple, has: np.ndarray, chunks) -> HeavyFootprints:
    """Each reference's footprint in reference order: the spans of :func:`_footprint_spans`, heavy
    values decoded once into a :class:`HeavyValueStore` from ``chunks`` ((offsets, values) of
    consecutive footprint rows; batch by batch from the file when the table was read without them)
    that measurement chunks gather from. The footprint table is released before the values stream
    (its Arrow span lists would otherwise sit under the store's batches: the load's memory peak)."""
    rows, bbox, offsets, mapped, (n_pix, outside) = spans
    store = HeavyValueStore.from_chunks(chunks, rows)
    fp = HeavyFootprints(has=has, span_offsets=offsets, span_y=mapped.arrays["span_y"],
                         span_x0=mapped.arrays["span_x0"], span_x1=mapped.arrays["span_x1"], bbox=bbox, store=store,
                         mapped=mapped)
    fp.checked = (n_pix, outside, store.lengths() != n_pix)
    return fp


def read_footprints(quantum: Quantum, coadd: Coadd, footprint_dataset: str, *, values: bool = True) -> pa.Table:
    """The band's heavy footprints: stored, or derived from the patch's scarlet-style model data.

    ``values=False``: stored footprints without their heavy values (the loader streams them).
    """
    if footprint_dataset == "scarlet":
        blends = read_parquet(quantum.scarlet_file, load_schema("scarlet_models", "blends"))
        sources_file = str(Path(quantum.scarlet_file).with_name("sources.parquet"))
        sources = read_parquet(sources_file, load_schema("scarlet_models", "sources"))
        return derive_footprints(blends, sources, coadd, quantum.data_id.band)
    schema = load_schema("footprints")
    # without values: the other columns the file has (nullable columns of later minor versions may be absent)
    columns = None
    if not values:
        present = set(_file_schema(quantum.footprints_file).names)
        columns = [c.name for c in schema.columns if c.name != "values" and (not c.nullable or c.name in present)]
    return read_parquet(quantum.footprints_file, schema, columns=columns)


def load_refs(quantum: Quantum, footprints: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """References joined to the band's footprints (DuckDB), and footprint ids with no reference."""
    _check_version(quantum.ref_file, "ref")
    params = {"ref_file": quantum.ref_file}
    keys = footprints.select([c for c in footprints.column_names if c not in LIST_COLUMNS])
    keys = keys.append_column("fp_row", pa.array(np.arange(footprints.num_rows, dtype=np.int64)))
    if "deblend_zeroFlux" not in keys.column_names:  # footprints of 1.0.0 files and derived from scarlet models
        keys = keys.append_column("deblend_zeroFlux", pa.nulls(keys.num_rows, pa.bool_()))
    con = duckdb.connect(config={"threads": threads.threads()})  # the quantum's share of the cores, as every pool
    exits.interrupt_with_signal(con)  # Ctrl-C stops its query
    try:
        con.register("footprints", keys)  # ids and boxes only: the ragged columns never pass through SQL
        table = query_arrow(con, read_sql("quantum_refs"), params)
        unmatched = query_arrow(con, read_sql("unmatched_footprints"), params)
    except duckdb.Error as exc:
        raise InputError(f"{quantum.data_id}: cannot join {quantum.ref_file} to its footprints: {exc}") from exc
    finally:
        con.close()
    ref_schema = load_schema("ref")
    for col in ref_schema.columns:  # columns of newer minor versions, absent from older files
        if col.name not in table.column_names:
            if not col.nullable:
                raise InputError(f"{quantum.ref_file}: required column {col.name!r} is missing")
            table = table.append_column(col.arrow_field(), pa.nulls(table.num_rows, col.arrow_type))
    return table, unmatched.column("id").to_numpy()


def load_quantum(quantum: Quantum, *, allow_missing_footprints: bool = False,
                 footprint_dataset: str = "heavy", prepare=None) -> QuantumInputs:
    """Load and check one quantum's inputs; raise a one-line error naming the data ID or ids.

    ``prepare``: a function of the coadd alone run in a thread while the rest loads (it must release
    the GIL to gain anything); its value is ``inputs.prepared``."""
    if not quantum.ready:
        raise InputError(f"{quantum.data_id}: missing inputs: {', '.join(quantum.missing)}")
    # the coadd's checksum (hashlib) and its plane-wide checks (numpy) run in threads beside the
    # reading and joining of references and footprints, and ``prepare`` too; all are joined before
    # the inputs are returned, and a corrupted coadd is the error reported whatever else failed
    coadd, verification = open_coadd(quantum.coadd_file, background=threads.threads() > 1)
    n_bad_variance = threads.InThread(checks.bad_variance_pixels, coadd)
    # its kernels leave one core to the loader's
    prepared = threads.InThread(prepare, coadd, n_threads=threads.threads() - 1) if prepare is not None else None
    try:
        checks.verify_files(quantum)
        if (coadd.tract, coadd.patch, coadd.band) != (quantum.data_id.tract, quantum.data_id.patch, quantum.data_id.band):
            raise InputError(f"{quantum.coadd_file}: holds tract={coadd.tract} patch={coadd.patch} band={coadd.band}, "
                             f"expected {quantum.data_id}")
        streamed = footprint_dataset != "scarlet"  # stored values are read after the join, batch by batch
        footprint_table = read_footprints(quantum, coadd, footprint_dataset, values=not streamed)
        table, unmatched = load_refs(quantum, footprint_table)
        checks.check_references(quantum, footprint_table, table)
        has = table.column("has_footprint").to_numpy(zero_copy_only=False)
        ids = table.column("id").to_numpy()
        if not allow_missing_footprints and not has.all():
            raise MissingFootprintError(str(quantum.data_id), ids[~has].tolist())
        fparent = table.column("footprint_parent").to_numpy(zero_copy_only=False)
        parent = table.column("parent").to_numpy()
        clash = has & (np.nan_to_num(fparent.astype(float), nan=-1) != parent)
        if clash.any():
            raise InputError(f"{quantum.data_id}: footprint parent differs from reference parent for ids "
                             f"{ids[clash][:20].tolist()} ({quantum.footprints_file})")
        ref = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names
               if c not in SPAN_COLUMNS and c not in ARROW_COLUMNS and c != "footprint_parent"}
        ref.update({c: table.column(c).combine_chunks() for c in ARROW_COLUMNS})  # 64-bit ids with nulls stay exact
        spans = _footprint_spans(table, footprint_table, has)
        if streamed:
            chunks = (_ragged_chunk(column) for column in iter_column(quantum.footprints_file, "values"))
        else:
            chunks = _ragged(footprint_table.column("values"))
        del footprint_table  # only the values' buffers stay (derived footprints): the span lists go now
        pa.default_memory_pool().release_unused()
        footprints = _footprints(spans, has, chunks)
        del spans, chunks
        footprints.check(ids, f"{quantum.data_id} ({quantum.footprints_file})")
        checks.check_pixels(quantum, coadd, footprints, ids, n_bad_variance.result())
        footprints.release_pages()  # the checks read every span
        pa.default_memory_pool().release_unused()  # decoded Parquet pages: back to the system, not kept by the pool
        ref["footprint_spans"] = (footprints.span_offsets, footprints.span_y, footprints.span_x0, footprints.span_x1)
        ref["footprints"] = footprints
        prepared = prepared.result() if prepared is not None else None
    except BaseException:
        for pending in (n_bad_variance, prepared):  # nothing reads the planes once this returns
            if isinstance(pending, threads.InThread):
                pending.join()
        verification.wait()
        raise
    verification.wait()
    return QuantumInputs(quantum, coadd, ref, unmatched, prepared)
