"""Compiling the kernels before a run: in several processes into numba's cache, only the modules the
config needs, with the figures recorded for the next estimate, and every signature a run uses
compiled up front. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from forcedphot import compile as kc
from forcedphot.task import kernel_modules

K = "forcedphot.kernels."

HELPER = """
from numba import njit

@njit(cache=True, nogil=True)
def twice(x):
    return 2 * x
"""

KERNEL = """
import numpy as np
from numba import njit, prange

from {pkg}.helper import twice

@njit(cache=True, parallel=True, nogil=True)
def {name}(a):
    out = np.empty(a.size, a.dtype)
    for i in prange(a.size):
        out[i] = twice(a[i]) + {add}
    return out

@njit(cache=True, parallel=True, nogil=True)
def {name}_sum(a):
    s = 0.0
    for i in prange(a.size):
        s += twice(a[i])
    return s

WARMUP = [lambda: {name}(np.zeros(2, np.{dtype})), lambda: {name}_sum(np.zeros(2, np.{dtype}))]
"""


def _package(tmp_path, monkeypatch, pkg: str, kernels: dict) -> list:
    """A package of kernel modules (name -> dtype) sharing a helper without WARMUP; returns the modules."""
    import importlib

    root = tmp_path / pkg
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "helper.py").write_text(HELPER)
    for i, (name, dtype) in enumerate(kernels.items()):
        (root / f"{name}.py").write_text(textwrap.dedent(KERNEL.format(pkg=pkg, name=name, dtype=dtype, add=i + 1)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return [importlib.import_module(f"{pkg}.{name}") for name in kernels]


def _forget(pkg: str) -> None:
    for name in [n for n in sys.modules if n == pkg or n.startswith(pkg + ".")]:
        del sys.modules[name]


def test_processes_compile_every_module_into_the_cache_and_record_their_figures(tmp_path, monkeypatch):
    """Two processes compile three modules (five WARMUP entries; the shared helper in two signatures)
    into numba's cache; this process compiles nothing and then loads every kernel from the cache. A
    module not asked for stays cold. The figures recorded make the next estimate."""
    monkeypatch.setattr(kc.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    a, b, c, unused = _package(tmp_path, monkeypatch, "fpk_par",
                               {"ka": "float64", "kb": "int64", "kc": "float32", "unused": "float64"})
    try:
        modules = [a, b, c]
        assert not kc.is_warm(kc.cache_status(modules))
        said = []
        compiled = kc.ensure_compiled([m.__name__ for m in modules], say=said.append, processes=2)
        assert compiled is not None and compiled.processes == 2 and compiled.cpu_seconds > 0
        assert len(said) == 1 and said[0].startswith("compiling the measurement kernels once: ")
        assert "of 3 modules in 2 processes" in said[0] and "no figure from this machine yet" in said[0]
        status = kc.cache_status(modules)
        assert kc.is_warm(status) and all(k.state == "warm" for k in status if k.counted)
        assert {k.name.rsplit(".", 1)[1] for k in status if k.counted} == {"ka", "ka_sum", "kb", "kb_sum", "kc",
                                                                           "kc_sum"}
        assert [k.state for k in kc.cache_status([unused])] == ["cold", "cold"]  # not asked for
        helper = sys.modules["fpk_par.helper"]
        assert len(kc._valid_signatures(helper.twice)[0]) == 3  # float64, int64, float32: no entry lost
        for _, disp, _ in kc.dispatchers(modules + [helper]):
            assert disp.signatures == []  # the processes compiled; this one did not
        for mod, dtype in ((a, np.float64), (b, np.int64), (c, np.float32)):
            name = mod.__name__.rsplit(".", 1)[1]
            kernel = getattr(mod, name)
            assert kernel(np.arange(3, dtype=dtype)).tolist() == [2 * i + "abc".index(name[1]) + 1 for i in range(3)]
            assert sum(kernel.stats.cache_hits.values()) == 1 and not kernel.stats.cache_misses
            record = kc.read_record(mod)
            assert len(record.cpu_seconds) == 2 and all(s > 0 for s in record.cpu_seconds)
            assert {f"{mod.__name__}.{name}", f"{mod.__name__}.{name}_sum"} <= set(record.kernels)
        assert kc.ensure_compiled(modules, say=said.append) is None and len(said) == 1  # warm: nothing said

        for _, disp, _ in kc.dispatchers(modules):  # the cache cleared, the records kept
            for path in Path(disp._cache._cache_path).glob(f"{Path(disp._cache._cache_file._index_path).stem}*"):
                path.unlink()
        plan = kc.compile_plan(modules, processes=2)
        recorded = sorted(s for m in modules for s in kc.read_record(m).cpu_seconds)
        assert plan.measured and sorted(t.cpu_seconds for t in plan.tasks) == recorded
        assert [t.cpu_seconds for t in plan.tasks] == sorted(recorded, reverse=True)  # longest first
        assert sum(recorded) / 2 <= plan.seconds - kc.START_SECONDS <= sum(recorded)
        assert "(from this machine's figures of its last compile)" in kc.compile_message(kc.cache_status(modules),
                                                                                         plan)
    finally:
        _forget("fpk_par")


def test_a_failing_warm_up_is_raised_here(tmp_path, monkeypatch):
    """An entry that fails in a compiling process runs again in this one, so its error surfaces as usual."""
    (a,) = _package(tmp_path, monkeypatch, "fpk_bad", {"ka": "float64"})
    b = tmp_path / "fpk_bad" / "kb.py"
    b.write_text(textwrap.dedent(KERNEL.format(pkg="fpk_bad", name="kb", dtype="float64", add=2))
                 + "\ndef _boom():\n    raise RuntimeError('kb warm-up failed')\n\nWARMUP = WARMUP + [_boom]\n")
    try:
        with pytest.raises(RuntimeError, match="kb warm-up failed"):
            kc.ensure_compiled(["fpk_bad.ka", "fpk_bad.kb"], say=lambda line: None, processes=2)
        assert kc.is_warm(kc.cache_status([a]))  # the other module was compiled all the same
    finally:
        _forget("fpk_bad")


WRITER = """
import os, sys, time
from numba.core.caching import IndexDataCacheFile
from forcedphot.compile import serialise_cache_writes

