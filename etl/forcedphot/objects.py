"""The per-object table: ``sql/object.sql`` rendered for the repository's bands (Rubin DP1 Object-style names).

The view has fixed columns for the bands the repository holds, so it is generated per repository
rather than written once; the per-band columns are forced_source columns renamed ``<band>_<column>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forcedphot.errors import InputError
from forcedphot.resources import read_sql
from forcedphot.schema import load_schema

BAND_ORDER = ("u", "g", "r", "i", "z", "y")
_BAND_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_SOURCE_COLUMN = re.compile(r"any_value\((\w+)\)|bool_or\((\w+)\)")
_ALIAS = re.compile(r'AS "?([@\w]+?)"?(?:@\w+@)?\s*,?\s*$')


@dataclass(frozen=True)
class ObjectColumn:
    name: str
    unit: str | None
    description: str


def _sections() -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+)\s*$", read_sql("object"), flags=re.M)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def sort_bands(bands) -> list[str]:
    """u, g, r, i, z, y in wavelength order, then any other band alphabetically."""
    bands = set(bands)
    return [b for b in BAND_ORDER if b in bands] + sorted(bands - set(BAND_ORDER))


def repository_bands(repo) -> list[str]:
    """Bands with measurements or coadds in the repository (``band=`` folders), sorted by :func:`sort_bands`."""
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


def object_select(bands, *, primary_only: bool = True) -> str:
    """The SELECT of the object table for ``bands`` (primary objects only, or every object)."""
    sections = _sections()
    for band in bands:
        if not _BAND_NAME.match(band):
            raise InputError(f"band name {band!r} is not letters, digits and underscores")
    per_band = "\n".join(_render(sections["band_columns"], band=b) for b in sort_bands(bands))
    colours = "\n".join(_render(sections["colour_columns"], b1=a, b2=b) for a, b in colour_pairs(bands))
    return _render(sections["select"], band_columns="\n" + per_band if per_band else "",
                   colour_columns="\n" + colours if colours else "",
                   primary="detect_isPrimary" if primary_only else "true")


def object_columns(bands) -> list[ObjectColumn]:
    """Every column of the object table for ``bands``, with unit and description (from schemas/forced_source.yaml)."""
    fs = load_schema("forced_source")
    sections = _sections()
    columns = []
    for line in sections["select"].splitlines():
        source, alias = _SOURCE_COLUMN.search(line), _ALIAS.search(line)
        if source and alias:
            col = fs.column(source.group(1) or source.group(2))
            columns.append(ObjectColumn(alias.group(1), col.unit, col.description))
        elif line.strip().startswith("SELECT objectId"):
            columns += [ObjectColumn(n, fs.column(n).unit, fs.column(n).description) for n in ("objectId", "tract", "patch")]
    for band in sort_bands(bands):
        for line in sections["band_columns"].splitlines():
            col = fs.column(_SOURCE_COLUMN.search(line).group(1))
            name = _render(_ALIAS.search(line).group(1), band=band)
            columns.append(ObjectColumn(name, col.unit, f"{col.description} (band {band}; forced_source.{col.name})"))
    for b1, b2 in colour_pairs(bands):
        for line in sections["colour_columns"].splitlines():
            name = _render(_ALIAS.search(line).group(1), b1=b1, b2=b2)
            kind = "gaussian" if "gaussian" in name else "psf"
            what = "error of the colour (errors added in quadrature)" if name.endswith("Err") else \
                f"colour: {b1}_{kind}Mag - {b2}_{kind}Mag"
            columns.append(ObjectColumn(name, "mag", what))
    return columns
