"""Simulation recipes: TOML files in ``datasets/`` read into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from forcedphot.errors import InputError
from forcedphot.resources import DATASETS_DIR
from forcedphot.tomlfile import read_toml


@dataclass(frozen=True)
class Recipe:
    name: str = "default"
    seed: int = 42
    bands: tuple[str, ...] = ("g", "r", "i", "z")
    ref_band: str = "i"
    # skymap: one tract
    ra: float = 150.0
    dec: float = 2.0
    pixel_scale: float = 0.2  # arcsec/pixel
    patch_inner: int = 800
    patch_border: int = 64
    n_patch_x: int = 2
    n_patch_y: int = 2
    # sources over the whole tract
    n_stars: int = 1400
    n_galaxies: int = 1400
    n_close_pairs: int = 80
    n_bright_stars: int = 4
    star_mag: tuple[float, float] = (17.5, 24.5)
    galaxy_mag: tuple[float, float] = (19.5, 24.5)
    bright_star_mag: tuple[float, float] = (13.0, 14.5)
    galaxy_re_arcsec: tuple[float, float] = (0.15, 1.0)  # log-uniform circularised half-light radius
    pair_separation_fwhm: tuple[float, float] = (1.0, 3.0)
    isolation_radius: float = 24.0  # pixels, for truth.n_neighbours
    # deblending validation: only star pairs, (separation in PSF FWHM, flux ratio) cells on a grid
    pair_grid: tuple[tuple[float, float], ...] = ()
    pairs_per_cell: int = 10
    pair_spacing: int = 60
    # per-band observing conditions
    psf_fwhm_arcsec: dict = field(default_factory=lambda: {"g": 0.85, "r": 0.75, "i": 0.65, "z": 0.70, "y": 0.75, "u": 0.95})
    psf_variation: float = 0.04  # fractional change of PSF width across the tract
    psf_ellipticity: float = 0.03
    psf_wing_fraction: float = 0.12
    psf_wing_scale: float = 1.8
    psf_size: int = 33
    psf_grid_spacing: int = 256
    sky_sigma_njy: dict = field(default_factory=lambda: {"g": 4.5, "r": 5.0, "i": 6.0, "z": 9.0, "y": 14.0, "u": 8.0})
    zero_point: dict = field(default_factory=lambda: {"g": 27.0, "r": 27.2, "i": 27.1, "z": 26.8, "y": 26.5, "u": 26.5})
    poisson_njy: float = 0.5  # nJy per effective photon: source Poisson variance = model * poisson_njy
    saturation_njy: float = 2.0e5  # per pixel
    noise: bool = True  # false: images are the noiseless model (variance planes unchanged), for truth
    detection_threshold: float = 4.0  # on the noiseless multi-band SNR-per-pixel image
    # artefacts, in tract pixels
    bad_columns: tuple[int, ...] = (333, 1207)
    no_data_boxes: tuple[tuple[int, int, int, int], ...] = ((-64, 1480, 250, 1663),)
    edge_width: int = 12

    @property
    def tract_width(self) -> int:
        return self.patch_inner * self.n_patch_x

    @property
    def tract_height(self) -> int:
        return self.patch_inner * self.n_patch_y


def _coerce(name: str, value, default):
    if isinstance(default, tuple):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def load_recipe(name_or_path: str, **overrides) -> Recipe:
    """Load ``datasets/<name>.toml`` (or a path to a TOML file), with keyword overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = DATASETS_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = sorted(p.stem for p in DATASETS_DIR.glob("*.toml"))
        raise InputError(f"{path}: recipe not found; known recipes: {known}")
    doc = read_toml(path, "recipe")
    flat = {}
    for k, v in doc.items():
        if isinstance(v, dict) and k not in {f.name for f in fields(Recipe)}:
            flat.update(v)  # [sections] are only for readability
        else:
            flat[k] = v
    flat.update(overrides)
    known = {f.name: f for f in fields(Recipe)}
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise InputError(f"{path}: unknown recipe keys {unknown}")
    defaults = Recipe()
    kwargs = {k: _coerce(k, v, getattr(defaults, k)) for k, v in flat.items()}
    recipe = Recipe(**kwargs)
    for b in recipe.bands:
        for table in ("psf_fwhm_arcsec", "sky_sigma_njy", "zero_point"):
            if b not in getattr(recipe, table):
                raise InputError(f"{path}: band {b!r} has no entry in {table}")
    return recipe
