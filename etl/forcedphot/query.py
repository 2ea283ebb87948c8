"""The query surface: sandboxed DuckDB views over the repository, Polars LazyFrames and pandas.

DuckDB gets no file access at all (``duck.sandboxed_connection``): the views of ``sql/views.sql``
read each dataset's Parquet files through an Arrow dataset built here, after every file was checked
(readable Parquet, written by forcedphot for that dataset, a schema major version this code reads,
bytes matching the sha256 its writer recorded). So a query reads the repository's datasets and
nothing else, and writes, attaches, installs or loads nothing; a corrupt or foreign file is one error
line naming it. A file's bytes are hashed once and then remembered while its stat is unchanged
(:mod:`forcedphot.io.verified`), so a query costs a ``stat`` per file, not a read of every byte; the
Arrow datasets verify the page CRCs of what a query reads as well.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import duckdb

from forcedphot.duck import query_arrow, refuse_unless_read_only, sandboxed_connection
from forcedphot.errors import InputError, QueryError
from forcedphot.repository import DATASETS, Repository
from forcedphot.resources import read_sql

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as pads

    from forcedphot.io.verified import Entry, VerifiedFiles
    from forcedphot.schema import TableSchema

# Polars, pyarrow (and its datasets), numpy and the schemas are imported by the functions that use them:
# a query that reads no dataset (``forcedphot sql "SELECT 1"``) loads none of them (start-up time).

log = logging.getLogger("forcedphot")
_FILES = re.compile(r"@files\((\w+)\)@")
_PASS_THROUGH = re.compile(r"CREATE OR REPLACE VIEW \w+ AS SELECT \* FROM @files\(\w+\)@\s*;?", re.I)
PARTITION_KEYS = {"tract": int, "patch": int, "band": str}
PAGE_CRC = "CRC checksum verification failed"  # pyarrow's message for a page that fails its CRC


@cache
def parquet_format() -> pads.ParquetFileFormat:
    """The format of the Arrow datasets handed to DuckDB: they verify the page CRCs of every page a query reads."""
    import pyarrow.dataset as pads

    return pads.ParquetFileFormat(
        default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))


def __getattr__(name: str):
    """``crossmatch`` (part of the query surface) and ``PARQUET_FORMAT``, imported at first use."""
    if name == "crossmatch":
        from forcedphot.crossmatch import crossmatch

        return crossmatch
    if name == "PARQUET_FORMAT":
        return parquet_format()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def view_statements(sql_file: str = "views") -> dict[str, str]:
    """``-- name: X`` sections of sql/views.sql (or another sql/*.sql file of views), in file order."""
    text = read_sql(sql_file)
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def _as_repository(repo) -> Repository:
    from forcedphot.io.store import is_uri

    if is_uri(repo):  # s3://bucket/prefix (forcedphot.s3repo)
        from forcedphot.s3repo import S3Repository

        repo = S3Repository(repo)
    repo = repo if isinstance(repo, Repository) or getattr(repo, "is_s3", False) else Repository(repo)
    repo.check()
    return repo


def _dataset_folder(repo: Repository, dataset: str) -> Path:
    """A repository dataset's folder; any other ``<root>/<name>`` folder with a ``schemas/<name>.yaml`` too."""
    if dataset in DATASETS:
        return repo.dataset_dir(dataset)
    from forcedphot.schema import load_schema

    load_schema(dataset)  # SchemaError naming the missing schema file
    return repo.root / dataset


def _partition_values(path: Path | tuple[str, ...]) -> dict[str, str]:
    """{key: value} of the ``key=value`` folders of a path relative to the root (or of its parts)."""
    return dict(part.split("=", 1) for part in (path.parts if isinstance(path, Path) else path) if "=" in part)


def _stamp_check(path: Path, schema: TableSchema, versions: dict | None = None):
    """The schema checks of a file's key-value metadata: stamped for ``schema``'s table, a major version we read
    (``versions``: where to record {path: the file's schema version})."""
    from forcedphot.schema import META_SCHEMA

    def check(metadata: dict) -> None:
        stamped = metadata.get(META_SCHEMA, b"").decode() or None
        if stamped is not None and stamped != f"{schema.dataset}.{schema.table}":
            raise InputError(f"{path}: a {stamped} file in the {schema.dataset} dataset; "
                             "move it out of the repository")
        version = schema.check_metadata(metadata, where=str(path))
        if versions is not None:
            versions[path] = version
    return check


def check_file(path: Path, dataset: str | TableSchema, *, verified: VerifiedFiles | None = None,
               force: bool = False, versions: dict | None = None) -> Entry:
    """Raise ``InputError`` (one line naming ``path``) unless it is an intact forcedphot ``dataset`` file this
    code reads: readable Parquet, stamped for that dataset, a schema major version this code reads, and bytes
    that match the sha256 its writer recorded (``ChecksumError``). With ``verified`` (the repository's
    :class:`~forcedphot.io.verified.VerifiedFiles`) a file whose stat is unchanged since it was verified is
    not read again (unless ``force``); without it every byte is read."""
    from forcedphot.io.verified import verify_file
    from forcedphot.schema import load_schema

    schema = load_schema(dataset) if isinstance(dataset, str) else dataset
    check = _stamp_check(path, schema, versions)
    if verified is None:
        return verify_file(path, check=check)
    return verified.entry(path, check=check, force=force)


def checked_files(repo: Repository, paths, schema: TableSchema | str, *, force: bool = False,
                  missing_ok: frozenset = frozenset(), versions: dict | None = None) -> list[Path]:
    """``paths`` (files of ``repo``), each checked by :func:`check_file` against the repository's verified state,
    which is saved at the end (also when a file is refused: what was verified stays verified). A path of
    ``missing_ok`` (listed by a manifest) that is gone is left out, as a listing would (a warning says so)."""
    return [Path(p) for p in _checked(repo, paths, schema, force=force, missing_ok=missing_ok, versions=versions)]


def _checked(repo: Repository, paths, schema: TableSchema | str, *, force: bool = False,
             missing_ok: frozenset = frozenset(), versions: dict | None = None) -> list[str]:
    """:func:`checked_files` as strings. Per file a ``stat`` and a lookup (a file whose stat matches its
    remembered entry, whose stamp was checked once for this call); the others through :func:`check_file`."""
    from forcedphot.io.verified import verified_files
    from forcedphot.schema import load_schema

    verified = verified_files(repo.root)
    verified.refresh()
    schema = load_schema(schema) if isinstance(schema, str) else schema
    checked, stamps_ok = [], set()
    paths = [os.fspath(p) for p in paths]
    remembered = [None] * len(paths) if force else verified.unchanged([os.path.abspath(p) for p in paths])
    try:
        for path, known in zip(paths, remembered):
            if known is not None and (known.schema, known.version) in stamps_ok:
                if versions is not None:
                    versions[Path(path)] = known.version
                checked.append(path)
                continue
            try:
                entry = check_file(Path(path), schema, verified=verified, force=force, versions=versions)
            except InputError:
                if path in missing_ok and not os.path.lexists(path):
                    log.warning("%s: listed by its tract's manifest but gone; left out", path)
                    continue
                raise
            stamps_ok.add((entry.schema, entry.version))
            if versions is not None:
                versions.setdefault(Path(path), entry.version)
            checked.append(path)
    finally:
        verified.save()
    return checked


def dataset_files(repo, dataset: str, *, sky_patches: set[tuple[int, int]] | None = None, force: bool = False,
                  versions: dict | None = None, **partitions) -> list[Path]:
    """The checked Parquet files of ``dataset``, optionally only those of some partitions (tract/patch/band)
    and of the (tract, patch) pairs in ``sky_patches`` (a cone's patches); other files are not opened.
    ``force``: hash every file again, whatever the repository remembers of it. ``versions``: filled with
    {path: the file's schema version}.

    forced_source files come from each tract's manifest (:mod:`forcedphot.io.manifest`), not a listing; a
    compacted part holds several quanta and is kept when one of them is selected (the caller filters rows)."""
    return [Path(p) for p in _dataset_listing(repo, dataset, sky_patches=sky_patches, force=force,
                                                          versions=versions, **partitions)]


def _dataset_listing(repo, dataset: str, *, sky_patches=None, force: bool = False, versions: dict | None = None,
                     object_id: int | None = None, **partitions) -> dict[str, dict | None]:
    """{checked file: its manifest entry (None: listed from the folder)} of :func:`dataset_files`.
    ``object_id``: only the manifest entries whose objectId range can hold it (files without an entry are kept)."""
    repo = _as_repository(repo)
    wanted = _partition_filter(repo, dataset, partitions)
    keep = None if sky_patches is None else {(str(t), str(p)) for t, p in sky_patches}
    listed: dict[str, dict | None] = {}
    depth = len(Path(repo.root).parts)  # paths as the repository was named (error lines name files so)
    folder = Path(_dataset_folder(repo, dataset))
    tracts = [folder] if dataset != "forced_source" else sorted(
        (Path(e.path) for e in _scandir(folder) if e.name.startswith("tract=") and e.is_dir()), key=str)
    from_manifest = set()
    for top in tracts:
        doc = None
        if dataset == "forced_source":
            from forcedphot.io.manifest import read as read_manifest

            tract = top.name.split("=", 1)[1]
            if "tract" in wanted and tract not in wanted["tract"]:
                continue
            doc = read_manifest(repo.root, int(tract)) if tract.isdigit() else None
        if doc is not None:
            for rel, entry in sorted(doc["files"].items()):
                if object_id is not None:
                    span = entry.get("objectId")
                    if (span is None and entry.get("rows") == 0) or (span is not None and not span[0] <= object_id <= span[1]):
                        continue
                quanta = [(str(p), str(b)) for p, b in entry.get("quanta", [])]
                if keep is not None and not any((tract, p) in keep for p, _ in quanta):
                    continue
                if not any(("patch" not in wanted or p in wanted["patch"]) and ("band" not in wanted or b in wanted["band"])
                           for p, b in quanta):
                    continue
                path = f"{top}/{rel}"
                listed[path] = entry
                from_manifest.add(path)
            continue
        for path in sorted(top.glob("**/*.parquet")):
            keys = _partition_values(path.parts[depth:])
            if keep is not None and (keys.get("tract"), keys.get("patch")) not in keep:
                continue
            if all(keys.get(k) in values for k, values in wanted.items()):
                listed[str(path)] = None
    checked = _checked(repo, listed, dataset, force=force, missing_ok=frozenset(from_manifest),
                       versions=versions)
    return {path: listed[path] for path in checked}


def _scandir(folder: Path) -> list:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _partition_filter(repo: Repository, dataset: str, partitions: dict) -> dict[str, set[str]]:
    """{key: accepted values as path strings}; a wrongly typed value raises naming the valid values."""
    wanted = {}
    for key, value in partitions.items():
        if value is None:
            continue
        kind = PARTITION_KEYS[key]
        values = [value] if isinstance(value, (int, str)) else value
        try:
            values = list(values)
        except TypeError:
            values = [value]
        bad = [v for v in values if not isinstance(v, kind) or isinstance(v, bool)]
        if bad or not values:
            present = sorted({kind(_partition_values(p.relative_to(repo.root))[key])
                              for p in _dataset_folder(repo, dataset).glob(f"**/{key}=*/**/*.parquet")})
            raise InputError(f"{key} must be {'an int' if kind is int else 'a str'} or a list of them, not "
                             f"{value!r}; {dataset} in {repo.root} has {key} {present}")
        wanted[key] = {str(v) for v in values}
    return wanted


def arrow_dataset(repo, dataset: str, *, sky_patches=None, **partitions) -> pads.Dataset:
    """The checked files of ``dataset`` as a pyarrow dataset with the columns of its schema (empty if none).

    A file its manifest gives an objectId range is a fragment whose partition expression is that range, so a
    query on objectId (DuckDB pushes its filters into the scan) skips the other files without opening them.
    Where a selected compacted part also holds other quanta, the dataset filters their rows out.
    Files of an older major version (``schemas/migrations``) are read whole and migrated in memory
    (:func:`forcedphot.schema.migrate`); the views and loaders read them lazily (:func:`register_dataset`)."""
    import pyarrow.dataset as pads

    from forcedphot.schema import load_schema, migrate, version_schema

    repo = _as_repository(repo)
    if getattr(repo, "is_s3", False):  # committed files only, read through pyarrow's S3FileSystem
        return repo.arrow_dataset(dataset, sky_patches=sky_patches, **partitions)
    schema = load_schema(dataset)
    groups = _listings_by_major(repo, dataset, sky_patches=sky_patches, **partitions)
    current = groups.pop(schema.major, {})
    ds = _fragment_dataset(current, schema.arrow_schema())
    if groups:
        old = [pads.InMemoryDataset(migrate(pads.dataset(list(listing), schema=version_schema(
            dataset, str(major)).arrow_schema(), format=parquet_format()).to_table(), str(major), dataset))
            for major, listing in sorted(groups.items())]
        ds = pads.dataset([ds, *old])
    return _filter_parts(ds, current, sky_patches, partitions)


def _listings_by_major(repo, dataset: str, *, checked: tuple | None = None, **selection) -> dict[int, dict[str, dict | None]]:
    """:func:`_dataset_listing` ({checked file: manifest entry}) by the major version of the schema each file was
    written with: the current one, or an older one read through ``schemas/migrations/<dataset>.yaml``.
    ``checked``: (listing, versions) of a :func:`_dataset_listing` of the same selection already made."""
    if checked is None:
        versions: dict[Path, str] = {}
        listing = _dataset_listing(repo, dataset, versions=versions, **selection)
    else:
        listing, versions = checked
    groups: dict[int, dict[str, dict | None]] = {}
    for path, entry in listing.items():
        groups.setdefault(int(versions[Path(path)].split(".")[0]), {})[path] = entry
    return groups


def _fragment_dataset(listing: dict, arrow_schema):
    """The files of ``listing`` as one dataset. A file its manifest gives an objectId range is a fragment whose
    partition expression is that range, so a query on objectId (DuckDB pushes its filters into the scan) skips
    the other files without opening them."""
    import pyarrow.dataset as pads

    fmt, fs = parquet_format(), query_filesystem()
    fragments = []
    for path, entry in listing.items():
        expr = None
        if entry is not None and entry.get("objectId") is not None:
            expr = _id_range(*entry["objectId"])
        elif entry is not None and entry.get("rows") == 0:
            expr = pads.scalar(False)
        fragments.append(fmt.make_fragment(path, filesystem=fs, partition_expression=expr))
    return pads.FileSystemDataset(fragments, arrow_schema, fmt, fs)


def _filter_parts(ds, listing: dict, sky_patches, partitions: dict):
    """``ds`` without the rows of unselected quanta, where a selected compacted part of ``listing`` also holds them."""
    if any(entry is not None and len(entry.get("quanta", ())) > 1 for entry in listing.values()):
        row_filter = _row_filter(sky_patches, partitions)
        if row_filter is not None:
            return ds.filter(row_filter)
    return ds


_ID_RANGES: dict = {}  # (lo, hi) -> its Arrow expression, built once per process (~50 us each in Python)


def _id_range(lo: int, hi: int):
    """``objectId BETWEEN lo AND hi`` as a fragment's partition expression."""
    expr = _ID_RANGES.get((lo, hi))
    if expr is None:
        import pyarrow.dataset as pads

        if len(_ID_RANGES) > 1_000_000:
            _ID_RANGES.clear()
        field = pads.field("objectId")
        expr = _ID_RANGES[(lo, hi)] = (field >= lo) & (field <= hi)
    return expr


def _row_filter(sky_patches, partitions: dict):
    """The rows of the selected partitions (and cone patches), as a dataset filter; None: every row."""
    import pyarrow.dataset as pads

    expr = None
    for key, value in partitions.items():
        if value is None:
            continue
        values = [value] if isinstance(value, (int, str)) else list(value)
        term = pads.field(key).isin(values)
        expr = term if expr is None else expr & term
    if sky_patches is not None:
        term = None
        for t, p in sky_patches:
            pair = (pads.field("tract") == t) & (pads.field("patch") == p)
            term = pair if term is None else term | pair
        term = pads.scalar(False) if term is None else term
        expr = term if expr is None else expr & term
    return expr


def query_filesystem():
    """The pyarrow filesystem the query datasets read through (local; a test counts the files it opens)."""
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def files_by_major(repo, dataset: str, **selection) -> dict[int, list[Path]]:
    """The checked files of ``dataset`` (:func:`dataset_files`) by the major version of the schema they were
    written with: the current one, or an older one read through ``schemas/migrations/<dataset>.yaml``."""
    return {major: [Path(p) for p in listing] for major, listing in _listings_by_major(repo, dataset, **selection).items()}


def register_dataset(con, name: str, repo, dataset: str, *, checked: tuple | None = None, **selection) -> None:
    """Register the checked files of ``dataset`` as the relation ``name`` of ``con``, with the columns of the
    current schema: files of an older major version are read lazily through the migration's select list
    (:func:`forcedphot.schema.migration_select`: renamed columns under their new names, removed ones absent),
    in a ``UNION ALL`` with the current files (fragments pruned by objectId range, :func:`_fragment_dataset`).
    ``selection``: partitions and ``sky_patches``; ``checked``: see :func:`_listings_by_major`."""
    import pyarrow.dataset as pads

    from forcedphot.schema import load_schema, migration_select, version_schema

    repo = _as_repository(repo)
    if getattr(repo, "is_s3", False):  # committed files only (written by this version), through S3FileSystem
        con.register(name, repo.arrow_dataset(dataset, **selection))
        return
    sky_patches = selection.pop("sky_patches", None)
    schema = load_schema(dataset)
    groups = _listings_by_major(repo, dataset, checked=checked, sky_patches=sky_patches, **selection)
    current = groups.pop(schema.major, {})
    ds = _filter_parts(_fragment_dataset(current, schema.arrow_schema()), current, sky_patches, selection)
    if not groups:
        con.register(name, ds)
        return
    con.register(f"{name}__v{schema.major}", ds)
    parts = [f'SELECT * FROM "{name}__v{schema.major}"']
    for major, listing in sorted(groups.items()):
        old = version_schema(dataset, str(major))
        con.register(f"{name}__v{major}", pads.dataset(list(listing), schema=old.arrow_schema(),
                                                       format=parquet_format()))
        parts.append(f'SELECT {migration_select(dataset, old.version)} FROM "{name}__v{major}"')
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS ' + "\nUNION ALL ".join(parts))


def _query(repo, con, query: str, params: dict | None = None) -> pa.Table:
    """``query_arrow``, naming the corrupted file when a page fails its CRC (:func:`_recheck_on_crc_error`)."""
    try:
        return query_arrow(con, query, params)
    except duckdb.Error as exc:
        _recheck_on_crc_error(repo, exc)
        raise QueryError(_sql_error_message(exc)) from exc


def _sql_error_message(exc: Exception) -> str:
    """DuckDB's error in one line; a column the query names that a major version renamed or removed says so."""
    text = " ".join(str(exc).split())
    match = re.search(r'[Rr]eferenced column "?(\w+)"? not found', text)
    if match:
        from forcedphot.schema import column_history

        why = column_history("forced_source", match.group(1))
        if why:
            text += f" ({why})"
    return f"SQL error: {text}"


def _recheck_on_crc_error(repo, exc: Exception) -> None:
    """A page that fails its CRC (changed after it was verified, or bits rotted under the filesystem)
    re-verifies every file of the repository's views, so the error names the file."""
    if PAGE_CRC in str(exc) and not getattr(repo, "is_s3", False):
        recheck_all(repo)


def recheck_all(repo) -> None:
    """Hash every file the views read again (``ChecksumError`` naming the first corrupted one)."""
    from forcedphot.ledger import ledger_files

    repo = _as_repository(repo)
    for dataset in dict.fromkeys(d for stmt in view_statements().values() for d in _FILES.findall(stmt)):
        dataset_files(repo, dataset, force=True)
    for schema, files in ledger_files(repo).values():
        checked_files(repo, files, schema, force=True)


def connect(repo: Repository | str | Path, query: str | None = None,
            params: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A sandboxed DuckDB connection with the views of sql/views.sql (forced_source, ref, truth, skymap, object)
    and of the run ledger (runs, quanta).

    With ``query``: only the views it reads (:func:`views_read`), so a query that reads no dataset checks and
    opens no file; every file of a view it reads is checked as always. A point query on ``objectId``
    (:func:`point_object_id`, ``params`` its named parameters) registers only the files whose manifest range can
    hold the id: the others are neither checked nor made fragments.
    """
    repo = _as_repository(repo)
    statements = view_statements()
    for name, stmt in statements.items():
        if "@root@" in stmt:
            raise QueryError(f"sql/views.sql: view {name} reads files by path (@root@); read them with "
                             "@files(NAME)@ (the query connection opens no file)")
    con = sandboxed_connection()
    try:
        wanted = None if query is None else views_read(query, con)
        replacements = {"@object_select@": lambda: _object_select(repo)}
        for name, stmt in statements.items():
            if wanted is not None and name not in wanted:
                continue
            for dataset in dict.fromkeys(_FILES.findall(stmt)):
                # a count-only query of a view that passes the files' rows through: the manifests' row counts
                rows = checked = None
                if wanted == {name} and _PASS_THROUGH.fullmatch(stmt.strip()) and _counts_suffice(repo, dataset, query, con):
                    versions: dict = {}  # checked once, also when the files are scanned
                    listing = _dataset_listing(repo, dataset, versions=versions)
                    checked = (listing, versions)
                    rows = rows_only_count(repo, dataset, query, con, listing=listing)
                elif (wanted == {name} and dataset == "forced_source" and _PASS_THROUGH.fullmatch(stmt.strip())
                      and not getattr(repo, "is_s3", False)
                      and (oid := point_object_id(query, params, con)) is not None):
                    versions = {}
                    checked = (_dataset_listing(repo, dataset, versions=versions, object_id=oid), versions)
                if rows is None:
                    register_dataset(con, f"_files_{dataset}", repo, dataset, checked=checked)
                else:
                    con.register(f"_files_{dataset}", _rows_stand_in(rows))
            stmt = _FILES.sub(lambda m: f"_files_{m.group(1)}", stmt)
            for token, render in replacements.items():
                if token in stmt:
                    stmt = stmt.replace(token, render())
            con.execute(stmt)
        if wanted is None or wanted & set(view_statements("ledger_views")):
            from forcedphot.ledger import create_views  # runs and quanta: the run ledger

            create_views(con, repo)
    except BaseException:
        con.close()
        raise
    return con


# Expressions that read a table's columns (``COLUMNS(...)`` and ``*`` are STAR; ``#1`` a positional reference).
_COLUMN_READS = {"COLUMN_REF", "STAR", "POSITIONAL_REFERENCE"}


def parse_tree(query: str, con: duckdb.DuckDBPyConnection | None = None) -> dict | None:
    """DuckDB's parse tree of ``query`` (``json_serialize_sql``: nothing is bound or read, on ``con`` or a
    sandboxed connection of its own); None when DuckDB cannot parse it."""
    own = con is None
    con = sandboxed_connection() if own else con
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    except (duckdb.Error, TypeError, ValueError):
        return None
    finally:
        if own:
            con.close()
    return tree if isinstance(tree, dict) and not tree.get("error", True) else None


def tree_nodes(tree):
    """Every dict node of a :func:`parse_tree` (depth first, each node before what it holds)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            yield node
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))


