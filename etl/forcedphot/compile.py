"""Compile the measurement kernels once: is numba's on-disk cache warm, and warm it up.

Every ``@njit(cache=True)`` function of the modules of :mod:`forcedphot.kernels` (found with
pkgutil, so new kernel modules are picked up without a list here; compiled code lives nowhere
else) keeps an index file (``<function>-<line>.pyXY.nbi``) next to its compiled code. A
kernel is *warm* when that index holds an entry for this numba version, this source file (its
stamp), this function's bytecode and this CPU; it is then loaded in milliseconds instead of
compiled in seconds.

Warm-up registry: a kernel module may declare ``WARMUP``, a list of zero-argument callables
that each call some of its kernels on tiny inputs with the dtypes the pipeline uses (so the
compiled signatures are the production ones), e.g.::

    WARMUP = [lambda: valid_pixels(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32),
                                   np.zeros((2, 2), np.int32), np.int32(1))]

:func:`ensure_compiled` (what ``forcedphot run`` calls, with the modules its configuration
needs: :func:`forcedphot.task.kernel_modules`) runs the ``WARMUP`` entries of every module that
is not warm, spread over up to one process per core (numba compiles in one thread; each process
writes its kernels into numba's cache, which the run then loads), and records beside the cache
what each entry cost and which kernels it compiled (:class:`WarmUpRecord`): the next compile's
estimate comes from those figures. numba writes a cache index without a lock, so the compiling
processes hold a lock on the cache directory while they write one (:func:`serialise_cache_writes`).
:func:`warm_up` warms every kernel in this process (the benchmarks use it).

The cache counts as warm when these kernels are: of a module with ``WARMUP``, those its
``WARMUP`` compiled when last recorded (every one while there is no record for the module's
current source); of a module without, the parallel ones (the entry points), all while none is
warm, then only those a run has used (see :func:`cache_status`). Serial helpers are compiled
and cached with the kernels that call them.

numba keys a kernel's cache on its own source file only: a kernel that calls a helper from
another module (e.g. ``pixels.footprint_deltas``) would keep its cached code when only the
helper's file changes. Such a kernel is reported ``outdated`` (a called njit function's file is
newer than the kernel's cache index) and its cache entries are dropped before compiling, so it
is compiled afresh.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from types import ModuleType

from pydantic import BaseModel, ValidationError

# CPU seconds to compile one function (kernel or helper) from cold, on average, until this machine
# has recorded its own figures (numba 0.68 on the project's 2-core machine: the 86 functions of the
# modules a default run uses in 88 s of CPU on a quiet machine, 108 s on a busy one).
CPU_SECONDS_PER_KERNEL = 1.1
# CPU seconds a compiling process spends starting (interpreter, numpy, numba) before it compiles
START_SECONDS = 1.5
PACKAGES = ("forcedphot.kernels",)
RECORD_SUFFIX = ".warmup.json"


@dataclass(frozen=True)
class KernelCache:
    name: str  # module.function
    # "warm" (loadable from the cache), "stale" (index for other code/numba/CPU), "cold" (no index),
    # "outdated" (cached before a helper it calls from another file changed: warm_up() recompiles it)
    state: str
    parallel: bool
    signatures: int  # cached signatures valid here
    index: str  # path of the cache index file
    warm_up: bool  # its module declares WARMUP
    # decides whether the cache is warm: an outdated kernel, a kernel its module's WARMUP compiles,
    # or a parallel kernel (an entry point) of a module without WARMUP none of whose parallel kernels
    # is warm yet (see cache_status)
    counted: bool = True


def kernel_modules(packages=PACKAGES) -> tuple[list, dict[str, str]]:
    """(modules, {module name: import error}) of every module in ``packages``."""
    modules, errors = [], {}
    for pkg_name in packages:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__, pkg_name + "."):
            if info.ispkg:
                continue
            try:
                modules.append(importlib.import_module(info.name))
            except Exception as exc:  # a module being edited must not break `forcedphot run`
                errors[info.name] = f"{type(exc).__name__}: {exc}"
    return modules, errors


def dispatchers(modules=None) -> list[tuple[str, object, object]]:
    """(module.function, dispatcher, module) of every cached njit function defined at module level."""
    from numba.core.dispatcher import Dispatcher

    if modules is None:
        modules = kernel_modules()[0]
    out, seen = [], set()
    for mod in modules:
        for attr, obj in sorted(vars(mod).items()):
            if not isinstance(obj, Dispatcher) or getattr(obj.py_func, "__module__", None) != mod.__name__:
                continue  # not njit, or imported from another module (listed there)
            if id(obj) in seen or not hasattr(obj._cache, "_cache_file"):
                continue  # already listed, or cache=False (nothing on disk to be warm)
            seen.add(id(obj))
            out.append((f"{mod.__name__}.{obj.py_func.__name__}", obj, mod))
    return out


def _valid_signatures(disp) -> tuple[list, bool]:
    """(signatures cached for this code, numba and CPU; whether an index file exists at all)."""
    import os

    cache = disp._cache
    index = cache._cache_file._index_path
    if not os.path.exists(index):
        return [], False
    try:
        overloads = cache._cache_file._load_index()  # {} when numba or the source file changed
    except Exception:  # unreadable or truncated index: as good as none
        return [], True
    codegen = disp.targetctx.codegen()
    return [key[0] for key in overloads if key == cache._index_key(key[0], codegen)], True


def called_dispatchers(disp) -> list:
    """Every njit function ``disp`` calls, directly or through others, found by the global names its code uses."""
    from types import ModuleType

    from numba.core.dispatcher import Dispatcher

    found, stack = {}, [disp]
    while stack:
        fn = stack.pop().py_func
        names, codes = set(), [fn.__code__]
        while codes:  # the function's code and any nested code objects
            code = codes.pop()
            names.update(code.co_names)
            codes.extend(c for c in code.co_consts if hasattr(c, "co_names"))
        for name in names:
            obj = fn.__globals__.get(name)
            objs = [getattr(obj, n, None) for n in names] if isinstance(obj, ModuleType) else [obj]  # mod.fn
            for o in objs:
                if isinstance(o, Dispatcher) and o is not disp and id(o) not in found:
                    found[id(o)] = o
                    stack.append(o)
    return list(found.values())


def _outdated(disp) -> bool:
    """True when a function ``disp`` calls from another source file changed after ``disp`` was cached.

    numba stamps a cache with the kernel's own file only: the helpers compiled into it are not
    checked, so without this the cache would keep running a helper's old code.
    """
    import os

    index = disp._cache._cache_file._index_path
    own = disp.py_func.__code__.co_filename
    try:
        cached = os.path.getmtime(index)
        return any(os.path.getmtime(d.py_func.__code__.co_filename) > cached for d in called_dispatchers(disp)
                   if d.py_func.__code__.co_filename != own)
    except OSError:
        return False


class WarmUpRecord(BaseModel):
    """What compiling a module's ``WARMUP`` cost on this machine (``<module>.warmup.json`` beside numba's cache)."""

    numba: str
    stamp: tuple[float, int]  # the module file's (mtime, size), as numba stamps its cache
    kernels: list[str]  # the kernels (module.function) its WARMUP compiles, helpers included
    cpu_seconds: list[float]  # of each WARMUP entry, compiling from cold


def _record_path(mod) -> str | None:
    """``<cache directory>/<module>.warmup.json``: numba's cache directory for ``mod`` (None: no cached kernel)."""
    for _, disp, _ in dispatchers([mod]):
        return os.path.join(disp._cache._cache_path, mod.__name__.rsplit(".", 1)[-1] + RECORD_SUFFIX)
    return None


