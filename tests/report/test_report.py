"""forcedphot report: the page, its PNGs, the cutouts' model, atomic writes and refusals."""

from __future__ import annotations

import re
import shutil
import struct

import numpy as np
import polars as pl
import pytest

from forcedphot.cli import main
from forcedphot.io.coadd import read_coadd
from forcedphot.query import arrow_dataset, load_forced_source, sql
from forcedphot.repository import DataId, Repository
from forcedphot.report.gallery import cutouts
from forcedphot.resources import read_sql

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _images(index_html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index_html)


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_page_lists_every_plot_and_the_folder_is_self_contained(tiny_report):
    index = tiny_report.folder / "index.html"
    assert tiny_report.stdout.strip() == f"report written: {index}"
    text = index.read_text()
    images = _images(text)
    expected = {"snr_vs_mag.png", "flag_rates.png", "colour_magnitude.png", "colour_colour.png", "sky_maps.png",
                "flux_recovery.png", "pulls.png"}
    assert expected <= set(images)
    assert any(name.startswith("gallery_") for name in images)
    assert set(images) == {p.name for p in tiny_report.folder.glob("*.png")}  # nothing missing, nothing extra
    for name in images:
        width, height = _png_size(tiny_report.folder / name)
        assert width > 100 and height > 100
    assert not re.search(r'(src|href)="(https?:|//|/)', text)  # no network, no absolute paths
    assert [p.name for p in tiny_report.folder.parent.iterdir()] == ["qa"]  # no temporary folder left


def test_report_is_fast_on_the_tiny_survey(tiny_report):
    assert tiny_report.seconds < 60, f"report took {tiny_report.seconds:.1f} s"  # a few seconds on a quiet machine


def test_gallery_shows_the_most_flagged_objects(tiny_report, measured_tiny_repo):
    flagged = pl.from_arrow(sql(measured_tiny_repo, read_sql("report_most_flagged"), {"n_objects": 8}))
    text = (tiny_report.folder / "index.html").read_text()
    assert flagged.height > 0
    assert flagged["n_flags"].is_sorted(descending=True)
    shown = [name for name in _images(text) if name.startswith("gallery_")]
    with_position = flagged.filter(pl.col("centroid_x").is_finite() & pl.col("centroid_y").is_finite())
    assert shown == [f"gallery_{r['objectId']}_{r['band']}.png" for r in with_position.iter_rows(named=True)]
    assert "PSF model at the forced position" in text


def test_model_cutout_removes_an_isolated_bright_star(measured_tiny_repo):
    """The model (PSF x psfFlux / photo_calib) matches the data of a bright isolated star."""
    truth = pl.from_arrow(arrow_dataset(measured_tiny_repo, "truth").to_table()).rename({"id": "objectId"})
    sources = load_forced_source(measured_tiny_repo, columns=[
        "objectId", "tract", "patch", "band", "centroid_x", "centroid_y", "psfFlux", "psfFluxErr", "psfFlux_flag",
        "detect_isPrimary", "pixelFlags_saturatedCenter", "pixelFlags_edge"])
    star = (sources.join(truth, on=["objectId", "tract", "patch", "band"])
            .filter(pl.col("is_star") & (pl.col("n_neighbours") == 0) & pl.col("detect_isPrimary")
                    & ~pl.col("psfFlux_flag") & ~pl.col("pixelFlags_saturatedCenter") & ~pl.col("pixelFlags_edge"))
            .sort(pl.col("psfFlux") / pl.col("psfFluxErr"), descending=True).row(0, named=True))
    coadd = read_coadd(Repository(measured_tiny_repo).coadd_path(DataId(star["tract"], star["patch"], star["band"])))
    c = cutouts(coadd, star["centroid_x"], star["centroid_y"], star["psfFlux"])
    core = np.s_[c.data.shape[0] // 2 - 3:c.data.shape[0] // 2 + 4, c.data.shape[1] // 2 - 3:c.data.shape[1] // 2 + 4]
    assert np.nansum(c.model) * coadd.photo_calib == pytest.approx(star["psfFlux"], rel=0.05)
    assert np.nansum(np.abs(c.residual[core])) < 0.1 * np.nansum(np.abs(c.data[core]))
    assert np.array_equal(c.residual, c.data - c.model, equal_nan=True)


def test_refuses_to_overwrite_without_the_flag_and_replaces_whole_with_it(tiny_report, measured_tiny_repo,
                                                                          tmp_path, capsys):
    """The rewrite is of the survey without its truth: the truth plots (and any stray file) must go."""
    out = tmp_path / "qa"
    shutil.copytree(tiny_report.folder, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["report", "--repo", str(measured_tiny_repo), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"forcedphot: error: {out}: exists; pass --overwrite to replace it"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "stale.png").write_bytes(b"old")
    no_truth = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, no_truth, ignore=shutil.ignore_patterns("truth"))
    assert main(["report", "--repo", str(no_truth), "--out", str(out), "--overwrite"]) == 0
    text = (out / "index.html").read_text()
    assert set(_images(text)) == {p.name for p in out.glob("*.png")}
    assert set(_images(text)) == set(_images(before["index.html"].decode())) - {"flux_recovery.png", "pulls.png"}
    assert text.count("No truth dataset: flux recovery and pulls need a simulated survey.") == 2
    assert "(no truth: not a simulated survey)" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa", "repo"]  # no temporary folder left

def test_overwrite_never_replaces_a_folder_that_is_not_a_report(measured_tiny_repo, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["report", "--repo", str(measured_tiny_repo), "--out", str(out), "--overwrite"]) == 2
    assert "not a forcedphot report folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_unmeasured_repository_is_one_line_and_writes_nothing(tiny_repo_master, tmp_path, capsys):
    out = tmp_path / "qa"
    assert not load_forced_source(tiny_repo_master, columns=["band"]).height
    assert main(["report", "--repo", str(tiny_repo_master), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no forced_source measurements" in err[0] and str(tiny_repo_master) in err[0]
    assert list(tmp_path.iterdir()) == []