def reads_only_row_counts(query: str, con: duckdb.DuckDBPyConnection | None = None) -> bool:
    """True when ``query``'s answer depends only on how many rows its tables have, not on their values:
    DuckDB's parse tree of it (nothing bound or read) has no column reference (``x``, ``t.x``, ``*``,
    ``COLUMNS(...)``, ``#1``, a table name used as a value), no join (``USING``/``NATURAL`` read columns
    without naming them) and no column aliases or time travel on a table. ``SELECT count(*) FROM
    forced_source``, ``SELECT count(*) AS n, 1 FROM forced_source LIMIT 1``; not ``count(objectId)``."""
    tree = parse_tree(query, con)
    if tree is None or len(tree.get("statements", [])) != 1:
        return False
    for node in tree_nodes(tree):
        if node.get("class") in _COLUMN_READS or node.get("type") in _COLUMN_READS | {"JOIN", "TABLE_FUNCTION"}:
            return False
        if node.get("type") == "BASE_TABLE" and (node.get("column_name_alias") or node.get("at_clause")):
            return False
    return True


def point_object_id(query: str, params: dict | None = None, con: duckdb.DuckDBPyConnection | None = None) -> int | None:
    """X when every row ``query`` reads of forced_source must have ``objectId = X``: one SELECT whose only table is
    ``forced_source`` (no join, subquery, CTE or table function reads another), whose WHERE is ``objectId = X``
    or a conjunction (AND) holding it, X an integer literal or a named parameter given an int in ``params``;
    else None. Rows of other ids cannot be in the answer, so files whose objectId range excludes X need not be
    read (the view of such a query is the files' rows passed through)."""
    tree = parse_tree(query, con)
    if tree is None or len(tree.get("statements", [])) != 1:
        return None
    node = tree["statements"][0].get("node") or {}
    table = node.get("from_table") or {}
    if (node.get("type") != "SELECT_NODE" or table.get("type") != "BASE_TABLE"
            or str(table.get("table_name", "")).lower() != "forced_source" or table.get("schema_name")
            or table.get("catalog_name") or table.get("at_clause") or table.get("column_name_alias")
            or (node.get("cte_map") or {}).get("map")):
        return None
    if sum(1 for n in tree_nodes(tree) if n.get("type") in ("BASE_TABLE", "TABLE_FUNCTION", "SUBQUERY", "JOIN")) != 1:
        return None
    names = {"forced_source", str(table.get("alias", "")).lower()} - {""}
    conjuncts, todo = [], [node.get("where_clause")]
    while todo:
        e = todo.pop()
        if isinstance(e, dict) and e.get("type") == "CONJUNCTION_AND":
            todo.extend(e.get("children", []))
        elif isinstance(e, dict):
            conjuncts.append(e)
    for e in conjuncts:
        if e.get("type") != "COMPARE_EQUAL":
            continue
        for col, val in ((e.get("left"), e.get("right")), (e.get("right"), e.get("left"))):
            col, val = col or {}, val or {}
            parts = [str(x).lower() for x in col.get("column_names", [])] if col.get("class") == "COLUMN_REF" else []
            if not parts or parts[-1] != "objectid" or (len(parts) == 2 and parts[0] not in names) or len(parts) > 2:
                continue
            if val.get("class") == "CONSTANT" and (val.get("literal") or {}).get("kind") == "INTEGER":
                try:
                    return int(val["literal"]["text"])
                except (KeyError, TypeError, ValueError):
                    continue
            if val.get("class") == "PARAMETER" and isinstance(params, dict):
                value = params.get(val.get("identifier"))
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
    return None


