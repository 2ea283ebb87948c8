"""All of ``schemas/*.yaml`` as one Felis schema, with the foreign keys between their tables.

Felis resolves a constraint's ``referencedColumns`` only among the ids of the schema it is in
(its ``resources`` import columns, not keys), so a key from ``forced_source.objectId`` (in
forced_source.yaml) to ``ref.id`` (in ref.yaml) cannot be written in either file. It lives
here, in the combined schema that ``felis validate`` checks and that ``felis load-tap-schema``
or ``felis create`` would take (``python -m forcedphot.catalog_schema > forcedphot.yaml``).
"""

from __future__ import annotations

import sys

import yaml

from forcedphot.resources import SCHEMA_DIR
from forcedphot.schema import SafeLoader

NAME = "forcedphot"
# (table, constraint name, columns, referenced columns, why)
FOREIGN_KEYS = (
    ("forced_source", "FK_forced_source_objectId_ref_id", ["#forced_source.objectId"], ["#ref.id"],
     "Every forced measurement is of a reference object."),
    ("footprints", "FK_footprints_id_ref_id", ["#footprints.id"], ["#ref.id"],
     "Every heavy footprint is of a reference object."),
)


def combined_schema(*, schema_dir=SCHEMA_DIR) -> dict:
    """The tables of every schema file in one Felis schema document, with :data:`FOREIGN_KEYS`."""
    tables, versions = [], []
    for path in sorted(schema_dir.glob("*.yaml")):
        doc = yaml.load(path.read_text(), Loader=SafeLoader)
        tables += doc["tables"]
        versions.append(f"{path.stem} {doc['version']}")
    by_name = {t["name"]: t for t in tables}
    for table, name, columns, referenced, why in FOREIGN_KEYS:
        by_name[table].setdefault("constraints", []).append(
            {"name": name, "@id": f"#{name}", "@type": "ForeignKey", "description": why,
             "columns": columns, "referencedColumns": referenced})
    return {
        "name": NAME,
        "@id": f"#{NAME}",
        "description": "Every forcedphot table (schemas/*.yaml: " + ", ".join(versions) + ") with the foreign "
                       "keys between them.",
        "tables": tables,
    }


def render_combined_yaml() -> str:
    return yaml.safe_dump(combined_schema(), sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render_combined_yaml())
