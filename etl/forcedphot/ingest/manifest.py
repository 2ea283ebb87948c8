"""TOML manifests for ``forcedphot ingest fits --manifest``: the command line as a file, for scripts.

Top-level keys are the global options (repo, patch_size, patch_border, pixel_scale,
ref_band, overwrite, assume_njy), ``[bands.NAME]`` tables hold BandSpec fields and ``[catalog]`` the
CatalogSpec fields. Relative file names are relative to the manifest, so a manifest and
its data can move together.
"""

from __future__ import annotations

from pathlib import Path

from forcedphot.errors import InputError
from forcedphot.ingest.estimate import is_estimate
from forcedphot.ingest.images import parse_hdu_spec
from forcedphot.ingest.specs import BAND_FIELDS, CATALOG_FIELDS, BandSpec, CatalogSpec
from forcedphot.tomlfile import read_toml

GLOBAL_KEYS = ("repo", "patch_size", "patch_border", "pixel_scale", "ref_band", "overwrite", "assume_njy")
BAND_FILES = ("image", "variance", "invvar", "sigma", "mask", "background", "psf")


def _rel(base: Path, value):
    """A file option resolved against the manifest's folder (numbers, e.g. a constant background, pass)."""
    if not isinstance(value, str) or is_estimate(value):
        return value
    if (base / value).exists() or Path(value).is_absolute():
        return str(base / value)
    try:
        float(value)
        return value  # a constant
    except ValueError:
        pass
    s = parse_hdu_spec(value)
    path = s.path if s.path.is_absolute() else base / s.path
    return str(path) if s.hdu is None else f"{path}:{s.hdu}"


def _keys(table: dict, allowed, where: str) -> dict:
    table = {k.replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known: {', '.join(allowed)}")
    return table


def load_manifest(path) -> tuple[str | None, list[BandSpec], CatalogSpec | None, dict]:
    """(repo, bands, catalog, options) of a manifest."""
    path = Path(path)
    doc = read_toml(path, "manifest")
    base = path.parent
    top = _keys({k: v for k, v in doc.items() if k not in ("bands", "catalog")}, GLOBAL_KEYS, str(path))
    repo = top.pop("repo", None)
    if repo is not None:
        repo = str(base / repo)
    bands = []
    raw_bands = doc.get("bands", {})
    if not isinstance(raw_bands, dict):
        raise InputError(f"{path}: 'bands' must be tables like [bands.g]")
    for name, table in raw_bands.items():
        if not isinstance(table, dict):
            raise InputError(f"{path}: [bands.{name}] must be a table")
        fields = _keys(table, [f for f in BAND_FIELDS if f != "name"], f"{path} [bands.{name}]")
        for k in BAND_FILES:
            if k in fields:
                fields[k] = _rel(base, fields[k])
        if "image" not in fields:
            raise InputError(f"{path}: [bands.{name}] has no image")
        bands.append(BandSpec(name=str(name), **fields))
    catalog = None
    if "catalog" in doc:
        fields = _keys(doc["catalog"], CATALOG_FIELDS, f"{path} [catalog]")
        if "path" not in fields:
            raise InputError(f"{path}: [catalog] has no path")
        fields["path"] = _rel(base, fields["path"])
        catalog = CatalogSpec(**fields)
    return repo, bands, catalog, top