def _stamp(mod) -> tuple[float, int]:
    st = os.stat(mod.__file__)
    return st.st_mtime, st.st_size


def read_record(mod) -> WarmUpRecord | None:
    """The module's record for this numba version (None: none, unreadable, or another numba's)."""
    import numba

    path = _record_path(mod)
    try:
        with open(path) as f:
            record = WarmUpRecord.model_validate_json(f.read())
    except (TypeError, OSError, ValueError, ValidationError):
        return None
    return record if record.numba == numba.__version__ else None


def _write_record(mod, record: WarmUpRecord) -> None:
    path = _record_path(mod)
    if path is None:
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            f.write(record.model_dump_json())
        os.replace(tmp, path)
    except OSError:  # a read-only cache directory: the next estimate uses the default figure
        try:
            os.unlink(tmp)
        except OSError:
            pass


def cache_status(modules=None) -> list[KernelCache]:
    """The on-disk cache state of every kernel (see :class:`KernelCache`).

    Which kernels count towards :func:`is_warm`: in a module with ``WARMUP``, those its ``WARMUP``
    compiled last time (its record for the module's current source), or every one while there is
    no such record (the others are used by tests or other tools only). In a module without
    ``WARMUP``, only parallel kernels (a serial helper is compiled and cached with the kernels that
    call it; one that nothing calls stays cold for ever), and those while none of them is warm (a
    fresh checkout or an edited file: the next run compiles the module); once the pipeline has used
    some of them, the others are taken to be ones it does not use (tests, other configurations). An
    outdated kernel always counts: it was compiled, so something uses it, with a helper's old code.
    """
    if modules is None:
        modules = kernel_modules()[0]
    warmed = {}
    for mod in modules:
        record = read_record(mod) if getattr(mod, "WARMUP", None) else None
        if record is not None and tuple(record.stamp) == _stamp(mod):
            warmed[mod.__name__] = set(record.kernels)
    rows = []
    for name, disp, mod in dispatchers(modules):
        sigs, exists = _valid_signatures(disp)
        state = "warm" if sigs else ("stale" if exists else "cold")
        if state == "warm" and _outdated(disp):
            state, sigs = "outdated", []
        rows.append((mod.__name__, KernelCache(name, state, bool(disp.targetoptions.get("parallel")), len(sigs),
                                               disp._cache._cache_file._index_path,
                                               bool(getattr(mod, "WARMUP", None)))))
    used = {m for m, k in rows if k.parallel and k.state == "warm"}

    def counted(m, k):
        if k.state == "outdated":
            return True
        if k.warm_up:
            return k.name in warmed[m] if m in warmed else True
        return k.parallel and (m not in used or k.state == "warm")

    return [replace(k, counted=counted(m, k)) for m, k in rows]


