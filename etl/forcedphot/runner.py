"""Run forced photometry over many quanta: lock, skip up-to-date ones, isolate failures, report.

A quantum is skipped when its output's provenance shows the same config fingerprint, the
same input contents and the same schema major version. That decision is taken by the worker
*after* it holds the quantum's lock, so concurrent runs never measure a quantum twice: one
finished by another run is up to date, one another live run holds is "running elsewhere"
(or waited for with ``wait=True``). A failed quantum leaves any previous output untouched
(writes are atomic) and does not stop the others. Workers (``jobs > 1``, or Dask) start
before planning, and exit when the run's process dies; every decision goes to the run
ledger (:mod:`forcedphot.ledger`).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import importlib.util
import json
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from forcedphot import exits, ledger, threads
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import ForcedPhotError, InputError
from forcedphot.io.atomic import atomic_path, sweep_temp
from forcedphot.io.verified import verified_files
from forcedphot.plan import Quantum, plan_quanta
from forcedphot.provenance import (UP_TO_DATE_KEYS, StatusMemo, input_fingerprints, is_up_to_date,
                                   up_to_date_provenance)
from forcedphot.repository import DataId, Repository
from forcedphot.schema import schema_version as schema_version_of
from forcedphot.teardown import freeze_gc_at_exit

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5  # how often a worker checks that the run's process is alive


@dataclass
class RunSummary:
    done: list = field(default_factory=list)  # (data_id str, n_rows, seconds)
    skipped: list = field(default_factory=list)  # data_id str (up to date)
    failed: list = field(default_factory=list)  # (data_id str, one-line cause)
    elsewhere: list = field(default_factory=list)  # data_id str (locked by another live run)
    removed: list = field(default_factory=list)  # outputs of quanta that no longer exist
    unmatched_footprints: dict = field(default_factory=dict)  # data_id str -> footprint ids with no reference
    seconds: float = 0.0
    run_id: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed


def output_state(repo: Repository, quantum: Quantum, config: ForcedPhotConfig, fingerprints: dict, *,
                 memo: StatusMemo | None = None) -> str:
    """'new' | 'up-to-date' | 'stale' | 'corrupt' for a ready quantum whose inputs have these fingerprints.

    An output whose bytes no longer match the digest its writer recorded (or that is not readable
    Parquet) is 'corrupt', never up to date: it is measured again. Its bytes are hashed once and then
    remembered while the file's stat is unchanged (:mod:`forcedphot.io.verified`); with ``memo`` so is its
    provenance (``forcedphot status``).
    """
    out = repo.forced_source_path(quantum.data_id)
    if not _loose_output(repo, quantum.data_id, out):
        return _compacted_state(repo, quantum.data_id, config, fingerprints) or "new"
    if output_corruption(repo, out) is not None:
        return "corrupt"
    return _provenance_state(out, config, fingerprints, memo=memo)


def _loose_output(repo: Repository, data_id, out) -> bool:
    """Is there a quantum output at ``out`` that counts? Not if the tract's manifest holds the quantum's rows in
    compacted parts: a file there is then one compact retired (kept for readers, see compact.py) or a run's
    uncommitted output."""
    if not out.exists():
        return False
    from forcedphot.io.manifest import compacted_quantum

    return compacted_quantum(repo.root, data_id.tract, data_id.patch, data_id.band) is None


def _provenance_state(out, config: ForcedPhotConfig, fingerprints: dict, *, memo: StatusMemo | None = None) -> str:
    """'up-to-date' | 'stale' of an intact output, from the provenance it records."""
    stored = up_to_date_provenance(out) if memo is None else memo.provenance(out)
    schema_version = schema_version_of("forced_source")
    if is_up_to_date(stored, config=config, inputs=fingerprints, schema_version=schema_version):
        return "up-to-date"
    return "stale"


def _compacted_state(repo: Repository, data_id, config: ForcedPhotConfig, fingerprints: dict) -> str | None:
    """'up-to-date' | 'stale' of a quantum whose rows ``forcedphot compact`` moved into compacted parts (the
    provenance its output had is kept in the tract's manifest); None if it has none there."""
    from forcedphot.io.manifest import compacted_quantum

    record = compacted_quantum(repo.root, data_id.tract, data_id.patch, data_id.band)
    if record is None:
        return None
    stored = {k: (record.get("provenance") or {}).get(k) for k in UP_TO_DATE_KEYS}
    up = is_up_to_date(stored, config=config, inputs=fingerprints, schema_version=schema_version_of("forced_source"))
    return "up-to-date" if up else "stale"


def output_corruption(repo: Repository, out) -> str | None:
    """None if the output ``out`` is intact (verified now, or earlier with its stat unchanged), else the cause."""
    verified = verified_files(repo.root)
    verified.refresh()
    try:
        verified.entry(out)
    except InputError as exc:
        return str(exc)
    finally:
        verified.save()
    return None


def quantum_state(repo: Repository, quantum: Quantum, config: ForcedPhotConfig, *,
                  memo: StatusMemo | None = None) -> tuple[str, dict | None]:
    """('missing' | 'up-to-date' | 'stale' | 'corrupt' | 'new', input fingerprints); with ``memo`` the
    fingerprints and provenance of files whose stat it remembers are not read again (``memo.save()`` after)."""
    if not quantum.ready:
        return "missing", None
    files = quantum.input_files(config.footprint_dataset)
    fingerprints = input_fingerprints(files) if memo is None else memo.input_fingerprints(files)
    return output_state(repo, quantum, config, fingerprints, memo=memo), fingerprints


@dataclass(frozen=True)
class Job:
    """What a worker needs to decide and measure one quantum."""

    root: str
    run_id: str
    config: ForcedPhotConfig
    quantum: Quantum
    force: bool
    wait: bool
    run_started: float  # time.time() at the run's start: outputs newer than this were written during it
    n_threads: int | None
    watch_pid: int | None = None  # Dask workers of a LocalCluster: exit when this process dies
    core_share: str | None = None  # the run's threads.CoreShare file: threads follow the quanta measuring now


def _run_one(job: Job) -> tuple:
    """Worker: under the quantum's lock, decide (up to date?) and measure; returns (data_id, status, payload)."""
    from filelock import FileLock, Timeout

    if job.watch_pid is not None:  # a LocalCluster worker, our child (not a caller's own process)
        watch_parent(job.watch_pid)
        freeze_gc_at_exit()  # its exit, which the cluster's close waits for
    q = job.quantum
    did = str(q.data_id)
    repo = Repository(job.root)
    started, t0 = ledger.utc_now(), time.perf_counter()
    lock_path = repo.lock_path(q.data_id)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    note = dict(status="failed", payload=None, inputs=None, checksum=None, n_rows=None, timings=None)
    try:
        lock.acquire(timeout=-1 if job.wait else 0)
    except Timeout:
        note.update(status="running-elsewhere", payload=f"{did}: locked by another run ({lock_path})")
    else:
        try:
            _decide_and_measure(job, repo, note)
        except ForcedPhotError as exc:
            note.update(status="failed", payload=str(exc))
        except Exception as exc:  # a bug or an unexpected input: still only this quantum fails
            note.update(status="failed", payload=f"{did}: {type(exc).__name__}: {exc}")
        finally:
            lock.release()
    ledger.record_quantum(job.root, job.run_id, q.data_id, status=note["status"], started=started,
                          seconds=time.perf_counter() - t0, n_rows=note["n_rows"], timings=note["timings"],
                          inputs=note["inputs"], output_checksum=note["checksum"],
                          error=note["payload"] if note["status"] in ("failed", "running-elsewhere") else None)
    return did, note["status"], note["payload"]


def _decide_and_measure(job: Job, repo: Repository, note: dict) -> None:
    from forcedphot.task import ForcedPhotCoaddTask

    q = job.quantum
    fingerprints = input_fingerprints(q.input_files(job.config.footprint_dataset))
    note["inputs"] = fingerprints
    out = repo.forced_source_path(q.data_id)
    present = _loose_output(repo, q.data_id, out)
    corrupt = output_corruption(repo, out) if present else None  # checked once, kept for the warning
    compacted = None if present else _compacted_state(repo, q.data_id, job.config, fingerprints)
    state = (compacted or "new") if not present else "corrupt" if corrupt else _provenance_state(
        out, job.config, fingerprints)
    verified = verified_files(repo.root)
    if compacted == "up-to-date" and not job.force:  # its rows are in the tract's compacted parts
        from forcedphot.io.manifest import compacted_quantum

        record = compacted_quantum(repo.root, q.data_id.tract, q.data_id.patch, q.data_id.band) or {}
        note.update(status="up-to-date", checksum=record.get("sha256"))
        return
    # --force re-measures what was up to date when the run started, not what another run just wrote
    if state == "up-to-date" and compacted is None and (not job.force or out.stat().st_mtime >= job.run_started):
        from forcedphot.io.manifest import ensure_committed

        ensure_committed(repo.root, q.data_id.tract, q.data_id.patch, q.data_id.band, out)
        note.update(status="up-to-date", checksum=verified.entry(out).digest)
        return
    threads.configure(job.n_threads)
    with threads.sharing(job.core_share):
        res = ForcedPhotCoaddTask(repo, job.config).run_quantum(q, inputs_fingerprint=fingerprints, locked=True)
    # the whole-file digest the ledger records, and the output recorded as verified (one pass over its bytes)
    note.update(status="done", payload=(res.n_rows, res.timings.get("total", 0.0), res.n_unmatched_footprints,
                                        corrupt),
                checksum=verified.record_written(res.path).digest, n_rows=res.n_rows,
                timings={k: round(v, 4) for k, v in res.timings.items()})


# -- workers -------------------------------------------------------------------------------------
_watched: set = set()


def watch_parent(pid: int) -> None:
    """Exit this worker as soon as process ``pid`` (the run, our parent) is gone: no orphan holds a lock."""
    if pid in _watched:
        return
    _watched.add(pid)
    if sys.platform.startswith("linux") and os.getppid() == pid:
        try:  # the kernel kills us when the parent dies (PR_SET_PDEATHSIG = 1)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != pid:
        os._exit(1)

    def watchdog():
        while os.getppid() == pid:
            time.sleep(WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watchdog, name="forcedphot-parent-watch", daemon=True).start()


def _pool_worker_init(parent_pid: int) -> None:
    """A pool worker: Ctrl-C is the parent's to handle (it stops us); die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:  # a forked worker has the run's handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    watch_parent(parent_pid)
    freeze_gc_at_exit()
    import forcedphot.task  # noqa: F401  (spawned: imports overlap the parent's planning; forked: done)


def _numba_threads_started() -> bool:
    """Has this process started numba's thread pool (a fork would copy it half-alive)?"""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return parallel is not None and getattr(parallel, "_is_initialized", True)


def fork_is_safe() -> bool:
    """May the run's workers be forked from this process now (and so start with its imports)?

    Yes on Linux, before the run starts a thread: when this process runs only its main Python
    thread and has not started numba's thread pool. The native threads that libraries start at
    import (OpenBLAS's pool, jemalloc's background thread) re-arm themselves in the child
    (pthread_atfork). Elsewhere (macOS, a caller's process with threads of its own, a second run
    in a process that has measured) workers are spawned: fresh interpreters that import again.
    """
    if not sys.platform.startswith("linux") or threading.active_count() > 1 or _numba_threads_started():
        return False
    import forcedphot.task  # noqa: F401  (imported once here, inherited by every worker)

    return threading.active_count() == 1


@contextlib.contextmanager
def _forking():
    """Python 3.12+ warns at every fork of a process with any OS thread, OpenBLAS's included; these
    forks happen before the run starts one (:func:`fork_is_safe`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning)
        yield


def pool_context():
    """The start method of the pool's workers: ``fork`` where :func:`fork_is_safe`, else ``spawn``.

    A forked worker skips ~1.2 s of imports: 8 bench quanta with --jobs 2 took 26.6 / 25.8 / 27.9 s
    forked against 32.1 / 28.6 / 28.8 s spawned, in turns (README, scaling).
    """
    return multiprocessing.get_context("fork" if fork_is_safe() else "spawn")


def _started() -> bool:
    return True


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _InProcess:
    """Quanta measured one after the other in this process, as their results are asked for."""

    def ready(self) -> None:
        pass

    def submit(self, fn, *args):
        return lambda: fn(*args)

    def completed(self, futures):
        for fut in futures:
            yield fut()

    def stop(self, *, interrupted: bool) -> None:
        pass


class _Pool:
    """``jobs`` quanta at a time: ``jobs - 1`` workers and this process.

    Workers are forked before the run starts any thread, or else spawned (:func:`pool_context`),
    and start while this process plans; this process measures quanta too, from the first second,
    instead of waiting for them (a worker's start-up, ~3 s of imports and kernel loading, is
    otherwise a whole core idle). A feeder thread hands each worker its next quantum as soon as
    it finishes one; this process takes the others one by one between collecting results.
    """

    def __init__(self, jobs: int):
        self.n_workers = max(1, jobs - 1)
        self.pool = ProcessPoolExecutor(max_workers=self.n_workers, mp_context=pool_context(),
                                        initializer=_pool_worker_init, initargs=(os.getpid(),))
        self.pending: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        # start every worker now, while the parent plans; they start ignoring SIGINT (an ignored
        # signal stays ignored across fork and exec), so a Ctrl-C during their start-up is the parent's alone
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            with _forking():
                for _ in range(self.n_workers):
                    self.pool.submit(_started)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def ready(self) -> None:  # the workers start in the background and take quanta when they can
        pass

    def submit(self, fn, job: Job):
        self.pending.append((fn, job))
        return job

    def _take(self):
        with self.lock:
            return None if self.stopped.is_set() or not self.pending else self.pending.popleft()

    def _feed(self, results: queue.Queue) -> None:
        """Keep every worker busy with one quantum; results go to ``results``, then None."""
        inflight = set()
        taken = None  # a quantum off the queue not yet handed over: reported too if the hand-over fails
        try:
            while True:
                while len(inflight) < self.n_workers:
                    taken = self._take()
                    if taken is None:
                        break
                    fn, job = taken
                    fut = self.pool.submit(fn, job)
                    fut.data_id = str(job.quantum.data_id)
                    inflight.add(fut)
                    taken = None
                if not inflight:
                    return
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    results.put(_result(fut))
        except Exception as exc:  # the pool is broken or shut down (an interrupted run): say why, then stop
            for fut in inflight:
                results.put(_result(fut) if fut.done() else _worker_died(fut.data_id, exc))
            if taken is not None:  # e.g. the pool broke (a worker died) before this quantum was submitted
                results.put(_worker_died(str(taken[1].quantum.data_id), exc))
        finally:
            results.put(None)

    def completed(self, futures):
        results: queue.Queue = queue.Queue()
        feeder = threading.Thread(target=self._feed, args=(results,), name="forcedphot-feeder", daemon=True)
        feeder.start()
        while (item := self._take()) is not None:  # this process measures too
            fn, job = item
            yield fn(job)
            while not results.empty():
                got = results.get()
                if got is None:
                    results.put(None)
                    break
                yield got
        while (got := results.get()) is not None:
            yield got

    def stop(self, *, interrupted: bool) -> None:
        self.stopped.set()
        if interrupted:  # do not wait for the quanta being measured: kill them (their writes are atomic)
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.kill()
        self.pool.shutdown(wait=not interrupted, cancel_futures=interrupted)


# Our own LocalCluster runs a few long tasks per worker, not many short ones:
# * Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its workers, which also pins glibc's mmap
#   threshold: every array above 128 kB is then mapped and unmapped anew, page faults included
#   (measured: each quantum ~25% slower). Our workers keep glibc's adaptive defaults.
# * the statistical profiler (every 10 ms), the event-loop tick (20 ms) and the system and memory
#   monitors took 1.6 s of worker CPU and 2.0 s of the run's own CPU per 8 bench-size quanta on
#   2 cores (measured); sampled less often (and no profiler) that is 1.1 s and 0.8 s.
LOCAL_CLUSTER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def local_cluster(n_workers: int, *, fork: bool = False):
    """A Dask LocalCluster of ``n_workers`` single-threaded worker processes, configured for our quanta
    (:data:`LOCAL_CLUSTER_CONFIG`), that import the package as they start (:mod:`forcedphot.worker_start`),
    logging at this process's level. ``fork``: the nannies fork the workers from this process
    (call it only where :func:`fork_is_safe`) instead of spawning fresh interpreters."""
    import dask
    from distributed import LocalCluster

    config = LOCAL_CLUSTER_CONFIG | ({"distributed.worker.multiprocessing-method": "fork"} if fork else {})
    with dask.config.set(config), _forking():
        return LocalCluster(n_workers=max(n_workers, 1), threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.getLogger().getEffectiveLevel(), preload=["forcedphot.worker_start"])


class _Dask:
    """Quanta on a Dask cluster: ``address`` of a running scheduler, or ``"local"`` for a LocalCluster
    of ``jobs`` worker processes.

    A LocalCluster whose workers can be forked (:func:`fork_is_safe`) starts here, before the plan,
    so the workers fork from a process that runs no thread of its own yet (the cluster's event
    loop is the thread that forks) and start with its imports (measured: README, scaling).
    Otherwise (spawned workers, a remote scheduler) the cluster starts or is connected to in a
    thread while this process plans; the first ``submit`` waits for it.
    """

    def __init__(self, address: str, jobs: int):
        if importlib.util.find_spec("distributed") is None:  # imported by the starting thread
            raise ForcedPhotError("--dask needs the 'distributed' package: pip install 'forcedphot[dask]'")
        if logging.getLogger().getEffectiveLevel() > logging.INFO:  # quiet unless -v
            logging.getLogger("distributed").setLevel(logging.WARNING)
        self.local, self.address = address == "local", address
        self.cluster = self.client = None
        self.futures, self.data_ids = [], {}
        self._error: BaseException | None = None
        self._starter = None
        if self.local and fork_is_safe():
            self._start(address, jobs, fork=True)
        else:
            self._starter = threading.Thread(target=self._start, args=(address, jobs), name="forcedphot-dask-start",
                                             daemon=True)
            self._starter.start()

    def _start(self, address: str, jobs: int, *, fork: bool = False) -> None:
        from distributed import Client

        try:
            self.cluster = local_cluster(jobs, fork=fork) if self.local else None
            self.client = Client(self.cluster or address)
        except Exception as exc:  # raised in the run's thread at the first submit (Ctrl-C: at once)
            self._error = exc

    def _wait_started(self) -> None:
        if self._starter is not None:
            self._starter.join()

    def ready(self):
        """The client, once the cluster is up; a cluster that could not start raises, saying why."""
        self._wait_started()
        if self._error is not None:
            what = "start a local Dask cluster" if self.local else f"connect to the Dask scheduler {self.address}"
            raise ForcedPhotError(f"could not {what}: {type(self._error).__name__}: {self._error}") from self._error
        return self.client

    def threads_per_quantum(self) -> int:
        """Threads per quantum on a running scheduler's workers (the client's cores say nothing of
        theirs): the fewest cores per worker thread over the workers' machines, asked of them now."""
        from forcedphot.threads import available_cores

        client = self.ready()
        cores = client.run(available_cores)  # {worker address: cores of its machine}
        slots, machine = collections.Counter(), {}
        for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
            host = info.get("host") or address
            slots[host] += int(info.get("nthreads") or 1)
            machine[host] = max(machine.get(host, 1), int(cores.get(address, 1)))
        return max(1, min((machine[h] // slots[h] for h in slots), default=1))

    def submit(self, fn, job: Job):
        client = self.ready()
        if self.local:  # LocalCluster workers are our children: they watch us
            job = dataclasses.replace(job, watch_pid=os.getpid())
        fut = client.submit(fn, job, pure=False)
        self.futures.append(fut)
        self.data_ids[fut.key] = str(job.quantum.data_id)
        return fut

    def completed(self, futures):
        from distributed import as_completed as dask_completed

        for fut in dask_completed(futures):
            yield _result(fut, self.data_ids[fut.key])

    def stop(self, *, interrupted: bool) -> None:
        self._wait_started()  # a cluster still starting is closed once it is up
        if self.cluster is not None and interrupted:  # kill our workers, do not wait for their quanta
            for worker in list(self.cluster.workers.values()):
                proc = getattr(getattr(worker, "process", None), "process", None)
                if proc is not None and proc.pid:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        elif interrupted and self.client is not None:  # a shared scheduler: cancel what this run submitted
            self.client.cancel(self.futures, force=True)
        if self.client is not None:
            self.client.close(timeout=2 if interrupted else None)
        if self.cluster is not None:
            self.cluster.close(timeout=2 if interrupted else None)


def _result(fut, data_id: str | None = None) -> tuple:
    """A worker's result; a worker that died (e.g. killed for memory) fails only its quantum."""
    try:
        return fut.result()
    except Exception as exc:
        return _worker_died(data_id or fut.data_id, exc)


def _worker_died(data_id: str, exc: BaseException) -> tuple:
    """The result of a quantum whose worker died (or whose pool broke) before it returned."""
    return data_id, "worker-died", f"{data_id}: worker died: {type(exc).__name__}: {exc}"


class _Interrupts:
    """Ctrl-C (or the CLI's SIGTERM) is never lost. Python swallows an exception raised inside a
    destructor (e.g. a file lock's ``__del__`` running when the signal lands), so the handler also
    records the signal, and the run raises KeyboardInterrupt again at its next step (``check``)."""

    def __init__(self):
        self.seen = False
        self._previous: dict = {}

    def install(self) -> "_Interrupts":
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.getsignal(sig)
                if callable(old):  # Python's default SIGINT handler, or the CLI's SIGTERM one: both raise
                    self._previous[sig] = old
                    signal.signal(sig, self._handler(old))
        return self

    def _handler(self, old):
        def handler(signum, frame):
            self.seen = True
            old(signum, frame)
        return handler

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()


def _start_workers(jobs: int, dask: str | None):
    if dask:
        return _Dask(dask, jobs)
    return _Pool(jobs) if jobs > 1 else _InProcess()


# -- the run -------------------------------------------------------------------------------------
def select_quanta(quanta: list[Quantum], *, tracts=None, patches=None, bands=None) -> list[Quantum]:
    """The selected quanta; a selection that matches none is bad input, naming the values that exist."""
    chosen = [q for q in quanta if not (tracts and q.data_id.tract not in tracts
                                        or patches and q.data_id.patch not in patches
                                        or bands and q.data_id.band not in bands)]
    if quanta and not chosen:
        have = {"tracts": sorted({q.data_id.tract for q in quanta}),
                "patches": sorted({q.data_id.patch for q in quanta}), "bands": sorted({q.data_id.band for q in quanta})}
        asked = {"tract": tracts, "patch": patches, "band": bands}
        given = "; ".join(f"--{k} {','.join(map(str, v))}" for k, v in asked.items() if v)
        exist = "; ".join(f"{k} {','.join(map(str, v))}" for k, v in have.items())
        raise InputError(f"no quantum matches {given}; the repository has {exist}")
    return chosen


def remove_vanished_outputs(repo: Repository, quanta: list[Quantum]) -> list[str]:
    """Delete forced_source outputs of quanta the repository no longer has (e.g. a removed band)."""
    known = {str(repo.forced_source_path(q.data_id)) for q in quanta}
    removed = []
    for path in sorted(repo.dataset_dir("forced_source").glob("tract=*/patch=*/band=*/forced_source.parquet")):
        if str(path) not in known:
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(repo.root)))
    from forcedphot.io.manifest import remove_vanished  # and from the tracts' manifests (rows of compacted parts too)

    remove_vanished(repo.root, {(q.data_id.tract, q.data_id.patch, q.data_id.band) for q in quanta})
    return removed


def run_all(repo: Repository, config: ForcedPhotConfig | None = None, *, tracts=None, patches=None, bands=None,
            force: bool = False, jobs: int = 1, dask: str | None = None, progress: bool = True,
            n_threads: int | None = None, before_measuring=None, wait: bool = False,
            command: list[str] | None = None, defer_end=None) -> RunSummary:
    """Run every selected quantum that is not up to date.

    ``jobs > 1`` runs quanta in local worker processes; ``dask`` is the address of a Dask
    distributed scheduler (``tcp://host:8786``) or ``"local"`` for a LocalCluster of ``jobs``
    workers: quanta are then submitted to the cluster's workers, which must see the repository path.
    ``wait``: wait for quanta another live run holds instead of reporting them "running elsewhere".
    ``n_threads``: threads per quantum (default: cores / quanta measuring at that moment, counted by
    this machine's processes of the run, see :mod:`forcedphot.threads`); results are the same for
    any count. ``before_measuring()`` is called once, when there is a ready quantum, before any is
    started (the CLI compiles the kernels there).
    ``command`` is recorded in the ledger (default ``sys.argv``). KeyboardInterrupt stops the workers
    at once (their quanta are not written) and is re-raised.

    The run's end (its ``run_end`` record and ``runs/last_run.json``, see :class:`RunEnd`) is written
    when run_all returns or raises, with the exit code of what it did; ``defer_end(end)`` instead hands
    the end to the caller, who calls ``end(exit_code)`` with its own final exit code (the CLI: after
    the band summary, as the process exits, so an interrupt at any moment is recorded as one).
    """
    t0, started = time.perf_counter(), time.time()
    summary = RunSummary(run_id=ledger.new_run_id())
    repo.check()
    config = config or ForcedPhotConfig()
    end = RunEnd(repo, summary, config, command=command or sys.argv, t0=t0)
    if defer_end is not None:
        defer_end(end)
    try:
        _run(repo, config, summary, end, tracts=tracts, patches=patches, bands=bands, force=force, jobs=jobs,
             dask=dask, progress=progress, n_threads=n_threads, before_measuring=before_measuring, wait=wait,
             started=started)
    except BaseException as exc:
        if defer_end is None:
            with exits.held():
                end(exits.code_of(exc))
        raise
    if defer_end is None:
        with exits.held():
            end(exits.EXIT_OK if summary.ok else exits.EXIT_FAILED_QUANTA)
    return summary


def _run(repo: Repository, config: ForcedPhotConfig, summary: RunSummary, end: "RunEnd", *, tracts, patches,
         bands, force, jobs, dask, progress, n_threads, before_measuring, wait, started: float) -> None:
    """run_all's work: start the workers, plan, record the start, measure, stop the workers."""
    from tqdm.auto import tqdm

    t0 = end.t0
    interrupts = _Interrupts().install()
    try:
        workers = _start_workers(jobs, dask)  # workers start (and import) while this process plans
    except BaseException:
        interrupts.restore()
        raise
    interrupted, bar, share = True, None, None
    try:
        every = plan_quanta(repo, footprint_dataset=config.footprint_dataset)
        quanta = select_quanta(every, tracts=tracts, patches=patches, bands=bands)
        workers.ready()  # a scheduler that cannot be reached fails the run here, before it is recorded
        end.record_start()
        summary.removed = remove_vanished_outputs(repo, every)
        swept = sweep_temp(repo.root, recursive=True)
        if swept:
            log.warning("removed %d temporary file(s) left by writers no longer running", len(swept))
        from forcedphot.io.manifest import vacuum

        try:
            vacuum(repo.root)  # files compact replaced, once their grace period is over
        except InputError as exc:  # an unreadable manifest fails the quanta of its tract, by name, not the run
            log.warning("retired files not removed: %s", exc)
        ready = [q for q in quanta if q.ready]
        for q in quanta:
            if not q.ready:
                cause = f"{q.data_id}: missing inputs: {', '.join(q.missing)}"
                summary.failed.append((str(q.data_id), cause))
                ledger.record_quantum(repo.root, summary.run_id, q.data_id, status="missing-inputs",
                                      started=ledger.utc_now(), seconds=0.0, error=cause)
        if ready and before_measuring is not None:
            before_measuring()
        concurrent = max(1, min(jobs, len(ready))) if (dask or jobs > 1) else 1
        if n_threads is None and concurrent > 1 and dask in (None, "local"):  # processes of this machine
            share = threads.CoreShare.create(repo.core_share_path(summary.run_id))
        if n_threads is None and ready and dask not in (None, "local"):  # a running cluster's own machines
            n_threads = workers.threads_per_quantum()
        n_threads = n_threads or threads.default_threads(concurrent)
        bar = tqdm(total=len(ready), desc="forced photometry", unit="quantum", disable=not progress)
        futures = [workers.submit(_run_one, Job(str(repo.root.resolve()), summary.run_id, config, q, force, wait,
                                                started, n_threads, core_share=share and str(share.path)))
                   for q in ready]
        by_id = {str(q.data_id): q.data_id for q in ready}
        for did, status, payload in workers.completed(futures):
            if status == "worker-died":  # it could not record its quantum: the parent does
                status = "failed"
                ledger.record_quantum(repo.root, summary.run_id, by_id[did], status=status,
                                      started=ledger.utc_now(), seconds=0.0, error=payload)
            _record(summary, (did, status, payload))
            bar.update()
            interrupts.check()
        interrupts.check()
        interrupted = False
    except Exception as exc:
        if interrupts.seen:  # a library's own exception for the interrupted call (DuckDB: "Query interrupted")
            raise KeyboardInterrupt from exc
        raise
    finally:
        workers.stop(interrupted=interrupted)
        if share is not None:
            share.remove()
        interrupts.restore()
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - t0
    end.completed = True


class RunEnd:
    """The end of one run in the ledger: its ``run_end`` record and ``runs/last_run.json``, written once,
    by ``end(exit_code)``, with the exit code of the process (the CLI) or of run_all (a library caller).

    The outcome follows the code: 0 ok, 1 failed (quanta failed in a run that went through them all;
    else error: an unexpected error), 2 error (bad input found once the run had started), 130
    interrupted (Ctrl-C or SIGTERM, at any moment: planning, measuring, stopping the workers, the
    band summary, exiting). A run refused before it started (exit 2: a selection matching no
    quantum, a scheduler that cannot be reached) is not recorded; any other end of a run that had
    not yet recorded its start (an interrupt while it planned) records the start with it.
    """

    OUTCOMES = {exits.EXIT_OK: "ok", exits.EXIT_INTERRUPTED: "interrupted"}

    def __init__(self, repo: Repository, summary: RunSummary, config: ForcedPhotConfig, *, command: list[str],
                 t0: float):
        self.repo, self.summary, self.config, self.command, self.t0 = repo, summary, config, command, t0
        self.started = ledger.utc_now()
        self.start_recorded = False
        self.completed = False  # every selected quantum was decided and the workers stopped
        self.ended = False

    def record_start(self) -> None:
        ledger.record_start(self.repo.root, self.summary.run_id, command=self.command, config=self.config,
                            started=self.started)
        self.start_recorded = True

    def outcome(self, exit_code: int) -> str:
        if exit_code == exits.EXIT_FAILED_QUANTA and self.completed and self.summary.failed:
            return "failed"
        return self.OUTCOMES.get(exit_code, "error")

    def __call__(self, exit_code: int) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.start_recorded:
            if exit_code == exits.EXIT_ERROR:
                return
            self.record_start()
        s = self.summary
        outcome, seconds = self.outcome(exit_code), time.perf_counter() - self.t0
        ledger.record_end(self.repo.root, s.run_id, outcome=outcome, exit_code=exit_code,
                          counts={"done": len(s.done), "up_to_date": len(s.skipped), "failed": len(s.failed),
                                  "elsewhere": len(s.elsewhere)}, seconds=seconds)
        _write_run_log(self.repo, s, self.config, outcome=outcome, exit_code=exit_code)


def _record(summary: RunSummary, result: tuple) -> None:
    did, status, payload = result
    if status == "done":
        n_rows, seconds, unmatched, corrupt = payload
        summary.done.append((did, n_rows, round(seconds, 3)))
        if corrupt:
            log.warning("%s: its output was not intact, so it was measured again: %s", did, corrupt)
        log.info("%s: measured %d rows in %.2f s", did, n_rows, seconds)
        if unmatched:
            summary.unmatched_footprints[did] = unmatched
            log.warning("%s: %d footprint id(s) match no reference", did, unmatched)
    elif status == "up-to-date":
        summary.skipped.append(did)
        log.info("%s: up to date", did)
    elif status == "running-elsewhere":
        summary.elsewhere.append(did)
        log.info("%s: running elsewhere (locked by another run)", did)
    else:
        summary.failed.append((did, payload))
        log.info("%s: failed: %s", did, payload)


def _write_run_log(repo: Repository, summary: RunSummary, config: ForcedPhotConfig, *, outcome: str,
                   exit_code: int) -> None:
    path = repo.root / "runs" / "last_run.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "config_fingerprint": config.fingerprint(), "outcome": outcome,
                                   "exit_code": exit_code, **asdict(summary)}, indent=1))


def read_last_run(repo: Repository) -> dict | None:
    """``runs/last_run.json``: the summary of the repository's last run (None before the first)."""
    path = repo.root / "runs" / "last_run.json"
    return json.loads(path.read_text()) if path.exists() else None


__all__ = ["DataId", "RunEnd", "RunSummary", "output_state", "quantum_state", "run_all", "read_last_run",
           "select_quanta"]
