"""The per-object table: ``sql/object.sql`` rendered for the repository's bands (Rubin Object-style names).

The view has fixed columns for the bands the repository holds, so it is generated per repository
rather than written once. Its per-band columns are declared in one place, :data:`BAND_COLUMNS`:
Rubin's name (``<band>_<name>`` in the view) -> the forced_source column it comes from, with the
view's datatype (a cast: Rubin's Object fluxes and magnitudes are ``float``) and, where Rubin spells
it otherwise, its unit. Every forced per-band column of Rubin's lsstcam ``Object`` table
(lsst-sdm-schemas ``lsstcam.yaml`` -> ``drp_base.yaml``: the 53 described "Forced on <band>-band",
plus ``psfMag``, ``psfMagErr`` and the three ``apFlux_flag*`` duplicates of ap12's) is an entry with
``rubin=True``; the others are ours. An entry whose source column the forced_source schema does not
have (a plugin not merged yet) is left out of the view and listed by :func:`missing_columns`, never
silently: tests/test_object.py checks that list against Rubin's schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forcedphot.errors import InputError
from forcedphot.layout import STANDARD_APERTURE_RADII
from forcedphot.resources import read_sql
from forcedphot.schema import load_schema

BAND_ORDER = ("u", "g", "r", "i", "z", "y")
_BAND_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_SOURCE_COLUMN = re.compile(r"any_value\((\w+)\)|bool_or\((\w+)\)")
_ALIAS = re.compile(r'AS "?([@\w]+?)"?(?:@\w+@)?\s*,?\s*$')
_DUCKDB_TYPE = {"boolean": "BOOLEAN", "int": "INTEGER", "long": "BIGINT", "float": "FLOAT", "double": "DOUBLE",
                "char": "VARCHAR", "string": "VARCHAR"}


@dataclass(frozen=True)
class ObjectColumn:
    name: str
    unit: str | None
    description: str
    datatype: str | None = None  # Felis datatype of the view column
    rubin: bool = False  # a forced per-band column of Rubin's lsstcam Object (same name, datatype and unit)
    ucd: str | None = None  # IVOA UCD (the forced_source column's)


@dataclass(frozen=True)
class BandColumn:
    """One per-band column of the object view: ``<band>_<name>`` = forced_source.<source> of that band."""

    name: str  # Rubin's lsstcam Object name without the band prefix (``rubin``), or ours
    source: str  # the forced_source column
    datatype: str | None = None  # Felis datatype in the view when not the source's (Rubin's fluxes are float)
    unit: str | None = None  # unit in the view when Rubin spells it otherwise than forced_source ("pixel")
    note: str = ""  # what the view column is, when more than the source's description
    rubin: bool = False  # one of the 58 forced per-band columns of Rubin's lsstcam Object (name, datatype, unit)


def _flux(prefix: str, *, rubin: bool, flag: bool = True, mag: bool = False) -> tuple[BandColumn, ...]:
    """<prefix>Flux, <prefix>FluxErr (float nJy, as Rubin's), <prefix>Flux_flag, and <prefix>Mag(Err) (float mag)."""
    cols = [BandColumn(f"{prefix}Flux", f"{prefix}Flux", "float", rubin=rubin),
            BandColumn(f"{prefix}FluxErr", f"{prefix}FluxErr", "float", rubin=rubin)]
    if flag:
        cols.append(BandColumn(f"{prefix}Flux_flag", f"{prefix}Flux_flag", rubin=rubin))
    if mag:
        cols += [BandColumn(f"{prefix}Mag", f"{prefix}Mag", "float", rubin=rubin),
                 BandColumn(f"{prefix}MagErr", f"{prefix}MagErr", "float", rubin=rubin)]
    return tuple(cols)


def _aperture_name(radius: float) -> str:
    """As plugins.aperture.aperture_name (not imported: it would load the kernels): 3 -> 'ap03', 4.5 -> 'ap04p5'."""
    whole = int(radius)
    frac = round((radius - whole) * 10)
    return f"ap{whole:02d}" + (f"p{frac}" if frac else "")


def _apertures() -> tuple[BandColumn, ...]:
    cols = []
    for r in STANDARD_APERTURE_RADII:
        p = _aperture_name(r)
        cols += _flux(p, rubin=p != "ap04p5")  # Rubin's Object does not publish the 4.5 px aperture
    cols += [BandColumn(f"apFlux{suffix}", f"ap12Flux{suffix}", rubin=True,
                        note=f"Duplicate of <band>_ap12Flux{suffix} (Rubin's name for the 12 px aperture's flag).")
             for suffix in ("_flag", "_flag_apertureTruncated", "_flag_sincCoeffsTruncated")]
    return tuple(cols)


# The object view's per-band columns, in view order: Rubin name -> forced_source column (see BandColumn).
# Flags without a 1:1 source in Rubin's sense are documented in docs (guide/query.md, the object table).
BAND_COLUMNS: tuple[BandColumn, ...] = (
    *_flux("psf", rubin=True, mag=True),
    BandColumn("psfFlux_area", "psfFlux_area", unit="pixel", rubin=True),
    BandColumn("psfFlux_flag_apCorr", "psfFlux_flag_apCorr", rubin=True),
    BandColumn("psfFlux_flag_edge", "psfFlux_flag_edge", rubin=True),
    BandColumn("psfFlux_flag_noGoodPixels", "psfFlux_flag_noGoodPixels", rubin=True),
    *_flux("cModel", rubin=True, flag=False, mag=True),
    BandColumn("cModelFlux_inner", "cModelFlux_inner", "float", rubin=True),
    BandColumn("cModel_fracDev", "cModel_fracDev", "float", rubin=True),
    BandColumn("cModel_flag", "cModel_flag", rubin=True),
    BandColumn("cModel_flag_apCorr", "cModel_flag_apCorr", rubin=True),
    *_flux("gaapPsf", rubin=True, flag=False),
    *_flux("gaap0p7", rubin=True, flag=False),
    *_flux("gaap1p0", rubin=True, flag=False),
    BandColumn("gaapFlux_flag", "gaapFlux_flag", rubin=True),
    BandColumn("gaapFlux_flag_edge", "gaapFlux_flag_edge", rubin=True),
    *_flux("gaussian", rubin=False, mag=True),
    *_flux("kron", rubin=False, mag=True),
    BandColumn("kronRad", "kronRad", unit="pixel"),
    *_apertures(),
    BandColumn("extendedness", "extendedness"),
    BandColumn("extendedness_flag", "extendedness_flag"),
    BandColumn("inputCount", "inputCount", rubin=True),
    BandColumn("inputCount_flag", "inputCount_flag", rubin=True),
    BandColumn("inputCount_flag_noInputs", "inputCount_flag_noInputs", rubin=True),
    BandColumn("pixelFlags_bad", "pixelFlags_bad"),
    BandColumn("pixelFlags_edge", "pixelFlags_edge"),
    BandColumn("pixelFlags_saturatedCenter", "pixelFlags_saturatedCenter"),
)


def available_columns(schema=None) -> tuple[BandColumn, ...]:
    """The entries of BAND_COLUMNS whose forced_source column exists (those the view carries)."""
    names = set((schema or load_schema("forced_source")).names)
    return tuple(c for c in BAND_COLUMNS if c.source in names)


def missing_columns(schema=None) -> tuple[BandColumn, ...]:
    """The entries of BAND_COLUMNS whose forced_source column does not exist (left out of the view)."""
    names = set((schema or load_schema("forced_source")).names)
    return tuple(c for c in BAND_COLUMNS if c.source not in names)


def _sections() -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+)\s*$", read_sql("object"), flags=re.M)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def sort_bands(bands) -> list[str]:
    """u, g, r, i, z, y in wavelength order, then any other band alphabetically."""
    bands = set(bands)
    return [b for b in BAND_ORDER if b in bands] + sorted(bands - set(BAND_ORDER))


