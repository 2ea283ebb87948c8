"""Compile the measurement kernels once: is numba's on-disk cache warm, and warm it up.

Every ``@njit(cache=True)`` function of the modules of :mod:`forcedphot.kernels` and
:mod:`forcedphot.plugins` (found with pkgutil, so new kernel modules are picked up without a
list here) keeps an index file (``<function>-<line>.pyXY.nbi``) next to its compiled code. A
kernel is *warm* when that index holds an entry for this numba version, this source file (its
stamp), this function's bytecode and this CPU; it is then loaded in milliseconds instead of
compiled in seconds.

Warm-up registry: a kernel module may declare ``WARMUP``, a list of zero-argument callables
that each call some of its kernels on tiny inputs with the dtypes the pipeline uses (so the
compiled signatures are the production ones), e.g.::

    WARMUP = [lambda: valid_pixels(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32),
                                   np.zeros((2, 2), np.int32), np.int32(1))]

:func:`warm_up` first loads every signature already in the cache (no inputs needed), then calls
each ``WARMUP`` entry (a cache load or a compilation). Kernels of a module without ``WARMUP``
are compiled by the first run that uses them, and are warm from then on. The cache counts as
warm when every parallel kernel (the entry points) and every kernel of a module with ``WARMUP``
is; serial helpers are compiled and cached with the kernels that call them.

numba keys a kernel's cache on its own source file only: a kernel that calls a helper from
another module (e.g. ``pixels.fill_stamp``) keeps its cached code when only the helper's file
changes. Delete ``__pycache__/*.nbi`` (or set ``NUMBA_CACHE_DIR`` afresh) after editing a helper.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass

# Seconds to compile one kernel from cold (numba 0.68 on this 2-core machine: six parallel
# kernels ~25 s quiet, ~75 s under load); only used for the estimate in the message.
SECONDS_PARALLEL = 4.0
SECONDS_SERIAL = 0.7
PACKAGES = ("forcedphot.kernels", "forcedphot.plugins")


@dataclass(frozen=True)
class KernelCache:
    name: str  # module.function
    state: str  # "warm" (loadable from the cache), "stale" (index for other code/numba/CPU), "cold" (no index)
    parallel: bool
    signatures: int  # cached signatures valid here
    index: str  # path of the cache index file
    warm_up: bool  # its module declares WARMUP

    @property
    def counted(self) -> bool:
        """Decides whether the cache is warm: parallel kernels (the entry points) and what WARMUP covers.

        A serial helper (``nogil`` per-source function) is compiled and cached with the kernel that
        calls it, so its state follows that kernel's; one that nothing calls yet stays cold forever.
        """
        return self.parallel or self.warm_up


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


def cache_status(modules=None) -> list[KernelCache]:
    """The on-disk cache state of every kernel (see :class:`KernelCache`)."""
    out = []
    for name, disp, mod in dispatchers(modules):
        sigs, exists = _valid_signatures(disp)
        state = "warm" if sigs else ("stale" if exists else "cold")
        out.append(KernelCache(name, state, bool(disp.targetoptions.get("parallel")), len(sigs),
                               disp._cache._cache_file._index_path, bool(getattr(mod, "WARMUP", None))))
    return out


def is_warm(status=None) -> bool:
    """True when every counted kernel (see :attr:`KernelCache.counted`) loads from the cache."""
    status = cache_status() if status is None else status
    return all(k.state == "warm" for k in status if k.counted)


def estimated_seconds(status=None) -> float:
    """A rough compile time for the kernels that are not warm."""
    status = cache_status() if status is None else status
    return sum(SECONDS_PARALLEL if k.parallel else SECONDS_SERIAL for k in status if k.counted and k.state != "warm")


def compile_message(status=None) -> str | None:
    """The one line ``forcedphot run`` prints before compiling; None when the cache is warm."""
    status = cache_status() if status is None else status
    if is_warm(status):
        return None
    return (f"compiling the measurement kernels once (~{max(1, round(estimated_seconds(status)))} s); "
            "later runs load them from the cache")


def warm_up(modules=None) -> float:
    """Load or compile every kernel now; returns the seconds it took.

    Cached signatures are loaded as they are (no inputs needed); then each module's ``WARMUP``
    callables run, compiling what the cache lacks (and saving it for the next process).
    """
    t0 = time.perf_counter()
    if modules is None:
        modules = kernel_modules()[0]
    for _, disp, _ in dispatchers(modules):
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
             f"{'' if k.warm_up else '  (no WARMUP)'}{'' if k.counted else '  (helper: follows its callers)'}"
             for k in status]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m forcedphot.kernels.compile: state, then warm up
    print(format_status())
    print(f"warm up: {warm_up():.2f} s")
    print(format_status())