def is_warm(status=None) -> bool:
    """True when every counted kernel (see :func:`cache_status`) loads from the cache."""
    status = cache_status() if status is None else status
    return all(k.state == "warm" for k in status if k.counted)


def _cold(status) -> list[KernelCache]:
    return [k for k in status if k.counted and k.state != "warm"]


def _module_of(kernel: KernelCache) -> str:
    return kernel.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Task:
    """One ``WARMUP`` entry to run: ``module.WARMUP[entry]``, with its estimated CPU seconds."""

    module: str
    entry: int
    cpu_seconds: float


@dataclass(frozen=True)
class Plan:
    """What :func:`ensure_compiled` will compile, and how."""

    kernels: int  # counted kernels (functions) that are not warm, of the modules it compiles
    tasks: tuple[Task, ...]  # longest first: each process takes the next one when it is free
    processes: int
    seconds: float  # the estimate, wall (this machine idle)
    cpu_per_kernel: float  # the per-kernel figure the estimate used
    measured: bool  # True: from this machine's records; False: the default figure


def _processes(processes: int | None, n_tasks: int) -> int:
    from forcedphot.threads import available_cores

    if n_tasks < 2 or not _can_lock():
        return 1
    return max(1, min(n_tasks, available_cores() if processes is None else processes))


def _can_lock() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:  # not POSIX: compile in one process
        return False
    return True


