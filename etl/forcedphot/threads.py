"""The one place that decides how many threads each pool uses (numba, BLAS/OpenMP, FFT).

The rest follow :func:`threads`: the quantum's DuckDB join (``quantum.load_refs``) and the
noise draws, which run in a thread beside the statistics only when the quantum has 2 or more.

A quantum's kernels run threaded across its sources; quanta run in processes (``--jobs``) or
Dask workers. By default every process gets cores // concurrent quanta threads, so a machine
is never oversubscribed; ``--threads N`` overrides. Results do not depend on the count:
kernels split work by source and every source's sums run in a fixed order.

The processes of one run on one machine (``--jobs N``, ``--dask local``) also share a count of
the quanta measuring right now (:class:`CoreShare`), and each takes cores // that count at the
start of every stage: a quantum measuring alone (while the other workers start, or after the
last quantum was handed out) uses every core instead of leaving them idle.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from contextlib import contextmanager
from pathlib import Path

_state = {"threads": None}
_measuring = threading.local()  # .share: the CoreShare of the quantum this thread measures


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads(concurrent_quanta: int = 1) -> int:
    """Threads per quantum when ``concurrent_quanta`` run at once on this machine."""
    return max(1, available_cores() // max(1, int(concurrent_quanta)))


def configure(threads: int | None = None, *, concurrent_quanta: int = 1) -> int:
    """Set every pool of this process to ``threads`` (default: cores / concurrent quanta); returns it."""
    n = int(threads) if threads else default_threads(concurrent_quanta)
    if n < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    import numba
    from threadpoolctl import threadpool_limits

    n_numba = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n_numba)
    threadpool_limits(limits=n)  # BLAS and OpenMP pools
    _state["threads"] = n
    return n


def threads() -> int:
    """Threads this process uses (configuring the default on first use)."""
    if _state["threads"] is None:
        configure()
    return _state["threads"]


class CoreShare:
    """The number of quanta of one run measuring at once on this machine, in a 4-byte file every
    process of the run maps (``runs/locks/<run id>.cores``); it changes under a file lock."""

    def __init__(self, path: str | Path):
        from filelock import FileLock

        self.path = Path(path)
        self._lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        with open(self.path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 4)

    @classmethod
    def create(cls, path: str | Path) -> "CoreShare":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(struct.pack("<i", 0))
        return cls(path)

    def measuring(self) -> int:
        return struct.unpack_from("<i", self._map)[0]

    def add(self, k: int) -> None:
        """Count ``k`` more quanta measuring (negative: fewer)."""
        with self._lock:
            struct.pack_into("<i", self._map, 0, max(0, self.measuring() + k))

    def threads(self) -> int:
        """This quantum's share of the cores now."""
        return default_threads(max(1, self.measuring()))

    def close(self) -> None:
        self._map.close()

    def remove(self) -> None:
        """Delete the files (the run is over; processes that still map the count keep their copy)."""
        self.close()
        for p in (self.path, Path(self._lock.lock_file)):
            p.unlink(missing_ok=True)


@contextmanager
def sharing(path: str | Path | None):
    """Measure one quantum counted in the run's :class:`CoreShare` at ``path``.

    None, or a file that is gone (a run being torn down), keeps the configured count: the share
    only decides how many threads, never whether the quantum is measured."""
    try:
        share = CoreShare(path) if path is not None else None
    except OSError:
        share = None
    if share is None:
        yield
        return
    share.add(1)
    _measuring.share = share
    try:
        rebalance()
        yield
    finally:
        _measuring.share = None
        share.add(-1)
        share.close()


def rebalance() -> int:
    """Take this quantum's share of the cores now (called at the start of every stage); returns the threads."""
    share = getattr(_measuring, "share", None)
    if share is not None:
        n = share.threads()
        if n != _state["threads"]:
            configure(n)
    return threads()


def fft_workers() -> int:
    """Workers for scipy.fft calls (the same count as every other pool)."""
    return threads()


def worker_environment(threads: int) -> dict[str, str]:
    """Environment for a child process, set before it imports numpy/numba."""
    n = str(int(threads))
    return {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def concurrent_kernels() -> bool:
    """Whether compiled parallel kernels may run in two threads at once: numba's ``tbb`` and ``omp``
    threading layers allow it, its ``workqueue`` layer aborts the process (then callers run in turn)."""
    try:
        import numba
        from numba.np.ufunc import parallel

        parallel._launch_threads()  # picks the layer (once per process) without running a kernel
        return numba.threading_layer() in ("tbb", "omp")
    except Exception:  # noqa: BLE001 - an unknown numba: the safe answer
        return False


class InThread:
    """``fn(*args)`` run in a thread with this process's thread count (numba's is per thread), for work that
    releases the GIL (hashing, numpy, nogil kernels) beside the caller's; :meth:`result` joins and returns
    its value or raises its exception. With one thread configured it runs at once, in the caller's.

    ``n_threads``: numba threads of ``fn``'s kernels (default: the process's count); fewer leaves
    cores to the caller's kernels (two thread teams on the same cores spin at their barriers)."""

    def __init__(self, fn, *args, n_threads: int | None = None):
        self._fn, self._args = fn, args
        self._value = self._error = None
        n = threads()
        self._thread = threading.Thread(target=self._run, args=(max(1, min(n, n_threads or n)),),
                                        name=getattr(fn, "__name__", "InThread"), daemon=True)
        if n > 1:
            self._thread.start()
        else:
            self._thread.run()  # in turn: no second core to use

    def _run(self, n: int) -> None:
        try:
            import numba

            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            self._value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc
        finally:
            self._fn = self._args = None

    def join(self) -> None:
        if self._thread.ident is not None:  # started (not run in turn)
            self._thread.join()

    def result(self):
        self.join()
        if self._error is not None:
            raise self._error
        return self._value
