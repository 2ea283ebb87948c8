"""``forcedphot compact``: rewrite a tract's forced_source outputs into few large Parquet files sorted by
(objectId, band), switched in by one manifest commit.

Per tract, under the tract's manifest lock and every compacted quantum's own lock (a quantum a run is
measuring now makes compact refuse that tract, naming it; nothing is changed):

1. every file of the tract's manifest (:mod:`forcedphot.io.manifest`) is verified (sha256 of its bytes
   against its writer's record, or its remembered verification with an unchanged stat);
2. the files are grouped by objectId range (ids are patch-major, so a group is a run of whole patches) into
   parts of about ``rows_per_part`` rows, each sorted by objectId then band and written with row groups
   of :data:`~forcedphot.io.manifest.ROW_GROUP_ROWS` rows under ``compacted/g<generation>-<k>-<pid>.parquet``
   by the ordinary writer (atomic, checksummed) and recorded verified;
3. the new manifest generation lists only the parts and keeps each compacted quantum's provenance and
   digest (so ``status`` and ``run`` know it is up to date); it replaces the old one atomically: a reader
   reads the old files or the new parts, never both;
4. the old files (the quanta's own outputs ``patch=P/band=B/forced_source.parquet`` and parts of an earlier
   compaction ``compacted/g*.parquet``, nothing else) are *retired*: the new manifest lists them under
   ``retired`` with the time of the switch and they stay in place, so a reader that listed them from the old
   manifest a moment ago still reads them; they are removed once the grace period is over
   (:func:`forcedphot.io.store.grace_period`: ``--grace``, ``FORCEDPHOT_GRACE_PERIOD``, default 1 h) by the
   next ``compact``, ``run`` or ``forcedphot vacuum`` (:func:`forcedphot.io.manifest.expire_retired`).

A later ``run`` that measures a quantum of a compacted tract again supersedes its rows copy-on-write
(:func:`forcedphot.io.manifest.commit_quantum`): no row is ever counted twice.
"""

from __future__ import annotations

import time

from forcedphot.errors import InputError
from forcedphot.io import manifest
from forcedphot.repository import DataId, Repository

ROWS_PER_PART = 100_000  # ~200 MB of forced_source columns in memory while a part is sorted
# files read into one table at a time, then made one chunk per column: a part gathered from 10^4 small
# files as one dataset held 10^4 chunks of each of ~430 columns (> 19 GB for 40,000 rows)
FILES_PER_READ = 128


def tracts_of(repo: Repository) -> list[int]:
    folder = repo.dataset_dir("forced_source")
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("=", 1)[1]) for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith("tract=") and p.name.split("=", 1)[1].isdigit())


def compact(root, tract: int | None = None, *, rows_per_part: int = ROWS_PER_PART,
            grace: float | None = None) -> list[dict]:
    """Compact one tract (or every tract); returns a summary per tract (files before, parts after, rows, s).
    ``grace``: seconds the replaced files stay readable (:func:`forcedphot.io.store.grace_period`)."""
    repo = root if isinstance(root, Repository) else Repository(root)
    repo.check()
    if rows_per_part < 1:
        raise InputError(f"rows per part must be >= 1, not {rows_per_part}")
    tracts = tracts_of(repo) if tract is None else [tract]
    if tract is not None and tract not in tracts_of(repo):
        raise InputError(f"{repo.root}: no forced_source outputs in tract {tract}; tracts: {tracts_of(repo)}")
    return [compact_tract(repo, t, rows_per_part=rows_per_part, grace=grace) for t in tracts]


def _group(files: dict[str, dict], rows_per_part: int) -> list[list[str]]:
    """Files in objectId order, cut into groups of >= rows_per_part rows where ranges do not overlap."""
    order = sorted(files, key=lambda rel: (files[rel]["objectId"] or [-1, -1])[0])
    groups, current, rows, high = [], [], 0, None
    for rel in order:
        span = files[rel]["objectId"]
        if current and rows >= rows_per_part and span is not None and (high is None or span[0] > high):
            groups.append(current)
            current, rows, high = [], 0, None
        current.append(rel)
        rows += files[rel]["rows"]
        if span is not None:
            high = span[1] if high is None else max(high, span[1])
    if current:
        groups.append(current)
    return groups


