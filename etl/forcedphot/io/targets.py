"""What ``--overwrite`` may replace: an existing target only with the flag, and only a folder forcedphot wrote.

Every command that writes a folder (``simulate``, ``ingest``, ``report``, ``export hats``) checks
its target here first, with a test of its own kind of folder (``foreign``): an earlier report,
an earlier export, a repository. A folder that fails it is refused with one line naming what is
in the way, and nothing in it is touched; an empty folder is always replaceable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from forcedphot.errors import InputError

MARKER_KEY = "forcedphot_writer"  # written by forcedphot into a folder's own metadata (e.g. HATS properties)


def check_target(path: str | Path, *, overwrite: bool, foreign: Callable[[Path], str | None],
                 exists: str = "exists; pass --overwrite to replace it") -> bool:
    """Refuse an existing ``path`` without ``overwrite``, and any folder ``foreign`` objects to.

    ``foreign(path)`` returns why a non-empty existing folder is not one this command wrote
    (e.g. "not a forcedphot report folder (no index.html written by forcedphot report)"), or
    None when it is. ``exists`` is the message for an existing target without ``overwrite``.
    Returns whether ``path`` exists (an empty folder or one of ours, to be replaced).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not overwrite:
        raise InputError(f"{path}: {exists}")
    if not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder; refusing to overwrite it")
    if not any(path.iterdir()):
        return True
    reason = foreign(path)
    if reason:
        raise InputError(f"{path}: {reason}; refusing to overwrite it")
    return True


def first_foreign(names: list[str], *, what: str) -> str | None:
    """One line naming the first of ``names`` (sorted) that forcedphot did not write, and how many more."""
    if not names:
        return None
    names = sorted(names)
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"holds {names[0]}{more}, which {what} did not write"
