"""Assemble the report: gather the numbers, draw the plots, write the folder atomically."""

from __future__ import annotations

import html
import time
from pathlib import Path

from forcedphot.io.atomic import atomic_dir
from forcedphot.io.targets import check_target
from forcedphot.report import figures
from forcedphot.report.data import ReportData, gather
from forcedphot.report.gallery import CoaddCache, cutouts, gallery_figure
from forcedphot.report.page import GENERATOR, Section, render
from forcedphot.repository import Repository

MODEL_TEXT = ("Each row: <b>data</b>, the coadd image around the forced position; <b>model</b>, the PSF model "
              "at the forced position (the PSF grid of the coadd interpolated to the position and shifted to its "
              "sub-pixel offset, as PsfFlux fits it) scaled by the measured psfFlux; <b>residual</b>, data - "
              "model. All three share one asinh grey scale (darker: brighter; white: no data, i.e. NaN pixels "
              "or off the coadd) in image units (nJy = value x the coadd's photo_calib). The fit itself sees "
              "the noise-replaced image (neighbours replaced by noise) without bad pixels, so neighbours and "
              "artefacts remain in the residual.")


def not_a_report(out: Path) -> str | None:
    """Why a folder is not an earlier report (its index.html carries our generator tag), or None."""
    index = out / "index.html"
    if index.is_file() and f'name="generator" content="{GENERATOR}"' in index.read_text(errors="replace"):
        return None
    return f"not a forcedphot report folder (no index.html written by {GENERATOR})"


def write_report(repo, out, *, overwrite: bool = False) -> Path:
    """Write ``out/index.html`` and its PNGs for the repository ``repo``; returns the page's path."""
    repo = repo if isinstance(repo, Repository) else Repository(repo)
    repo.check()
    out = Path(out).absolute()
    check_target(out, overwrite=overwrite, foreign=not_a_report)  # only an earlier report is replaced
    data = gather(repo)
    with atomic_dir(out) as tmp:
        sections = _sections(repo, data, tmp)
        summary = (f"Repository <code>{html.escape(str(repo.root))}</code>: {data.objects.height} primary objects, "
                   f"{data.sources.height} primary forced sources in bands {html.escape(', '.join(data.bands))}"
                   f"{'' if data.truth is not None else ' (no truth: not a simulated survey)'}. "
                   f"Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.")
        (tmp / "index.html").write_text(render(title="forcedphot QA report", summary=summary, sections=sections))
    return out / "index.html"


def _save(fig, folder: Path, name: str) -> str:
    fig.savefig(folder / name, format="png")
    return name


def _plot_section(title: str, fig, folder: Path, name: str, caption: str, *, missing: str, text: str = "",
                  tables=()) -> Section:
    if fig is None:
        return Section(title, text=text, tables=list(tables), missing=missing)
    return Section(title, text=text, tables=list(tables), images=[(_save(fig, folder, name), caption, "")])


def _sections(repo: Repository, data: ReportData, folder: Path) -> list[Section]:
    truth_missing = "No truth dataset: flux recovery and pulls need a simulated survey."
    sections = [
        _plot_section("Depth and S/N vs magnitude", figures.snr_vs_magnitude(data), folder, "snr_vs_mag.png",
                      "S/N of psfFlux against psfMag per band (primary, unflagged); red: the 5-sigma depth "
                      "from the median psfFluxErr (sql/examples/depth_5sigma.sql).", missing="",
                      tables=[data.depth]),
        _plot_section("Flag rates", figures.flag_rates(data), folder, "flag_rates.png",
                      "Fraction of primary sources with each flag set, per band (sql/examples/flag_rates.sql; "
                      "the most frequent flags).", missing="No flag is set on any primary source."),
        _plot_section("Colour-magnitude diagram", figures.colour_magnitude(data), folder, "colour_magnitude.png",
                      "g - r against r (PSF magnitudes of the object table, unflagged in g and r).",
                      missing="Needs bands g and r."),
        _plot_section("Colour-colour diagram", figures.colour_colour(data), folder, "colour_colour.png",
                      "g - r against r - i: objects per 0.1-mag cell at S/N >= 5 in g, r and i "
                      "(sql/examples/colour_colour.sql).", missing="Needs bands g, r and i with S/N >= 5 objects."),
        _plot_section("Sky maps", figures.sky_maps(data), folder, "sky_maps.png",
                      "Primary objects, and the fraction of their sources (all bands) with psfFlux_flag or with "
                      "any flag set, per (ra, dec) cell (sql/report_sky_map.sql).", missing=""),
        _plot_section("Flux recovery against truth", figures.flux_recovery(data), folder, "flux_recovery.png",
                      "psfFlux / true flux against true magnitude, per band (sql/report_truth_sources.sql).",
                      missing=truth_missing,
                      tables=[data.truth_summary] if data.truth_summary is not None else []),
        _plot_section("Pulls against truth", figures.pull_histograms(data), folder, "pulls.png",
                      "(psfFlux - true flux) / psfFluxErr of isolated stars per band, with the unit normal.",
                      missing=truth_missing),
    ]
    sections.append(_gallery(repo, data, folder))
    return sections


def _gallery(repo: Repository, data: ReportData, folder: Path) -> Section:
    section = Section("Most-flagged objects", text=MODEL_TEXT, grid=True)
    coadds = CoaddCache(repo)
    for row in data.most_flagged.iter_rows(named=True):
        label = f"object {row['objectId']} tract={row['tract']} patch={row['patch']} band={row['band']}"
        flux = row["psfFlux"] if row["psfFlux"] is not None else float("nan")
        caption = f"{label}: {row['n_flags']} flags set; psfFlux {flux:.4g} nJy"
        x, y = row["centroid_x"], row["centroid_y"]
        if x is None or y is None or not (abs(x) < 1e9 and abs(y) < 1e9):
            section.tables.append(_no_position(row))
            continue
        c = cutouts(coadds(row["tract"], row["patch"], row["band"]), x, y, flux)
        name = f"gallery_{row['objectId']}_{row['band']}.png"
        section.images.append((_save(gallery_figure(c, label), folder, name), caption, f"flags: {row['flags_set']}"))
    if data.most_flagged.is_empty():
        section.missing = "No primary source has a flag set."
    return section


def _no_position(row: dict):
    import polars as pl

    return pl.DataFrame([{k: row[k] for k in ("objectId", "tract", "patch", "band", "n_flags", "flags_set")}]
                        ).with_columns(pl.lit("no finite forced position: no cutout").alias("note"))
