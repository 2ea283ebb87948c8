"""How the ``forcedphot`` command ends: exit codes, Ctrl-C and SIGTERM, and the closing of a run.

Every interrupt (Ctrl-C, SIGTERM from systemd or a scheduler) ends a command the same way,
whatever it is doing at that moment: one line on stderr and exit 130. The handlers raise
``KeyboardInterrupt`` and also note the signal (:func:`received`), because some libraries turn
the ``KeyboardInterrupt`` of an interrupted call into an exception of their own (DuckDB raises
``Query interrupted``; Python itself swallows one raised inside a destructor): an exception
that ends a command after a signal is the interrupt, not an error.

The command closes in one place (:func:`close`): the exit code is decided with the signals
held (noted, not raised), the closings registered by the command (a run's ledger record) are
written with that code, and the process ends at once with it, skipping the interpreter's
teardown: a signal during that teardown would otherwise kill the process (exit -15) or print
a traceback after the run was recorded. A signal that arrives once the code is decided no
longer changes it: the ledger and the exit status always agree.

This module imports only the standard library: the entry point installs the handlers before
anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable

EXIT_OK = 0  # every selected quantum done or up to date (or left to a live run holding it)
EXIT_FAILED_QUANTA = 1  # some quanta failed (or an unexpected error, with its traceback)
EXIT_ERROR = 2  # bad input or usage
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

INTERRUPTED = "forcedphot: interrupted"
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []
_closings: list[Callable[[int], None]] = []
_previous: dict = {}  # the handlers install() replaced (restored when a test's command ends)
_exiting: list[int] = []  # the decided exit code, once close() has written the closings
_interruptible: weakref.WeakSet = weakref.WeakSet()  # open DuckDB connections (see interrupt_with_signal)


def _raise_interrupt(signum, frame):
    _received.append(signum)
    for resource in list(_interruptible):
        try:
            resource.interrupt()
        except Exception:  # closed meanwhile
            pass
    raise KeyboardInterrupt


def _note(signum, frame):
    _received.append(signum)
    if _exiting:  # the code is decided and recorded: a signal only hurries the exit (atexit callbacks)
        os._exit(_exiting[0])


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def installed() -> bool:
    return _main_thread() and signal.getsignal(signal.SIGTERM) is _raise_interrupt


def install() -> None:
    """A fresh command: Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` (and are noted), no closing yet."""
    _received.clear()
    _closings.clear()
    if _main_thread():
        for sig in SIGNALS:
            old = signal.signal(sig, _raise_interrupt)
            _previous.setdefault(sig, old)


def code_of(exc: BaseException) -> int:
    """The exit code of a command ended by ``exc``: 130 for an interrupt, 2 for bad input, argparse's
    own code, else 1 (a command that saw a signal is interrupted whatever it raised: :func:`received`)."""
    from forcedphot.errors import ForcedPhotError

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):  # sys.exit(): None is success, a message is an error (as Python exits)
        return EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_FAILED_QUANTA
    if isinstance(exc, (ForcedPhotError, FileNotFoundError)):
        return EXIT_ERROR
    return EXIT_FAILED_QUANTA


def interrupt_with_signal(resource) -> None:
    """Call ``resource.interrupt()`` when Ctrl-C or SIGTERM arrives, for as long as it lives.

    For DuckDB connections: DuckDB runs Python's signal handlers while a query runs, but does not
    always stop on the ``KeyboardInterrupt`` they raise (seen: one query in three ran on for good,
    DuckDB 2.0); ``interrupt()`` always stops it.
    """
    _interruptible.add(resource)


def received() -> bool:
    """Has a Ctrl-C or SIGTERM arrived since :func:`install`?"""
    return bool(_received)


def on_close(closing: Callable[[int], None]) -> None:
    """Call ``closing(exit_code)`` when the command ends, with its final exit code (signals held)."""
    _closings.append(closing)


def hold() -> None:
    """From now on Ctrl-C and SIGTERM are noted, not raised (in the main thread; elsewhere a no-op)."""
    while _main_thread():
        try:
            for sig in SIGNALS:
                signal.signal(sig, _note)
            return
        except KeyboardInterrupt:  # raised by the handler being replaced: noted all the same
            continue


@contextlib.contextmanager
def held():
    """Signals are noted, not raised, inside the block, and raised after it as ``KeyboardInterrupt``
    (a library caller's run records its end whole, then stops)."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    before = len(_received)
    hold()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if len(_received) > before:
        raise KeyboardInterrupt


def close(code: int, *, note: str = INTERRUPTED, exit_process: bool = True) -> int:
    """End the command: hold the signals, take ``code`` (130 if a signal has arrived), call the closings
    with it, print ``note`` on an interrupt, and end the process now (``exit_process``), after its
    atexit callbacks but without the interpreter's teardown; ``exit_process=False`` (a test calling
    ``cli.main``) restores the handlers :func:`install` replaced and returns the code."""
    hold()
    if _received:
        code = EXIT_INTERRUPTED
    while _closings:
        closing = _closings.pop(0)
        try:
            closing(code)
        except Exception as exc:  # e.g. a full disk: say so, the exit code stays the command's
            print(f"forcedphot: error: {exc}", file=sys.stderr)
    if code == EXIT_INTERRUPTED:
        print(note, file=sys.stderr)
    if not exit_process:
        while _previous:
            sig, handler = _previous.popitem()
            signal.signal(sig, handler)
        return code
    _exiting.append(code)
    if code != EXIT_INTERRUPTED:  # logging's flush and the libraries' own closing (not the interpreter's
        import atexit  # teardown); skipped after an interrupt, which stopped the workers without waiting

        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`forcedphot sql ... | head`)
            pass
    os._exit(code)
