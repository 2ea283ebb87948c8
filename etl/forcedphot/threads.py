"""The one place that decides how many threads each pool uses (numba, BLAS/OpenMP, FFT).

A quantum's kernels run threaded across its sources; quanta run in processes (``--jobs``) or
Dask workers. By default every process gets cores // concurrent quanta threads, so a machine
is never oversubscribed; ``--threads N`` overrides. Results do not depend on the count:
kernels split work by source and every source's sums run in a fixed order.
"""

from __future__ import annotations

import os

_state = {"threads": None}


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


def fft_workers() -> int:
    """Workers for scipy.fft calls (the same count as every other pool)."""
    return threads()


def worker_environment(threads: int) -> dict[str, str]:
    """Environment for a child process, set before it imports numpy/numba."""
    n = str(int(threads))
    return {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}
