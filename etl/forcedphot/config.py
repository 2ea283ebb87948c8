"""Configuration of a run; its fingerprint decides which quanta are stale.

:class:`ForcedPhotConfig` is the public, frozen dataclass (keyword options, ``fingerprint()``,
``dataclasses.replace``). Types and ranges of every option live in one place, the pydantic model
:class:`ConfigSchema`: every construction (TOML file, command line, Python) is validated by it,
and a bad value is one line naming the option (:class:`ConfigError`, exit 2 in the CLI).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from forcedphot.errors import InputError
from forcedphot.flags import DEFAULT_MASK_PLANES
from forcedphot.layout import PIXEL_FLAG_PLANES, STANDARD_APERTURE_RADII, UNDEBLENDED_PLUGINS  # noqa: F401
from forcedphot.tomlfile import read_toml

# The names of forcedphot.plugins.PLUGINS (tests/test_config.py checks they agree), in the default config's order: a config
# is validated without importing the plugins and their kernels (numba, astropy), e.g. by `forcedphot status`.
PLUGIN_NAMES = ("TransformedCentroid", "SdssCentroid", "TransformedShape", "SdssShape", "InputCount", "PixelFlags",
                "PsfFlux", "GaussianFlux", "CircularApertureFlux", "LocalBackground", "Variance", "KronFlux", "GaapFlux",
                "ApCorr", "Extendedness")


class ConfigError(InputError):
    """A configuration option of the wrong type or out of range (one line naming the option)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


Float = Annotated[float, Strict()]  # an int or a float; never a string or a boolean
Int = Annotated[int, Strict()]
Str = Annotated[str, Strict()]
Names = tuple[Str, ...]  # a TOML array (a string is not a list of names)


