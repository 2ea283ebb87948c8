"""The report's plots as matplotlib Figures (Agg canvas, no pyplot state): one function per plot.

Each returns a Figure, or None when the repository lacks what it needs (e.g. bands g, r, i for the
colour-colour diagram); the page says why a plot is missing.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from forcedphot.report.data import ReportData

AB_ZERO_NJY = 3631e9  # AB magnitude zero point in nJy


def new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=90, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def band_figure(n: int, *, cols: int = 4) -> tuple[Figure, list]:
    """One panel per band, up to ``cols`` a row, fixed margins (a layout engine doubles the drawing time)."""
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = new_figure(3.2 * cols, 3.0 * rows, layout=None)
    fig.subplots_adjust(left=0.25 / cols, right=0.99, bottom=0.5 / (3.0 * rows), top=1 - 0.35 / (3.0 * rows),
                        wspace=0.38, hspace=0.45)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def snr_vs_magnitude(data: ReportData) -> Figure:
    """Per band: S/N of the PSF flux against psfMag, with the 5-sigma depth of depth_5sigma.sql."""
    fig, axes = band_figure(len(data.bands))
    depth = {r["band"]: r["depth_5sigma_from_errors"] for r in data.depth.iter_rows(named=True)}
    for ax, band in zip(axes, data.bands):
        s = data.sources.filter((pl.col("band") == band) & ~pl.col("psfFlux_flag") & (pl.col("psfFluxErr") > 0)
                                & pl.col("psfMag").is_finite())
        snr = (s["psfFlux"] / s["psfFluxErr"]).to_numpy()
        ax.scatter(s["psfMag"].to_numpy(), np.clip(snr, 0.1, None), s=4, alpha=0.6, color="C0", lw=0)
        ax.axhline(5, color="0.4", ls=":", lw=1, label="S/N = 5")
        if depth.get(band) is not None:
            ax.axvline(depth[band], color="C3", lw=1.2, label=f"5σ depth {depth[band]:.2f}")
        ax.set_yscale("log")
        ax.set_xlabel(f"{band} psfMag [AB]")
        ax.set_ylabel("psfFlux / psfFluxErr")
        ax.set_title(f"band {band}: {len(s)} sources")
        ax.legend(fontsize=7, loc="upper right")
    return fig


def flag_rates(data: ReportData, *, max_flags: int = 20) -> Figure | None:
    """Heat map of flag_rates.sql: the fraction of primary sources with each flag set, per band."""
    rates = data.flag_rates.filter(pl.col("n_set") > 0)
    if rates.is_empty():
        return None
    top = (rates.group_by("flag").agg(pl.col("rate").max()).sort(["rate", "flag"], descending=[True, False])
           .head(max_flags)["flag"].to_list())
    table = rates.filter(pl.col("flag").is_in(top)).pivot(on="band", index="flag", values="rate")
    table = pl.DataFrame({"flag": top}).join(table, on="flag", how="left").fill_null(0.0)
    bands = [b for b in data.bands if b in table.columns]
    values = table.select(bands).to_numpy()
    fig = new_figure(2.8 + 0.9 * len(bands), 1.2 + 0.24 * len(top))
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=max(values.max(), 1e-3))
    ax.set_xticks(range(len(bands)), bands)
    ax.set_yticks(range(len(top)), top, fontsize=7)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 * values.max() else "k")
    ax.set_title("flag rate (fraction of primary sources)")
    fig.colorbar(im, ax=ax, shrink=0.6)
    return fig


def colour_magnitude(data: ReportData) -> Figure | None:
    """(g - r, r) colour-magnitude diagram of the object table, point-like and extended apart."""
    needed = ["g_r_psfColor", "r_psfMag", "r_extendedness", "g_psfFlux_flag", "r_psfFlux_flag"]
    if any(c not in data.objects.columns for c in needed):
        return None
    o = data.objects.filter(~pl.col("g_psfFlux_flag") & ~pl.col("r_psfFlux_flag")
                            & pl.col("g_r_psfColor").is_finite() & pl.col("r_psfMag").is_finite())
    fig = new_figure(5.0, 4.2)
    ax = fig.subplots()
    for ext, label, colour in ((0, "point-like", "C0"), (1, "extended", "C1")):
        s = o.filter(pl.col("r_extendedness") == ext)
        ax.scatter(s["g_r_psfColor"], s["r_psfMag"], s=6, alpha=0.7, lw=0, color=colour, label=f"{label} ({len(s)})")
    ax.invert_yaxis()
    ax.set_xlabel("g - r (psf) [mag]")
    ax.set_ylabel("r psfMag [AB]")
    ax.set_title("colour-magnitude (object table)")
    ax.legend(fontsize=8)
    return fig


def colour_colour(data: ReportData) -> Figure | None:
    """(g - r, r - i) counts of colour_colour.sql (S/N >= 5 in g, r, i) as a 2-d histogram."""
    cc = data.colour_colour
    if cc.is_empty():
        return None
    width = 0.1
    gr, ri, n = cc["g_r_bin"].to_numpy(), cc["r_i_bin"].to_numpy(), cc["n"].to_numpy()
    fig = new_figure(5.0, 4.2)
    ax = fig.subplots()
    sc = ax.scatter(gr + width / 2, ri + width / 2, c=n, s=40, marker="s", cmap="magma_r",
                    norm=LogNorm(vmin=1, vmax=max(n.max(), 2)))
    point = cc["n_point"].to_numpy() > 0
    ax.scatter(gr[point] + width / 2, ri[point] + width / 2, s=4, color="C0", label="cells with point-like objects")
    ax.set_xlabel("g - r (psf) [mag]")
    ax.set_ylabel("r - i (psf) [mag]")
    ax.set_title(f"colour-colour, S/N >= 5 ({int(n.sum())} objects)")
    ax.legend(fontsize=7)
    fig.colorbar(sc, ax=ax, label="objects per 0.1 x 0.1 mag cell")
    return fig


def sky_maps(data: ReportData) -> Figure:
    """Object counts and flag rates in (ra, dec) cells of report_sky_map.sql."""
    sky, step = data.sky, data.sky_bin_deg
    ra, dec = sky["ra_bin"].to_numpy(), sky["dec_bin"].to_numpy()
    ra0, dec0 = ra.min(), dec.min()
    i = np.rint((dec - dec0) / step).astype(int)
    j = np.rint((ra - ra0) / step).astype(int)
    extent = (ra0, ra0 + (j.max() + 1) * step, dec0, dec0 + (i.max() + 1) * step)
    fig = new_figure(13.5, 4.0)
    for ax, column, title, cmap in zip(fig.subplots(1, 3), ("n_objects", "psf_flag_rate", "any_flag_rate"),
                                       ("primary objects per cell", "psfFlux_flag rate", "any-flag rate"),
                                       ("viridis", "inferno", "inferno")):
        grid = np.full((i.max() + 1, j.max() + 1), np.nan)
        grid[i, j] = sky[column].to_numpy()
        im = ax.imshow(grid, origin="lower", extent=extent, cmap=cmap, interpolation="nearest",
                       vmin=0, vmax=None if column == "n_objects" else 1)
        ax.set_xlim(extent[1], extent[0])  # ra increases to the east (left)
        ax.set_xlabel("ra [deg]")
        ax.set_ylabel("dec [deg]")
        ax.set_title(f"{title} ({step:g} deg cells)", fontsize=9)
        ax.ticklabel_format(useOffset=False)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def flux_recovery(data: ReportData) -> Figure | None:
    """Per band: psfFlux / true flux against true magnitude (report_truth_sources.sql)."""
    if data.truth is None or data.truth.is_empty():
        return None
    fig, axes = band_figure(len(data.bands))
    for ax, band in zip(axes, data.bands):
        t = data.truth.filter(pl.col("band") == band)
        for star, label, colour in ((True, "stars", "C0"), (False, "galaxies", "C1")):
            s = t.filter(pl.col("is_star") == star)
            mag = -2.5 * np.log10(s["true_flux"].to_numpy() / AB_ZERO_NJY)
            ax.scatter(mag, (s["psfFlux"] / s["true_flux"]).to_numpy(), s=5, lw=0, alpha=0.7, color=colour,
                       label=f"{label} ({len(s)})")
        ax.axhline(1, color="0.3", lw=1)
        ax.set_ylim(0, 2)
        ax.set_xlabel(f"{band} true magnitude [AB]")
        ax.set_ylabel("psfFlux / true flux")
        ax.set_title(f"band {band}")
        ax.legend(fontsize=7)
    return fig


def pull_histograms(data: ReportData) -> Figure | None:
    """Per band: (psfFlux - true flux) / psfFluxErr of isolated stars with the unit normal for reference."""
    if data.truth is None or data.truth.is_empty():
        return None
    fig, axes = band_figure(len(data.bands))
    x = np.linspace(-5, 5, 201)
    for ax, band in zip(axes, data.bands):
        s = data.truth.filter((pl.col("band") == band) & pl.col("is_star") & (pl.col("n_neighbours") == 0))
        pull = ((s["psfFlux"] - s["true_flux"]) / s["psfFluxErr"]).to_numpy()
        ax.hist(np.clip(pull, -5, 5), bins=np.linspace(-5, 5, 26), density=True, color="C0", alpha=0.7)
        ax.plot(x, np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi), color="C3", lw=1, label="N(0, 1)")
        if pull.size > 1:
            ax.set_title(f"band {band}: n={pull.size}, mean {pull.mean():.2f}, sd {pull.std(ddof=1):.2f}", fontsize=9)
        else:
            ax.set_title(f"band {band}: n={pull.size}", fontsize=9)
        ax.set_xlabel("pull (clipped to ±5)")
        ax.legend(fontsize=7)
    return fig
