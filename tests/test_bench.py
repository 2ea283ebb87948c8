"""`forcedphot bench`: table formatting, targets, the exponent fit, JSON keys, the child protocol and the
kernel-cache check. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from forcedphot import bench
from forcedphot.bench import APERTURES, PSF, QUANTUM, Row
from forcedphot.cli import build_parser
from forcedphot import compile as kc


def _rows():
    return [Row(APERTURES, 1, 0.2, 0.4, "SEP x", 0.9), Row(APERTURES, 2, 0.2, 0.4, "SEP x", 0.3),
            Row(PSF, 1, 0.5, 600.0, "photutils y", 0.6), Row(PSF, 2, 0.3, 600.0, "photutils y", 0.4),
            Row(QUANTUM, 1, 6.0, 0.4, "SEP three apertures", 9.0), Row(QUANTUM, 2, 3.0, 0.4, "SEP three apertures", 9.0)]


def test_targets_by_thread_count():
    rows = _rows()
    assert rows[0].ratio == pytest.approx(2.0) and rows[0].target() == ("SEP / ours >= 1.8", True)
    assert rows[1].target() == ("SEP / ours >= 3", False)  # same ratio, the 2-thread floor
    assert rows[2].target()[1] is True and rows[3].target()[1] is True  # 1200x, 2000x
    assert rows[4].ratio == pytest.approx(15.0) and rows[4].target() == ("ours / SEP <= 15", True)
    assert rows[5].target()[1] is True
    assert bench.target_for(APERTURES, 8)[2] == 3.0  # more threads: the largest floor given
    assert bench.target_for(PSF, 1) == bench.target_for(PSF, 2)


def test_format_table():
    text = bench.format_table(_rows(), 23048)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["measurement", "thr", "ours", "(s)", "peer"]
    assert len(lines) == 2 + 6 + 1 and lines[-1] == "(23048 sources in one 4096x4096 quantum)"
    ap1, ap2 = lines[2], lines[3]
    assert ap1.startswith("exact apertures r=3,6,12") and " yes " in ap1 and "SEP / ours >= 1.8" in ap1
    assert " NO " in ap2 and "SEP / ours >= 3 " in ap2
    assert "15.00" in lines[6]  # ours / SEP for the whole quantum
    comp = bench.format_compile({"warm_before": False, "kernels": 7, "warm_kernels_before": 2, "warm_up_s": 3.5,
                                 "first_quantum_s": 12.0}, _rows())
    assert comp.startswith("kernel cache cold (2 of 7 kernels warm); warm_up() 3.50 s")
    assert "exact apertures r=3,6,12 1 thr +0.70 s" in comp and "first whole quantum 12.00 s" in comp


def test_fit_exponent():
    n = np.array([5000.0, 20000.0, 80000.0])
    a, steps = bench.fit_exponent(n, 3e-4 * n ** 1.2)
    assert a == pytest.approx(1.2) and steps == pytest.approx([1.2, 1.2])
    a, steps = bench.fit_exponent([1, 2, 4], [1.0, 2.0, 8.0])  # per step 1 then 2; least squares 1.5
    assert steps == pytest.approx([1.0, 2.0]) and a == pytest.approx(1.5)
    a, steps = bench.fit_exponent([10], [1.0])
    assert np.isnan(a) and steps == []


def test_growth_counts():
    base = {"n_stars": 9000, "n_galaxies": 10200, "n_close_pairs": 800}
    assert bench.growth_recipe_counts(20000, base) == base
    for n in (50, 5000, 80000, 12345):
        c = bench.growth_recipe_counts(n, base)
        assert sum(c.values()) == n and c["n_galaxies"] > c["n_stars"] > c["n_close_pairs"] >= 1


def _growth():
    runs = [{"objects": n, "killed": False, "n_rows": r, "wall_s": t, "peak_rss_bytes": p * 2 ** 30,
             "baseline_rss_bytes": 0.5 * 2 ** 30, "plane_bytes": 201326592, "extra_per_plane_byte": 1.5}
            for n, r, t, p in ((5000, 5800, 5.0, 2.0), (20000, 23048, 26.0, 3.7))]
    runs.append({"objects": 80000, "killed": True, "rss_limit_bytes": 16 * 2 ** 30, "n_rows": 93000,
                 "child_elapsed_s": 700.0})
    a, steps = bench.fit_exponent([5800, 23048], [5.0, 26.0])
    return {"band": "i", "threads": 2, "runs": runs, "exponent": a, "step_exponents": steps, "primed": None}


def _scaling():
    def run(mode, thr, wall, parallel):
        return {"mode": mode, "threads_per_quantum": thr, "wall_s": wall, "quanta": 8, "rows": 28000,
                "quantum_s": [wall / 8] * 8, "speedup": 40.0 / wall, "parallel": parallel}

    runs = [run("jobs=1, 1 thread", 1, 40.0, False), run("jobs=1, 2 threads", 2, 25.0, False),
            run("jobs=2 (processes)", 1, 21.0, True), run("dask local, 2 workers", 1, 25.0, True)]
    return {"root": "r/scaling", "runs": runs, "floor": 1.8, "compile": {}, "primed_s": None,
            "reference": "jobs=1, 1 thread"}


def test_format_growth_and_scaling():
    g = bench.format_growth(_growth()).splitlines()
    assert g[0].split()[:3] == ["objects", "rows", "wall"]
    assert g[2].split()[:3] == ["5000", "5800", "5.00"] and len(g[2].split()) == 6  # no step exponent yet
    assert float(g[3].split()[-1]) == pytest.approx(np.log(26 / 5) / np.log(23048 / 5800), abs=0.01)
    assert g[4].split()[:3] == ["80000", "93000", "killed"] and "> 16.0" in g[4] and "(after 700 s)" in g[4]
    assert g[5].startswith("time ~ N^a (rows, least squares on log-log): a = ")
    s = bench.format_scaling(_scaling()).splitlines()
    assert s[0].split()[:3] == ["mode", "thr", "quanta"]
    assert s[2].split()[3:5] == ["1", "8"] and s[2].rstrip().endswith("1.00")  # the reference: no target
    assert s[3].rstrip().endswith("1.60")  # threads alone: shown, no floor
    assert ">= 1.8x yes" in s[4] and ">= 1.8x NO" in s[5]
    assert "speed-up over jobs=1, 1 thread" in s[6]


def test_json_keys(tmp_path, monkeypatch):
    res = {"n_sources": 100, "rows": _rows(), "stages": {1: {"total": 6.0}, 2: {"total": 3.0}},
           "compile": {"warm_before": True, "kernels": 1, "warm_kernels_before": 1, "warm_up_s": 0.1},
           "agreement": {"kernel": "k", "flux_max_rel_diff": 1e-11, "err_max_rel_diff": 1e-9},
           "environment": {"cores": 2}}
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: res)
    monkeypatch.setattr(bench, "run_growth", lambda *a, **k: _growth())
    monkeypatch.setattr(bench, "run_scaling", lambda *a, **k: _scaling())
    out = tmp_path / "bench.json"
    text = bench.main_bench(tmp_path, json_out=out)  # the table only by default
    doc = json.loads(out.read_text())
    assert set(doc) == {"bench"} and "whole-quantum stages, 2 thread(s) (s): total 3.00" in text
    assert set(doc["bench"]) == {"n_sources", "rows", "stages", "compile", "agreement", "environment"}
    assert set(doc["bench"]["rows"][0]) == {"what", "threads", "ours_s", "peer_s", "peer", "first_s", "ratio",
                                            "target", "met"}
    assert doc["bench"]["stages"]["2"] == {"total": 3.0}
    bench.main_bench(tmp_path, json_out=out, growth=True, scaling=True)
    doc = json.loads(out.read_text())
    assert set(doc) == {"growth", "scaling"}
    assert {"runs", "exponent", "step_exponents", "threads", "band"} <= set(doc["growth"])
    assert {"runs", "floor", "root", "reference"} <= set(doc["scaling"]) and doc["scaling"]["runs"][2]["speedup"] > 1.8
    bench.main_bench(tmp_path, json_out=out, growth=True, table=True)
    assert set(json.loads(out.read_text())) == {"bench", "growth"}


def test_cli_options():
    a = build_parser().parse_args(["bench", "--growth", "--growth-sizes", "10,20", "--threads", "1", "--json", "x"])
    assert a.growth and a.growth_sizes == [10, 20] and a.threads == [1] and not a.scaling and not a.table
    a = build_parser().parse_args(["bench"])
    assert a.threads == [1, 2] and a.growth_sizes == [5000, 20000, 80000]


@pytest.mark.slow
def test_child_reports_one_quantum(tiny_repo):
    """The growth child runs one quantum in a fresh interpreter and reports its figures."""
    r = bench.run_child(tiny_repo, "i", 1)
    assert not r["killed"] and r["n_rows"] > 0 and r["threads"] == 1
    assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 0 and r["polled_peak_rss_bytes"] > 0
    assert r["plane_bytes"] == 3 * 4 * 248 * 248  # image, mask, variance of a 200 + 2 x 24 px patch
    assert {"wall_s", "warm_up_s", "stages", "data_id", "child_elapsed_s"} <= set(r)
    assert "band=i" in r["data_id"]
    killed = bench.run_child(tiny_repo, "i", 1, rss_limit=1)  # above the limit: killed, reported as such
    assert killed["killed"] and killed["polled_peak_rss_bytes"] > 1
    res = bench._run_module(["run_all", tiny_repo, json.dumps({"jobs": 1, "n_threads": 1, "bands": ["i"]})])
    assert len(res["done"]) == 4 and not res["failed"] and res["wall_s"] > 0  # the scaling child: 4 patches, band i


@pytest.mark.slow
def test_scaling_child_on_a_running_cluster(tiny_repo):
    """The 'running' scaling mode starts a LocalCluster before the run and hands run_all its address:
    every quantum is measured on the cluster's workers, not in the child."""
    res = bench._run_module(["run_all", tiny_repo, json.dumps({"jobs": 2, "dask": bench.RUNNING, "bands": ["i"]})])
    assert len(res["done"]) == 4 and not res["failed"] and res["wall_s"] > 0
    records = sorted((Path(tiny_repo) / "runs" / "ledger" / "quanta" / res["run_id"]).glob("*.parquet"))
    pids = {pq.read_table(f).column("pid")[0].as_py() for f in records}
    assert len(records) == 4 and pids and res["pid"] not in pids


