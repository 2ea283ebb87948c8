"""Per-tract manifests of the forced_source dataset: the committed file list that queries read instead of a listing.

One JSON file per tract, ``<root>/forced_source/tract=T/_manifest.json``, replaced atomically (write to a
temporary name, fsync, rename) under the tract's lock ``runs/locks/manifest-forced_source-T.lock``. Format
(:data:`MANIFEST_FORMAT`; a reader refuses another major format, naming the file)::

    {"format": "forcedphot.manifest/1", "dataset": "forced_source", "tract": 0, "generation": 12,
     "files": {"patch=3/band=i/forced_source.parquet":            (paths relative to the tract folder)
                   {"rows": 812, "bytes": 249517, "checksum": "<bytes>:<sha256>",  (the writer's footer record)
                    "objectId": [lo, hi] or null,                  (null: no rows)
                    "quanta": [[3, "i"]], "schema_version": "1.4.0"},
               "compacted/g12-0000.parquet": {..., "quanta": [[0, "g"], [0, "i"], ...]}},
     "compacted": {"3/i": {"rows": 812, "checksum": "...", "provenance": {...}}}}   (quanta held by compacted parts)

Who writes it: every output a quantum commits (``task.write_output``: after the atomic rename of the file,
:func:`commit_quantum`), and ``forcedphot compact`` (:mod:`forcedphot.compact`). A tract without a manifest
(a repository written before manifests) is built from one listing of its folder at its first commit or
compaction; until then queries list that tract as before.

What it is not: a proof of integrity. Queries still ``stat`` each listed file against the verified state of
:mod:`forcedphot.io.verified` (hashed once, at commit or first read); the manifest replaces the directory
listing and adds what the listing cannot tell (row counts, objectId ranges), so a point query opens only the
files whose range can hold the id.

A re-measured quantum whose rows are in compacted parts supersedes them copy-on-write: its commit rewrites
the parts that hold its rows without them, in the same manifest generation that adds its new file, then
removes the old parts. No reader ever sees the quantum's rows twice, or not at all.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from forcedphot.errors import InputError
from forcedphot.io.atomic import atomic_path

MANIFEST_FORMAT = "forcedphot.manifest/1"
MANIFEST_NAME = "_manifest.json"
DATASET = "forced_source"
COMPACTED_DIR = "compacted"  # parts written by compact (and by a copy-on-write commit), g<generation>-<k>.parquet
LOCK_SECONDS = 600.0
RETIRED = "retired"  # {path in the tract folder: epoch it was retired}: files a switch replaced, kept for readers


def tract_dir(root: str | Path, tract: int) -> Path:
    return Path(root) / DATASET / f"tract={tract}"


def manifest_path(root: str | Path, tract: int) -> Path:
    return tract_dir(root, tract) / MANIFEST_NAME


def lock_path(root: str | Path, tract: int) -> Path:
    return Path(root) / "runs" / "locks" / f"manifest-{DATASET}-{tract}.lock"


def tract_lock(root: str | Path, tract: int):
    from filelock import FileLock

    path = lock_path(root, tract)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=LOCK_SECONDS)


def quantum_key(patch: int, band: str) -> str:
    return f"{patch}/{band}"


def parse(data: bytes, where: str) -> dict:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}: not a readable manifest ({exc}); remove it and run `forcedphot compact` "
                         "(it lists the tract again)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise InputError(f"{where}: not a forcedphot manifest")
    fmt = str(doc.get("format", ""))
    if fmt.split("/")[0] != "forcedphot.manifest" or fmt.split("/")[-1].split(".")[0] != MANIFEST_FORMAT[-1]:
        raise InputError(f"{where}: manifest format {fmt!r}, this forcedphot reads {MANIFEST_FORMAT}")
    doc.setdefault("compacted", {})
    return doc


def read(root: str | Path, tract: int) -> dict | None:
    """The tract's manifest, or None where it has none."""
    path = manifest_path(root, tract)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse(data, str(path))


