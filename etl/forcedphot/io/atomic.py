"""Write-then-rename: a partial file never appears under its final name."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path


def temp_path_for(path: Path) -> Path:
    """A hidden temporary name in the same directory (so the rename is atomic, and globs skip it)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path to write; on success fsync and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()
