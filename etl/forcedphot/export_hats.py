"""Export the object table or the forced_source table as a HATS catalog (hats-import), for LSDB.

HATS partitions a catalog by HEALPix pixel so LSDB can cone-search and cross-match it lazily.
hats-import does the partitioning; it writes into a hidden folder next to ``--out`` that is
renamed to ``--out`` only when the catalog is complete. Its ``properties`` carry
``forcedphot_writer``: ``--overwrite`` replaces only a catalog with that mark (or an empty folder).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from forcedphot import __version__
from forcedphot.errors import ForcedPhotError, InputError
from forcedphot.io.atomic import atomic_dir, temp_path_for
from forcedphot.io.targets import MARKER_KEY, check_target

TABLES = ("object", "forced_source")
RA, DEC = "coord_ra", "coord_dec"


class ExportError(ForcedPhotError):
    """hats-import failed: the one-line cause."""


def _import_modules():
    try:
        from dask.distributed import Client
        from hats_import.catalog.arguments import ImportArguments
        from hats_import.pipeline import pipeline_with_client
    except ImportError as exc:
        raise InputError(f"exporting HATS needs hats-import ({exc}); pip install 'forcedphot[hats]'") from None
    return Client, ImportArguments, pipeline_with_client


def _quiet_dask() -> None:
    """distributed logs its cluster's start and stop at INFO on its own handlers: keep them for ``-v``."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for name in ("distributed", "hats_import", "hats"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _marker(table: str) -> str:
    return f"forcedphot-{__version__}-export-hats-{table}"


def not_an_export(out: Path) -> str | None:
    """Why a folder is not a catalog ``export hats`` wrote (its ``properties`` carry our marker), or None."""
    try:
        lines = (out / "properties").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    if any(line.split("=", 1)[0].strip() == MARKER_KEY for line in lines):
        return None
    return f"not a HATS catalog written by forcedphot export hats (no {MARKER_KEY} in {out / 'properties'})"


def _stage_input(repo, table: str, staging: Path) -> list[Path]:
    """The Parquet files hats-import reads: the checked forced_source files, or the object table written once."""
    from forcedphot import query

    if table == "forced_source" and getattr(repo, "is_s3", False):  # the committed files, copied whole
        import pyarrow.parquet as pq

        data = repo.arrow_dataset("forced_source").to_table()
        files = [staging / "forced_source.parquet"] if data.num_rows else []
        if files:
            pq.write_table(data, files[0])
    elif table == "forced_source":
        files = _current_files(repo, staging)
    else:
        objects = query.load_object(repo, backend="pandas")
        files = [staging / "object.parquet"] if len(objects) else []
        if files:
            objects.to_parquet(files[0], index=False)
    if not files:
        raise InputError(f"{repo.root}: no {table} rows to export (run `forcedphot run` first)")
    return files


def _current_files(repo, staging: Path) -> list[Path]:
    """The checked forced_source files, those of an older major version rewritten in ``staging`` as the current
    schema (:func:`forcedphot.schema.migrate`, one file at a time): hats-import reads Parquet files as they are."""
    import pyarrow.parquet as pq

    from forcedphot import query
    from forcedphot.schema import load_schema, migrate, version_schema

    groups = query.files_by_major(repo, "forced_source")
    files = groups.pop(load_schema("forced_source").major, [])
    for major, paths in sorted(groups.items()):
        old = version_schema("forced_source", str(major))
        for i, path in enumerate(paths):
            table = pq.read_table(path, schema=old.arrow_schema())
            files.append(staging / f"forced_source_v{major}_{i:06d}.parquet")
            pq.write_table(migrate(table, old.version), files[-1])
    return sorted(files)


def export_hats(repo, out, *, table: str = "object", overwrite: bool = False, highest_order: int = 7,
                pixel_threshold: int = 1_000_000, n_workers: int = 1) -> Path:
    """Write the repository's ``table`` as a HATS catalog at ``out``; returns ``out``."""
    from forcedphot.query import _as_repository

    if table not in TABLES:
        raise InputError(f"table must be one of {', '.join(TABLES)}, not {table!r}")
    repo = _as_repository(repo)
    out = Path(out)
    check_target(out, overwrite=overwrite, foreign=not_an_export)
    Client, ImportArguments, pipeline_with_client = _import_modules()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_path_for(out, "tmpdir")
    staging.mkdir()
    try:
        (staging / "input").mkdir()
        files = _stage_input(repo, table, staging / "input")
        built = staging / out.name  # hats-import names the catalog after its folder
        _quiet_dask()
        with Client(n_workers=n_workers, threads_per_worker=1, processes=False, local_directory=staging / "dask",
                    dashboard_address=":0") as client:  # in-process; a free port, never a fixed one
            try:
                args = ImportArguments(
                    output_path=staging, output_artifact_name=out.name, input_file_list=[str(f) for f in files],
                    file_reader="parquet", ra_column=RA, dec_column=DEC,
                    catalog_type="object" if table == "object" else "source",
                    lowest_healpix_order=0, highest_healpix_order=highest_order, pixel_threshold=pixel_threshold,
                    tmp_dir=staging / "work", resume=False, progress_bar=False,
                    addl_hats_properties={MARKER_KEY: _marker(table)},  # what --overwrite may replace
                )
                pipeline_with_client(args, client)
            except Exception as exc:  # hats-import's own errors: one line naming the target
                cause = " ".join(str(exc).split()) or type(exc).__name__
                raise ExportError(f"{out}: hats-import failed: {cause}") from exc
        if not (built / "properties").exists():
            raise ExportError(f"{out}: hats-import wrote no catalog")
        with atomic_dir(out) as tmp:
            tmp.rmdir()
            built.rename(tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