def write(root: str | Path, tract: int, doc: dict) -> None:
    """Replace the manifest atomically (the caller holds the tract lock)."""
    doc = {**doc, "format": MANIFEST_FORMAT, "dataset": DATASET, "tract": int(tract),
           "generation": int(doc.get("generation", 0)) + 1, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with atomic_path(manifest_path(root, tract)) as tmp:
        tmp.write_text(json.dumps(doc, separators=(",", ":")))


def file_entry(path: str | Path, *, quanta=None) -> dict:
    """A manifest entry read from a file's footer: rows, bytes, the writer's checksum record, objectId range."""
    import pyarrow.parquet as pq

    from forcedphot.io.parquet import META_CHECKSUM
    from forcedphot.schema import META_VERSION

    md = pq.read_metadata(path)
    kv = md.metadata or {}
    lo = hi = None
    names = md.schema.names
    if "objectId" in names and md.num_rows:
        col = names.index("objectId")
        for g in range(md.num_row_groups):
            stats = md.row_group(g).column(col).statistics
            if stats is None or not stats.has_min_max:
                lo = hi = None
                break
            lo = stats.min if lo is None else min(lo, stats.min)
            hi = stats.max if hi is None else max(hi, stats.max)
    if quanta is None:
        parts = dict(p.split("=", 1) for p in Path(path).parts if "=" in p)
        quanta = [[int(parts["patch"]), parts["band"]]]
    return {"rows": md.num_rows, "bytes": os.path.getsize(path),
            "checksum": kv.get(META_CHECKSUM, b"").decode() or None,
            "objectId": None if lo is None else [int(lo), int(hi)], "quanta": quanta,
            "schema_version": kv.get(META_VERSION, b"").decode() or None}


def _build(root: Path, tract: int) -> dict:
    """A manifest of a tract written before manifests: one listing of its quantum outputs."""
    files = {}
    folder = tract_dir(root, tract)
    for path in sorted(folder.glob("patch=*/band=*/forced_source.parquet")):
        files[path.relative_to(folder).as_posix()] = file_entry(path)
    return {"generation": 0, "files": files, "compacted": {}}


def load_or_build(root: str | Path, tract: int) -> dict:
    """The tract's manifest (the caller holds the tract lock); built from a listing where it has none."""
    doc = read(root, tract)
    return _build(Path(root), tract) if doc is None else doc


def is_compacted_part(rel: str) -> bool:
    return rel.startswith(COMPACTED_DIR + "/")


def compacted_quantum(root: str | Path, tract: int, patch: int, band: str) -> dict | None:
    """The manifest's record of a quantum whose rows are in compacted parts (its loose file was removed)."""
    doc = read(root, tract)
    return None if doc is None else doc["compacted"].get(quantum_key(patch, band))


def commit_quantum(root: str | Path, tract: int, patch: int, band: str, path: str | Path) -> None:
    """Record a quantum's output, just renamed into place at ``path``, in its tract's manifest.

    If its rows were compacted, the parts holding them are rewritten without them (copy-on-write) in the
    same generation, and the old parts retired (removed after the grace period, :func:`expire_retired`)."""
    commit_quanta(root, tract, [(patch, band, path)])


def commit_quanta(root: str | Path, tract: int, outputs, *, entries: dict | None = None) -> None:
    """:func:`commit_quantum` of many outputs ``[(patch, band, path), ...]`` of one tract in one manifest
    generation: one lock, one read and one atomic write of the manifest for all of them (a commit of each in
    turn reads and rewrites the whole manifest each time: quadratic in the tract's file count). ``entries``:
    {path: :func:`file_entry`} already read (by the process that wrote the file), else read here."""
    root = Path(root)
    folder = tract_dir(root, tract)
    outputs = [(int(patch), str(band), Path(path)) for patch, band, path in outputs]
    if not outputs:
        return
    with tract_lock(root, tract):
        doc = load_or_build(root, tract)
        retired = []
        for patch, band, path in outputs:
            key = quantum_key(patch, band)
            if key in doc["compacted"]:
                retired += _drop_quantum_from_parts(root, tract, doc, patch, band)
                del doc["compacted"][key]
            rel = path.relative_to(folder).as_posix()
            doc["files"][rel] = (entries or {}).get(str(path)) or file_entry(path, quanta=[[patch, band]])
            doc.get(RETIRED, {}).pop(rel, None)  # its path is live again (a quantum output compact had retired)
        retire(doc, retired)
        write(root, tract, doc)


def ensure_committed(root: str | Path, tract: int, patch: int, band: str, path: str | Path) -> None:
    """Commit an intact, up-to-date output its manifest does not list (a run killed between the rename of the
    file and its commit); nothing for a tract without a manifest (listed as before)."""
    doc = read(root, tract)
    if doc is not None and Path(path).relative_to(tract_dir(root, tract)).as_posix() not in doc["files"]:
        commit_quantum(root, tract, patch, band, path)


def remove_vanished(root: str | Path, keep: set[tuple[int, int, str]]) -> list[str]:
    """Drop from every manifest the quanta not in ``keep`` (quanta the repository no longer has, e.g. a removed
    band): their own outputs' entries, and their rows from compacted parts (copy-on-write). Returns them."""
    root = Path(root)
    dropped = []
    folder = root / DATASET
    tracts = sorted(int(p.name.split("=", 1)[1]) for p in folder.glob("tract=*")
                    if p.name.split("=", 1)[1].isdigit()) if folder.is_dir() else []
    for tract in tracts:
        if read(root, tract) is None:
            continue
        with tract_lock(root, tract):
            doc = read(root, tract)
            gone = sorted({(int(p), str(b)) for e in doc["files"].values() for p, b in e["quanta"]}
                          | {(int(k.split("/")[0]), k.split("/")[1]) for k in doc["compacted"]})
            gone = [(p, b) for p, b in gone if (tract, p, b) not in keep]
            if not gone:
                continue
            retired = []
            for patch, band in gone:
                doc["files"].pop(f"patch={patch}/band={band}/forced_source.parquet", None)
                if quantum_key(patch, band) in doc["compacted"]:
                    retired += _drop_quantum_from_parts(root, tract, doc, patch, band)
                    del doc["compacted"][quantum_key(patch, band)]
                dropped.append(f"tract={tract} patch={patch} band={band}")
            retire(doc, retired)
            write(root, tract, doc)
    return dropped


def is_own_file(rel: str) -> bool:
    """A name forcedphot writes in a tract folder: a compacted part or a quantum's output (nothing else is
    ever retired or removed)."""
    parts = Path(rel).parts
    if len(parts) == 2 and parts[0] == COMPACTED_DIR:
        return parts[1].startswith("g") and parts[1].endswith(".parquet")
    return (len(parts) == 3 and parts[0].startswith("patch=") and parts[1].startswith("band=")
            and parts[2] == "forced_source.parquet")


def retire(doc: dict, rels, now: float | None = None) -> None:
    """Record files the manifest ``doc`` no longer lists as retired now: they stay in place, readable by a reader
    that listed them from the previous manifest, until :func:`expire_retired` removes them after the grace
    period. In place, not moved: a reader that listed a path opens that path."""
    now = time.time() if now is None else now
    retired = doc.setdefault(RETIRED, {})
    for rel in rels:
        if is_own_file(rel) and rel not in doc["files"]:
            retired[rel] = now


def expire_retired(root: str | Path, tract: int, *, grace: float | None = None, locked: bool = False) -> list[str]:
    """Remove the tract's retired files whose grace period is over (``grace`` seconds, see
    :func:`forcedphot.io.store.grace_period`); returns their paths relative to the tract folder. A quantum output
    is removed only under its quantum's lock, taken without waiting (a run measuring it now may be replacing
    it: kept for the next time) and only if the manifest still does not list it. ``locked``: the caller holds the
    tract lock."""
    from forcedphot.io.store import grace_period

    grace = grace_period(grace)
    root = Path(root)
    if not locked:
        doc = read(root, tract)
        if doc is None or not doc.get(RETIRED):
            return []
        with tract_lock(root, tract):
            return expire_retired(root, tract, grace=grace, locked=True)
    doc = read(root, tract)
    if doc is None or not doc.get(RETIRED):
        return []
    from filelock import FileLock, Timeout

    from forcedphot.io.verified import verified_files
    from forcedphot.repository import DataId, Repository

    folder, now = tract_dir(root, tract), time.time()
    retired, removed, changed = dict(doc[RETIRED]), [], False
    verified = verified_files(root)
    for rel, when in sorted(retired.items()):
        if rel in doc["files"] or not is_own_file(rel):  # live again (or not ours): only forgotten here
            del doc[RETIRED][rel]
            changed = True
            continue
        if now - float(when) < grace:
            continue
        path = folder / rel
        if is_compacted_part(rel):
            remove_part(path)
        else:
            patch, band = (p.split("=", 1)[1] for p in Path(rel).parts[:2])
            lock_file = Repository(root).lock_path(DataId(tract, int(patch), band))  # the runs' quantum lock
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_file))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                path.unlink(missing_ok=True)
            finally:
                lock.release()
            for empty in (path.parent, path.parent.parent):
                try:
                    empty.rmdir()
                except OSError:
                    break
        verified.forget(path.relative_to(root).as_posix())
        del doc[RETIRED][rel]
        removed.append(rel)
        changed = True
    verified.save()
    if changed:
        write(root, tract, doc)
    return removed


