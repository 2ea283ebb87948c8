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
        import pyarrow as pa

        return pa.schema([c.arrow_field() for c in self.columns], metadata=self.file_metadata())

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
        """Refuse files of an unknown major version; returns the file's version."""
        metadata = metadata or {}
        version = metadata.get(META_VERSION)
        if version is None:
            raise SchemaVersionError(f"{where}: no {META_VERSION.decode()} in file metadata; not written by forcedphot?")
        version = version.decode()
        if int(version.split(".")[0]) != self.major:
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