def compile_plan(modules=None, status=None, *, processes: int | None = None) -> Plan:
    """The ``WARMUP`` entries of every module with a cold counted kernel, longest first, the number of
    processes and the estimated time (each process takes the next entry when it is free, see
    :func:`_next_task`).

    An entry's estimate is its CPU seconds when this machine last compiled it (the module's
    record) x the fraction of the module's counted kernels that are cold, else the module's share
    of the per-kernel figure x its cold kernels: this machine's (recorded CPU seconds / kernels of
    the other modules' records) or ``CPU_SECONDS_PER_KERNEL``.
    """
    if modules is None:
        modules = (kernel_modules()[0] if status is None else
                   [importlib.import_module(m) for m in sorted({_module_of(k) for k in status})])
    status = cache_status(modules) if status is None else status
    cold = _cold(status)
    cold_modules = {_module_of(k) for k in cold}
    records = {m.__name__: read_record(m) for m in modules if m.__name__ in cold_modules}
    rec_cpu = sum(sum(r.cpu_seconds) for r in records.values() if r)
    rec_kernels = sum(len(r.kernels) for r in records.values() if r)
    measured = rec_kernels > 0
    per_kernel = rec_cpu / rec_kernels if measured else CPU_SECONDS_PER_KERNEL
    tasks = []
    for mod in modules:
        entries = getattr(mod, "WARMUP", None) or ()
        if mod.__name__ not in cold_modules or not entries:
            continue  # warm, or compiled by the run that first uses it
        record = records[mod.__name__]
        n_cold = sum(_module_of(k) == mod.__name__ for k in cold)
        n_counted = sum(_module_of(k) == mod.__name__ and k.counted for k in status)
        for i in range(len(entries)):
            if record is not None and len(record.cpu_seconds) == len(entries):
                cpu = record.cpu_seconds[i] * n_cold / n_counted  # the others load in milliseconds
            else:
                cpu = per_kernel * n_cold / len(entries)
            tasks.append(Task(mod.__name__, i, cpu))
    tasks.sort(key=lambda t: -t.cpu_seconds)
    n = _processes(processes, len(tasks))
    remaining, free, mine = list(tasks), [0.0] * n, [set() for _ in range(n)]
    while remaining:  # as the processes will take them
        p = free.index(min(free))
        task = _next_task(remaining, mine[p], set().union(*(m for q, m in enumerate(mine) if q != p)))
        free[p] += task.cpu_seconds
        mine[p].add(task.module)
    seconds = max(free, default=0.0) + (START_SECONDS if n > 1 else 0.0)
    compiled = {t.module for t in tasks}
    return Plan(sum(_module_of(k) in compiled for k in cold), tuple(tasks), n, seconds, per_kernel, measured)


def _next_task(remaining: list[Task], mine: set[str], others: set[str]) -> Task:
    """Taken out of ``remaining`` (longest first): the longest task of a module this process has
    compiled from (``mine``: its helpers are compiled already), else of a module no other process has
    (``others``: each would compile the module's helpers again), else the longest."""
    i = next((i for i, t in enumerate(remaining) if t.module in mine), None)
    if i is None:
        i = next((i for i, t in enumerate(remaining) if t.module not in others), 0)
    return remaining.pop(i)


def estimated_seconds(status=None) -> float:
    """The estimated wall seconds to compile the kernels that are not warm (see :func:`compile_plan`)."""
    return compile_plan(status=status).seconds


def compile_message(status=None, plan: Plan | None = None) -> str | None:
    """The one line ``forcedphot run`` prints before compiling; None when the cache is warm (or what is
    cold has no ``WARMUP``: the run compiles it)."""
    status = cache_status() if status is None else status
    if is_warm(status):
        return None
    plan = compile_plan(status=status) if plan is None else plan
    if not plan.tasks:
        return None
    from forcedphot.threads import available_cores

    modules = len({t.module for t in plan.tasks})
    where = f"in {plan.processes} processes" if plan.processes > 1 else "in one process"
    if plan.measured:
        basis = "from this machine's figures of its last compile"
    else:
        basis = f"at {plan.cpu_per_kernel:.1f} s of CPU per function; no figure from this machine yet"
    busy = ""
    try:
        load, cores = os.getloadavg()[0], available_cores()
        if load > cores:
            busy = f"; the machine is busy (load {load:.0f} on {cores} cores): expect longer"
    except OSError:
        pass
    return (f"compiling the measurement kernels once: {_count(plan.kernels, 'function')} of "
            f"{_count(modules, 'module')} {where}, "
            f"~{max(1, round(plan.seconds))} s ({basis}){busy}; later runs load them from the cache")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _flush_outdated(modules) -> None:
    """Drop the cache entries of outdated kernels (see :func:`_outdated`): the next call compiles them
    with their helpers' current code."""
    for _, disp, _ in dispatchers(modules):
        if _valid_signatures(disp)[0] and _outdated(disp):
            disp._cache.flush()


