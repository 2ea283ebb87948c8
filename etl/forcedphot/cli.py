"""``forcedphot`` command line: simulate, run, sql, status, report.

Errors print one line naming the file or data ID and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import polars as pl

from forcedphot import __version__
from forcedphot.errors import ForcedPhotError

EXIT_OK = 0  # every selected quantum done or up to date (or left to a live run holding it)
EXIT_FAILED_QUANTA = 1
EXIT_ERROR = 2  # bad input or usage
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM


def _progress(args) -> bool:
    """Progress bars only on a terminal (not in cron or systemd logs)."""
    return not args.quiet and sys.stderr.isatty()


def _csv_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _csv_strs(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def cmd_simulate(args) -> int:
    from forcedphot.repository import Repository
    from forcedphot.sim import load_recipe, simulate

    repo = Repository(args.repo)
    if repo.exists() and not args.overwrite:
        raise ForcedPhotError(f"{repo.root}: repository exists; pass --overwrite to simulate into it again")
    overrides = {"seed": args.seed} if args.seed is not None else {}
    recipe = load_recipe(args.recipe, **overrides)
    simulate(recipe, repo.root, progress=_progress(args))
    print(f"simulated recipe {recipe.name!r} (seed {recipe.seed}) into {repo.root}")
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

    from forcedphot.kernels.compile import ensure_compiled

    repo = Repository(args.repo)
    config = _config(args)
    def compile_kernels():  # once per machine, after the inputs are known good and before any worker starts
        from forcedphot.task import kernel_modules

        compiled = ensure_compiled(kernel_modules(config), say=lambda line: print(line, file=sys.stderr))
        if compiled is not None:  # the figure the message announced, and what it took
            print(compiled.summary(), file=sys.stderr)

    summary = run_all(repo, config, tracts=args.tract, patches=args.patch, bands=args.band, force=args.force,
                      jobs=args.jobs, dask=args.dask, progress=_progress(args), n_threads=args.threads,
                      before_measuring=compile_kernels, wait=args.wait, command=["forcedphot", *sys.argv[1:]])
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


def cmd_sql(args) -> int:
    from forcedphot.query import sql

    if sum(x is not None for x in (args.query, args.file, args.example)) != 1:
        raise ForcedPhotError("give one of a SQL query, --file or --example")
    path = args.file or (_example_path(args.example) if args.example else None)
    if path:
        try:
            query = open(path).read()
        except OSError as exc:
            raise ForcedPhotError(f"{path}: cannot read SQL file ({exc.strerror})") from exc
    else:
        query = args.query
    if not query.strip():
        raise ForcedPhotError(f"{path or 'query'}: empty SQL query")
    table = sql(args.repo, query, dict(args.param) or None)
    df = pl.from_arrow(table)
    if args.format == "csv":
        sys.stdout.write(df.write_csv())
    elif args.format == "json":
        sys.stdout.write(df.write_ndjson())
    else:
        with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, tbl_width_chars=200):
            print(df)
    return 0


def cmd_status(args) -> int:
    from forcedphot.plan import plan_quanta
    from forcedphot.repository import Repository
    from forcedphot.runner import quantum_state, read_last_run

    repo = Repository(args.repo)
    config = _config(args)
    states = {}
    rows = []
    for q in plan_quanta(repo, footprint_dataset=config.footprint_dataset):
        state, _ = quantum_state(repo, q, config)
        states[state] = states.get(state, 0) + 1
        rows.append({"tract": q.data_id.tract, "patch": q.data_id.patch, "band": q.data_id.band, "state": state,
                     "missing": ",".join(q.missing)})
    print(f"repository {repo.root}: {len(rows)} quanta: "
          + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    if args.verbose and rows:
        with pl.Config(tbl_rows=-1):
            print(pl.DataFrame(rows))
    if args.history:
        _print_history(repo, args.history)
        return 0
    last = read_last_run(repo)
    if last:
        print(f"last run: {len(last['done'])} measured, {len(last['skipped'])} up to date, "
              f"{len(last['failed'])} failed")
        for _, cause in last["failed"]:
            print(f"  FAILED {cause}")
    return 0


def cmd_report(args) -> int:
    from forcedphot.report import write_report

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

    repo_root, bands, catalog, options = specs_from_args(args)
    repo = ingest_fits(repo_root, bands, catalog, **options)
    refs = sorted(repo.dataset_dir("ref").glob("tract=*/patch=*/ref.parquet"))
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in refs)
    for name, cal in repo.metadata().get("ingest", {}).get("bands", {}).items():
        print(f"band {name}: 1 image unit = {cal['photo_calib_nJy']:.6g} nJy (AB zero point "
              f"{cal['zero_point_ab']:.4f}) from {cal['from']}")
    print(f"ingested {len(bands)} band(s) ({', '.join(b.name for b in bands)}) and {n_rows} reference rows "
          f"in {len(refs)} patch(es) into {repo.root}; next: forcedphot run --repo {repo.root}")
    return 0


def cmd_export_hats(args) -> int:
    from forcedphot.export_hats import export_hats

    out = export_hats(args.repo, args.out, table=args.table, overwrite=args.overwrite,
                      highest_order=args.highest_order)
    print(f"wrote the {args.table} table of {args.repo} as a HATS catalog: {out}")
    return 0


def cmd_bench(args) -> int:
    from forcedphot.bench import main_bench

    print(main_bench(args.repo, band=args.band, psf_subset=args.psf_subset, repeat=args.repeat,
                     progress=_progress(args), json_out=args.json, threads=args.threads,
                     table=True if args.table else None, growth=args.growth, growth_sizes=args.growth_sizes,
                     growth_rss_limit_gb=args.growth_rss_limit, scaling=args.scaling))
    return 0


def _add_verbose(parser, help: str = "log more") -> None:
    # SUPPRESS: absent after the command, the value given before it (or False) stands
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=help)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (systemd stop, a scheduler's kill) ends a run like Ctrl-C: workers stopped, exit 130."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forcedphot", description="Forced photometry on coadds as a columnar ETL job.")
    p.add_argument("--version", action="version", version=f"forcedphot {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (also accepted after the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="simulate a survey into a new repository",
                       description="Simulate a deterministic multi-band survey (recipes in datasets/).")
    s.add_argument("--recipe", default="default", help="recipe name in datasets/ or a TOML path (default: default)")
    s.add_argument("--repo", required=True, help="repository folder to create")
    s.add_argument("--seed", type=int, help="override the recipe's seed")
    s.add_argument("--overwrite", action="store_true", help="simulate into an existing repository")
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
                                   "skymap and object; DuckDB reads the repository's datasets and no other file.")
    q.add_argument("query", nargs="?", help='SQL, e.g. "SELECT band, count(*) FROM forced_source GROUP BY band"')
    q.add_argument("--file", help="read the query from a .sql file (e.g. sql/examples/star_pulls.sql)")
    q.add_argument("--example", metavar="NAME", help="run sql/examples/NAME.sql as installed with forcedphot "
                   "(e.g. depth_5sigma, cone_search)")
    q.add_argument("--param", type=_sql_param, action="append", default=[], metavar="NAME=VALUE",
                   help="value of the query's $NAME parameter (repeatable; numbers are passed as numbers)")
    q.add_argument("--repo", required=True, help="repository folder")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    q.add_argument("--max-rows", type=int, default=40, help="rows shown in table format (-1: all)")
    _add_verbose(q)
    q.set_defaults(func=cmd_sql)

    b = sub.add_parser("bench", help="time our kernels and a whole quantum against SEP and photutils; growth; scaling",
                       description="Simulates the bench recipe into --repo if it is not there, then prints times "
                                   "and ratios (needs the bench extras: SEP and photutils). --growth and --scaling "
                                   "time whole quanta instead (recipes simulated into sub-folders of --repo).")
    b.add_argument("--repo", default="bench-repo", help="bench repository (created if missing; default bench-repo)")
    b.add_argument("--band", default="i", help="band of the quantum to time (default i)")
    b.add_argument("--psf-subset", type=int, default=200, help="sources fitted by photutils, scaled up (default 200)")
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
    b.add_argument("--json", help="also write every figure to this JSON file")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar (there is none off a terminal)")
    b.set_defaults(func=cmd_bench)

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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _interrupt_on_sigterm()
    if argv is None:  # the command itself (not a test calling main)
        from forcedphot.teardown import freeze_gc_at_exit

        freeze_gc_at_exit()
    try:
        return args.func(args)
    except ForcedPhotError as exc:
        print(f"forcedphot: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except FileNotFoundError as exc:
        print(f"forcedphot: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. `forcedphot sql ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("forcedphot: interrupted; completed quanta are kept, partial outputs were not written", file=sys.stderr)
        if argv is None:  # the command itself: everything is written and released; skip ~2 s of teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