def repository_bands(repo) -> list[str]:
    """Bands with measurements or coadds in the repository (``band=`` folders), sorted by :func:`sort_bands`."""
    if getattr(repo, "is_s3", False):  # forcedphot.s3repo: from the manifest and the commit records
        return repo.bands()
    bands = set()
    for dataset in ("forced_source", "coadd"):
        for folder in repo.dataset_dir(dataset).glob("tract=*/patch=*/band=*"):
            band = folder.name.split("=", 1)[1]
            if not _BAND_NAME.match(band):
                raise InputError(f"{folder}: band name {band!r} is not letters, digits and underscores")
            bands.add(band)
    return sort_bands(bands)


def colour_pairs(bands) -> list[tuple[str, str]]:
    ordered = sort_bands(bands)
    return list(zip(ordered, ordered[1:]))


def _render(template: str, **tokens: str) -> str:
    for name, value in tokens.items():
        template = template.replace(f"@{name}@", value)
    return template


def _template(section: str) -> str:
    return "\n".join(line for line in section.splitlines() if not line.startswith("--"))


def object_select(bands, *, primary_only: bool = True) -> str:
    """The SELECT of the object table for ``bands`` (primary objects only, or every object)."""
    sections = _sections()
    for band in bands:
        if not _BAND_NAME.match(band):
            raise InputError(f"band name {band!r} is not letters, digits and underscores")
    fs = load_schema("forced_source")
    line = _template(sections["band_column"])
    joins = []
    for b in sort_bands(bands):
        per_band = "".join("\n" + _render(line, band=b, name=c.name, source=c.source,
                                          type=_DUCKDB_TYPE[c.datatype or fs.column(c.source).datatype])
                           for c in available_columns(fs))
        joins.append(_render(sections["band_join"], band=b, band_columns=per_band))
    colours = "\n".join(_render(sections["colour_columns"], b1=a, b2=b) for a, b in colour_pairs(bands))
    return _render(sections["select"], band_joins="".join("\n" + j for j in joins),
                   colour_columns="\n" + colours if colours else "",
                   primary="detect_isPrimary" if primary_only else "true")


