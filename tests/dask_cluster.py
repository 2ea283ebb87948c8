"""A Dask cluster of separate processes for the tests: ``dask scheduler`` and ``dask worker``s.

Each is its own interpreter (``python -m dask scheduler|worker``), started in its own session with its
own environment (the test's environment without any ``AWS_*`` variable, plus what a test adds): it
shares no memory with the client, which reaches it only through ``tcp://127.0.0.1:PORT``. Starting is
bounded (the scheduler answers and every worker registers within ``START_TIMEOUT``) and stopping is
by PID: SIGTERM (a worker's nanny stops its worker), then SIGKILL of the process's own group after
``STOP_TIMEOUT``.

A worker can be paused at a named point, as :mod:`tests.test_interrupts` pauses a command
(``PAUSE_SITE``, put on the workers' PYTHONPATH): the first worker to get there writes its PID to
``<pause dir>/reached`` and waits until ``<pause dir>/release`` exists; later ones pass straight on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 90.0  # seconds for the scheduler to answer and every worker to register (2 shared cores)
STOP_TIMEOUT = 15.0

PAUSE_SITE = r'''
import importlib.abc, importlib.util, os, sys, time

PAUSE = os.environ["FP_CLUSTER_PAUSE"]  # MODULE:ATTR:before|after
DIR = os.environ["FP_CLUSTER_PAUSE_DIR"]
MATCH = os.environ.get("FP_CLUSTER_PAUSE_MATCH", "")  # only calls whose first argument contains this


def pause():
    try:  # the first worker to get here pauses; the others (a retry included) go on
        os.close(os.open(os.path.join(DIR, "claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    with open(os.path.join(DIR, "reached.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(DIR, "reached.tmp"), os.path.join(DIR, "reached"))
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(DIR, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)


def wrap(fn, when):
    def paused(*args, **kwargs):
        hit = not MATCH or (args and MATCH in str(args[0])) or any(MATCH in str(a) for a in args[1:2])
        if hit and when == "before":
            pause()
        result = fn(*args, **kwargs)
        if hit and when == "after":
            pause()
        return result
    return paused


class PauseAt(importlib.abc.MetaPathFinder):
    def __init__(self, spec):
        self.module, self.attr, self.when = spec.split(":")

    def find_spec(self, name, path, target=None):
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            *owner_path, last = self.attr.split(".")
            owner = module
            for part in owner_path:
                owner = getattr(owner, part)
            setattr(owner, last, wrap(getattr(owner, last), self.when))

        spec.loader.exec_module = exec_and_wrap
        return spec


sys.meta_path.insert(0, PauseAt(PAUSE))
'''


def record_frames(monkeypatch) -> list[bytes]:
    """The list every frame this process's Dask client writes is appended to (read raw: run it with
    ``distributed.comm.compression`` None)."""
    import inspect

    import distributed.comm.tcp as tcp

    sent: list[bytes] = []
    to_frames = tcp.to_frames

    if inspect.iscoroutinefunction(to_frames):
        async def recording(*args, **kwargs):
            frames = await to_frames(*args, **kwargs)
            sent.extend(bytes(f) for f in frames)
            return frames
    else:
        def recording(*args, **kwargs):
            frames = to_frames(*args, **kwargs)
            sent.extend(bytes(f) for f in frames)
            return frames

    monkeypatch.setattr(tcp, "to_frames", recording)
    return sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_environment(extra: dict | None = None) -> dict:
    """The environment of the cluster's processes: the test's, without credentials, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FP_CLUSTER_", "DASK_"))}
    return env | (extra or {})


class Cluster:
    """``dask scheduler`` and ``n_workers`` ``dask worker --nthreads 1`` on 127.0.0.1, each a process of its own."""

    def __init__(self, n_workers: int = 2, *, worker_env: dict | None = None, scheduler_env: dict | None = None,
                 pause: str | None = None, pause_dir: Path | None = None, pause_match: str = "",
                 nanny: bool = True):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.n_workers = n_workers
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.pause_dir = pause_dir
        self.worker_env = dict(worker_env or {})
        self.scheduler_env = dict(scheduler_env or {})
        self.nanny = nanny
        if pause:
            assert pause_dir is not None
            site = pause_dir / "site"
            site.mkdir(parents=True, exist_ok=True)
            (site / "sitecustomize.py").write_text(PAUSE_SITE)
            self.worker_env.update(FP_CLUSTER_PAUSE=pause, FP_CLUSTER_PAUSE_DIR=str(pause_dir),
                                   FP_CLUSTER_PAUSE_MATCH=pause_match,
                                   PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))

    def _spawn(self, args: list[str], env: dict, log: Path) -> subprocess.Popen:
        self.logs.append(log)
        with open(log, "wb") as out:  # a file, not a pipe that could fill
            return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=cluster_environment(env), start_new_session=True, cwd=log.parent)

    def start(self, log_dir: Path) -> "Cluster":
        log_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler = self._spawn(["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
                                     self.scheduler_env, log_dir / "scheduler.log")
        for k in range(self.n_workers):
            self.add_worker(log_dir / f"worker-{k}.log")
        self.wait_for_workers(self.n_workers)
        return self

    def add_worker(self, log: Path) -> subprocess.Popen:
        args = ["worker", self.address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
        proc = self._spawn(args + ([] if self.nanny else ["--no-nanny"]), self.worker_env, log)
        self.workers.append(proc)
        return proc

    def client(self, timeout: float = START_TIMEOUT):
        from distributed import Client

        return Client(self.address, timeout=timeout)

    def wait_for_workers(self, n: int, timeout: float = START_TIMEOUT) -> None:
        """Bounded: the scheduler answers and ``n`` workers have registered, or an error with the logs."""
        t0 = time.monotonic()
        try:
            with self.client(timeout) as c:
                c.wait_for_workers(n, timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except Exception as exc:
            self.stop()
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.logs if p.exists())
            raise RuntimeError(f"the Dask cluster did not start in {timeout:.0f} s: {exc}\n{tails}") from exc

    def worker_pids(self) -> dict[str, int]:
        """{worker address: PID of the process that runs its tasks} (the nanny's child, with a nanny)."""
        with self.client() as c:
            return c.run(os.getpid)

    def stop(self) -> None:
        procs = [p for p in [*self.workers, self.scheduler] if p is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # the process's own group (it started its session): a nanny's worker left behind goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_file(path: Path, *, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> str:
    """The contents of ``path`` once it exists (bounded; fails early if ``proc`` ends first)."""
    t0 = time.monotonic()
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {path.name}:\n{out}\n{err}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear in {timeout:.0f} s")
        time.sleep(0.02)
    return path.read_text()