def _counts_suffice(repo, dataset: str, query: str | None, con=None) -> bool:
    return (dataset == "forced_source" and query is not None and not getattr(repo, "is_s3", False)
            and reads_only_row_counts(query, con))


def rows_only_count(repo, dataset: str, query: str | None, con=None, *, listing: dict | None = None) -> int | None:
    """The number of rows of ``dataset`` from its tracts' manifests, when ``query`` reads only row counts
    (:func:`reads_only_row_counts`) and every file has a manifest entry; else None (the files are scanned).

    The files are checked as for any query (:func:`_dataset_listing`: a ``stat`` each against the verified
    state); a manifest entry counts only when the writer's checksum record it names is the one the verified
    state holds for the file (so its row count is that of the verified bytes). No file is opened."""
    repo = _as_repository(repo)
    if not _counts_suffice(repo, dataset, query, con):
        return None
    from forcedphot.io.verified import verified_files

    listing = _dataset_listing(repo, dataset) if listing is None else listing
    if any(entry is None or not isinstance(entry.get("rows"), int) or not entry.get("checksum")
           for entry in listing.values()):
        return None
    remembered = verified_files(repo.root).unchanged([os.path.abspath(p) for p in listing])
    if any(known is None or known.recorded != entry["checksum"] for known, entry in zip(remembered, listing.values())):
        return None
    return sum(entry["rows"] for entry in listing.values())


