"""Configuration of a forced-photometry run; its fingerprint decides which quanta are stale."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from forcedphot.errors import InputError

# The forced_source schema carries a column group for each of these radii (pixels), as Rubin's
# obs_lsst apertures.py; a run measures the configured subset and leaves the others null.
STANDARD_APERTURE_RADII = (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0)
UNDEBLENDED_PLUGINS = ("PsfFlux", "CircularApertureFlux", "KronFlux")  # undeblended copies in the schema
PIXEL_FLAG_PLANES = ("BAD", "CR", "EDGE", "INTRP", "NO_DATA", "SAT", "SUSPECT",
                     "CLIPPED", "SENSOR_EDGE", "REJECTED", "INEXACT_PSF")


@dataclass(frozen=True)
class ForcedPhotConfig:
    """Keyword options of a run (photutils style: everything optional has a default)."""

    plugins: tuple[str, ...] = ("TransformedCentroid", "SdssCentroid", "TransformedShape", "SdssShape", "InputCount",
                                "PixelFlags", "PsfFlux", "GaussianFlux", "CircularApertureFlux", "LocalBackground",
                                "Variance", "KronFlux", "ApCorr", "Extendedness")
    aperture_radii: tuple[float, ...] = STANDARD_APERTURE_RADII
    # "sinc": sinc coefficients up to max_sinc_radius, naive above (Rubin); "naive"; or "exact"
    aperture_method: str = "sinc"
    max_sinc_radius: float = 12.0
    # error of an exact aperture: "squared" = sqrt(sum(w^2 var)) (photutils >= 3.1), or
    # "linear" = sqrt(sum(w var)) (SEP, photutils <= 3.0)
    aperture_error_weights: str = "squared"
    psf_bad_mask_planes: tuple[str, ...] = ("NO_DATA",)
    pixel_flag_planes: tuple[str, ...] = PIXEL_FLAG_PLANES
    # "heavy": the band's stored heavy footprints; "scarlet": derived from the patch's scarlet-style
    # model data by flux redistribution (Rubin's footprintDatasetName)
    footprint_dataset: str = "heavy"
    # a reference with no footprint in the band: "error" fails the quantum (Rubin's LookupError);
    # "reference" measures it with its nearest ancestor's footprint, or none (no replacement)
    missing_footprints: str = "error"
    # Rubin's NoiseReplacer: other footprints replaced by noise while each source is measured
    noise_replacement: bool = True
    noise_seed_multiplier: int = 1
    noise_offset: float = 0.0
    # plugins also run on the original image, with columns prefixed "undeblended_"
    undeblended: tuple[str, ...] = UNDEBLENDED_PLUGINS
    chunk_size: int = 4096  # sources per vectorised batch (bounds memory)

    def __post_init__(self):
        bad = [r for r in self.aperture_radii if float(r) not in STANDARD_APERTURE_RADII]
        if bad:
            raise InputError(f"aperture radii {bad} are not in the forced_source schema {STANDARD_APERTURE_RADII}")
        if self.footprint_dataset not in ("heavy", "scarlet"):
            raise InputError(f"footprint_dataset must be 'heavy' or 'scarlet', not {self.footprint_dataset!r}")
        if self.missing_footprints not in ("error", "reference"):
            raise InputError(f"missing_footprints must be 'error' or 'reference', not {self.missing_footprints!r}")
        if self.aperture_method not in ("sinc", "naive", "exact"):
            raise InputError(f"aperture_method must be 'sinc', 'naive' or 'exact', not {self.aperture_method!r}")
        if self.max_sinc_radius > 12.0:
            raise InputError(f"max_sinc_radius {self.max_sinc_radius} > 12: the schema has sinc flags up to 12 px")
        if self.aperture_error_weights not in ("squared", "linear"):
            raise InputError(f"aperture_error_weights must be 'squared' or 'linear', not {self.aperture_error_weights!r}")
        from forcedphot.plugins import PLUGINS  # late import: plugins import this module

        unknown = [p for p in self.plugins if p not in PLUGINS]
        unknown += [p for p in self.undeblended if p not in UNDEBLENDED_PLUGINS]
        if unknown:
            raise InputError(f"unknown plugin(s) {unknown}; known: {sorted(PLUGINS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("chunk_size")  # does not change results
        d["plugins"] = sorted(d["plugins"])  # run order is fixed by the plugins, not the list
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, **kw) -> "ForcedPhotConfig":
        return replace(self, **kw)


def load_config(path: str | Path | None = None, **overrides) -> ForcedPhotConfig:
    """Defaults, then a TOML file's keys, then keyword overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"{path}: cannot read config ({exc})") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(ForcedPhotConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{path or 'config'}: unknown option(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if "aperture_radii" in values:
        values["aperture_radii"] = tuple(float(r) for r in values["aperture_radii"])
    return ForcedPhotConfig(**values)
