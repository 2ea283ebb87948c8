"""Configuration of a run; its fingerprint decides which quanta are stale.

:class:`ForcedPhotConfig` is the public, frozen dataclass (keyword options, ``fingerprint()``,
``dataclasses.replace``). Types and ranges of every option live in one place, the pydantic model
:class:`ConfigSchema` (in :mod:`forcedphot.config_schema`, imported when a config is validated): every
construction (TOML file, command line, Python) is validated by it, and a bad value is one line naming
the option (:class:`ConfigError`, exit 2 in the CLI). The defaults themselves are not validated again at
every construction (tests/test_startup.py checks they pass): ``forcedphot status`` with the default config
imports no pydantic (start-up time).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from forcedphot.errors import InputError
from forcedphot.flags import DEFAULT_MASK_PLANES
from forcedphot.layout import PIXEL_FLAG_PLANES, STANDARD_APERTURE_RADII, UNDEBLENDED_PLUGINS  # noqa: F401
from forcedphot.tomlfile import read_toml

# The names of forcedphot.plugins.PLUGINS (tests/test_config.py checks they agree), in the default config's order: a config
# is validated without importing the plugins and their kernels (numba, astropy), e.g. by `forcedphot status`.
PLUGIN_NAMES = ("TransformedCentroid", "SdssCentroid", "TransformedShape", "SdssShape", "InputCount", "PixelFlags",
                "PsfFlux", "GaussianFlux", "CircularApertureFlux", "LocalBackground", "Variance", "KronFlux", "CModel",
                "ConvolvedFlux", "GaapFlux",
                "ApCorr", "Extendedness")


class ConfigError(InputError):
    """A configuration option of the wrong type or out of range (one line naming the option)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


def __getattr__(name: str):
    """``ConfigSchema``, the pydantic model of the options, imported at first use (:mod:`forcedphot.config_schema`)."""
    if name == "ConfigSchema":
        from forcedphot.config_schema import ConfigSchema

        return ConfigSchema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _one_line(exc, where: str) -> ConfigError:
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
        if all(getattr(self, f.name) is f.default for f in fields(self)):
            return  # the defaults (immutable), which validate as they are
        from pydantic import ValidationError

        from forcedphot.config_schema import ConfigSchema

        try:
            valid = ConfigSchema.model_validate({f.name: getattr(self, f.name) for f in fields(self)},
                                                context={"plugin_names": PLUGIN_NAMES})
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
    from forcedphot.config_schema import ConfigSchema

    config = config or ForcedPhotConfig()
    lines = ["# forcedphot run configuration (forcedphot run --config FILE.toml); command-line options override it.",
             "# Every option changes the config fingerprint (so which quanta are stale) except chunk_size."]
    for f in fields(config):
        if comments:
            lines += ["", f"# {ConfigSchema.model_fields[f.name].description}"]
        lines.append(f"{f.name} = {_toml_value(getattr(config, f.name))}")
    return "\n".join(lines) + "\n"