def _rows_stand_in(rows: int) -> pa.Table:
    """A table of ``rows`` rows and one all-null column: what a query reading only row counts needs of a dataset
    (a null column has no buffers, whatever its length). A column it reads would fail to bind, not read nulls."""
    import pyarrow as pa

    return pa.table({"_rows_only": pa.nulls(rows)})


def _object_select(repo: Repository) -> str:
    from forcedphot.objects import object_select, repository_bands

    return object_select(repository_bands(repo))


# Views of sql/views.sql that read another view (created in file order, so after it); the ledger's views are
# created together. tests/test_startup.py checks this against the views' SQL.
VIEW_READS = {"object": {"forced_source"}}
_SYSTEM_SCHEMAS = {"", "main", "memory", "temp"}


def tables_read(query: str, con: duckdb.DuckDBPyConnection | None = None) -> tuple[set[str], set[str]] | None:
    """(the tables and views ``query`` names, its CTEs' names), lower case, from DuckDB's parse tree of it
    (``json_serialize_sql``: nothing is bound or read, on ``con`` or a sandboxed connection of its own); None
    when that cannot be told (see :func:`views_read`)."""
    tree = parse_tree(query, con)
    if tree is None:
        return None
    tables: set[str] = set()
    ctes: set[str] = set()
    for node in tree_nodes(tree):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            return None
        if kind == "BASE_TABLE":
            if (node.get("schema_name") or "").lower() not in _SYSTEM_SCHEMAS or node.get("catalog_name") not in (
                    "", None, "memory"):
                return None
            tables.add(str(node.get("table_name", "")).lower())
        for entry in (node.get("cte_map") or {}).get("map", []) if isinstance(node.get("cte_map"), dict) else []:
            ctes.add(str(entry.get("key", "")).lower())
    return tables, ctes


