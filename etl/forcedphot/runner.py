"""Run forced photometry over many quanta: skip up-to-date ones, lock, isolate failures, report.

A quantum is skipped when its output's provenance shows the same config fingerprint, the
same input contents and the same schema major version. A failed quantum leaves any
previous output untouched (writes are atomic) and does not stop the others. Quanta run in
worker processes with ``jobs > 1`` (each quantum is independent, as Rubin's canMultiprocess).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from forcedphot import threads
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import ForcedPhotError
from forcedphot.io.atomic import atomic_path
from forcedphot.io.parquet import read_provenance
from forcedphot.plan import Quantum, plan_quanta
from forcedphot.provenance import input_fingerprints, is_up_to_date
from forcedphot.repository import Repository
from forcedphot.schema import load_schema
from forcedphot.task import ForcedPhotCoaddTask

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    done: list = field(default_factory=list)  # (data_id str, n_rows, seconds)
    skipped: list = field(default_factory=list)  # data_id str (up to date)
    failed: list = field(default_factory=list)  # (data_id str, one-line cause)
    unmatched_footprints: dict = field(default_factory=dict)  # data_id str -> footprint ids with no reference
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def quantum_state(repo: Repository, quantum: Quantum, config: ForcedPhotConfig) -> tuple[str, dict | None]:
    """('missing' | 'up-to-date' | 'stale' | 'new', input fingerprints)."""
    if not quantum.ready:
        return "missing", None
    fingerprints = input_fingerprints(quantum.input_files(config.footprint_dataset))
    out = repo.forced_source_path(quantum.data_id)
    if not out.exists():
        return "new", fingerprints
    stored = read_provenance(out)
    schema_version = load_schema("forced_source").version
    if is_up_to_date(stored, config=config, inputs=fingerprints, schema_version=schema_version):
        return "up-to-date", fingerprints
    return "stale", fingerprints


def _run_one(root: str, config: ForcedPhotConfig, quantum: Quantum, fingerprints: dict,
             n_threads: int | None = None) -> tuple:
    """Worker: run one quantum (under its lock); returns (data_id, status, payload)."""
    did = str(quantum.data_id)
    try:
        threads.configure(n_threads)
        task = ForcedPhotCoaddTask(Repository(root), config)
        res = task.run_quantum(quantum, inputs_fingerprint=fingerprints)
        return did, "done", (res.n_rows, res.timings.get("total", 0.0), res.n_unmatched_footprints)
    except ForcedPhotError as exc:
        return did, "failed", str(exc)
    except Exception as exc:  # a bug or an unexpected input: still only this quantum fails
        return did, "failed", f"{did}: {type(exc).__name__}: {exc}"


def run_all(repo: Repository, config: ForcedPhotConfig | None = None, *, tracts=None, patches=None, bands=None,
            force: bool = False, jobs: int = 1, dask: str | None = None, progress: bool = True,
            n_threads: int | None = None, before_measuring=None) -> RunSummary:
    """Run every selected quantum that is not up to date.

    ``jobs > 1`` runs quanta in local worker processes; ``dask`` is the address of a Dask
    distributed scheduler (``tcp://host:8786``) or ``"local"`` for a LocalCluster of ``jobs``
    workers: quanta are then submitted to the cluster's workers, which must see the repository path.
    ``n_threads``: threads per quantum (default: cores / quanta running at once, see
    :mod:`forcedphot.threads`); results are the same for any count. ``before_measuring()`` is called
    once, when there is a quantum to measure, before any is started (the CLI compiles the kernels there).
    """
    config = config or ForcedPhotConfig()
    t0 = time.perf_counter()
    summary = RunSummary()
    quanta = plan_quanta(repo, tracts=tracts, patches=patches, bands=bands, footprint_dataset=config.footprint_dataset)
    todo = []
    for q in quanta:
        state, fingerprints = quantum_state(repo, q, config)
        if state == "missing":
            summary.failed.append((str(q.data_id), f"{q.data_id}: missing inputs: {', '.join(q.missing)}"))
        elif state == "up-to-date" and not force:
            summary.skipped.append(str(q.data_id))
        else:
            todo.append((q, fingerprints))
    if todo and before_measuring is not None:
        before_measuring()
    bar = tqdm(total=len(todo), desc="forced photometry", unit="quantum", disable=not progress)

    def record(result):
        did, status, payload = result
        if status == "done":
            n_rows, seconds, unmatched = payload
            summary.done.append((did, n_rows, round(seconds, 3)))
            if unmatched:
                summary.unmatched_footprints[did] = unmatched
                log.warning("%s: %d footprint id(s) match no reference", did, unmatched)
        else:
            summary.failed.append((did, payload))
        bar.update()

    concurrent = max(1, min(jobs, len(todo))) if (dask or jobs > 1) else 1
    n_threads = n_threads or threads.default_threads(concurrent)
    if dask and todo:
        _run_on_dask(dask, jobs, repo, config, todo, record, n_threads)
    elif jobs > 1 and len(todo) > 1:
        # spawned (not forked) workers: a fork of a process with live thread pools is unsafe
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, str(repo.root), config, q, fp, n_threads) for q, fp in todo]
            for fut in as_completed(futures):
                record(fut.result())
    else:
        for q, fp in todo:
            record(_run_one(str(repo.root), config, q, fp, n_threads))
    bar.close()
    summary.seconds = time.perf_counter() - t0
    _write_run_log(repo, summary, config)
    return summary


def _run_on_dask(address: str, jobs: int, repo: Repository, config: ForcedPhotConfig, todo, record,
                 n_threads: int) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed as dask_completed
    except ImportError as exc:
        raise ForcedPhotError("--dask needs the 'distributed' package: pip install 'forcedphot[dask]'") from exc
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # quiet unless -v
        logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = LocalCluster(n_workers=max(jobs, 1), threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.getLogger().getEffectiveLevel()) if address == "local" else None
    try:
        with Client(cluster or address) as client:
            futures = [client.submit(_run_one, str(repo.root.resolve()), config, q, fp, n_threads,
                                     pure=False) for q, fp in todo]
            for fut in dask_completed(futures):
                record(fut.result())
    finally:
        if cluster is not None:
            cluster.close()


def _write_run_log(repo: Repository, summary: RunSummary, config: ForcedPhotConfig) -> None:
    path = repo.root / "runs" / "last_run.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "config_fingerprint": config.fingerprint(), **asdict(summary)}, indent=1))


def read_last_run(repo: Repository) -> dict | None:
    path = repo.root / "runs" / "last_run.json"
    return json.loads(path.read_text()) if path.exists() else None
