"""Dask worker preload of the run's own LocalCluster (``--dask local``).

A spawned worker process would import the package (~1.2 s) only when its first quantum
arrives, after it has registered with the scheduler. Preloaded, it starts those imports in a
thread as soon as the process starts, while it registers and the run submits; its first quantum
then waits only for what is not imported yet. (A worker forked from the run's process, see
``runner.fork_is_safe``, has them already.) This module itself imports nothing heavy.
"""

from __future__ import annotations

import threading


def dask_setup(worker) -> None:  # called by distributed when the worker starts
    threading.Thread(target=import_package, name="forcedphot-import", daemon=True).start()


def import_package() -> None:
    import forcedphot.runner  # noqa: F401  (what a quantum's task needs)
    import forcedphot.task  # noqa: F401