def views_read(query: str, con: duckdb.DuckDBPyConnection | None = None) -> set[str] | None:
    """The repository views ``query`` reads (with those they read), or None when that cannot be told: the
    caller then creates them all.

    From DuckDB's parse tree of the query (``json_serialize_sql``; nothing is bound or read): its base tables
    less its CTEs. None for a statement it cannot serialize (EXPLAIN), a CTE named as a view, a table function (``duckdb_views()``,
    ``query_table('ref')``), a table of another schema (``information_schema.tables``) or a name that is no
    view: those see the views (or name them in an error message) exactly as when all are created.
    """
    views = set(view_statements()) | set(view_statements("ledger_views"))
    parsed = tables_read(query, con)
    if parsed is None or parsed[1] & views:  # a CTE named as a view: left to DuckDB with every view there
        return None
    tables = parsed[0] - parsed[1]
    if not tables <= views:
        return None
    wanted = set()
    todo = list(tables)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(VIEW_READS.get(name, ()))
    return wanted


def sql(repo, query: str, params: dict | None = None, *, max_rows: int | None = None,
        max_bytes: int | None | str = "auto") -> pa.Table:
    """Run a read-only SQL query (SELECT or EXPLAIN statements) over the repository views; returns Arrow.

    The result is bounded: above ``max_rows`` rows or ``max_bytes`` bytes of Arrow data (``"auto"``,
    the default: half of this machine's physical memory; ``None``: no bound) the query is stopped
    at the first batch past the limit and :class:`~forcedphot.results.ResultTooLarge` (a QueryError)
    is raised; no result is ever returned cut. Repeated column names are made unique as DuckDB
    does (``x``, ``x_1``...). For results larger than memory, stream them with :func:`sql_reader`.
    """
    with sql_reader(repo, query, params, max_rows=max_rows, max_bytes=max_bytes) as reader:
        return reader.read_all()


