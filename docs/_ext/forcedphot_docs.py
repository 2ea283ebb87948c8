"""Reference tables generated from the code, for the forcedphot documentation.

Directives (usable in MyST pages as ```` ```{schema-table} forced_source ```` and so on):

``schema-table DATASET [TABLE]``
    The columns of one table of ``schemas/DATASET.yaml`` read with :func:`forcedphot.schema.load_schema`:
    name, type, unit, UCD and description, preceded by the schema's version and column count.
``schema-summary``
    One row per table of every schema file: dataset, table, version, number of columns.
``object-columns BAND [BAND ...]``
    The columns of the object table for these bands (:func:`forcedphot.objects.object_columns`).
``config-options``
    The options of ``forcedphot run --config`` (:class:`forcedphot.config.ConfigSchema`) with their
    defaults (:class:`forcedphot.config.ForcedPhotConfig`).

:func:`cli_parser` is :func:`forcedphot.cli.build_parser` for sphinx-argparse: the same parser, with
the epilogs that ``--help`` prints verbatim (``RawDescriptionHelpFormatter``: examples, a manifest)
marked as literal blocks, since sphinx-argparse reads epilogs as reStructuredText.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import textwrap

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

_CODE = re.compile(r"``([^`]+)``|`([^`]+)`")


def _inline(text: str) -> list[nodes.Node]:
    """Text with ``code`` / `code` spans as literal nodes (descriptions are plain text otherwise)."""
    out: list[nodes.Node] = []
    pos = 0
    for m in _CODE.finditer(text):
        if m.start() > pos:
            out.append(nodes.Text(text[pos:m.start()]))
        out.append(nodes.literal(text=m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(text):
        out.append(nodes.Text(text[pos:]))
    return out


def _cell(value) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    if isinstance(value, nodes.Node):
        para += value
    elif value:
        para.extend(_inline(str(value)))
    entry += para
    return entry


def _table(header: list[str], rows: list[list], widths: list[int], *, classes: tuple[str, ...] = ()) -> nodes.table:
    table = nodes.table(classes=["forcedphot-reference", *classes])
    group = nodes.tgroup(cols=len(header))
    table += group
    for w in widths:
        group += nodes.colspec(colwidth=w)
    head = nodes.thead()
    row = nodes.row()
    for h in header:
        row += _cell(h)
    head += row
    group += head
    body = nodes.tbody()
    for values in rows:
        row = nodes.row()
        for v in values:
            row += _cell(v)
        body += row
    group += body
    return table


def _name(text: str) -> nodes.literal:
    return nodes.literal(text=text)


def _schema_tables(path) -> list[dict]:
    """The tables of a Felis file (names and descriptions; load_schema reads one table at a time)."""
    import yaml

    with open(path) as f:
        return yaml.safe_load(f).get("tables", [])


def _type(col) -> str:
    text = col.datatype + ("[]" if col.is_array else "")
    return text if col.nullable else f"{text}, not null"


class SchemaTable(SphinxDirective):
    """The columns of one table of a schema file."""

    required_arguments = 1
    optional_arguments = 1

    def run(self):
        from forcedphot.resources import SCHEMA_DIR
        from forcedphot.schema import load_schema

        dataset = self.arguments[0]
        table = self.arguments[1] if len(self.arguments) > 1 else None
        schema = load_schema(dataset, table)
        self.env.note_dependency(str(SCHEMA_DIR / f"{dataset}.yaml"))
        intro = nodes.paragraph()
        intro += nodes.Text("Table ")
        intro += _name(schema.table)
        intro += nodes.Text(f" of schemas/{dataset}.yaml, version {schema.version}: {len(schema.columns)} columns.")
        rows = [[_name(c.name), _type(c), c.unit or "", c.ucd or "", c.description] for c in schema.columns]
        return [intro, _table(["name", "type", "unit", "UCD", "description"], rows, [22, 10, 8, 18, 42])]


class SchemaSummary(SphinxDirective):
    """Every table of every schema file, with its version and column count."""

    def run(self):
        from forcedphot.resources import SCHEMA_DIR
        from forcedphot.schema import load_schema

        rows = []
        for path in sorted(SCHEMA_DIR.glob("*.yaml")):
            self.env.note_dependency(str(path))
            for t in _schema_tables(path):
                schema = load_schema(path.stem, t["name"])
                rows.append([_name(path.name), _name(schema.table), schema.version, str(len(schema.columns)),
                             t.get("description", "")])
        return [_table(["file", "table", "version", "columns", "description"], rows, [16, 14, 8, 7, 55])]


class ObjectColumns(SphinxDirective):
    """The object table's columns for the bands given."""

    required_arguments = 1
    final_argument_whitespace = True

    def run(self):
        from forcedphot.objects import object_columns

        bands = self.arguments[0].split()
        columns = object_columns(bands)
        rows = [[_name(c.name), c.datatype or "", c.unit or "", "yes" if c.rubin else "", c.description] for c in columns]
        intro = nodes.paragraph(text=f"For the bands {', '.join(bands)}: {len(rows)} columns, "
                                     f"{sum(c.rubin for c in columns)} of them Rubin's forced per-band Object columns.")
        return [intro, _table(["name", "type", "unit", "Rubin", "description"], rows, [24, 7, 6, 6, 57])]


class ConfigOptions(SphinxDirective):
    """The run configuration options: name, default, description."""

    def run(self):
        from forcedphot.config import ConfigSchema, ForcedPhotConfig, _toml_value

        defaults = {f.name: f.default for f in dataclasses.fields(ForcedPhotConfig)}
        rows = []
        for name, field in ConfigSchema.model_fields.items():
            rows.append([_name(name), _name(_toml_value(defaults[name])), field.description or ""])
        return [_table(["option", "default (TOML)", "description"], rows, [22, 30, 48])]


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def cli_parser() -> argparse.ArgumentParser:
    """The command line's parser, its verbatim epilogs as literal blocks (see the module docstring)."""
    from forcedphot.cli import build_parser

    parser = build_parser()
    for p in _parsers(parser):
        if p.epilog and issubclass(p.formatter_class, argparse.RawDescriptionHelpFormatter):
            p.epilog = "::\n\n" + textwrap.indent(p.epilog, "    ")
    return parser


def setup(app):
    app.add_directive("schema-table", SchemaTable)
    app.add_directive("schema-summary", SchemaSummary)
    app.add_directive("object-columns", ObjectColumns)
    app.add_directive("config-options", ConfigOptions)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
