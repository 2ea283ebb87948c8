"""The run ledger: an append-only history of runs and quanta in ``runs/ledger/``.

Every record is one small immutable Parquet file (columns in ``schemas/ledger.yaml``) written
with write-then-rename: a kill leaves either the whole record or none (a temporary file that
the next run sweeps), and concurrent runs never write the same file (names hold the run id),
so there is nothing to lock and nothing to repair. DuckDB reads them as the ``runs`` and
``quanta`` views (``sql/ledger_views.sql``).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path

import forcedphot
from forcedphot.io.atomic import process_start
from forcedphot.io.parquet import write_parquet
from forcedphot.schema import load_schema

# view name -> record files under runs/ledger/ (see sql/ledger_views.sql)
RECORD_GLOBS = {"ledger_run_start": "run_start/*.parquet", "ledger_run_end": "run_end/*.parquet",
                "ledger_quanta": "quanta/*/*.parquet"}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    """Sortable by start time and unique across hosts, processes and runs of one process."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def ledger_dir(root: str | Path) -> Path:
    return Path(root) / "runs" / "ledger"


def _write(root, table: str, row: dict, *parts: str) -> None:
    import pyarrow as pa

    from forcedphot.io.store import is_uri

    if is_uri(str(root)):  # an s3 repository: one object per record, put if absent (forcedphot.s3repo)
        from forcedphot.s3repo import write_ledger_record

        write_ledger_record(str(root), "/".join(("runs/ledger", table, *parts)), pa.Table.from_pylist([row]),
                            load_schema("ledger", table))
        return
    path = ledger_dir(root).joinpath(table, *parts)
    write_parquet(pa.Table.from_pylist([row]), path, load_schema("ledger", table))


def record_start(root, run_id: str, *, command: list[str], config, started: str | None = None) -> None:
    pid = os.getpid()
    _write(root, "run_start", {
        "run_id": run_id, "started": started or utc_now(), "command": " ".join(command),
        "config": json.dumps(config.to_dict()), "config_fingerprint": config.fingerprint(),
        "code_version": forcedphot.__version__, "host": socket.gethostname(), "pid": pid,
        "process_start": max(process_start(pid), 0)}, f"{run_id}.parquet")


def record_end(root, run_id: str, *, outcome: str, exit_code: int, counts: dict, seconds: float) -> None:
    _write(root, "run_end", {"run_id": run_id, "finished": utc_now(), "outcome": outcome, "exit_code": exit_code,
                             "seconds": float(seconds), **{f"n_{k}": int(v) for k, v in counts.items()}},
           f"{run_id}.parquet")


def record_quantum(root, run_id: str, data_id, *, status: str, started: str, seconds: float, n_rows=None,
                   timings=None, inputs=None, output_checksum=None, error=None) -> None:
    """One quantum's decision, written by the process that made it (a worker, or the parent)."""
    _write(root, "quanta", {
        "run_id": run_id, "tract": data_id.tract, "patch": data_id.patch, "band": data_id.band, "status": status,
        "started": started, "finished": utc_now(), "seconds": float(seconds), "n_rows": n_rows,
        "timings": json.dumps(timings) if timings is not None else None,
        "inputs": json.dumps(inputs, sort_keys=True) if inputs is not None else None,
        "output_checksum": output_checksum, "error": error, "host": socket.gethostname(), "pid": os.getpid()},
        run_id, f"{data_id.tract}-{data_id.patch}-{data_id.band}.parquet")


def ledger_files(repo) -> dict:
    """{view name: (its table's schema, its record files)} of the ledger_* views."""
    base = ledger_dir(repo.root)
    return {name: (load_schema("ledger", name.removeprefix("ledger_")), sorted(base.glob(pattern)))
            for name, pattern in RECORD_GLOBS.items()}


def create_views(con, repo) -> None:
    """The ``runs`` and ``quanta`` views (and the ledger_* views under them) on a sandboxed connection.

    The record files are checked as every dataset file of a query is (``query.checked_files``: the
    sha256 their writer recorded, hashed once and then remembered) and handed to DuckDB as Arrow
    datasets with the schema's columns (empty when a table has no record yet): the query connection
    itself opens no file.
    """
    import pyarrow.dataset as pads

    from forcedphot.query import checked_files, parquet_format, view_statements

    if getattr(repo, "is_s3", False):  # records listed on the object store (forcedphot.s3repo)
        for name in RECORD_GLOBS:
            con.register(f"_{name}", repo.ledger_dataset(name.removeprefix("ledger_")))
        for stmt in view_statements("ledger_views").values():
            con.execute(stmt)
        return
    for name, (schema, files) in ledger_files(repo).items():
        files = [str(p) for p in checked_files(repo, files, schema)]
        con.register(f"_{name}", pads.dataset(files, schema=schema.arrow_schema(), format=parquet_format()))
    for stmt in view_statements("ledger_views").values():
        con.execute(stmt)