serialise_cache_writes()
cache = IndexDataCacheFile(cache_path=sys.argv[1], filename_base="shared", source_stamp=(0.0, 0))
open(os.path.join(sys.argv[1], "ready-" + sys.argv[2]), "w").close()
while not os.path.exists(os.path.join(sys.argv[1], "go")):  # both write at once
    time.sleep(0.01)
for i in range(int(sys.argv[3])):
    cache.save(f"{sys.argv[2]}-{i}", f"{sys.argv[2]}-{i}-data")
"""


def test_processes_writing_one_cache_index_at_once_keep_every_entry(tmp_path):
    """numba writes an index without a lock; under serialise_cache_writes two processes adding
    different signatures of one function at once lose none, and each loads its own data. (Without
    it, measured: 21 of 300 entries lost and 8 keys loading another key's data.)"""
    from numba.core.caching import IndexDataCacheFile

    import time

    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who, str(n)]) for who in "ab"]
    while not all((tmp_path / f"ready-{who}").exists() for who in "ab") and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache = IndexDataCacheFile(cache_path=str(tmp_path), filename_base="shared", source_stamp=(0.0, 0))
    assert len(cache._load_index()) == 2 * n
    assert all(cache.load(f"{who}-{i}") == f"{who}-{i}-data" for who in "ab" for i in range(n))


def test_a_config_names_only_the_kernel_modules_of_its_plugins():
    everything = [K + m for m in ("aperture_naive", "aperture_sinc", "apertures", "background", "centroid", "cmodel",
                                  "convolved", "csr", "footprints", "gaap", "mixtures", "moments", "psf")]
    assert kernel_modules(ForcedPhotConfig()) == everything  # kron_radius: ingest's, not a run's
    stages = [K + "background", K + "csr", K + "footprints"]
    assert kernel_modules(ForcedPhotConfig(plugins=("PsfFlux",))) == stages + [K + "psf"]
    assert kernel_modules(ForcedPhotConfig(plugins=("GaapFlux",))) == stages + [K + "gaap", K + "psf"]
    assert kernel_modules(ForcedPhotConfig(plugins=("PixelFlags", "InputCount"))) == stages
    assert kernel_modules(ForcedPhotConfig(plugins=("PixelFlags",), footprint_dataset="scarlet")) == stages + [K + "psf"]
    no_centroid = [p for p in ForcedPhotConfig().plugins if p != "SdssCentroid"]
    assert K + "centroid" not in kernel_modules(ForcedPhotConfig(plugins=tuple(no_centroid)))


