"""The report's numbers: SQL files of the library and the loaders, as Polars frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from forcedphot.errors import InputError
from forcedphot.objects import sort_bands
from forcedphot.query import dataset_files, load_forced_source, load_object, sql
from forcedphot.repository import Repository
from forcedphot.resources import read_sql

SKY_CELLS = 12  # cells along the longer side of the sky maps
GALLERY_SIZE = 8  # most-flagged objects shown with cutouts
SOURCE_COLUMNS = ["band", "psfFlux", "psfFluxErr", "psfMag", "psfFlux_flag", "detect_isPrimary"]


def run_sql(repo, name: str, **params) -> pl.DataFrame:
    """``sql/<name>.sql`` (e.g. ``examples/depth_5sigma``) over the repository views, as Polars."""
    return pl.from_arrow(sql(repo, read_sql(name), params or None))


@dataclass
class ReportData:
    bands: list[str]
    sources: pl.DataFrame  # primary forced sources: band, psfFlux(Err), psfMag, psfFlux_flag
    objects: pl.DataFrame  # load_object: one row per primary object
    depth: pl.DataFrame  # examples/depth_5sigma
    flag_rates: pl.DataFrame  # examples/flag_rates
    colour_colour: pl.DataFrame  # examples/colour_colour (binned counts)
    sky: pl.DataFrame  # report_sky_map
    sky_bin_deg: float
    truth: pl.DataFrame | None  # report_truth_sources (None: the repository has no truth)
    truth_summary: pl.DataFrame | None  # examples/truth_comparison
    most_flagged: pl.DataFrame  # report_most_flagged


def sky_bin(objects: pl.DataFrame, *, cells: int = SKY_CELLS) -> float:
    """A cell size (deg, rounded to 2 significant digits) giving ~``cells`` cells along the wider side."""
    ra, dec = objects["coord_ra"].to_numpy(), objects["coord_dec"].to_numpy()
    span = max(np.ptp(ra) * np.cos(np.radians(np.median(dec))), np.ptp(dec), 1e-4)
    step = span / cells
    return float(f"{step:.2g}")


def gather(repo: Repository) -> ReportData:
    """Everything the page plots; ``InputError`` if nothing was measured yet."""
    if not dataset_files(repo, "forced_source"):
        raise InputError(f"{repo.root}: no forced_source measurements; run `forcedphot run --repo {repo.root}` first")
    sources = load_forced_source(repo, columns=SOURCE_COLUMNS).filter(pl.col("detect_isPrimary"))
    objects = load_object(repo)
    bands = sort_bands(sources["band"].unique().to_list())
    has_truth = bool(dataset_files(repo, "truth"))
    bin_deg = sky_bin(objects)
    return ReportData(
        bands=bands,
        sources=sources,
        objects=objects,
        depth=_in_band_order(run_sql(repo, "examples/depth_5sigma"), bands),
        flag_rates=run_sql(repo, "examples/flag_rates"),
        colour_colour=(run_sql(repo, "examples/colour_colour", min_snr=5) if {"g", "r", "i"} <= set(bands)
                       else pl.DataFrame()),
        sky=run_sql(repo, "report_sky_map", bin_deg=bin_deg),
        sky_bin_deg=bin_deg,
        truth=run_sql(repo, "report_truth_sources") if has_truth else None,
        truth_summary=run_sql(repo, "examples/truth_comparison") if has_truth else None,
        most_flagged=run_sql(repo, "report_most_flagged", n_objects=GALLERY_SIZE),
    )



def _in_band_order(table: pl.DataFrame, bands: list[str]) -> pl.DataFrame:
    """Rows of a per-band table in wavelength order (the SQL sorts band names alphabetically)."""
    return table.sort(pl.col("band").replace_strict({b: i for i, b in enumerate(bands)}, default=len(bands)))
