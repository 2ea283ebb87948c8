"""Verify a repository file once, then remember it: the verified state of a repository's Parquet files.

Every Parquet file forcedphot writes records a sha256 of its bytes before the footer (see
:mod:`forcedphot.io.parquet`). Reading all those bytes at every query would make a query's cost
grow with the size of the repository, so a file is hashed once, when its writer commits it or when
a reader first meets it, and the result is remembered with what would change with its bytes:
size, mtime, ctime, inode and device (:class:`Entry`). A later reader only ``stat``\\s the file;
if any of those differ, the file is verified again.

Why the remembered state can be trusted: the kernel sets a file's ctime on every change to it
(a write, a truncation, ``touch``, a ``chmod``) and no system call sets it back; a file replaced by
a rename is another inode. A change made so soon after the file was verified that the filesystem's
timestamp did not advance ("racy": within one clock tick) is the one a stat cannot see, so an
entry is remembered only when the file's ctime was at least :data:`RACY_NS` older than the moment
it was checked; the writer's own commit is the exception (it holds the quantum's lock and the file
came from a temporary name only it knew). What a stat cannot see at all - bits rotting under the
filesystem - the page CRCs still catch when the pages are read (the query's Arrow datasets verify
them), and a query that hits one re-verifies its files to name the file.

Where the state lives: ``runs/verified/<shard>.json``, one small JSON file per dataset and tract
(``forced_source+tract=0.json``), merged with what is on disk and replaced atomically under one
lock (``state.lock``), so concurrent runs and queries never lose each other's entries; a lost or
unreadable shard only costs a re-verification (so shards are not fsynced: a crash may lose the last ones). A repository that cannot be written (read-only) keeps the state in this
process's memory. Each process also keeps the shards it read, reloading one only when its file
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

from forcedphot.errors import InputError
from forcedphot.io.atomic import atomic_path
from forcedphot.io.parquet import HASH_BLOCK, META_CHECKSUM, ChecksumError, checksum_mismatch_message, recorded_checksum
from forcedphot.schema import META_SCHEMA, META_VERSION

STATE_DIR = Path("runs") / "verified"
LOCK_NAME = "state.lock"  # held while a shard file is merged and replaced
LOCK_SECONDS = 10.0  # wait at most this long to save a shard; else keep its entries in memory
RACY_NS = 50_000_000  # ctime this close to the check: the filesystem's clock may not have advanced since
RACY_COARSE_NS = 2_000_000_000  # the same for filesystems whose timestamps have no sub-second part
ATTEMPTS = 3  # a file that changes during its verification is verified again, at most this often


class Entry(NamedTuple):
    """A verified file: its stat key, the digest its writer recorded, its whole-file sha256 and schema stamp."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    recorded: str | None  # the footer's "<bytes>:<sha256>"; None: no digest recorded (page CRCs were checked)
    digest: str  # sha256 of every byte of the file (the ledger's output_checksum)
    schema: str | None  # the file's forcedphot.schema stamp ("dataset.table")
    version: str | None  # its forcedphot.schema_version

    def matches(self, st: os.stat_result) -> bool:
        return self[:5] == stat_key(st)

    def metadata(self) -> dict[bytes, bytes]:
        """The schema stamp of the file's key-value metadata, as the schema checks read it."""
        return {k: v.encode() for k, v in ((META_SCHEMA, self.schema), (META_VERSION, self.version)) if v is not None}


SHARD_FORMAT = 1
_ENTRY_TYPES = (int,) * 5 + ((str, type(None)), str, (str, type(None)), (str, type(None)))


def parse_shard(data: bytes) -> dict[str, Entry]:
    """The entries of a ``runs/verified/<shard>.json`` (``{"format": 1, "entries": {path: [9 fields]}}``, paths
    relative to the repository root). ``ValueError`` for anything else (the caller verifies those files again).

    Plain JSON checked here (no pydantic: ``forcedphot status`` and queries load the shards at start-up).
    """
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format", SHARD_FORMAT) != SHARD_FORMAT:
        raise ValueError("not a verified-state shard")
    raw = doc.get("entries", {})
    if not isinstance(raw, dict):
        raise ValueError("not a verified-state shard")
    entries = {}
    for rel, fields in raw.items():
        if not (isinstance(fields, list) and len(fields) == len(_ENTRY_TYPES)
                and all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(fields, _ENTRY_TYPES))):
            raise ValueError(f"bad entry for {rel}")
        entries[rel] = Entry(*fields)
    return entries


def dump_shard(entries: dict[str, Entry]) -> str:
    return json.dumps({"format": SHARD_FORMAT, "entries": {rel: list(e) for rel, e in entries.items()}},
                      separators=(",", ":"))


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def racy(ctime_ns: int, checked_ns: int) -> bool:
    """Could the file change after ``checked_ns`` and keep ctime ``ctime_ns``? (same clock tick)"""
    margin = RACY_COARSE_NS if ctime_ns % 1_000_000_000 == 0 else RACY_NS
    return checked_ns - ctime_ns < margin


