"""The run's LocalCluster workers import the package as they start, not when their first quantum arrives."""

import sys
import time

import pytest

pytest.importorskip("distributed")


def _imported(timeout: float) -> bool:
    """In a worker: have forcedphot.runner and forcedphot.task been imported (within ``timeout`` s)?"""
    deadline = time.monotonic() + timeout
    while "forcedphot.task" not in sys.modules or "forcedphot.runner" not in sys.modules:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_local_cluster_workers_import_the_package_before_any_quantum():
    from distributed import Client, LocalCluster

    from forcedphot.runner import local_cluster

    # nothing of ours is submitted: only the preload can have started the imports
    with local_cluster(1) as cluster, Client(cluster) as client:
        assert list(client.run(_imported, 60).values()) == [True]
    # the control: a plain worker imports none of it by itself
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert list(client.run(_imported, 3).values()) == [False]
