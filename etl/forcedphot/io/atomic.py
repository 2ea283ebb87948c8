"""Write-then-rename: a partial file or folder never appears under its final name.

Temporary names carry their writer (host, pid and the process's start time), so a later
run can tell the leftovers of a killed writer from the work of a live one and sweep them
(:func:`sweep_temp`).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import sys
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

# .<final name>.w-<host>-<pid>-<start>-<random>.<kind>
_TEMP_NAME = re.compile(r"^\..+\.w-(?P<host>.+)-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}\.(?:tmp|tmpdir|old)$")


def process_start(pid: int) -> int:
    """Start time of a process in clock ticks since boot (Linux), 0 where unknown; -1 if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except FileNotFoundError:
        return -1 if sys.platform.startswith("linux") else _pid_exists_or_minus_one(pid)
    except (OSError, ValueError, IndexError):
        return 0


def _pid_exists_or_minus_one(pid: int) -> int:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return -1
    except PermissionError:
        pass
    return 0


@lru_cache(maxsize=None)
def _writer_for(pid: int) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return f"{host}-{pid}-{max(process_start(pid), 0)}"


def writer_token() -> str:
    """``host-pid-start`` of this process (recomputed after a fork: the pid is part of the key)."""
    return _writer_for(os.getpid())


def writer_alive(host: str, pid: int, start: int) -> bool:
    """Is the writer of a temporary name still running? (another host's writer: assumed alive)."""
    if host != _writer_for(os.getpid()).rsplit("-", 2)[0]:
        return True
    now = process_start(pid)
    return now != -1 and (start == 0 or now in (0, start))


def is_temp_name(name: str) -> bool:
    """Is ``name`` the temporary name of a forcedphot writer (a file or folder being written)?"""
    return _TEMP_NAME.match(name) is not None


def temp_path_for(path: Path, kind: str = "tmp") -> Path:
    """A hidden temporary name in the same directory (so the rename is atomic, and globs skip it)."""
    return path.with_name(f".{path.name}.w-{writer_token()}-{uuid.uuid4().hex[:8]}.{kind}")


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True):
    """Yield a temporary path to write; on success fsync and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. ``durable=False``: no
    fsync (the rename is still atomic for readers; after a power loss the file may be old, empty or absent),
    for caches whose loss only costs recomputation (the verified state: two fsyncs of each commit before).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a new temporary folder next to ``path``; on success it replaces ``path`` whole.

    Nothing of a previous ``path`` survives the swap; on any exception (or a kill) ``path``
    is left as it was and the temporary folder is removed (or swept later, its writer dead).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temp(path.parent, prefix=f".{path.name}.")
    tmp = temp_path_for(path, "tmpdir")
    tmp.mkdir()
    try:
        yield tmp
        if not path.exists():
            tmp.rename(path)
        elif _exchange(tmp, path):  # tmp now holds the old folder
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            old = temp_path_for(path, "old")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_temp(root: str | os.PathLike, *, prefix: str = ".", recursive: bool = False) -> list[Path]:
    """Remove temporary files and folders under ``root`` whose writer is no longer running."""
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            m = _TEMP_NAME.match(name) if name.startswith(prefix) else None
            if m and not writer_alive(m["host"], int(m["pid"]), int(m["start"])):
                p = Path(dirpath) / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
        dirnames[:] = [d for d in dirnames if not _TEMP_NAME.match(d)] if recursive else []
    return removed