def tracts(root: str | Path) -> list[int]:
    folder = Path(root) / DATASET
    return sorted(int(p.name.split("=", 1)[1]) for p in folder.glob("tract=*")
                  if p.name.split("=", 1)[1].isdigit()) if folder.is_dir() else []


def vacuum(root: str | Path, *, grace: float | None = None) -> list[str]:
    """:func:`expire_retired` of every tract; the removed paths relative to the repository root."""
    out = []
    for tract in tracts(root):
        out += [f"{DATASET}/tract={tract}/{rel}" for rel in expire_retired(root, tract, grace=grace)]
    return out


def remove_part(path: Path) -> None:
    """Remove a file compact wrote (only ``compacted/g*-*.parquet`` names), once no manifest lists it."""
    if path.parent.name == COMPACTED_DIR and path.name.startswith("g") and path.suffix == ".parquet":
        path.unlink(missing_ok=True)


def part_name(generation: int, k: int) -> str:
    return f"{COMPACTED_DIR}/g{generation}-{k:04d}-{os.getpid()}.parquet"


def _drop_quantum_from_parts(root: Path, tract: int, doc: dict, patch: int, band: str) -> list[str]:
    """Rewrite the compacted parts holding (patch, band) without its rows; returns the replaced parts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from forcedphot.io.parquet import read_provenance, write_parquet
    from forcedphot.io.verified import verified_files
    from forcedphot.schema import load_schema

    schema = load_schema(DATASET)
    folder = tract_dir(root, tract)
    generation = int(doc.get("generation", 0)) + 1
    retired = []
    for k, (rel, entry) in enumerate(sorted(doc["files"].items())):
        quanta = [list(q) for q in entry["quanta"]]
        if [patch, band] not in quanta:
            continue
        path = folder / rel
        verified_files(root).entry(path)  # never rewrite from a corrupted part (ChecksumError naming it)
        table = pq.read_table(path, schema=schema.arrow_schema())
        keep = pc.invert(pc.and_(pc.equal(table["patch"], patch), pc.equal(table["band"], band)))
        table = table.filter(keep)
        del doc["files"][rel]
        retired.append(rel)
        rest = [q for q in quanta if q != [patch, band]]
        if table.num_rows == 0 and not rest:
            continue
        new_rel, n = part_name(generation, k), 0
        while new_rel in doc["files"] or new_rel in retired:  # two quanta of one commit_quanta in one generation
            n += 1
            new_rel = part_name(generation, k + 10_000 * n)
        write_parquet(table, folder / new_rel, schema, provenance=read_provenance(path),
                      row_group_size=ROW_GROUP_ROWS)
        verified_files(root).record_written(folder / new_rel)
        doc["files"][new_rel] = file_entry(folder / new_rel, quanta=rest)
    return retired


ROW_GROUP_ROWS = 65536  # row groups of compacted parts: a point query reads one (Parquet min/max statistics)
