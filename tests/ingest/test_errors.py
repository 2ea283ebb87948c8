"""Bad inputs: exit code 2 and one line naming the file and the problem; nothing half-written."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from astropy.io import fits
from astropy.table import Table

from forcedphot.cli import main
from forcedphot.ingest.grid import make_tan
from tests.ingest.synth import SHAPE


def _catalog(s, name="cat.fits"):
    path = s.root / name
    Table({"ra": s.ra, "dec": s.dec}).write(path, overwrite=True)
    return path


def _band(s, band="g", **over):
    opts = {"--image": s.files[band]["image"], "--variance": s.files[band]["variance"], "--psf-fwhm": "3px",
            "--flux-unit": "nJy"}
    opts.update(over)
    out = ["--band", band]
    for k, v in opts.items():
        if v is not None:
            out += [k, str(v)]
    return out


def _fails(capsys, argv, *expected):
    """Run the CLI, expect exit code 2 and a one-line error containing every expected piece."""
    code = main(["ingest", "fits", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("forcedphot: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    for piece in expected:
        assert str(piece) in errors[0], (piece, errors[0])
    return errors[0]


def test_bands_with_different_shapes(synthetic, tmp_path, capsys):
    s = synthetic
    small = s.root / "small.fits"
    fits.writeto(small, np.zeros((SHAPE[0] - 4, SHAPE[1]), np.float32), header=s.wcs.to_header())
    argv = [*_band(s), "--band", "r", "--image", str(small), "--variance", "0.01", "--psf-fwhm", "3px",
            "--catalog", str(_catalog(s)), "--repo", str(tmp_path / "repo")]
    _fails(capsys, argv, str(small), "differs from", "g.fits", "one pixel grid")
    assert not (tmp_path / "repo").exists()


def test_bands_with_different_wcs(synthetic, tmp_path, capsys):
    s = synthetic
    shifted = s.root / "shifted.fits"
    w = make_tan(SHAPE, 0.2, ra=150.1, dec=2.2)
    w.wcs.crpix = [w.wcs.crpix[0] + 3, w.wcs.crpix[1]]
    fits.writeto(shifted, np.zeros(SHAPE, np.float32), header=w.to_header())
    argv = [*_band(s), "--band", "r", "--image", str(shifted), "--variance", "0.01", "--psf-fwhm", "3px",
            "--catalog", str(_catalog(s)), "--repo", str(tmp_path / "repo")]
    _fails(capsys, argv, str(shifted), "WCS differs", "3 px")


def test_missing_hdu(synthetic, tmp_path, capsys):
    s = synthetic
    argv = [*_band(s, **{"--image": f"{s.root / 'g.fits'}:7"}), "--catalog", str(_catalog(s)),
            "--repo", str(tmp_path / "repo")]
    _fails(capsys, argv, "g.fits", "no HDU 7", "VARIANCE")


def test_missing_named_hdu_and_missing_file(synthetic, tmp_path, capsys):
    s = synthetic
    cat = str(_catalog(s))
    _fails(capsys, [*_band(s, **{"--variance": f"{s.root / 'g.fits'}[WHT]"}), "--catalog", cat,
                    "--repo", str(tmp_path / "repo")], "g.fits", "no HDU 'WHT'", "variance")
    _fails(capsys, [*_band(s, **{"--image": str(s.root / "nope.fits")}), "--catalog", cat,
                    "--repo", str(tmp_path / "repo")], "nope.fits", "not found")


def test_catalog_without_positions(synthetic, tmp_path, capsys):
    s = synthetic
    cat = s.root / "cat.csv"
    pacsv.write_csv(pa.table({"foo": [1.0, 2.0], "bar": [3.0, 4.0]}), cat)
    _fails(capsys, [*_band(s), "--catalog", str(cat), "--repo", str(tmp_path / "repo")],
           str(cat), "no position columns")


def test_plane_shape_mismatch_and_bad_planes(synthetic, tmp_path, capsys):
    s = synthetic
    cat = str(_catalog(s))
    repo = str(tmp_path / "repo")
    odd = s.root / "odd.fits"
    fits.writeto(odd, np.ones((10, 10), np.float32))
    _fails(capsys, [*_band(s, **{"--variance": None, "--sigma": str(odd)}), "--catalog", cat, "--repo", repo],
           str(odd), "sigma shape 10x10", "g.fits")
    neg = s.root / "neg.fits"
    fits.writeto(neg, np.full(SHAPE, -1.0, np.float32))
    _fails(capsys, [*_band(s, **{"--variance": str(neg)}), "--catalog", cat, "--repo", repo],
           str(neg), "negative variance")
    zero_psf = s.root / "zero_psf.fits"
    fits.writeto(zero_psf, np.zeros((11, 11), np.float32))
    _fails(capsys, [*_band(s, **{"--psf-fwhm": None, "--psf": str(zero_psf)}), "--catalog", cat, "--repo", repo],
           str(zero_psf), "PSF has no flux")
    _fails(capsys, [*_band(s, **{"--psf-fwhm": "3"}), "--catalog", cat, "--repo", repo], "needs a unit")
    _fails(capsys, [*_band(s, **{"--flux-unit": "furlong"}), "--catalog", cat, "--repo", repo], "furlong")
    _fails(capsys, [*_band(s, **{"--mask": s.files["g"]["variance"], "--mask-bits": "BAD=0,FOO=1"}),
                    "--catalog", cat, "--repo", repo], "unknown mask plane 'FOO'")
    assert not (tmp_path / "repo").exists()


def test_band_options_need_a_band_and_once(synthetic, tmp_path, capsys):
    s = synthetic
    with pytest.raises(SystemExit) as info:
        main(["ingest", "fits", "--image", s.files["g"]["image"], "--band", "g"])
    assert info.value.code == 2 and "--image must follow --band" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ingest", "fits", "--band", "g", "--image", "a.fits", "--image", "b.fits"])
    assert "--image given twice for band g" in capsys.readouterr().err
    _fails(capsys, [*_band(s, **{"--psf-fwhm": None}), "--catalog", str(_catalog(s)),
                    "--repo", str(tmp_path / "r")], "band g", "no PSF")
    _fails(capsys, ["--band", "g", "--image", s.files["g"]["image"], "--psf-fwhm", "3px", "--catalog",
                    str(_catalog(s)), "--repo", str(tmp_path / "r")], "exactly one of variance, invvar or sigma")


def test_no_wcs_needs_pixel_scale_and_xy(tmp_path, capsys):
    img = tmp_path / "img.fits"
    fits.writeto(img, np.ones((20, 30), np.float32))
    sky = tmp_path / "sky.csv"
    pacsv.write_csv(pa.table({"ra": [180.0], "dec": [0.0]}), sky)
    argv = ["--band", "g", "--image", str(img), "--sigma", "1", "--psf-fwhm", "2px", "--flux-unit", "nJy",
            "--repo", str(tmp_path / "r")]
    _fails(capsys, [*argv, "--catalog", str(sky)], str(img), "--pixel-scale")
    _fails(capsys, [*argv, "--catalog", str(sky), "--pixel-scale", "0.2"], str(sky), "no celestial WCS")


def test_rows_off_the_image_are_skipped_with_a_count(synthetic, tmp_path, capsys, caplog):
    s = synthetic
    cat = s.root / "cat.parquet"
    x = np.r_[s.x, -5.0, SHAPE[1] + 2.0, np.nan]
    y = np.r_[s.y, 10.0, 10.0, 3.0]
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": x, "y": y}), cat)
    with caplog.at_level(logging.WARNING, logger="forcedphot.ingest"):
        assert main(["ingest", "fits", *_band(s), "--catalog", str(cat), "--repo", str(tmp_path / "repo")]) == 0
    assert f"3 of {x.size} catalog rows are off the image" in caplog.text
    pq.write_table(pa.table({"x": [-10.0, 500.0], "y": [1.0, 1.0]}), cat)
    _fails(capsys, [*_band(s), "--catalog", str(cat), "--repo", str(tmp_path / "repo2")], str(cat),
           "none of the 2 catalog rows")


def test_refuses_existing_repository_unless_overwrite(synthetic, tmp_path, capsys):
    s = synthetic
    argv = ["ingest", "fits", *_band(s), "--catalog", str(_catalog(s)), "--repo", str(tmp_path / "repo")]
    assert main(argv) == 0
    assert main(["run", "--repo", str(tmp_path / "repo"), "-q"]) == 0
    assert list((tmp_path / "repo" / "forced_source").rglob("*.parquet"))
    capsys.readouterr()
    _fails(capsys, argv[2:], "repository exists", "--overwrite")
    outputs = {p: p.read_bytes() for p in (tmp_path / "repo" / "forced_source").rglob("*.parquet")}
    assert main([*argv, "--overwrite"]) == 0  # the same inputs again: its outputs are kept, and up to date
    assert {p: p.read_bytes() for p in (tmp_path / "repo" / "forced_source").rglob("*.parquet")} == outputs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    capsys.readouterr()
    assert main(["run", "--repo", str(tmp_path / "repo"), "-q"]) == 0
    assert "0 quanta measured (0 rows), 1 up to date" in capsys.readouterr().out
    (tmp_path / "repo" / "notes.txt").write_text("mine")  # a file ingest did not write: never overwritten
    _fails(capsys, [*argv[2:], "--overwrite"], "holds notes.txt, which forcedphot did not write")
    assert (tmp_path / "repo" / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    _fails(capsys, [*argv[2:-1], str(other), "--overwrite"], str(other), "not an empty folder")
    assert (other / "keep.txt").exists()


# -- duplicate ids and positions ---------------------------------------------------------
def _sky_catalog(s, path, x, y, **columns):
    ra, dec = s.wcs.all_pix2world(x, y, 0)
    Table({**columns, "ra": ra, "dec": dec}).write(path, overwrite=True)
    return path


def test_duplicate_ids_are_refused_naming_them(synthetic, tmp_path, capsys):
    """Repeated ids are refused with the ids and their 0-based rows; keyed by row number, ids are not used."""
    s = synthetic
    ids = np.arange(100, 100 + s.x.size)
    ids[[7, 9]] = ids[2]
    ids[11] = ids[4]
    cat = _sky_catalog(s, s.root / "ids.fits", s.x, s.y, NUMBER=ids)
    repo = tmp_path / "repo"
    line = _fails(capsys, [*_band(s), "--catalog", str(cat), "--repo", str(repo)], str(cat),
                  "column 'NUMBER' repeats ids", "102 (rows 2, 7, 9)", "104 (rows 4, 11)", "--key row")
    assert "100 " not in line and "103 " not in line
    assert not repo.exists()
    _fails(capsys, [*_band(s), "--catalog", str(cat), "--id-col", "NUMBER", "--repo", str(repo)], "repeats ids")
    assert main(["ingest", "fits", *_band(s), "--catalog", str(cat), "--key", "row", "--repo", str(repo)]) == 0


def test_duplicate_positions_are_refused_naming_them(synthetic, tmp_path, capsys):
    """Rows repeating a position (within 0.1 px) are refused with their rows and ids; a real neighbour at 0.5 FWHM
    and a catalog parent sitting on its only child are not duplicates."""
    s = synthetic
    half_fwhm = 0.5 * 3.0  # px, the --psf-fwhm of _band
    x = np.r_[s.x, s.x[2], s.x[5] + 0.05, s.x[0] + half_fwhm]  # rows 12, 13 repeat rows 2, 5; row 14 is a neighbour
    y = np.r_[s.y, s.y[2], s.y[5] - 0.05, s.y[0]]
    ids = np.arange(100, 100 + x.size)
    cat = _sky_catalog(s, s.root / "dup.fits", x, y, NUMBER=ids)
    repo = tmp_path / "repo"
    line = _fails(capsys, [*_band(s), "--catalog", str(cat), "--repo", str(repo)], str(cat),
                  "2 groups of rows at one position (within 0.1 px)", "rows 2 and 12 (ids 102 and 112)",
                  "rows 5 and 13 (ids 105 and 113)", "--duplicates drop", "--duplicates flag")
    message = line.replace(str(cat), "")  # the rows and ids it names (the path may hold any digits)
    assert "114" not in message and "rows 0 and" not in message
    assert not repo.exists()
    cat = _sky_catalog(s, s.root / "pairs.fits", x[[*range(12), 14]], y[[*range(12), 14]], NUMBER=ids[[*range(12), 14]])
    assert main(["ingest", "fits", *_band(s), "--catalog", str(cat), "--repo", str(repo)]) == 0
    parent = np.r_[np.zeros(s.x.size, np.int64), 0]
    parent[3] = 999  # row 3's parent is row 12 (id 999), at row 3's position
    cat = _sky_catalog(s, s.root / "family.fits", np.r_[s.x, s.x[3]], np.r_[s.y, s.y[3]],
                       id=np.r_[ids[:s.x.size], 999], parent=parent)
    assert main(["ingest", "fits", *_band(s), "--catalog", str(cat), "--repo", str(tmp_path / "family")]) == 0


def test_key_id_needs_an_integer_id_column(synthetic, tmp_path, capsys):
    s = synthetic
    cat = _sky_catalog(s, s.root / "noid.fits", s.x, s.y)
    _fails(capsys, [*_band(s), "--catalog", str(cat), "--key", "id", "--repo", str(tmp_path / "r")], str(cat),
           "--key id needs an id column", "--id-col")
    cat = _sky_catalog(s, s.root / "names.fits", s.x, s.y, name=[f"star{i}" for i in range(s.x.size)])
    _fails(capsys, [*_band(s), "--catalog", str(cat), "--id-col", "name", "--key", "id", "--repo", str(tmp_path / "r")],
           str(cat), "column 'name' does not hold an integer id", "--key row")
