"""``forcedphot bench --sql-scale N,N,...``: SQL latency against the number of output files, before and after compact.

Each size N builds a repository of N synthetic forced_source outputs in one tract (``REPO/sql-scale-N``): N/6
patches x 6 bands, ``ROWS`` rows each, every column of the schema filled. Each file is written by the real writer
(``io.parquet.write_parquet``: atomic, fsynced, checksummed), its manifest entry read from its footer and its bytes
hashed (``verify_file``) as a run does, in one worker process per core; what is synthetic besides the rows (no coadd
is read) is the commit: the parent commits ``CHUNK`` outputs per manifest generation
(``io.manifest.commit_quanta``) and saves their verified entries once per chunk, where a run commits each quantum
as it finishes. The states are measured in place and ``compact`` consumes the build (a later call builds again).

For each state of the repository - ``listing`` (the manifest removed: every file listed and stat'ed, as
before manifests), ``manifest`` and ``compacted`` (after ``compact``) - it reports the warm latency (best of
``REPEAT`` after one warm-up, in this process: the OS caches and the verified state are warm, the DuckDB
connection and the Arrow dataset are rebuilt by each query as in any ``sql()`` call) of

- ``SELECT count(*) FROM forced_source``
- ``SELECT objectId, band, psfFlux FROM forced_source WHERE objectId = X`` (an object of the middle patch),

and of the file checks alone (``query.dataset_files``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ROWS = 4
BANDS = "ugrizy"
REPEAT = 3
COUNTER_BITS = 20
QUERIES = {"count": "SELECT count(*) AS n FROM forced_source",
           "point": "SELECT objectId, band, psfFlux FROM forced_source WHERE objectId = $id",
           # a count that reads a column: every file is opened (what count(*) cost before it read the manifests)
           "scan": "SELECT count(objectId) AS n FROM forced_source"}


def object_id(tract: int, patch: int, counter: int) -> int:
    return ((tract * 10_000 + patch) << COUNTER_BITS) | counter


def _template(rows: int):
    import numpy as np
    import pyarrow as pa

    from forcedphot.schema import load_schema

    schema = load_schema("forced_source").arrow_schema()
    rng = np.random.default_rng(0)
    cols = {}
    for f in schema:
        if pa.types.is_floating(f.type):
            cols[f.name] = pa.array(rng.normal(size=rows), f.type)
        elif pa.types.is_boolean(f.type):
            cols[f.name] = pa.array(np.zeros(rows, bool))
        elif pa.types.is_integer(f.type):
            cols[f.name] = pa.array(np.arange(rows), f.type)
        elif pa.types.is_string(f.type):
            cols[f.name] = pa.array(["x"] * rows, f.type)
        else:
            cols[f.name] = pa.nulls(rows, f.type)
    return pa.table(cols, schema=schema)


def _write_slice(root: str, ks: list[int], rows: int) -> list[tuple]:
    """Write the synthetic outputs ``ks`` through the real writer; return (patch, band, path, manifest entry,
    verified Entry) of each (run in a worker process: the files, their entries and their hashes are real)."""
    import numpy as np
    import pyarrow as pa

    from forcedphot.io.manifest import file_entry
    from forcedphot.io.parquet import write_parquet
    from forcedphot.io.verified import verify_file
    from forcedphot.repository import DataId, Repository
    from forcedphot.schema import load_schema

    repo, schema = Repository(root), load_schema("forced_source")
    template = _TEMPLATES.get(rows)
    if template is None:
        template = _TEMPLATES[rows] = _template(rows)
    names = template.column_names
    out = []
    for k in ks:
        patch, b = divmod(k, len(BANDS))
        ids = np.array([object_id(0, patch, c) for c in range(1, rows + 1)], np.int64)
        table = template
        for name, values in (("objectId", pa.array(ids)), ("tract", pa.array(np.zeros(rows, np.int64))),
                             ("patch", pa.array(np.full(rows, patch, np.int64))), ("band", pa.array([BANDS[b]] * rows))):
            table = table.set_column(names.index(name), name, values.cast(template.schema.field(name).type))
        path = repo.forced_source_path(DataId(0, patch, BANDS[b]))
        write_parquet(table, path, schema, provenance={"synthetic": True})
        out.append((patch, BANDS[b], str(path), file_entry(path, quanta=[[patch, BANDS[b]]]), tuple(verify_file(path))))
    return out


_TEMPLATES: dict = {}
CHUNK = 200  # outputs per worker task, committed to the manifest together


def build(root: str | Path, n_files: int, *, rows: int = ROWS, workers: int | None = None,
          progress: bool = False) -> Path:
    """A repository of ``n_files`` synthetic outputs in tract 0 (kept: a second call reuses it).

    Each file is written by the real writer (``write_parquet``: atomic, fsynced, checksummed) in ``workers``
    processes (default: one per core), its manifest entry and its verification (sha256 of every byte) made
    there; the parent commits them ``CHUNK`` at a time (``manifest.commit_quanta``: one manifest generation per
    chunk, where a run commits each quantum as it finishes) and records them verified (one save per chunk)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from forcedphot.io.manifest import commit_quanta
    from forcedphot.io.verified import Entry, verified_files
    from forcedphot.repository import Repository

    root = Path(root)
    done = root / "sql-scale.json"
    if done.exists() and json.loads(done.read_text()).get("files") == n_files:
        return root
    if root.exists():
        shutil.rmtree(root)
    Repository(root).create(description=f"sql-scale bench: {n_files} synthetic forced_source outputs")
    verified = verified_files(root)
    workers = workers or os.cpu_count() or 1
    chunks = [list(range(k, min(k + CHUNK, n_files))) for k in range(0, n_files, CHUNK)]
    t0, written = time.perf_counter(), 0
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(_write_slice, [str(root)] * len(chunks), chunks, [rows] * len(chunks)):
            commit_quanta(root, 0, [(p, b, path) for p, b, path, _, _ in result],
                          entries={path: entry for _, _, path, entry, _ in result})
            for _, _, path, _, fields in result:
                verified.remember(verified._rel(path), Entry(*fields))
            verified.save()
            written += len(result)
            if progress and (written // CHUNK) % 10 == 0:
                print(f"  {written}/{n_files} files ({(time.perf_counter() - t0) / written * 1e3:.1f} ms each)", flush=True)
    done.write_text(json.dumps({"files": n_files, "rows": rows, "workers": workers,
                                "build_seconds": round(time.perf_counter() - t0, 1)}))
    return root


SLOW_S = 20.0  # a query whose first call took longer is timed once (that call), not warm best-of-REPEAT


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _best(fn, repeat: int) -> tuple[float, float, bool]:
    """(best wall-clock seconds, best CPU seconds of this process, warm) of ``repeat`` calls after a warm-up;
    a call slower than ``SLOW_S`` is timed once (warm False: its figure is the first call's)."""
    first = _timed(fn)  # warm-up
    if first[0] > SLOW_S:
        return first[0], first[1], False
    times = [_timed(fn) for _ in range(repeat)]
    return min(t for t, _ in times), min(c for _, c in times), True


def measure(root: str | Path, n_files: int, *, repeat: int = REPEAT, scan: bool = True) -> dict:
    """Latencies of the repository at ``root`` (seconds), and the answers (which must agree).
    ``scan``: also time ``count(objectId)`` (every file read)."""
    from forcedphot import query

    patch = n_files // len(BANDS) // 2
    oid = object_id(0, patch, 2)
    answers = {"count": query.sql(root, QUERIES["count"]).column("n")[0].as_py(),
               "point": sorted(query.sql(root, QUERIES["point"], {"id": oid}).column("band").to_pylist())}
    calls = [("count", lambda: query.sql(root, QUERIES["count"])),
             ("point", lambda: query.sql(root, QUERIES["point"], {"id": oid})),
             ("files", lambda: query.dataset_files(root, "forced_source"))]
    if scan:
        answers["scan"] = query.sql(root, QUERIES["scan"]).column("n")[0].as_py()
        calls.insert(2, ("scan", lambda: query.sql(root, QUERIES["scan"])))
    out = {"answers": answers}
    for key, fn in calls:
        out[f"{key}_s"], out[f"{key}_cpu_s"], warm = _best(fn, repeat)
        if not warm:
            out.setdefault("once", []).append(key)
    return out


def footer_bytes(root: str | Path) -> int:
    """The Parquet footer (metadata) bytes of the first forced_source file of the repository at ``root``."""
    import pyarrow.parquet as pq

    path = next(iter(sorted(Path(root, "forced_source").rglob("*.parquet"))))
    return pq.read_metadata(path).serialized_size


LISTING_MAX = 2000  # the listing state (no manifest: ~10 ms per file per query) is measured up to this many files


def run_sql_scale(bench_root: str | Path, sizes=(100, 1000, 10000), *, repeat: int = REPEAT,
                  progress: bool = False, workers: int | None = None, listing_max: int = LISTING_MAX,
                  scan_max: int | None = None, compact_max: int | None = None) -> list[dict]:
    """Build each size (or reuse its build) and time its states in place: ``listing`` (the manifest moved
    aside; up to ``listing_max`` files), ``manifest``, then ``compacted`` after ``compact`` (which consumes the
    build: the next call builds it again). ``scan_max``: time ``count(objectId)`` only up to this many files;
    ``compact_max``: compact (and measure ``compacted``) only up to this many files (above it the build is kept)."""
    from forcedphot.compact import compact
    from forcedphot.io.manifest import manifest_path

    rows = []
    for n in sizes:
        root = Path(bench_root) / f"sql-scale-{n}"
        t0 = time.perf_counter()
        build(root, n, workers=workers, progress=progress)
        built = time.perf_counter() - t0
        done = json.loads((root / "sql-scale.json").read_text())
        scan = scan_max is None or n <= scan_max
        row = {"files": n, "rows_per_file": ROWS, "build_s": round(built, 1),
               "build_workers": done.get("workers"), "footer_bytes": footer_bytes(root)}
        compacting = compact_max is None or n <= compact_max
        if compacting:
            (root / "sql-scale.json").unlink()  # measured in place: compacted below, so built again next time
        mpath = manifest_path(root, 0)
        if n <= listing_max:
            aside = mpath.with_name(mpath.name + ".aside")
            mpath.rename(aside)
            try:
                row["listing"] = measure(root, n, repeat=repeat, scan=scan)
            finally:
                aside.rename(mpath)
        row["manifest"] = measure(root, n, repeat=repeat, scan=scan)
        if progress:
            print(json.dumps({"files": n, "manifest": row["manifest"], "listing": row.get("listing")}), flush=True)
        if compacting:
            t0 = time.perf_counter()
            summary = compact(root, 0, grace=0)[0]  # the old files removed in the timed call, as before the grace period
            row["compact_s"] = round(time.perf_counter() - t0, 2)
            row["parts"] = summary["parts"]
            row["compacted"] = measure(root, n, repeat=repeat, scan=scan)
            shutil.rmtree(root)
        if progress:
            print(format_rows([row]), flush=True)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'files':>6} {'state':>9} {'count(*) s (cpu)':>17} {'objectId= s (cpu)':>18} "
             f"{'count(objectId) s (cpu)':>24} {'file checks s':>13}  answers"]
    for r in rows:
        for state in ("listing", "manifest", "compacted"):
            m = r.get(state)
            if m is None:
                lines.append(f"{r['files']:>6} {state:>9} not measured (above its limit of files)")
                continue
            scan = (f"{m['scan_s']:>15.3f} ({m['scan_cpu_s']:6.3f})" if "scan_s" in m else f"{'-':>24}")
            once = f"; timed once (> {SLOW_S:.0f} s): {', '.join(m['once'])}" if m.get("once") else ""
            lines.append(f"{r['files']:>6} {state:>9} {m['count_s']:>8.3f} ({m['count_cpu_s']:6.3f}) "
                         f"{m['point_s']:>9.3f} ({m['point_cpu_s']:6.3f}) {scan} "
                         f"{m['files_s']:>13.3f}  {m['answers']['count']} rows, {len(m['answers']['point'])} at the id{once}")
        compacted = (f"compact: {r['compact_s']:.1f} s -> {r['parts']} parts" if "compact_s" in r
                     else "not compacted (more than the compact limit of files)")
        lines.append(f"{'':>6} {compacted}; build {r['build_s']:.0f} s "
                     f"({r.get('build_workers')} processes); footer {r.get('footer_bytes', 0)} bytes per output file")
    return "\n".join(lines)


def main_sql_scale(bench_root, *, sizes, json_out=None, progress=True) -> str:
    rows = run_sql_scale(bench_root, sizes, progress=progress)
    if json_out:
        Path(json_out).write_text(json.dumps({"sql_scale": rows}, indent=2))
    return format_rows(rows)
