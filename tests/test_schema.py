"""Schemas: genuine Felis YAML, generated output schema in sync, conform and version refusal."""

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from forcedphot.catalog_schema import combined_schema
from forcedphot.errors import SchemaError, SchemaVersionError
from forcedphot.io.parquet import read_parquet, write_parquet
from forcedphot.outputs import forced_source_columns, render_schema_yaml
from forcedphot.resources import SCHEMA_DIR
from forcedphot.schema import META_VERSION, load_schema

SCHEMAS = sorted(SCHEMA_DIR.glob("*.yaml"))
FELIS_CHECKS = ("--check-description", "--check-tap-principal", "--check-tap-table-indexes")


def test_felis_validate_accepts_every_schema():
    """One ``felis validate`` over every schema file (one interpreter start, not one per file)."""
    proc = subprocess.run([_felis(), "validate", *FELIS_CHECKS, *map(str, SCHEMAS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    validated = proc.stderr.count("Successfully validated")
    assert validated == len(SCHEMAS), proc.stderr


def _felis() -> str:
    felis = shutil.which("felis", path=str(Path(sys.executable).parent)) or shutil.which("felis")
    assert felis, "lsst-felis is a test dependency"
    return felis


def test_combined_schema_holds_the_cross_file_foreign_key(tmp_path):
    doc = combined_schema()
    tables = {t["name"]: t for t in doc["tables"]}
    fk = [c for c in tables["forced_source"].get("constraints", []) if c["@type"] == "ForeignKey"]
    assert [(c["columns"], c["referencedColumns"]) for c in fk] == [(["#forced_source.objectId"], ["#ref.id"])]
    good = tmp_path / "forcedphot.yaml"
    good.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.run([_felis(), "validate", *FELIS_CHECKS, str(good)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Successfully validated" in proc.stderr, proc.stderr
    # felis does check the reference: a key to a column no schema file has is refused (its API, in-process)
    from felis.datamodel import Schema
    from pydantic import ValidationError

    fk[0]["referencedColumns"] = ["#ref.no_such_column"]
    with pytest.raises(ValidationError, match="#ref.no_such_column"):
        Schema.model_validate(doc)


def test_every_forced_source_column_has_a_ucd():
    doc = yaml.safe_load((SCHEMA_DIR / "forced_source.yaml").read_text())
    columns = doc["tables"][0]["columns"]
    assert all(c.get("ivoa:ucd") for c in columns), [c["name"] for c in columns if not c.get("ivoa:ucd")]
    ucds = {c["name"]: c["ivoa:ucd"] for c in columns}
    assert ucds["coord_ra"] == "pos.eq.ra;meta.main" and ucds["psfFluxErr"] == "stat.error;phot.flux"
    assert ucds["undeblended_ap12Flux"] == "phot.flux" and ucds["pixelFlags_edge"] == "meta.code"
    principal = {c["name"] for c in columns if c.get("tap:principal") == 1}
    assert {"objectId", "coord_ra", "coord_dec", "band", "psfFlux"} <= principal < set(ucds)


def test_every_dataset_has_a_versioned_schema():
    for name in ("skymap", "ref", "footprints", "coadd", "forced_source", "truth"):
        s = load_schema(name)
        assert s.version.count(".") == 2 and s.columns


def test_forced_source_schema_matches_plugin_declarations():
    on_disk = (SCHEMA_DIR / "forced_source.yaml").read_text()
    assert on_disk == render_schema_yaml(), "regenerate with: python -m forcedphot.outputs > schemas/forced_source.yaml"
    schema = load_schema("forced_source")
    for decl in forced_source_columns():
        col = schema.column(decl.name)
        assert (col.datatype, col.unit) == (decl.datatype, decl.unit), decl.name


def test_conform_casts_orders_and_rejects(tmp_path):
    schema = load_schema("truth")
    row = {"n_neighbours": 0, "id": 1, "tract": 0, "patch": 0, "band": "g", "source_id": 3, "is_star": True,
           "flux": 1.5, "x": 1.0, "y": 2.0}
    t = schema.conform(pa.Table.from_pylist([row]), where="test")
    assert t.column_names == schema.names and t.schema.field("n_neighbours").type == pa.int32()
    assert t.schema.field("flux").metadata[b"unit"] == b"nJy"
    with pytest.raises(SchemaError, match=r"missing columns \['x'\]"):
        schema.conform(pa.Table.from_pylist([{k: v for k, v in row.items() if k != "x"}]), where="test")
    with pytest.raises(SchemaError, match=r"unexpected columns \['extra'\]"):
        schema.conform(pa.Table.from_pylist([{**row, "extra": 1}]), where="test")
    with pytest.raises(SchemaError, match="not nullable"):
        schema.conform(pa.Table.from_pylist([{**row, "id": None}]), where="test")


def test_reader_refuses_unknown_major_version(tmp_path):
    schema = load_schema("truth")
    row = {"id": 1, "tract": 0, "patch": 0, "band": "g", "source_id": 3, "is_star": True, "flux": 1.5,
           "x": 1.0, "y": 2.0, "n_neighbours": 0}
    path = tmp_path / "t.parquet"
    write_parquet(pa.Table.from_pylist([row]), path, schema)
    assert read_parquet(path, schema).num_rows == 1
    assert pq.read_schema(path).metadata[META_VERSION] == schema.version.encode()
    # the same file claiming a future major version
    t = pq.read_table(path)
    future = tmp_path / "future.parquet"
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, META_VERSION: b"2.0.0"}), future)
    with pytest.raises(SchemaVersionError) as info:
        read_parquet(future, schema)
    msg = str(info.value)
    assert str(future) in msg and "2.0.0" in msg and schema.version in msg
    # a minor version bump is still readable
    minor = tmp_path / "minor.parquet"
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, META_VERSION: b"1.7.0"}), minor)
    assert read_parquet(minor, schema).num_rows == 1


def test_the_fast_yaml_loader_reads_every_schema_as_the_safe_loader_does():
    from forcedphot.schema import SafeLoader

    for path in sorted(SCHEMA_DIR.glob("*.yaml")):
        assert yaml.load(path.read_text(), Loader=SafeLoader) == yaml.safe_load(path.read_text()), path.name
