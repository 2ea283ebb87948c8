"""Felis YAML schemas in ``schemas/`` are the single source of truth for what lands on disk.

Writers conform tables to a schema (order, types, nullability) and stamp the schema
name and version into the file metadata; readers refuse a major version they do not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from forcedphot.errors import SchemaError, SchemaVersionError
from forcedphot.resources import SCHEMA_DIR

if TYPE_CHECKING:
    import pyarrow as pa
# pyarrow is imported at the first Arrow type asked for: the versions and names of a schema need none
# (`forcedphot status`, a query reading no dataset: start-up time)

META_SCHEMA = b"forcedphot.schema"
META_VERSION = b"forcedphot.schema_version"


@cache
def _felis_to_arrow() -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {
        "boolean": pa.bool_(),
        "byte": pa.int8(),
        "short": pa.int16(),
        "int": pa.int32(),
        "long": pa.int64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "char": pa.string(),
        "string": pa.string(),
        "unicode": pa.string(),
        "text": pa.string(),
        "binary": pa.binary(),
    }


@dataclass(frozen=True)
class ColumnDef:
    name: str
    datatype: str
    nullable: bool
    unit: str | None
    description: str
    is_array: bool
    ucd: str | None = None  # ivoa:ucd (IVOA Unified Content Descriptor)

    @property
    def arrow_type(self) -> pa.DataType:
        import pyarrow as pa

        base = _felis_to_arrow()[self.datatype]
        return pa.list_(base) if self.is_array else base

    def arrow_field(self) -> pa.Field:
        import pyarrow as pa

        meta = {"description": self.description}
        if self.unit:
            meta["unit"] = self.unit
        return pa.field(self.name, self.arrow_type, nullable=self.nullable, metadata=meta)


@dataclass(frozen=True)
class TableSchema:
    dataset: str  # schema file stem, e.g. "forced_source"
    table: str
    version: str
    columns: tuple[ColumnDef, ...]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnDef:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.dataset}.{self.table} has no column {name!r}")

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema (built once per TableSchema: ~3-10 ms for forced_source's 430 fields, paid by every
        write and dataset before; a pa.Schema is immutable, so the one object is shared)."""
        cached = self.__dict__.get("_arrow_schema")
        if cached is None:
            import pyarrow as pa

            cached = pa.schema([c.arrow_field() for c in self.columns], metadata=self.file_metadata())
            object.__setattr__(self, "_arrow_schema", cached)  # frozen dataclass: a cache, not a field
        return cached

    def file_metadata(self) -> dict[bytes, bytes]:
        return {META_SCHEMA: f"{self.dataset}.{self.table}".encode(), META_VERSION: self.version.encode()}

    def conform(self, table: pa.Table, *, where: str) -> pa.Table:
        """Reorder and cast ``table`` to this schema; raise on missing, extra or null-violating columns."""
        import pyarrow as pa

        have = set(table.column_names)
        missing = [n for n in self.names if n not in have]
        extra = sorted(have - set(self.names))
        if missing or extra:
            raise SchemaError(
                f"{where}: table does not match schema {self.dataset} {self.version}: "
                f"missing columns {missing}, unexpected columns {extra}"
            )
        arrays = []
        for c in self.columns:
            col = table.column(c.name)
            if not c.nullable and col.null_count:
                raise SchemaError(f"{where}: column {c.name!r} has {col.null_count} nulls but is not nullable")
            try:
                arrays.append(col.cast(c.arrow_type, safe=c.datatype not in ("float", "double")))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"{where}: column {c.name!r} ({col.type}) cannot be cast to {c.arrow_type}: {exc}") from exc
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema())

    def check_metadata(self, metadata: dict | None, *, where: str) -> str:
        """Refuse files of an unknown major version; returns the file's version.

        An older major version declared in ``schemas/migrations/<dataset>.yaml`` is read (readers map it with
        :func:`migrate`); a newer one is refused in one line."""
        metadata = metadata or {}
        version = metadata.get(META_VERSION)
        if version is None:
            raise SchemaVersionError(f"{where}: no {META_VERSION.decode()} in file metadata; not written by forcedphot?")
        version = version.decode()
        try:
            major = int(version.split(".")[0])
        except ValueError:
            raise SchemaVersionError(f"{where}: schema version {version!r} is not MAJOR.MINOR.PATCH") from None
        if major > self.major:
            raise SchemaVersionError(
                f"{where}: written with {self.dataset} schema version {version}, newer than this forcedphot "
                f"(it reads {self.dataset} {self.version} and older); upgrade forcedphot to read it")
        if major != self.major and major not in migrated_majors(self.dataset):
            raise SchemaVersionError(
                f"{where}: written with {self.dataset} schema version {version}, "
                f"this forcedphot reads major version {self.major} ({self.version})"
            )
        return version


