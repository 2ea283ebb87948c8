"""The forced_source table: its columns are declared here and by the plugins.

``schemas/forced_source.yaml`` is generated from these declarations
(``python -m forcedphot.outputs > schemas/forced_source.yaml``) and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import sys

import yaml

from forcedphot import calibrate
from forcedphot.config import ForcedPhotConfig
from forcedphot.layout import UNDEBLENDED, UNDEBLENDED_PLUGINS, UNDEBLENDED_SKIP
from forcedphot.plugins import PLUGINS, ordered
from forcedphot.plugins.base import Column
from forcedphot.ucds import column_ucd, is_principal

SCHEMA_VERSION = "2.0.0"  # 2.0: a renamed and a removed column, see schemas/migrations/forced_source.yaml
TAP_TABLE_INDEX = 70  # unique over schemas/*.yaml (see forcedphot.catalog_schema)
INDEXES = (("objectId", "Rows of one object (all bands); the foreign key to ref.id."),
           ("coord_ra", "Sky range queries on right ascension."),
           ("band", "Rows of one band."))

# Copied from the reference catalog (Rubin copyColumns), the band's footprints and the data ID.
IDENTITY_COLUMNS: tuple[Column, ...] = (
    Column("objectId", "long", "Unique id of the reference object (tract and patch packed in the high bits)."),
    Column("parentObjectId", "long", "Id of the blend parent; 0 for isolated objects and parents."),
    Column("externalId", "long", "Key of the catalog row the object was ingested from (ref.externalId): the catalog's "
                                 "integer id or the row's 0-based number in the catalog file; null for simulated "
                                 "objects and deblender-made parents."),
    Column("tract", "long", "Tract of the quantum."),
    Column("patch", "long", "Patch of the quantum."),
    Column("band", "char", "Band of the coadd measured."),
    Column("coord_ra", "double", "Right ascension (ICRS) of the reference position.", "deg"),
    Column("coord_dec", "double", "Declination (ICRS) of the reference position.", "deg"),
    Column("refBand", "char", "Band of the reference measurement."),
    Column("deblend_nChild", "int", "Number of deblended children of this object (0 for leaves)."),
    Column("deblend_zeroFlux", "boolean", "True where the ingest deblender gave this blend child no flux in this band "
                                          "(footprints.deblend_zeroFlux): its measurements of the deblended image "
                                          "are flagged; null where no fit was made."),
    Column("detect_isPrimary", "boolean", "True for the unique deblended, patch- and tract-inner record of an object."),
    Column("detect_isDuplicate", "boolean", "True for a catalog row at the same position as another, kept by ingest "
                                            "--duplicates flag (ref.detect_isDuplicate): its measurements of the "
                                            "deblended image are flagged; null where ingest made no check."),
)
NOT_NULL = {"objectId", "parentObjectId", "tract", "patch", "band", "coord_ra", "coord_dec", "deblend_nChild",
            "detect_isPrimary"}


def forced_source_columns() -> tuple[Column, ...]:
    """Every column of the forced_source table, in order (all registered plugins)."""
    config = ForcedPhotConfig()
    cols = list(IDENTITY_COLUMNS)
    for cls in ordered(PLUGINS):
        cols += cls.columns(config)
    for name in UNDEBLENDED_PLUGINS:
        cols += [dataclasses.replace(c, name=UNDEBLENDED + c.name, description=f"Undeblended (original image): {c.description}")
                 for c in PLUGINS[name].columns(config) if c.name not in UNDEBLENDED_SKIP]
    cols += calibrate.columns()
    return tuple(cols)


def render_schema_yaml() -> str:
    cols = []
    for c in forced_source_columns():
        d = {"name": c.name, "@id": f"#forced_source.{c.name}", "datatype": c.datatype}
        if c.datatype == "char":
            d["length"] = 8
        d["nullable"] = c.name not in NOT_NULL
        if c.unit:
            d["ivoa:unit"] = c.unit
        ucd = column_ucd(c.name)
        if ucd:
            d["ivoa:ucd"] = ucd
        if is_principal(c.name):
            d["tap:principal"] = 1
        d["description"] = c.description
        cols.append(d)
    doc = {
        "name": "forcedphot_forced_source",
        "@id": "#forcedphot_forced_source",
        "description": ("Forced photometry on coadds: one row per (reference object, band), measured at the "
                        "reference position. Fluxes in nJy, magnitudes AB. Hive-partitioned by tract, patch and "
                        "band; the partition keys are also stored in the files. Generated from the plugin "
                        "declarations by forcedphot.outputs."),
        "version": SCHEMA_VERSION,
        "tables": [{
            "name": "forced_source",
            "@id": "#forced_source",
            "description": ("One row per reference object and band (long form; the `object` view is the wide "
                            "form). Rubin: deepCoadd_forced_src (DP1 ForcedSource-on-coadd)."),
            "tap:table_index": TAP_TABLE_INDEX,
            "primaryKey": ["#forced_source.objectId", "#forced_source.band"],
            "indexes": [
                {"name": f"IDX_forced_source_{col}", "@id": f"#IDX_forced_source_{col}",
                 "description": why, "columns": [f"#forced_source.{col}"]}
                for col, why in INDEXES
            ],
            "columns": cols,
        }],
    }
    header = "# Generated by `python -m forcedphot.outputs`; edit the plugin declarations, not this file.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render_schema_yaml())