class ConfigSchema(BaseModel):
    """Types, ranges and descriptions of the options (the ``config --template`` comments)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugins: Names = Field(description="measurement plugins to run (the centroid and shape slots always run)")
    aperture_radii: tuple[Float, ...] = Field(
        description=f"circular aperture radii in pixels: a subset of the schema's {list(STANDARD_APERTURE_RADII)}")
    aperture_method: Literal["sinc", "naive", "exact"] = Field(
        description='"sinc" (sinc coefficients up to max_sinc_radius, naive above, as Rubin), "naive" or "exact"')
    max_sinc_radius: Float = Field(gt=0, le=12.0, description="largest sinc aperture radius (pixels, <= 12)")
    aperture_error_weights: Literal["squared", "linear"] = Field(
        description='error of an exact aperture: "squared" = sqrt(sum(w^2 V)) or "linear" = sqrt(sum(w V)) (SEP)')
    psf_bad_mask_planes: Names = Field(description="mask planes whose pixels the PSF fit leaves out; apertures, Kron "
                                                   "and Gaussian fluxes that reach them are flagged")
    psf_max_bad_weight_fraction: Float = Field(
        ge=0, le=1, description="psfFlux_flag when more than this fraction of sum(P^2) over the PSF box lies on "
                                "pixels left out for psf_bad_mask_planes (0..1)")
    pixel_flag_planes: Names = Field(description=f"mask planes of the pixelFlags columns: a subset of "
                                                 f"{list(PIXEL_FLAG_PLANES)}")
    footprint_dataset: Literal["heavy", "scarlet"] = Field(
        description='"heavy": the stored heavy footprints; "scarlet": derived from the scarlet-style models')
    missing_footprints: Literal["error", "reference"] = Field(
        description='a reference without a footprint: "error" fails the quantum; "reference" uses its nearest '
                    "ancestor's footprint, or none")
    noise_replacement: Annotated[bool, Strict()] = Field(
        description="replace other objects' footprints by noise while measuring each source (true or false)")
    noise_seed_multiplier: Int = Field(ge=1, description="noise seed = packed (tract, patch) id x this (>= 1)")
    noise_offset: Float = Field(allow_inf_nan=False, description="added to the noise mean (image units)")
    undeblended: tuple[Literal[UNDEBLENDED_PLUGINS], ...] = Field(
        description=f"plugins also measured on the original image (undeblended_ columns): a subset of "
                    f"{list(UNDEBLENDED_PLUGINS)}")
    chunk_size: Int = Field(gt=0, description="sources per vectorised batch (> 0; does not change any number)")

    @field_validator("aperture_radii")
    @classmethod
    def _radii_in_schema(cls, radii):
        bad = [r for r in radii if float(r) not in STANDARD_APERTURE_RADII]
        if bad:
            raise ValueError(f"radii {bad} are not in the forced_source schema {list(STANDARD_APERTURE_RADII)}")
        return tuple(float(r) for r in radii)

    @field_validator("plugins")
    @classmethod
    def _known_plugins(cls, names):
        unknown = [p for p in names if p not in PLUGIN_NAMES]
        if unknown:
            raise ValueError(f"unknown plugin(s) {unknown}; known: {sorted(PLUGIN_NAMES)}")
        return names

    @field_validator("psf_bad_mask_planes")
    @classmethod
    def _registered_planes(cls, names):
        unknown = [p for p in names if p not in DEFAULT_MASK_PLANES]
        if unknown:
            raise ValueError(f"unknown mask plane(s) {unknown}; known: {list(DEFAULT_MASK_PLANES)}")
        return names

    @field_validator("pixel_flag_planes")
    @classmethod
    def _known_planes(cls, names):
        unknown = [p for p in names if p not in PIXEL_FLAG_PLANES]
        if unknown:
            raise ValueError(f"planes {unknown} have no pixelFlags columns; known: {list(PIXEL_FLAG_PLANES)}")
        return names


def _one_line(exc: ValidationError, where: str) -> ConfigError:
    err = exc.errors()[0]
    option = str(err["loc"][0]) if err["loc"] else None
    index = "".join(f"[{i}]" for i in err["loc"][1:])
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more error(s))" if exc.error_count() > 1 else ""
    return ConfigError(f"{where}: option {option}{index} = {err.get('input')!r}: {msg}{more}", option)


@dataclass(frozen=True)
class ForcedPhotConfig:
    """Keyword options of a run (photutils style: everything optional has a default)."""

    plugins: tuple[str, ...] = PLUGIN_NAMES
    aperture_radii: tuple[float, ...] = STANDARD_APERTURE_RADII
    # "sinc": sinc coefficients up to max_sinc_radius, naive above (Rubin); "naive"; or "exact"
    aperture_method: str = "sinc"
    max_sinc_radius: float = 12.0
    # error of an exact aperture: "squared" = sqrt(sum(w^2 var)) (photutils >= 3.1), or
    # "linear" = sqrt(sum(w var)) (SEP, photutils <= 3.0)
    aperture_error_weights: str = "squared"
    # left out of the PSF fit (invalid pixels always are); fluxes that sum over them are flagged
    psf_bad_mask_planes: tuple[str, ...] = ("NO_DATA", "BAD", "SAT")
    # psfFlux_flag above this fraction of the PSF's sum(P^2) on those pixels (psfFlux_flag_badPixels from any)
    psf_max_bad_weight_fraction: float = 0.2
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
        try:
            valid = ConfigSchema.model_validate({f.name: getattr(self, f.name) for f in fields(self)})
        except ValidationError as exc:
            raise _one_line(exc, "config") from None
        for f in fields(self):  # normalised: lists become tuples, radii floats (so fingerprints agree)
            object.__setattr__(self, f.name, getattr(valid, f.name))

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
    """Defaults, then a TOML file's keys, then keyword overrides (the command line); a bad option
    raises :class:`ConfigError` naming the file (or the command line) and the option."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        values.update(read_toml(path, "config", error=ConfigError))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    known = {f.name for f in fields(ForcedPhotConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown option(s) {unknown}; known: {sorted(known)}")
    try:
        return ForcedPhotConfig(**values)
    except ConfigError as exc:
        where = "command line" if exc.option in given else str(path) if path is not None else "config"
        raise ConfigError(str(exc).replace("config: ", f"{where}: ", 1), exc.option) from None


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return str(value)


def render_toml(config: ForcedPhotConfig | None = None, *, comments: bool = True) -> str:
    """``config`` (default: the defaults) as a TOML file that ``--config`` accepts, each option commented."""
    config = config or ForcedPhotConfig()
    lines = ["# forcedphot run configuration (forcedphot run --config FILE.toml); command-line options override it.",
             "# Every option changes the config fingerprint (so which quanta are stale) except chunk_size."]
    for f in fields(config):
        if comments:
            lines += ["", f"# {ConfigSchema.model_fields[f.name].description}"]
        lines.append(f"{f.name} = {_toml_value(getattr(config, f.name))}")
    return "\n".join(lines) + "\n"
