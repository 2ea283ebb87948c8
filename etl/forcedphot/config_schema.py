"""The pydantic model of the run options (:class:`ConfigSchema`): types, ranges and descriptions.

In its own module so that importing :mod:`forcedphot.config` (every command) does not import pydantic and
build the model (~0.1 s of CPU): :class:`forcedphot.config.ForcedPhotConfig` imports it to validate, and
passes the known plugin names (``config.PLUGIN_NAMES``) in the validation context (this module does not
import :mod:`forcedphot.config`: no import cycle).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationInfo, field_validator

from forcedphot.flags import DEFAULT_MASK_PLANES
from forcedphot.layout import PIXEL_FLAG_PLANES, STANDARD_APERTURE_RADII, UNDEBLENDED_PLUGINS

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
    def _known_plugins(cls, names, info: ValidationInfo):
        known = (info.context or {}).get("plugin_names")
        if known is None:
            raise ValueError("validate with context={'plugin_names': forcedphot.config.PLUGIN_NAMES}")
        unknown = [p for p in names if p not in known]
        if unknown:
            raise ValueError(f"unknown plugin(s) {unknown}; known: {sorted(known)}")
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