class OpenQuery(NamedTuple):
    """A read-only query opened by :func:`query_relation`: its connection, its (last statement's) relation."""

    repo: Repository
    con: duckdb.DuckDBPyConnection
    rel: duckdb.DuckDBPyRelation
    params: dict | None

    def fetch_shown(self, *, max_shown: int, max_rows: int | None = None, max_bytes: int | None = None):
        """A result of simple column types (:data:`forcedphot.frame_text.SIMPLE_TYPES`) read whole within the
        limits, keeping the rows a table of ``max_shown`` rows shows (:func:`forcedphot.frame_text.fetch_shown`)."""
        from forcedphot.frame_text import fetch_shown
        from forcedphot.results import batch_rows

        try:
            text = self.rel.sql_query()
            cursor = self.con.execute(text, self.params) if self.params else self.con.execute(text)
            return fetch_shown(cursor, self.rel.types, max_shown=max_shown, batch_rows=batch_rows,
                               max_rows=max_rows, max_bytes=max_bytes)
        except duckdb.InterruptException:  # Ctrl-C or SIGTERM while computing
            raise KeyboardInterrupt from None
        except duckdb.Error as exc:
            _recheck_on_crc_error(self.repo, exc)
            raise QueryError(_sql_error_message(exc)) from exc


@contextmanager
def query_relation(repo, query: str, params: dict | None = None) -> Iterator[OpenQuery]:
    """A read-only query's DuckDB relation (its last statement) over the views it reads, open while the
    ``with`` lasts; nothing of its result is computed until it is read."""
    from forcedphot.duck import is_empty_query

    try:
        refuse_unless_read_only(query)
    except ValueError as exc:
        raise QueryError(f"SQL refused: {exc}") from exc
    except duckdb.Error as exc:
        raise QueryError(_sql_error_message(exc)) from exc
    if is_empty_query(query):
        raise QueryError("empty SQL query (no statement: only comments or semicolons)")
    repo = _as_repository(repo)
    con = connect(repo, query, params)
    try:
        try:
            rel = con.sql(query, params=params) if params else con.sql(query)
        except duckdb.Error as exc:
            _recheck_on_crc_error(repo, exc)
            raise QueryError(_sql_error_message(exc)) from exc
        if rel is None:
            raise QueryError("SQL query without a result")
        yield OpenQuery(repo, con, rel, params)
    finally:
        con.close()


