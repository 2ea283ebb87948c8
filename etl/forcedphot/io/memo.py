"""Facts read from a file's bytes, remembered with the file's stat: ``forcedphot status`` without pyarrow.

``forcedphot status`` decides each quantum's state from its input files' fingerprints (the content
digests their writers recorded, read from the Parquet footer or Arrow IPC schema) and the provenance its
output records (also in the footer). Reading those with pyarrow costs ~0.2 s of CPU to import it, most of
a status. So what was read is remembered, as :mod:`forcedphot.io.verified` remembers a file's verification:
with the file's size, mtime, ctime, inode and device, and only when its ctime was older than the racy
margin when it was read; a later status that finds the same stat uses it, any other stat reads the file
again. The facts are pure functions of the bytes, so a remembered one is what reading would give.

Where: ``runs/verified/memo+<name>.json`` (``memo+fingerprints``, ``memo+provenance``), merged with what
is on disk and replaced atomically under the verified state's lock; unreadable or lost, it only costs a
read of the files. A read-only repository keeps nothing. Plain JSON (no pydantic model): an entry that is
not ``[size, mtime_ns, ctime_ns, ino, dev, value]`` is ignored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from forcedphot.io.verified import LOCK_NAME, LOCK_SECONDS, STATE_DIR, racy, stat_key

FORMAT = 1


class StatMemo:
    """One named memo of a repository: {path relative to the root: (stat key, value)}."""

    def __init__(self, root: str | Path, name: str):
        self.root = Path(os.path.abspath(root))
        self._prefix = os.path.join(str(self.root), "")
        self.path = self.root / STATE_DIR / f"memo+{name}.json"
        self._entries = self._read()
        self._new: dict[str, list] = {}  # read now, to save
        self._racy: dict[str, list] = {}  # read now, too soon after their last change to save: this process only

    def _read(self) -> dict[str, list]:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
            return {}
        return {rel: e for rel, e in doc["entries"].items()
                if isinstance(e, list) and len(e) == 6 and all(type(v) is int for v in e[:5])}

    def _rel(self, path: str | Path) -> str:
        path = os.path.abspath(path)
        return path[len(self._prefix):] if path.startswith(self._prefix) else path

    def get(self, path: str | Path, compute):
        """The value of ``compute(path)``, remembered while the file's stat is unchanged."""
        rel = self._rel(path)
        try:
            key = list(stat_key(os.stat(path)))
        except OSError:
            return compute(path)  # what reading it says (an error naming it, or a fallback)
        entry = self._new.get(rel) or self._racy.get(rel) or self._entries.get(rel)
        if entry is not None and entry[:5] == key:
            return entry[5]
        checked_ns = time.time_ns()
        value = compute(path)
        try:
            after = list(stat_key(os.stat(path)))
        except OSError:
            return value
        if after == key and not os.path.isabs(rel):
            (self._racy if racy(key[2], checked_ns) else self._new)[rel] = key + [value]
        return value

    def save(self) -> None:
        """Merge the new entries into the memo's file (nothing if it cannot be written: read-only repository)."""
        if not self._new:
            return
        from filelock import FileLock, Timeout

        from forcedphot.io.atomic import atomic_path

        new, self._new = self._new, {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path.parent / LOCK_NAME), timeout=LOCK_SECONDS):
                merged = {**self._read(), **new}
                with atomic_path(self.path) as tmp:
                    tmp.write_text(json.dumps({"format": FORMAT, "entries": merged}))
            self._entries = merged
        except (OSError, Timeout):
            self._entries.update(new)