def object_columns(bands) -> list[ObjectColumn]:
    """Every column of the object table for ``bands``: name, unit, description (from schemas/forced_source.yaml and
    BAND_COLUMNS), Felis datatype, and whether it is one of Rubin's forced per-band Object columns."""
    fs = load_schema("forced_source")
    sections = _sections()
    columns = []
    for line in sections["select"].splitlines():
        source, alias = _SOURCE_COLUMN.search(line), _ALIAS.search(line)
        if source and alias:
            col = fs.column(source.group(1) or source.group(2))
            columns.append(ObjectColumn(alias.group(1), col.unit, col.description, col.datatype, ucd=col.ucd))
        elif line.strip().startswith("SELECT objectId"):
            columns += [ObjectColumn(n, fs.column(n).unit, fs.column(n).description, fs.column(n).datatype,
                                     ucd=fs.column(n).ucd) for n in ("objectId", "tract", "patch")]
    for band in sort_bands(bands):
        for c in available_columns(fs):
            col = fs.column(c.source)
            what = c.note.replace("<band>", band) + " " if c.note else ""
            datatype = c.datatype or col.datatype
            cast = f", {col.datatype} there" if datatype != col.datatype else ""
            columns.append(ObjectColumn(f"{band}_{c.name}", c.unit or col.unit,
                                        f"{what}{col.description} (band {band}; forced_source.{col.name}{cast})",
                                        datatype, c.rubin, col.ucd))
    for b1, b2 in colour_pairs(bands):
        for line in sections["colour_columns"].splitlines():
            name = _render(_ALIAS.search(line).group(1), b1=b1, b2=b2)
            kind = "gaussian" if "gaussian" in name else "psf"
            what = "error of the colour (errors added in quadrature)" if name.endswith("Err") else \
                f"colour: {b1}_{kind}Mag - {b2}_{kind}Mag"
            columns.append(ObjectColumn(name, "mag", what, "float",
                                        ucd="stat.error;phot.color" if name.endswith("Err") else "phot.color"))
    return columns