def test_run_compiles_the_modules_its_config_needs(tiny_repo, tmp_path, monkeypatch, capsys):
    """`forcedphot run` with a config of PsfFlux only compiles the stages' and PsfFlux's kernel modules,
    not the others (the cache made to look cold, the compile itself recorded instead of run)."""
    asked = []
    monkeypatch.setattr(kc, "_valid_signatures", lambda disp: ([], False))  # a fresh clone's cache
    monkeypatch.setattr(kc, "read_record", lambda mod: None)
    monkeypatch.setattr(kc, "run_tasks", lambda tasks: asked.extend(tasks) or [])
    monkeypatch.setattr(kc, "_run_in_processes", lambda tasks, n: asked.extend(tasks) or [])
    config = tmp_path / "psf.toml"
    config.write_text('plugins = ["PsfFlux"]\n')
    assert main(["run", "--repo", str(tiny_repo), "--config", str(config), "--band", "i", "-q"]) == 0
    err = capsys.readouterr().err
    assert "compiling the measurement kernels once: " in err and "of 4 modules" in err
    assert "kernels compiled in " in err
    assert sorted({t.module for t in asked}) == [K + "background", K + "csr", K + "footprints", K + "psf"]
    assert len(asked) == sum(len(sys.modules[m].WARMUP) for m in {t.module for t in asked})


PROBE = """
import importlib, json, sys
from forcedphot.config import ForcedPhotConfig
from forcedphot import compile as kc
from forcedphot.repository import Repository
from forcedphot.runner import run_all
from forcedphot.task import kernel_modules

everything = kc.kernel_modules()[0]

def signatures():
    return {name: {str(s) for s in disp.signatures} for name, disp, _ in kc.dispatchers(everything)}

out = []
for options in json.loads(sys.argv[2]):
    config = ForcedPhotConfig(**options)
    modules = kernel_modules(config)
    start = signatures()
    kc.run_tasks([kc.Task(m, i, 0.0) for m in modules for i in range(len(importlib.import_module(m).WARMUP))])
    before = signatures()
    summary = run_all(Repository(sys.argv[1]), config, force=True, jobs=1, n_threads=1, progress=False)
    after = signatures()
    out.append({"ok": summary.ok and len(summary.done) > 0, "modules": modules,
                "new": {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]},
                "used": sorted({k.rsplit(".", 1)[0] for k, v in after.items() if v - start[k]})})
print(json.dumps(out))
"""


@pytest.mark.slow
def test_the_modules_compiled_before_a_run_hold_every_kernel_it_uses(tiny_repo):
    """After the WARMUP entries of kernel_modules(config) ran, a run with that config compiles no new
    signature (everything was compiled up front) and uses no kernel outside those modules (and the
    helper modules they call): for a config of a few plugins, one without noise replacement, one
    deriving footprints from scarlet models, and the default one."""
    configs = [{"plugins": ["PsfFlux", "Variance"]}, {"plugins": ["LocalBackground"], "noise_replacement": False},
               {"plugins": ["PixelFlags"], "footprint_dataset": "scarlet"}, {}]
    res = subprocess.run([sys.executable, "-c", PROBE, str(tiny_repo), json.dumps(configs)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert res.returncode == 0, res.stderr[-3000:]
    probes = json.loads(res.stdout.strip().splitlines()[-1])
    few = probes[0]
    helpers = [K + "pixels", K + "prefetch"]  # no WARMUP: compiled into the kernels that call them
    for probe in probes:  # "used": what gained a signature in this probe (a later one reuses earlier ones')
        assert probe["ok"]
        assert probe["new"] == {}, probe["new"]
        assert set(probe["used"]) <= set(probe["modules"] + helpers), probe["used"]
    assert K + "psf" in few["used"] and not {K + "moments", K + "apertures", K + "centroid"} & set(few["used"])
