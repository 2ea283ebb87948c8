"""``forcedphot bench --sql-scale N,N,...``: SQL latency against the number of output files, before and after compact.

Each size N builds (once; kept in ``REPO/sql-scale-N``) a repository of N synthetic forced_source outputs in one
tract: N/6 patches x 6 bands, ``ROWS`` rows each, every column of the schema filled. They are written as the
runner writes them: the real writer (``io.parquet.write_parquet``: atomic, checksummed), committed to the
tract's manifest (``io.manifest.commit_quantum``) and recorded verified (``VerifiedFiles.record_written``).
Only the measurement is synthetic (no coadd is read): the files, their commit and their verification are real.

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


def build(root: str | Path, n_files: int, *, rows: int = ROWS, progress: bool = False) -> Path:
    """A repository of ``n_files`` synthetic outputs in tract 0 (kept: a second call reuses it)."""
    import numpy as np
    import pyarrow as pa

    from forcedphot.io.manifest import commit_quantum
    from forcedphot.io.parquet import write_parquet
    from forcedphot.io.verified import verified_files
    from forcedphot.repository import DataId, Repository
    from forcedphot.schema import load_schema

    root = Path(root)
    done = root / "sql-scale.json"
    if done.exists() and json.loads(done.read_text()).get("files") == n_files:
        return root
    if root.exists():
        shutil.rmtree(root)
    repo = Repository(root).create(description=f"sql-scale bench: {n_files} synthetic forced_source outputs")
    schema = load_schema("forced_source")
    template = _template(rows)
    names = template.column_names
    verified = verified_files(root)
    t0 = time.perf_counter()
    for k in range(n_files):
        patch, b = divmod(k, len(BANDS))
        data_id = DataId(0, patch, BANDS[b])
        ids = np.array([object_id(0, patch, c) for c in range(1, rows + 1)], np.int64)
        table = template
        for name, values in (("objectId", pa.array(ids)), ("tract", pa.array(np.zeros(rows, np.int64))),
                             ("patch", pa.array(np.full(rows, patch, np.int64))), ("band", pa.array([BANDS[b]] * rows))):
            table = table.set_column(names.index(name), name, values.cast(template.schema.field(name).type))
        path = repo.forced_source_path(data_id)
        write_parquet(table, path, schema, provenance={"synthetic": True})
        commit_quantum(root, 0, patch, BANDS[b], path)
        verified.record_written(path)
        if progress and (k + 1) % 500 == 0:
            print(f"  {k + 1}/{n_files} files ({(time.perf_counter() - t0) / (k + 1) * 1e3:.0f} ms each)", flush=True)
    done.write_text(json.dumps({"files": n_files, "rows": rows, "build_seconds": round(time.perf_counter() - t0, 1)}))
    return root


def _best(fn, repeat: int) -> tuple[float, float]:
    """(best wall-clock seconds, best CPU seconds of this process) of ``repeat`` calls after a warm-up."""
    fn()  # warm-up
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), min(cpu)


def measure(root: str | Path, n_files: int, *, repeat: int = REPEAT) -> dict:
    """Latencies of the repository at ``root`` (seconds), and the answers (which must agree)."""
    from forcedphot import query

    patch = n_files // len(BANDS) // 2
    oid = object_id(0, patch, 2)
    answers = {"count": query.sql(root, QUERIES["count"]).column("n")[0].as_py(),
               "point": sorted(query.sql(root, QUERIES["point"], {"id": oid}).column("band").to_pylist())}
    answers["scan"] = query.sql(root, QUERIES["scan"]).column("n")[0].as_py()
    out = {"answers": answers}
    for key, fn in (("count", lambda: query.sql(root, QUERIES["count"])),
                    ("point", lambda: query.sql(root, QUERIES["point"], {"id": oid})),
                    ("scan", lambda: query.sql(root, QUERIES["scan"])),
                    ("files", lambda: query.dataset_files(root, "forced_source"))):
        out[f"{key}_s"], out[f"{key}_cpu_s"] = _best(fn, repeat)
    return out


def footer_bytes(root: str | Path) -> int:
    """The Parquet footer (metadata) bytes of the first forced_source file of the repository at ``root``."""
    import pyarrow.parquet as pq

    path = next(iter(sorted(Path(root, "forced_source").rglob("*.parquet"))))
    return pq.read_metadata(path).serialized_size


def run_sql_scale(bench_root: str | Path, sizes=(100, 1000, 10000), *, repeat: int = REPEAT,
                  progress: bool = False) -> list[dict]:
    from forcedphot.compact import compact
    from forcedphot.io.manifest import manifest_path

    rows = []
    for n in sizes:
        root = Path(bench_root) / f"sql-scale-{n}"
        t0 = time.perf_counter()
        build(root, n, progress=progress)
        built = time.perf_counter() - t0
        work = Path(bench_root) / f"sql-scale-{n}-work"  # the states are measured on a copy: the build is kept
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(root, work)
        row = {"files": n, "rows_per_file": ROWS, "build_s": round(built, 1), "footer_bytes": footer_bytes(work)}
        mpath = manifest_path(work, 0)
        saved = mpath.read_bytes()
        mpath.unlink()
        row["listing"] = measure(work, n, repeat=repeat)
        mpath.write_bytes(saved)
        row["manifest"] = measure(work, n, repeat=repeat)
        t0 = time.perf_counter()
        summary = compact(work, 0)[0]
        row["compact_s"] = round(time.perf_counter() - t0, 2)
        row["parts"] = summary["parts"]
        row["compacted"] = measure(work, n, repeat=repeat)
        shutil.rmtree(work)
        if progress:
            print(format_rows([row]), flush=True)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'files':>6} {'state':>9} {'count(*) s (cpu)':>17} {'objectId= s (cpu)':>18} "
             f"{'count(objectId) s (cpu)':>24} {'file checks s':>13}  answers"]
    for r in rows:
        for state in ("listing", "manifest", "compacted"):
            m = r[state]
            lines.append(f"{r['files']:>6} {state:>9} {m['count_s']:>8.3f} ({m['count_cpu_s']:6.3f}) "
                         f"{m['point_s']:>9.3f} ({m['point_cpu_s']:6.3f}) {m['scan_s']:>15.3f} ({m['scan_cpu_s']:6.3f}) "
                         f"{m['files_s']:>13.3f}  {m['answers']['count']} rows, {len(m['answers']['point'])} at the id")
        lines.append(f"{'':>6} compact: {r['compact_s']:.1f} s -> {r['parts']} parts; build {r['build_s']:.0f} s; "
                     f"footer {r.get('footer_bytes', 0)} bytes per output file")
    return "\n".join(lines)


def main_sql_scale(bench_root, *, sizes, json_out=None, progress=True) -> str:
    rows = run_sql_scale(bench_root, sizes, progress=progress)
    if json_out:
        Path(json_out).write_text(json.dumps({"sql_scale": rows}, indent=2))
    return format_rows(rows)