@contextmanager
def relation_reader(opened: OpenQuery, *, max_rows: int | None = None,
                    max_bytes: int | None | str = None) -> Iterator[pa.RecordBatchReader]:
    """An opened query's result as a bounded ``pyarrow.RecordBatchReader`` (see :func:`sql_reader`)."""
    import pyarrow as pa

    from forcedphot.duck import relation_batches
    from forcedphot.results import batch_rows, bounded_reader, default_max_bytes

    if max_bytes == "auto":
        max_bytes = default_max_bytes()
    repo = opened.repo
    try:
        reader = relation_batches(opened.rel, batch_rows=batch_rows)
    except duckdb.Error as exc:
        _recheck_on_crc_error(repo, exc)
        raise QueryError(_sql_error_message(exc)) from exc
    try:
        yield bounded_reader(reader, max_rows=max_rows, max_bytes=max_bytes)
    except (duckdb.Error, pa.ArrowException) as exc:  # raised while the batches are read
        _recheck_on_crc_error(repo, exc)
        raise


@contextmanager
def sql_reader(repo, query: str, params: dict | None = None, *, max_rows: int | None = None,
               max_bytes: int | None | str = None) -> Iterator[pa.RecordBatchReader]:
    """The result of a read-only query as a ``pyarrow.RecordBatchReader`` read batch by batch
    (bounded memory: DuckDB computes each batch as it is read), open while the ``with`` lasts.

    Column names are unique (as :func:`sql`); ``max_rows``/``max_bytes`` (default: no bound; ``"auto"``:
    half of the physical memory) raise :class:`~forcedphot.results.ResultTooLarge` while reading.
    ``results.write_result(reader, path)`` writes it to a Parquet, CSV or NDJSON file atomically.
    """
    with query_relation(repo, query, params) as opened, \
            relation_reader(opened, max_rows=max_rows, max_bytes=max_bytes) as reader:
        yield reader


def forced_source_schema() -> pl.Schema:
    import polars as pl

    from forcedphot.schema import load_schema

    return pl.Schema(pl.from_arrow(load_schema("forced_source").arrow_schema().empty_table()).schema)


def cone_patches(repo, cone) -> set[tuple[int, int]] | None:
    """The (tract, patch) pairs whose outer box ``cone`` touches (None: no cone, every patch)."""
    from forcedphot.cone import patches_in_cone

    return None if cone is None else patches_in_cone(_as_repository(repo).read_skymap(), cone)


def _cut_to_cone(df: pl.DataFrame, cone) -> pl.DataFrame:
    """The rows of ``df`` within the cone (exact angular distance from ``coord_ra``/``coord_dec``)."""
    if cone is None or df.is_empty():
        return df
    import polars as pl

    return df.filter(pl.Series(cone.contains(df["coord_ra"].to_numpy(), df["coord_dec"].to_numpy())))


