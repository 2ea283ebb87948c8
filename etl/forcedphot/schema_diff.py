"""``forcedphot schema diff OLD NEW``: the columns added, removed, renamed and retyped between two schemas.

OLD and NEW are versions of a dataset (``1.4.0``, ``forced_source:2.0.0``, a major alone: ``1``; the current
schema or one kept in ``schemas/history/``) or two Felis YAML files. Both are loaded and validated by Felis
(``felis.datamodel.Schema``); Felis' own ``SchemaDiff`` (DeepDiff of the two models) decides whether they differ at
all. Its report lists whole column dicts added and removed, so the classification is ours, from the validated
models: a column is matched by name; a renamed column is the one the migration record
(``schemas/migrations/<dataset>.yaml``) declares renamed between the two versions, or else a removed and an added
column of identical datatype, unit, UCD and description; retyped is a datatype (or array size) change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forcedphot.errors import InputError, SchemaError
from forcedphot.resources import SCHEMA_DIR


@dataclass
class Diff:
    old: str  # what was compared: "forced_source 1.4.0" or a path
    new: str
    table: str
    added: list[str] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)  # (name, why or "")
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (old, new)
    retyped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, old type, new type)
    felis_changes: bool = False  # felis.diff.SchemaDiff(old, new).has_changes

    def lines(self) -> list[str]:
        out = [f"{self.table}: {self.old} -> {self.new}"]
        if not self.felis_changes:
            return out + ["  no change (felis diff finds none)"]
        out += [f"  added    {n}" for n in self.added]
        out += [f"  removed  {n}" + (f"  ({why})" if why else "") for n, why in self.removed]
        out += [f"  renamed  {a} -> {b}" for a, b in self.renamed]
        out += [f"  retyped  {n}: {a} -> {b}" for n, a, b in self.retyped]
        out.append(f"  {len(self.added)} added, {len(self.removed)} removed, {len(self.renamed)} renamed, "
                   f"{len(self.retyped)} retyped")
        return out


def _resolve(spec: str, dataset: str) -> tuple[Path, str]:
    """(the Felis file, its label) of a version spec or a path."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError(f"{spec}: schema file not found")
        return path, str(path)
    if ":" in spec:
        dataset, spec = spec.split(":", 1)
    from forcedphot.schema import HISTORY_DIR, load_schema, migrations

    current = load_schema(dataset)
    if spec in (current.version, str(current.major)):
        return SCHEMA_DIR / f"{dataset}.yaml", f"{dataset} {current.version}"
    for m in migrations(dataset):
        if spec in (m.from_version, str(m.from_major)):
            return SCHEMA_DIR / HISTORY_DIR / m.from_version / f"{dataset}.yaml", f"{dataset} {m.from_version}"
    known = [current.version] + [m.from_version for m in migrations(dataset)]
    raise InputError(f"no {dataset} schema of version {spec}; known: {', '.join(known)} (or give a Felis YAML file)")


def _felis_schema(path: Path):
    import yaml
    from felis.datamodel import Schema

    try:
        return Schema.model_validate(yaml.safe_load(path.read_text()))
    except Exception as exc:  # pydantic's ValidationError, a YAML error: one line naming the file
        first = " ".join(str(exc).split())[:300]
        raise SchemaError(f"{path}: not a valid Felis schema ({first})") from None


def _type(column) -> str:
    datatype = getattr(column.datatype, "value", column.datatype)
    size = getattr(column, "votable_arraysize", None)
    return f"{datatype}[{size}]" if size == "*" else str(datatype)


def _declared_renames(dataset: str, old_version: str, new_version: str) -> tuple[dict[str, str], dict[str, str]]:
    """({old: new} renames, {old: why} removals) the migration record declares between two versions."""
    from forcedphot.schema import migrations

    old_major, new_major = int(old_version.split(".")[0]), int(new_version.split(".")[0])
    renames: dict[str, str] = {}
    removed: dict[str, str] = {}
    for m in migrations(dataset):
        if old_major <= m.from_major < new_major:
            renames = {o: dict(m.renamed).get(n, n) for o, n in renames.items()} | {
                o: n for o, n in m.renamed if o not in renames.values()}
            removed |= dict(m.removed)
    return renames, removed


def schema_diff(old: str, new: str, *, dataset: str = "forced_source", table: str | None = None) -> Diff:
    """The differences of table ``table`` (default: the first) between the schemas ``old`` and ``new``."""
    from felis.diff import SchemaDiff

    (old_path, old_label), (new_path, new_label) = _resolve(old, dataset), _resolve(new, dataset)
    a, b = _felis_schema(old_path), _felis_schema(new_path)
    ta = next((t for t in a.tables if table is None or t.name == table), None)
    tb = next((t for t in b.tables if t.name == (table or (ta.name if ta else None))), None)
    if ta is None or tb is None:
        raise InputError(f"table {table or (ta.name if ta else '?')!r} is not in both {old_path} and {new_path}")
    diff = Diff(old_label, new_label, ta.name, felis_changes=SchemaDiff(a, b).has_changes)
    cols_a, cols_b = {c.name: c for c in ta.columns}, {c.name: c for c in tb.columns}
    gone = [n for n in cols_a if n not in cols_b]
    new_names = [n for n in cols_b if n not in cols_a]
    stem = a.name.removeprefix("forcedphot_")
    renames, why = ({}, {})
    if a.name == b.name and a.version and b.version:
        va = a.version if isinstance(a.version, str) else a.version.current
        vb = b.version if isinstance(b.version, str) else b.version.current
        renames, why = _declared_renames(stem, str(va), str(vb))
    for o in list(gone):
        n = renames.get(o)
        if n is None:  # undeclared: the one added column that is the same column under another name
            same = [n2 for n2 in new_names if (_type(cols_a[o]), cols_a[o].ivoa_unit, cols_a[o].ivoa_ucd,
                                                cols_a[o].description) == (_type(cols_b[n2]), cols_b[n2].ivoa_unit,
                                                                           cols_b[n2].ivoa_ucd, cols_b[n2].description)]
            n = same[0] if len(same) == 1 else None
        if n in new_names:
            diff.renamed.append((o, n))
            gone.remove(o)
            new_names.remove(n)
            if _type(cols_a[o]) != _type(cols_b[n]):
                diff.retyped.append((n, _type(cols_a[o]), _type(cols_b[n])))
    diff.added = new_names
    diff.removed = [(n, why.get(n, "")) for n in gone]
    diff.retyped += [(n, _type(cols_a[n]), _type(cols_b[n])) for n in cols_a
                     if n in cols_b and _type(cols_a[n]) != _type(cols_b[n])]
    return diff