def _hash_file(f, n_prefix: int) -> tuple[str, str]:
    """(sha256 of the first ``n_prefix`` bytes, sha256 of the whole file) of an open file, in one pass."""
    f.seek(0)
    digest = hashlib.sha256()
    prefix, left = None, n_prefix
    while True:
        if left == 0 and prefix is None:
            prefix = digest.hexdigest()
        block = f.read(HASH_BLOCK if left <= 0 else min(HASH_BLOCK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return prefix if prefix is not None else "", digest.hexdigest()


def _unreadable(path: Path, exc: Exception) -> InputError:
    cause = " ".join(str(exc).split())
    return InputError(f"{path}: not a readable Parquet file ({cause}); move it out of the repository")


def _verify_open(path: Path, f, st: os.stat_result, check: Callable[[dict], None] | None) -> Entry:
    import pyarrow as pa  # only to verify: a file remembered verified is only stat'ed
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(f)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from exc
    kv = metadata.metadata or {}
    if check is not None:
        check(kv)
    recorded = recorded_checksum(path, kv)
    footer_start = st.st_size - 8 - metadata.serialized_size
    if recorded is None:  # not written by this forcedphot: what the page CRCs can tell
        try:
            f.seek(0)
            for _ in pq.ParquetFile(f, page_checksum_verification=True).iter_batches(batch_size=65536,
                                                                                      use_threads=False):
                pass
        except (pa.ArrowException, OSError) as exc:
            raise ChecksumError(f"{path}: corrupted Parquet pages ({' '.join(str(exc).split())})") from exc
        return Entry(*stat_key(st), None, _hash_file(f, 0)[1], *_stamp(kv))
    n_bytes, expected = recorded
    if n_bytes != footer_start:
        raise ChecksumError(checksum_mismatch_message(path))
    prefix, whole = _hash_file(f, n_bytes)
    if prefix != expected:
        raise ChecksumError(checksum_mismatch_message(path))
    return Entry(*stat_key(st), kv[META_CHECKSUM].decode(), whole, *_stamp(kv))


def _stamp(kv: dict) -> tuple[str | None, str | None]:
    return tuple(kv[k].decode(errors="replace") if k in kv else None for k in (META_SCHEMA, META_VERSION))


def verify_file(path: str | Path, *, check: Callable[[dict], None] | None = None) -> Entry:
    """Read every byte of a Parquet file and check it against the digest its writer recorded.

    ``check(key_value_metadata)`` runs first (e.g. the schema stamp). Raises :class:`InputError`
    (a :class:`ChecksumError` for corrupted bytes) naming the file; returns the file's :class:`Entry`.
    """
    path = Path(path)
    for _ in range(ATTEMPTS):
        try:
            with open(path, "rb") as f:
                before = os.fstat(f.fileno())
                entry = _verify_open(path, f, before, check)
            after = os.stat(path)
        except FileNotFoundError:
            raise InputError(f"{path}: file not found (removed while it was being read?)") from None
        except IsADirectoryError:
            raise InputError(f"{path}: a folder where a Parquet file was expected; move it out of the "
                             "repository") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if entry.matches(after):
            return entry
    raise InputError(f"{path}: changed while it was being verified; is another program writing it?")


def shard_of(rel: str) -> str:
    """The state file holding ``rel``'s entry: its dataset and tract (or its folder where it has no tract)."""
    parts = rel.split("/")[:-1]
    for i, part in enumerate(parts):
        if part.startswith("tract="):
            parts = parts[:i + 1]
            break
    return "+".join(parts) or "root"


class VerifiedFiles:
    """The verified state of one repository: its shard files and this process's memo (thread-safe)."""

    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(root))
        self._prefix = os.path.join(str(self.root), "")
        self.state_dir = self.root / STATE_DIR
        self._lock = threading.RLock()
        self._shards: dict[str, tuple[tuple | None, dict[str, Entry]]] = {}  # name -> (its file's stat key, entries)
        self._fresh: set[str] = set()  # shards whose file was looked at since refresh()
        self._unsaved: dict[str, dict[str, Entry | None]] = {}  # verified here (None: failed), not yet saved
        self._memory: dict[str, Entry] = {}  # verified here, could not be saved (read-only repository)

    # -- lookup --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Look at the shard files again at their next use (call once per query, not per file)."""
        with self._lock:
            self._fresh.clear()

    def _rel(self, path: str | Path) -> str:
        """``path`` relative to the root, or absolute where it is not under it (string operations: per file)."""
        path = os.path.abspath(path)
        return path[len(self._prefix):] if path.startswith(self._prefix) else path

    def _shard_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def _load(self, name: str) -> dict[str, Entry]:
        if name in self._fresh:
            return self._shards.get(name, (None, {}))[1]
        path = self._shard_path(name)
        try:
            key = stat_key(os.stat(path))
        except OSError:
            key = None
        cached = self._shards.get(name)
        if cached is None or cached[0] != key:
            entries = {}
            if key is not None:
                try:
                    entries = parse_shard(path.read_bytes())
                except (OSError, ValueError):  # unreadable state: verify again (and rewrite it)
                    entries = {}
            self._shards[name] = (key, entries)
        self._fresh.add(name)
        return self._shards[name][1]

    def known(self, rel: str) -> Entry | None:
        with self._lock:
            name = shard_of(rel)
            if rel in self._memory:
                return self._memory[rel]
            unsaved = self._unsaved.get(name, {})
            return unsaved[rel] if rel in unsaved else self._load(name).get(rel)

    def unchanged(self, paths: list[str]) -> list[Entry | None]:
        """The remembered :class:`Entry` of each absolute path whose stat is unchanged (else None), at once: one lock, each shard looked up once (a query over
        10^4 files: a ``stat`` and a dict lookup each)."""
        out = []
        with self._lock:
            shards: dict[str, tuple[dict, dict]] = {}
            for path in paths:
                rel = self._rel(path)
                if rel in self._memory:
                    entry = self._memory[rel]
                else:
                    name = shard_of(rel)
                    if name not in shards:
                        shards[name] = (self._unsaved.get(name, {}), self._load(name))
                    unsaved, saved = shards[name]
                    entry = unsaved[rel] if rel in unsaved else saved.get(rel)
                if entry is not None:
                    try:
                        st = os.stat(path)
                    except OSError:
                        entry = None
                    else:
                        if entry[:5] != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev):
                            entry = None
                out.append(entry)
        return out

    def entry(self, path: str | Path, *, check: Callable[[dict], None] | None = None, force: bool = False) -> Entry:
        """The file's verified :class:`Entry`: remembered if its stat is unchanged, else verified now.

        ``check(metadata)`` (the schema stamp) runs on the remembered stamp or on the file's footer.
        ``force``: verify the bytes again whatever is remembered.
        """
        rel = self._rel(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        remembered = None if force else self.known(rel)
        if remembered is not None and remembered.matches(st):
            if check is not None:
                check(remembered.metadata())
            return remembered
        checked_ns = time.time_ns()
        try:
            entry = verify_file(path, check=check)
        except InputError:
            if remembered is not None or force:
                self.forget(rel)
                self.save()
            raise
        if not racy(entry.ctime_ns, checked_ns):
            self.remember(rel, entry)
        return entry

    # -- recording -----------------------------------------------------------------------------
    def remember(self, rel: str, entry: Entry) -> None:
        with self._lock:
            if os.path.isabs(rel):  # outside the repository: this process only
                self._memory[rel] = entry
            else:
                self._unsaved.setdefault(shard_of(rel), {})[rel] = entry

    def forget(self, rel: str) -> None:
        """Drop a file's entry (from its shard file too, at the next :meth:`save`): it failed verification."""
        with self._lock:
            self._memory.pop(rel, None)
            self._unsaved.setdefault(shard_of(rel), {})[rel] = None

    def record_written(self, path: str | Path) -> Entry:
        """Verify a file this process has just written and committed, and save its entry now.

        One pass over the file (as the ledger's whole-file digest costs anyway); the entry is saved
        even though the file is new (racy): its writer holds the lock under which it is changed.
        """
        path = Path(path)
        entry = verify_file(path)
        self.remember(self._rel(path), entry)
        self.save()
        return entry

    def save(self) -> None:
        """Merge this process's new entries into their shard files (or keep them in memory if it cannot)."""
        with self._lock:
            pending, self._unsaved = self._unsaved, {}
            if not pending:
                return
            from filelock import Timeout  # imported when there is something to save (not by a query that verified nothing)

            for name, new in pending.items():
                try:
                    self._save_shard(name, new)
                except (OSError, Timeout):  # read-only repository, or a lock held too long: memory only
                    self._memory.update({rel: e for rel, e in new.items() if e is not None})

    def _save_shard(self, name: str, new: dict[str, Entry | None]) -> None:
        from filelock import FileLock

        path = self._shard_path(name)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.state_dir / LOCK_NAME), timeout=LOCK_SECONDS):
            self._fresh.discard(name)
            merged = {rel: e for rel, e in {**self._load(name), **new}.items() if e is not None}
            with atomic_path(path, durable=False) as tmp:  # a cache: a shard lost to a crash costs a re-verification
                tmp.write_text(dump_shard(merged))
            self._shards[name] = (stat_key(os.stat(path)), merged)
        self._fresh.add(name)


_STORES: dict[str, VerifiedFiles] = {}
_STORES_LOCK = threading.Lock()


def verified_files(root: str | Path) -> VerifiedFiles:
    """This process's :class:`VerifiedFiles` of the repository at ``root`` (one per repository path)."""
    key = os.path.abspath(root)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = VerifiedFiles(key)
        return store