def _safe_loader():
    """libyaml's safe loader where PyYAML was built with it (its wheels are): the same documents,
    ~9x faster than the pure-Python one (0.15 s for the schemas of a quantum, paid by every process).
    PyYAML is imported at the first schema loaded (``schema.SafeLoader`` names it too)."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def __getattr__(name: str):
    if name == "SafeLoader":
        return _safe_loader()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_yaml(path: Path) -> dict:
    import yaml

    with open(path) as f:
        return yaml.load(f, Loader=_safe_loader())


_VERSION_LINE = re.compile(r"""^version:[ \t]*["']?([0-9][0-9A-Za-z.+-]*)["']?[ \t]*(?:#.*)?$""", re.M)


@lru_cache(maxsize=None)
def schema_version(dataset: str, *, schema_dir: Path = SCHEMA_DIR) -> str:
    """``load_schema(dataset).version`` from the file's top-level ``version:`` line, without parsing the YAML (nor
    importing PyYAML: ``forcedphot status``); the full load where the line is not a plain version."""
    path = Path(schema_dir) / f"{dataset}.yaml"
    try:
        match = _VERSION_LINE.search(path.read_text())
    except OSError:
        match = None
    return match.group(1) if match else load_schema(dataset, schema_dir=schema_dir).version


@lru_cache(maxsize=None)
def load_schema(dataset: str, table: str | None = None, *, schema_dir: Path = SCHEMA_DIR) -> TableSchema:
    """Load table ``table`` (default: the file's first table) of ``schemas/<dataset>.yaml``."""
    path = Path(schema_dir) / f"{dataset}.yaml"
    if not path.exists():
        raise SchemaError(f"{path}: schema file not found")
    doc = _load_yaml(path)
    version = doc.get("version")
    if isinstance(version, dict):
        version = version.get("current")
    if not version:
        raise SchemaError(f"{path}: no version")
    tables = doc.get("tables", [])
    chosen = next((t for t in tables if table is None or t["name"] == table), None)
    if chosen is None:
        raise SchemaError(f"{path}: no table {table!r}")
    cols = tuple(
        ColumnDef(
            name=c["name"],
            datatype=c["datatype"],
            nullable=bool(c.get("nullable", True)),
            unit=c.get("ivoa:unit") or c.get("fits:tunit") or None,
            description=c.get("description", ""),
            is_array=c.get("votable:arraysize") == "*",
            ucd=c.get("ivoa:ucd") or None,
        )
        for c in chosen["columns"]
    )
    return TableSchema(dataset=dataset, table=chosen["name"], version=str(version), columns=cols)


# -- major versions: schemas/migrations/<dataset>.yaml ------------------------------------------------------------
# Declared once, beside the schemas: for each older major version of a dataset, the last schema of that major (kept
# in schemas/history/<version>/<dataset>.yaml, as its writer wrote it), the columns renamed (old -> new), removed and
# the values of new non-nullable columns (defaults). Every reader maps an older file's columns to the current schema
# with the same record (:func:`column_sources`: the Arrow, SQL and Polars readers), so files of several majors read
# as one table of the current version, without being rewritten.

MIGRATIONS_DIR = "migrations"
HISTORY_DIR = "history"


@dataclass(frozen=True)
class Migration:
    """One step: files of major ``from_major`` (last schema ``from_version``) read as major ``to_major``."""

    dataset: str
    from_version: str  # the last version of the older major: its schema is schemas/history/<from_version>/
    to_version: str  # the first version of the newer major
    renamed: tuple[tuple[str, str], ...]  # (old name, new name)
    removed: tuple[tuple[str, str], ...]  # (old name with no column in the newer major, why)
    defaults: tuple[tuple[str, object], ...]  # (new column, value) for old files; others read null

    @property
    def from_major(self) -> int:
        return int(self.from_version.split(".")[0])

    @property
    def to_major(self) -> int:
        return int(self.to_version.split(".")[0])


@lru_cache(maxsize=None)
def migrations(dataset: str, *, schema_dir: Path = SCHEMA_DIR) -> tuple[Migration, ...]:
    """The steps declared in ``schemas/migrations/<dataset>.yaml`` (none: no file), oldest first."""
    path = Path(schema_dir) / MIGRATIONS_DIR / f"{dataset}.yaml"
    if not path.exists():
        return ()
    doc = _load_yaml(path) or {}
    steps = []
    for step in doc.get("migrations", []):
        try:
            steps.append(Migration(
                dataset=dataset, from_version=str(step["from"]), to_version=str(step["to"]),
                renamed=tuple((str(k), str(v)) for k, v in (step.get("renamed") or {}).items()),
                removed=tuple((str(c), str(why or "")) for c, why in _as_mapping(step.get("removed")).items()),
                defaults=tuple((str(k), v) for k, v in (step.get("defaults") or {}).items())))
        except (KeyError, TypeError, AttributeError) as exc:
            raise SchemaError(f"{path}: a migration needs from, to and optional renamed/removed/defaults ({exc})") from exc
    return tuple(sorted(steps, key=lambda m: m.from_major))


def _as_mapping(value) -> dict:
    """A YAML mapping, or a list of names (each mapped to None)."""
    return dict(value) if isinstance(value, dict) else {v: None for v in value or ()}


@cache
def migrated_majors(dataset: str) -> frozenset[int]:
    """The older major versions of ``dataset`` this forcedphot reads through a migration."""
    return frozenset(m.from_major for m in migrations(dataset))


def version_schema(dataset: str, version: str, table: str | None = None) -> TableSchema:
    """The schema of ``dataset`` at ``version``: the current file, or a kept ``schemas/history/<version>/`` one
    (a version's MAJOR alone, e.g. ``1``, names the last kept version of that major)."""
    current = load_schema(dataset, table)
    if version in (current.version, str(current.major)):
        return current
    for m in migrations(dataset):
        if version in (m.from_version, str(m.from_major)):
            return load_schema(dataset, table, schema_dir=SCHEMA_DIR / HISTORY_DIR / m.from_version)
    known = [current.version] + [m.from_version for m in migrations(dataset)]
    raise SchemaError(f"no {dataset} schema of version {version}; this forcedphot knows {', '.join(known)}")


def column_sources(dataset: str, from_version: str, table: str | None = None) -> dict[str, str | None]:
    """{current column: its name in a file of ``from_version`` (None: the file has no such column)}.

    The steps of ``schemas/migrations/<dataset>.yaml`` are applied from the file's major to the current one;
    a column added by a minor version after the file's reads as None too."""
    current = load_schema(dataset, table)
    major = int(from_version.split(".")[0])
    if major == current.major:
        return {n: n for n in current.names}
    if major > current.major or major not in migrated_majors(dataset):
        current.check_metadata({META_VERSION: from_version.encode()}, where=f"{dataset} {from_version}")
    sources: dict[str, str | None] = {n: n for n in current.names}
    for m in reversed([m for m in migrations(dataset) if m.from_major >= major]):
        back = {new: old for old, new in m.renamed}
        older = set(load_schema(dataset, table, schema_dir=SCHEMA_DIR / HISTORY_DIR / m.from_version).names)
        sources = {n: (back.get(s, s) if s is not None and back.get(s, s) in older else None)
                   for n, s in sources.items()}
    return sources


def column_defaults(dataset: str, from_version: str) -> dict[str, object]:
    """{current column: the value a file of ``from_version`` reads for it} (declared ``defaults``)."""
    major = int(from_version.split(".")[0])
    out: dict[str, object] = {}
    for m in migrations(dataset):
        if m.from_major >= major:
            out.update(m.defaults)
    return out


def migrate(table: pa.Table, from_version: str, dataset: str = "forced_source") -> pa.Table:
    """An Arrow table of a ``from_version`` file as a table of the current schema: renamed columns under their new
    names, removed columns dropped, new columns null (or their declared default), every column cast."""
    import pyarrow as pa

    schema = load_schema(dataset)
    sources = column_sources(dataset, from_version)
    defaults = column_defaults(dataset, from_version)
    arrays = []
    for c in schema.columns:
        src = sources[c.name]
        if src is not None and src in table.column_names:
            arrays.append(table.column(src).cast(c.arrow_type))
        elif c.name in defaults:
            arrays.append(pa.array([defaults[c.name]] * table.num_rows, c.arrow_type))
        else:
            arrays.append(pa.nulls(table.num_rows, c.arrow_type))
    return pa.Table.from_arrays(arrays, schema=schema.arrow_schema())


_DUCKDB_TYPES = {"boolean": "BOOLEAN", "byte": "TINYINT", "short": "SMALLINT", "int": "INTEGER", "long": "BIGINT",
                 "float": "FLOAT", "double": "DOUBLE", "char": "VARCHAR", "string": "VARCHAR", "unicode": "VARCHAR",
                 "text": "VARCHAR", "binary": "BLOB"}


def migration_select(dataset: str, from_version: str) -> str:
    """The SQL select list reading a ``from_version`` relation as the current schema (DuckDB), in column order."""
    sources = column_sources(dataset, from_version)
    defaults = column_defaults(dataset, from_version)
    old = {c.name: c for c in version_schema(dataset, from_version.split(".")[0]).columns}
    items = []
    for c in load_schema(dataset).columns:
        sql_type = _DUCKDB_TYPES[c.datatype] + ("[]" if c.is_array else "")
        src = sources[c.name]
        if src is not None and (old[src].datatype, old[src].is_array) == (c.datatype, c.is_array):
            items.append(f'"{src}"' + ("" if src == c.name else f' AS "{c.name}"'))  # no cast: filters push down
        elif src is not None:
            items.append(f'CAST("{src}" AS {sql_type}) AS "{c.name}"')
        elif c.name in defaults:
            value = defaults[c.name]
            literal = ("TRUE" if value else "FALSE") if isinstance(value, bool) else (
                repr(value) if isinstance(value, (int, float)) else "'" + str(value).replace("'", "''") + "'")
            items.append(f'CAST({literal} AS {sql_type}) AS "{c.name}"')
        else:
            items.append(f'CAST(NULL AS {sql_type}) AS "{c.name}"')
    return ", ".join(items)


def column_history(dataset: str, name: str) -> str | None:
    """Why ``name`` is no column of the current ``dataset`` schema, when a migration says so (else None):
    ``"renamed to X in 2.0.0"`` or ``"removed in 2.0.0 (why)"``."""
    current = set(load_schema(dataset).names)
    for m in reversed(migrations(dataset)):
        for old, new in m.renamed:
            if old == name and new in current:
                return f"{dataset}.{name} was renamed {new} in schema {m.to_version}"
        why = dict(m.removed).get(name)
        if why is not None:
            return f"{dataset}.{name} was removed in schema {m.to_version}" + (f": {why}" if why else "")
    return None