def scan_forced_source(repo, *, tract=None, patch=None, band=None, sky_patches=None) -> pl.LazyFrame:
    """The forced-source table as a Polars LazyFrame; tract/patch/band (and the (tract, patch) pairs of
    ``sky_patches``) select the partitions' files."""
    import polars as pl

    from forcedphot.schema import load_schema

    repo = _as_repository(repo)
    schema = forced_source_schema()
    if getattr(repo, "is_s3", False):  # the committed files, through pyarrow's S3FileSystem
        ds = repo.arrow_dataset("forced_source", tract=tract, patch=patch, band=band, sky_patches=sky_patches)
        return pl.scan_pyarrow_dataset(ds) if ds.files else pl.LazyFrame(schema=schema)
    groups = files_by_major(repo, "forced_source", tract=tract, patch=patch, band=band, sky_patches=sky_patches)
    if not groups:
        return pl.LazyFrame(schema=schema)
    current = groups.pop(load_schema("forced_source").major, [])
    frames = [pl.scan_parquet(current, hive_partitioning=False, schema=schema, missing_columns="insert",
                              extra_columns="ignore")] if current else []
    frames += [_migrated_frame(paths, major, schema) for major, paths in sorted(groups.items())]
    lf = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
    for col, val in (("tract", tract), ("patch", patch), ("band", band)):
        if val is not None:
            lf = lf.filter(pl.col(col).is_in([val] if isinstance(val, (int, str)) else list(val)))
    if sky_patches is not None:  # a compacted part holds other patches' rows too
        pairs = [(pl.col("tract") == t) & (pl.col("patch") == p) for t, p in sky_patches]
        lf = lf.filter(pl.any_horizontal(pairs) if pairs else pl.lit(False))
    return lf


def _migrated_frame(paths: list[Path], major: int, schema: pl.Schema) -> pl.LazyFrame:
    """forced_source files of an older major version as a LazyFrame of the current ``schema`` (the columns of
    :func:`forcedphot.schema.column_sources`: renamed ones under their new names, removed ones absent)."""
    import polars as pl

    from forcedphot.schema import column_defaults, column_sources, version_schema

    old = version_schema("forced_source", str(major))
    old_schema = pl.Schema(pl.from_arrow(old.arrow_schema().empty_table()).schema)
    sources = column_sources("forced_source", old.version)
    defaults = column_defaults("forced_source", old.version)
    lf = pl.scan_parquet(paths, hive_partitioning=False, schema=old_schema, missing_columns="insert",
                         extra_columns="ignore")
    return lf.select([pl.col(sources[n]).cast(t).alias(n) if sources[n] is not None
                      else pl.lit(defaults.get(n), dtype=t).alias(n) for n, t in schema.items()])


def load_forced_source(repo, *, tract=None, patch=None, band=None, columns=None, ra=None, dec=None, radius=None,
                       coord=None, backend: str = "polars"):
    """Collect the forced-source table (optionally filtered): Polars, pandas or an astropy QTable with units.

    A cone (``ra=, dec=, radius=`` in deg, or ``coord=`` a SkyCoord and ``radius=`` an Angle) reads only
    the patches whose outer box it touches, then keeps the rows within ``radius`` of the centre.
    """
    from forcedphot.cone import make_cone
    from forcedphot.schema import load_schema
    from forcedphot.tables import convert

    cone = make_cone(ra=ra, dec=dec, radius=radius, coord=coord)
    lf = scan_forced_source(repo, tract=tract, patch=patch, band=band, sky_patches=cone_patches(repo, cone))
    units = {c.name: c.unit for c in load_schema("forced_source").columns}
    if columns:
        unknown = [c for c in columns if c not in units]
        if unknown:
            from forcedphot.schema import column_history

            why = "; ".join(filter(None, map(lambda c: column_history("forced_source", c), unknown)))
            raise InputError(f"forced_source has no column(s) {unknown}" + (f": {why}" if why else "")
                             + "; see schemas/forced_source.yaml")
    if cone is None:
        return convert(lf.select(columns).collect() if columns else lf.collect(), backend, units)
    df = _cut_to_cone(lf.collect(), cone)
    return convert(df.select(columns) if columns else df, backend, units)


def load_object(repo, *, tract=None, patch=None, primary_only: bool = True, ra=None, dec=None, radius=None,
                coord=None, backend: str = "polars"):
    """The object table (one row per primary object, ``<band>_<column>`` columns; see sql/object.sql):
    Polars, pandas or an astropy QTable with units.

    ``primary_only=False`` keeps the objects that are not primary too (the copies of a source in patch
    overlaps, deblended parents). A cone (as :func:`load_forced_source`) reads only the patches it touches.
    """
    import polars as pl

    from forcedphot.cone import make_cone
    from forcedphot.objects import object_columns, object_select, repository_bands
    from forcedphot.tables import convert

    repo = _as_repository(repo)
    cone = make_cone(ra=ra, dec=dec, radius=radius, coord=coord)
    sky_patches = cone_patches(repo, cone)
    con = sandboxed_connection()
    try:
        register_dataset(con, "forced_source", repo, "forced_source", tract=tract, patch=patch,
                         sky_patches=sky_patches)
        table = _query(repo, con, object_select(repository_bands(repo), primary_only=primary_only)
                       + "\nORDER BY objectId, tract, patch")
    finally:
        con.close()
    units = {c.name: c.unit for c in object_columns(repository_bands(repo))}
    return convert(_cut_to_cone(pl.from_arrow(table), cone), backend, units)