def compact_tract(repo: Repository, tract: int, *, rows_per_part: int = ROWS_PER_PART,
                  grace: float | None = None) -> dict:
    from filelock import FileLock, Timeout

    t0 = time.perf_counter()
    root = repo.root
    with manifest.tract_lock(root, tract):
        doc = manifest.load_or_build(root, tract)
        old = dict(doc["files"])
        locks = []
        try:
            for rel, entry in old.items():
                if manifest.is_compacted_part(rel):
                    continue
                for patch, band in entry["quanta"]:
                    lock_path = repo.lock_path(DataId(tract, int(patch), band))
                    lock_path.parent.mkdir(parents=True, exist_ok=True)
                    lock = FileLock(str(lock_path))
                    try:
                        lock.acquire(timeout=0)
                    except Timeout:
                        raise InputError(f"tract {tract}: {DataId(tract, int(patch), band)} is being measured by a "
                                         "run; compact this tract when it is done") from None
                    locks.append(lock)
            new_files, compacted = _write_parts(repo, tract, doc, rows_per_part)
            new_doc = {"generation": doc.get("generation", 0), "files": new_files, "compacted": compacted,
                       manifest.RETIRED: dict(doc.get(manifest.RETIRED, {}))}
            manifest.retire(new_doc, [rel for rel in old if rel not in new_files])
            manifest.write(root, tract, new_doc)  # the switch; the old files stay for the grace period
        finally:
            for lock in locks:
                lock.release()
        removed = _remove_old(repo, tract, grace)  # takes each quantum's lock again, without waiting
    return {"tract": tract, "files_before": len(old), "parts": len(new_files),
            "rows": sum(e["rows"] for e in new_files.values()), "removed": removed,
            "seconds": round(time.perf_counter() - t0, 3)}


def _write_parts(repo: Repository, tract: int, doc: dict, rows_per_part: int) -> tuple[dict, dict]:
    from forcedphot.io.parquet import read_provenance, write_parquet
    from forcedphot.io.verified import verified_files
    from forcedphot.query import check_file
    from forcedphot.schema import load_schema

    schema = load_schema("forced_source")
    folder = manifest.tract_dir(repo.root, tract)
    verified = verified_files(repo.root)
    verified.refresh()
    compacted = dict(doc["compacted"])
    try:
        for rel, entry in doc["files"].items():
            path = folder / rel
            check_file(path, schema, verified=verified)  # ChecksumError naming a corrupted file: nothing changes
            if not manifest.is_compacted_part(rel):
                for patch, band in entry["quanta"]:
                    compacted[manifest.quantum_key(patch, band)] = {
                        "rows": entry["rows"], "checksum": entry.get("checksum"),
                        "sha256": verified.entry(path).digest, "provenance": read_provenance(path)}
    finally:
        verified.save()
    generation = int(doc.get("generation", 0)) + 1
    new_files = {}
    for k, group in enumerate(_group(doc["files"], rows_per_part)):
        table = _read_group([folder / rel for rel in group], schema.arrow_schema())
        quanta = sorted({(int(p), str(b)) for rel in group for p, b in doc["files"][rel]["quanta"]})
        if table.num_rows == 0:
            continue  # quanta of no rows: their record in "compacted" is all that is kept
        table = table.sort_by([("objectId", "ascending"), ("band", "ascending")])
        rel = manifest.part_name(generation, k)
        write_parquet(table, folder / rel, schema, row_group_size=manifest.ROW_GROUP_ROWS,
                      provenance={"compacted": {"tract": tract, "generation": generation, "quanta": len(quanta)}})
        verified.record_written(folder / rel)
        new_files[rel] = manifest.file_entry(folder / rel, quanta=[list(q) for q in quanta])
    return new_files, compacted


def _read_group(paths: list, arrow_schema):
    """The rows of ``paths`` as one table of one chunk per column, read :data:`FILES_PER_READ` files at a time."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    pieces = [pads.dataset([str(p) for p in paths[i:i + FILES_PER_READ]], schema=arrow_schema).to_table().combine_chunks()
              for i in range(0, len(paths), FILES_PER_READ)]
    return pa.concat_tables(pieces).combine_chunks() if pieces else arrow_schema.empty_table()


def _remove_old(repo: Repository, tract: int, grace: float | None) -> int:
    """Remove the files retired by this switch or earlier ones whose grace period is over (forcedphot's own names
    only: quantum outputs and compacted parts); the others stay, readable by a reader that listed them before
    the switch, until the next compact, run or ``forcedphot vacuum``."""
    return len(manifest.expire_retired(repo.root, tract, grace=grace, locked=True))
