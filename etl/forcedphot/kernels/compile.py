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

:func:`warm_up` first loads every parallel kernel's signatures already in the cache (no inputs
needed), then calls each ``WARMUP`` entry (a cache load or a compilation). Kernels of a module
without ``WARMUP`` are compiled by the first run that uses them, and are warm from then on.
The cache counts as warm when the parallel kernels (the entry points) are: all of a module with
``WARMUP``; of a module without, all while none is warm, then only those a run has used (see
:func:`cache_status`). Serial helpers are compiled and cached with the kernels that call them.

numba keys a kernel's cache on its own source file only: a kernel that calls a helper from
another module (e.g. ``pixels.footprint_deltas``) would keep its cached code when only the
helper's file changes. Such a kernel is reported ``outdated`` (a called njit function's file is
newer than the kernel's cache index) and :func:`warm_up` drops its cache entries so it is
compiled afresh.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, replace

# Seconds to compile one parallel kernel with its helpers from cold, on average (numba 0.68, this
# 2-core machine, load ~1: 23 kernels in ~195 s); only used for the estimate in the message.
SECONDS_PARALLEL = 8.0
PACKAGES = ("forcedphot.kernels",)


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
    # decides whether the cache is warm: an outdated kernel, a parallel kernel (an entry point) of a
    # module with WARMUP, or of a module without WARMUP none of whose parallel kernels is warm yet
    # (see cache_status)
    counted: bool = True


def kernel_modules(packages=PACKAGES) -> tuple[list, dict[str, str]]:
    """(modules, {module name: import error}) of every module in ``packages``, this one excepted."""
    modules, errors = [], {}
    for pkg_name in packages:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__, pkg_name + "."):
            if info.name == __name__ or info.ispkg:
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


def cache_status(modules=None) -> list[KernelCache]:
    """The on-disk cache state of every kernel (see :class:`KernelCache`).

    Only parallel kernels count towards :func:`is_warm`: a serial helper is compiled and cached
    with the kernels that call it (one that nothing calls stays cold for ever). In a module with
    ``WARMUP`` every parallel kernel counts (warm_up() compiles what WARMUP covers). In a module
    without it, the parallel kernels count while none of them is warm (a fresh checkout or an
    edited file: the next run compiles the module); once the pipeline has used some of them, the
    others are taken to be ones it does not use (tests, other configurations). An outdated
    kernel always counts: it was compiled, so something uses it, with a helper's old code.
    """
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
    return [replace(k, counted=k.state == "outdated" or (k.parallel and (k.warm_up or m not in used or
                                                                          k.state == "warm"))) for m, k in rows]


def is_warm(status=None) -> bool:
    """True when every counted kernel (see :func:`cache_status`) loads from the cache."""
    status = cache_status() if status is None else status
    return all(k.state == "warm" for k in status if k.counted)


def estimated_seconds(status=None) -> float:
    """A rough compile time for the kernels that are not warm."""
    status = cache_status() if status is None else status
    return SECONDS_PARALLEL * sum(k.counted and k.state != "warm" for k in status)


def compile_message(status=None) -> str | None:
    """The one line ``forcedphot run`` prints before compiling; None when the cache is warm."""
    status = cache_status() if status is None else status
    if is_warm(status):
        return None
    return (f"compiling the measurement kernels once (~{max(1, round(estimated_seconds(status)))} s); "
            "later runs load them from the cache")


def warm_up(modules=None) -> float:
    """Load or compile every kernel now; returns the seconds it took.

    Outdated kernels (see :func:`_outdated`) lose their cache entries first. The parallel
    kernels' cached signatures are then loaded as they are (no inputs needed; their helpers are
    linked into them, so helpers are not loaded on their own: that would double the time); then
    each module's ``WARMUP`` callables run, compiling what the cache lacks (and saving it for the
    next process).
    """
    t0 = time.perf_counter()
    if modules is None:
        modules = kernel_modules()[0]
    for _, disp, _ in dispatchers(modules):
        if _valid_signatures(disp)[0] and _outdated(disp):
            disp._cache.flush()  # an empty index: the next call compiles with the helpers' current code
    for _, disp, _ in dispatchers(modules):
        if not disp.targetoptions.get("parallel"):
            continue
        for sig in _valid_signatures(disp)[0]:
            try:
                disp.compile(sig)
            except Exception:  # a cached signature that no longer types: the WARMUP calls decide
                pass
    for mod in modules:
        for fn in getattr(mod, "WARMUP", ()) or ():
            fn()
    return time.perf_counter() - t0


def ensure_compiled(say=print) -> float | None:
    """If the cache is cold: ``say`` the one-line message, warm up, return the seconds; else None.

    Run it in the parent before starting worker processes, so they all load the cache instead of
    each compiling the same kernels.
    """
    message = compile_message()
    if message is None:
        return None
    say(message)
    return warm_up()


def format_status(status=None) -> str:
    status = cache_status() if status is None else status
    lines = [f"{k.name:60s} {k.state:5s} {'parallel' if k.parallel else '':8s} {k.signatures} signature(s)"
             f"{'' if k.warm_up else '  (no WARMUP)'}{'' if k.counted else '  (not counted)'}"
             for k in status]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m forcedphot.kernels.compile: state, then warm up
    print(format_status())
    print(f"warm up: {warm_up():.2f} s")
    print(format_status())