def warm_up(modules=None) -> float:
    """Load or compile every kernel now, in this process; returns the seconds it took.

    Outdated kernels (see :func:`_outdated`) lose their cache entries first. The parallel
    kernels' cached signatures are then loaded as they are (no inputs needed; their helpers are
    linked into them, so helpers are not loaded on their own: that would double the time); then
    each module's ``WARMUP`` callables run, compiling what the cache lacks (and saving it for the
    next process), and the modules' records are written (see :func:`ensure_compiled`).
    """
    t0 = time.perf_counter()
    if modules is None:
        modules = kernel_modules()[0]
    status = cache_status(modules)
    _flush_outdated(modules)
    for _, disp, _ in dispatchers(modules):
        if not disp.targetoptions.get("parallel"):
            continue
        for sig in _valid_signatures(disp)[0]:
            try:
                disp.compile(sig)
            except Exception:  # a cached signature that no longer types: the WARMUP calls decide
                pass
    results = run_tasks([Task(mod.__name__, i, 0.0) for mod in modules
                         for i in range(len(getattr(mod, "WARMUP", None) or ()))])
    _save_records(modules, results, status)
    return time.perf_counter() - t0


def serialise_cache_writes() -> None:
    """Hold an exclusive lock on numba's cache directory while an entry is written (in this process).

    numba saves an entry by reading the function's index, picking a free data file name, rewriting
    the index and writing the data file, with no lock: two processes adding different signatures of
    one function (a helper two kernels call) at once could lose one index entry, or pair one's
    index entry with the other's data file. The processes of :func:`ensure_compiled` take turns.
    """
    import fcntl

    from numba.core.caching import IndexDataCacheFile

    def locked(method):
        if getattr(method, "locked", False):
            return method

        def under_lock(self, *args, **kwargs):
            fd = os.open(self._cache_path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return method(self, *args, **kwargs)
            finally:
                os.close(fd)  # releases the lock

        under_lock.locked = True
        return under_lock

    IndexDataCacheFile.save = locked(IndexDataCacheFile.save)
    IndexDataCacheFile.flush = locked(IndexDataCacheFile.flush)


def _module(name_or_module) -> ModuleType:
    return name_or_module if isinstance(name_or_module, ModuleType) else importlib.import_module(name_or_module)


def run_tasks(tasks) -> list[dict]:
    """Run ``WARMUP`` entries here: per entry, its CPU and wall seconds and the kernels of its module that
    are compiled (or loaded) afterwards."""
    out = []
    for task in tasks:
        mod = _module(task.module)
        t0, w0 = time.process_time(), time.perf_counter()
        mod.WARMUP[task.entry]()
        out.append({"module": task.module, "entry": task.entry, "cpu_seconds": time.process_time() - t0,
                    "seconds": time.perf_counter() - w0, "pid": os.getpid(),
                    "kernels": [name for name, disp, _ in dispatchers([mod]) if disp.signatures]})
    return out


_RESULT = "forcedphot-compile-result "


def _child() -> None:
    """A compiling process (see :func:`ensure_compiled`): runs each task read from stdin (one JSON line),
    answers with its result on stdout; exits at the end of stdin."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the run reports an interrupt, in one line
    serialise_cache_writes()
    for line in sys.stdin:
        task = Task(**json.loads(line))
        try:
            (result,) = run_tasks([task])
        except Exception:  # the parent runs it again itself, and raises the error there
            result = {"module": task.module, "entry": task.entry, "failed": True}
        print(_RESULT + json.dumps(result), flush=True)


_CHILD = "from forcedphot.compile import _child; _child()"


def _run_in_processes(tasks, processes: int) -> list[dict]:
    """``tasks`` (longest first) in ``processes`` processes, each taking the next task when it is free
    (see :func:`_next_task`).

    A task whose process fails runs here afterwards, so its error is raised as it would be without
    the processes.
    """
    import threading

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if isinstance(p, str) and p))
    remaining, lock = list(tasks), threading.Lock()
    results, failed, procs, started = [], [], [], {}  # started: module -> the process that took it first

    def feed(proc):
        mine = set()
        while True:
            with lock:
                if not remaining:
                    return
                task = _next_task(remaining, mine, {m for m, p in started.items() if p is not proc})
                started.setdefault(task.module, proc)
            mine.add(task.module)
            try:
                proc.stdin.write(json.dumps({"module": task.module, "entry": task.entry,
                                             "cpu_seconds": task.cpu_seconds}) + "\n")
                proc.stdin.flush()
                for line in proc.stdout:
                    if line.startswith(_RESULT):
                        result = json.loads(line[len(_RESULT):])
                        if result.get("failed"):
                            failed.append(task)
                        else:
                            results.append(result)
                        break
                else:
                    raise OSError("the compiling process ended")
            except (OSError, ValueError):
                failed.append(task)
                return

    try:
        for _ in range(processes):
            procs.append(subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, env=env, text=True))
        threads = [threading.Thread(target=feed, args=(p,), daemon=True) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for proc in procs:
            proc.stdin.close()
            proc.wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed += remaining  # every process failed before taking these
    return results + run_tasks(sorted(failed, key=lambda t: (t.module, t.entry)))


@dataclass(frozen=True)
class Compiled:
    """What :func:`ensure_compiled` did."""

    seconds: float  # wall
    cpu_seconds: float  # of every compiling process
    processes: int
    kernels: int  # counted kernels that were not warm
    estimate: float  # the seconds the message announced

    def summary(self) -> str:
        where = f"{self.processes} processes" if self.processes > 1 else "one process"
        return (f"kernels compiled in {self.seconds:.0f} s (~{max(1, round(self.estimate))} s announced; {where}, "
                f"{self.cpu_seconds:.0f} s of CPU)")


def _cpu_now(children: bool) -> float:
    try:
        import resource
    except ImportError:
        return time.process_time()
    u = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def ensure_compiled(modules=None, *, say=print, processes: int | None = None) -> Compiled | None:
    """If a kernel of ``modules`` (names or modules; default: every kernel module) is cold: ``say`` the
    one-line message, compile, record the figures, return what it took; else None.

    The ``WARMUP`` entries of the modules that are not warm are shared out among ``processes``
    (default: one per core, at most one per entry), which write numba's cache; this process loads
    nothing. Run it before starting worker processes, so they all load the cache instead of each
    compiling the same kernels.
    """
    modules = kernel_modules()[0] if modules is None else [_module(m) for m in modules]
    status = cache_status(modules)
    if is_warm(status):
        return None
    plan = compile_plan(modules, status, processes=processes)
    if not plan.tasks:
        return None  # what is cold has no WARMUP: the run that uses it compiles it
    say(compile_message(status, plan))
    _flush_outdated(modules)
    w0, cpu0, child0 = time.perf_counter(), _cpu_now(False), _cpu_now(True)
    if plan.processes > 1:
        results = _run_in_processes(plan.tasks, plan.processes)
    else:
        results = run_tasks(plan.tasks)
    seconds = time.perf_counter() - w0
    cpu = _cpu_now(False) - cpu0 + _cpu_now(True) - child0
    _save_records(modules, results, status)
    return Compiled(seconds, cpu, plan.processes, plan.kernels, plan.seconds)


def _save_records(modules, results: list[dict], status) -> None:
    """Record each module whose every ``WARMUP`` entry ran: the kernels it compiled (what
    :func:`cache_status` counts) and the CPU seconds of each entry (the next estimate); those of its
    last record instead when some of its kernels were warm before (loaded, not compiled)."""
    import numba

    partly_warm = {_module_of(k) for k in status if k.counted and k.state == "warm"}
    by_module: dict[str, list[dict]] = {}
    for r in results:
        by_module.setdefault(r["module"], []).append(r)
    for mod in modules:
        done = sorted(by_module.get(mod.__name__, ()), key=lambda r: r["entry"])
        if not done or len(done) != len(getattr(mod, "WARMUP", None) or ()):
            continue
        cpu = [r["cpu_seconds"] for r in done]
        last = read_record(mod) if mod.__name__ in partly_warm else None
        if last is not None and len(last.cpu_seconds) == len(cpu):
            cpu = last.cpu_seconds
        _write_record(mod, WarmUpRecord(numba=numba.__version__, stamp=_stamp(mod),
                                        kernels=sorted({k for r in done for k in r["kernels"]}), cpu_seconds=cpu))


def format_status(status=None) -> str:
    status = cache_status() if status is None else status
    lines = [f"{k.name:60s} {k.state:5s} {'parallel' if k.parallel else '':8s} {k.signatures} signature(s)"
             f"{'' if k.warm_up else '  (no WARMUP)'}{'' if k.counted else '  (not counted)'}"
             for k in status]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m forcedphot.compile: state, then compile what is cold
    print(format_status())
    compiled = ensure_compiled()
    print(compiled.summary() if compiled else "every kernel is warm")
    print(format_status())
