"""How --jobs and --dask local start their workers: forked before the run starts a thread, spawned otherwise."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from forcedphot.repository import Repository
from forcedphot.runner import run_all
from tests.tables import assert_same_values

LINUX = sys.platform.startswith("linux")

CHOICE = r"""
import sys, threading
from forcedphot.runner import pool_context
case = sys.argv[1]
if case == "thread":  # a caller's own thread
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
elif case == "numba":  # numba's thread pool started (a parallel kernel has run)
    import numba, numpy as np
    @numba.njit(parallel=True)
    def total(a):
        s = 0.0
        for i in numba.prange(a.size):
            s += a[i]
        return s
    total(np.ones(100))
print(pool_context().get_start_method())
"""


def _choice(case: str) -> str:
    out = subprocess.run([sys.executable, "-c", CHOICE, case], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not LINUX, reason="workers are forked on Linux only")
def test_a_fresh_process_forks_its_workers():
    assert _choice("fresh") == "fork"


@pytest.mark.parametrize("case", ["thread", "numba"])
def test_a_process_with_threads_spawns_them(case):
    assert _choice(case) == "spawn"


RUN = r"""
import json, os, sys
from forcedphot.repository import Repository
from forcedphot.runner import fork_is_safe, run_all
kw = json.loads(sys.argv[2])
forks = fork_is_safe()
SPAWNED = "--multiprocessing" + "-fork"  # on a spawned worker's command line (a forked one has this script's)
if kw.get("dask"):  # how the cluster's workers were started
    import distributed
    seen = []
    real = distributed.Client.submit
    def submit(self, *a, **k):
        if not seen:
            seen.append(self.run(lambda: open("/proc/self/cmdline").read()))
        return real(self, *a, **k)
    distributed.Client.submit = submit
s = run_all(Repository(sys.argv[1]), force=True, progress=False, **kw)
spawned = any(SPAWNED in c for c in seen[0].values()) if kw.get("dask") else None
print(json.dumps({"forks": forks, "spawned": spawned, "ok": s.ok, "done": len(s.done)}))
"""


def _tables(root):
    repo = Repository(root)
    paths = sorted(repo.dataset_dir("forced_source").glob("tract=*/patch=*/band=*/forced_source.parquet"))
    return {str(p.relative_to(repo.root)): pq.read_table(p) for p in paths}


@pytest.mark.skipif(not LINUX, reason="workers are forked on Linux only")
@pytest.mark.parametrize("kw", [{"jobs": 2}, {"jobs": 2, "dask": "local"}], ids=["pool", "dask-local"])
def test_forked_workers_measure_what_one_process_does(tiny_repo, kw):
    if kw.get("dask"):
        pytest.importorskip("distributed")
    serial = run_all(Repository(tiny_repo), jobs=1, force=True, progress=False)
    assert serial.ok
    expected = _tables(tiny_repo)
    out = subprocess.run([sys.executable, "-c", RUN, str(tiny_repo), json.dumps(kw)], capture_output=True, text=True)
    assert out.returncode == 0, (out.stderr if len(out.stderr) < 8000 else out.stderr[:4000] + "\n[...]\n" + out.stderr[-4000:])  # the cause comes first
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"forks": True, "spawned": False if kw.get("dask") else None, "ok": True, "done": len(serial.done)}
    tables = _tables(tiny_repo)
    assert tables.keys() == expected.keys()
    for rel, table in tables.items():
        assert_same_values(table, expected[rel], rel)