def test_kernel_cache_check(tmp_path, monkeypatch):
    """Discovery by pkgutil, cold -> warm_up() compiles and caches -> warm; the one-line message."""
    monkeypatch.setattr(kc.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    pkg = tmp_path / "fpk_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "k.py").write_text(textwrap.dedent("""
        import numpy as np
        from numba import njit, prange

        @njit(cache=True, nogil=True)
        def helper(a, i):
            return a[i] + 1.0

        @njit(cache=True, parallel=True)
        def kern(a):
            out = np.empty(a.size)
            for i in prange(a.size):
                out[i] = helper(a, i)
            return out

        @njit
        def uncached(a):
            return a

        WARMUP = [lambda: kern(np.zeros(2))]
    """))
    (pkg / "nw.py").write_text(textwrap.dedent("""
        import numpy as np
        from numba import njit, prange

        @njit(cache=True, parallel=True)
        def used(a):
            out = np.empty(a.size)
            for i in prange(a.size):
                out[i] = 2 * a[i]
            return out

        @njit(cache=True, parallel=True)
        def unused(a):
            out = np.empty(a.size)
            for i in prange(a.size):
                out[i] = 3 * a[i]
            return out
    """))
    (pkg / "broken.py").write_text("raise ImportError('being edited')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules, errors = kc.kernel_modules(("fpk_demo",))
    assert [m.__name__ for m in modules] == ["fpk_demo.k", "fpk_demo.nw"] and list(errors) == ["fpk_demo.broken"]
    status = kc.cache_status(modules)
    assert [(k.name, k.state, k.parallel, k.counted, k.warm_up) for k in status] == [
        ("fpk_demo.k.helper", "cold", False, True, True), ("fpk_demo.k.kern", "cold", True, True, True),
        ("fpk_demo.nw.unused", "cold", True, True, False), ("fpk_demo.nw.used", "cold", True, True, False)]
    assert not kc.is_warm(status)
    msg = kc.compile_message(status)  # what compiles up front: module k's WARMUP (nw's kernels compile in a run)
    seconds = round(2 * kc.CPU_SECONDS_PER_KERNEL)
    assert msg == (f"compiling the measurement kernels once: 2 functions of 1 module in one process, ~{seconds} s "
                   f"(at {kc.CPU_SECONDS_PER_KERNEL:.1f} s of CPU per function; no figure from this machine yet); "
                   "later runs load them from the cache")
    assert kc.warm_up(modules) > 0  # compiles fpk_demo.k through its WARMUP; nw has none
    status = kc.cache_status(modules)
    assert [k.state for k in status] == ["warm", "warm", "cold", "cold"] and status[1].signatures == 1
    assert not kc.is_warm(status)
    modules[1].used(np.zeros(2))  # a run uses one kernel of the module without WARMUP ...
    status = kc.cache_status(modules)
    assert [(k.state, k.counted) for k in status[2:]] == [("cold", False), ("warm", True)]
    assert kc.is_warm(status) and kc.compile_message(status) is None  # ... the other one is not waited for
    for name in ("fpk_demo.k", "fpk_demo.nw", "fpk_demo"):
        del sys.modules[name]


def test_helper_change_outdates_cached_kernel(tmp_path, monkeypatch):
    """numba does not notice a helper from another file changing; cache_status does, warm_up recompiles."""
    import importlib
    import os

    pkg = tmp_path / "fpk_dep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    helper = pkg / "helper.py"
    helper.write_text("from numba import njit\n\n@njit(cache=True, nogil=True)\ndef h(x):\n    return x + 1.0\n")
    (pkg / "kern.py").write_text(textwrap.dedent("""
        import numpy as np
        from numba import njit, prange

        from fpk_dep import helper
        from fpk_dep.helper import h

        @njit(cache=True, parallel=True)
        def k(a):
            out = np.empty(a.size)
            for i in prange(a.size):
                out[i] = h(a[i]) + helper.h(0.0)
            return out

        WARMUP = [lambda: k(np.zeros(1))]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    def load():
        for name in ("fpk_dep.kern", "fpk_dep.helper", "fpk_dep"):
            sys.modules.pop(name, None)
        return [importlib.import_module("fpk_dep.helper"), importlib.import_module("fpk_dep.kern")]

    modules = load()
    assert kc.called_dispatchers(modules[1].k) == [modules[0].h]  # found once, by name and as helper.h
    kc.warm_up(modules)
    assert modules[1].k(np.zeros(1))[0] == 2.0
    assert [k.state for k in kc.cache_status(modules)] == ["warm", "warm"]
    helper.write_text(helper.read_text().replace("x + 1.0", "x + 100.0"))
    index = modules[1].k._cache._cache_file._index_path
    earlier = os.path.getmtime(helper) - 10  # the kernel was cached before the helper's edit
    os.utime(index, (earlier, earlier))
    modules = load()
    status = kc.cache_status(modules)
    assert [(k.name, k.state, k.counted) for k in status] == [("fpk_dep.helper.h", "stale", False),
                                                             ("fpk_dep.kern.k", "outdated", True)]
    assert not kc.is_warm(status)
    kc.warm_up(modules)
    assert modules[1].k(np.zeros(1))[0] == 200.0  # the helper's new code, not the cached 2.0
    assert kc.is_warm(kc.cache_status(modules))
    for name in ("fpk_dep.kern", "fpk_dep.helper", "fpk_dep"):
        del sys.modules[name]


def test_package_kernels_discovered():
    names = [k.name for k in kc.cache_status()]
    assert "forcedphot.kernels.footprints.valid_pixels" in names
    assert not any(n.startswith("forcedphot.compile") for n in names)


def test_format_scaling_rounds_show_each_round():
    s = _scaling()
    s["rounds"] = 2
    for r in s["runs"]:
        r["speedups_per_round"] = [r["speedup"], r["speedup"] * 0.9]
    lines = bench.format_scaling(s).splitlines()
    assert lines[4].rstrip().endswith("1.90 / 1.71")  # jobs=2: best-round figure first, then each round
    assert "best wall of 2 rounds, the modes taking turns" in lines[6]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_child_peak_rss_is_its_own_not_its_parents():
    """ru_maxrss survives exec on Linux: a child of a large process must not report the parent's peak."""
    code = ("import numpy as np, subprocess, sys\n"
            "big = np.ones(800 * 2**20 // 8)\n"  # the parent holds 800 MB
            "out = subprocess.run([sys.executable, '-c', 'from forcedphot.bench import _peak_rss_bytes; "
            "print(_peak_rss_bytes())'], capture_output=True, text=True, check=True).stdout\n"
            "print(out.strip(), big.nbytes)")
    child_peak, parent_bytes = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                       check=True).stdout.split())
    assert 0 < child_peak < parent_bytes / 2


def test_read_inputs_reads_every_input_of_the_band(tiny_repo):
    from pathlib import Path

    from forcedphot.plan import plan_quanta
    from forcedphot.repository import Repository

    quanta = plan_quanta(Repository(tiny_repo), bands=["i"])
    expected = sum(Path(p).stat().st_size for q in quanta for p in q.input_files().values() if Path(p).exists())
    assert expected > 0 and bench.read_inputs(tiny_repo, "i") == expected
