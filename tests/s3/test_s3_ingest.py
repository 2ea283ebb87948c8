"""`ingest fits --repo s3://...`: ingested locally, uploaded, committed by the manifest's conditional put."""

from __future__ import annotations

from astropy.table import Table

from forcedphot import s3repo
from forcedphot.cli import main
from forcedphot.config import ForcedPhotConfig
from tests.ingest.conftest import synthetic  # noqa: F401  (the fixture: synthetic FITS coadds and a catalog)


def test_ingest_fits_into_s3(synthetic, s3_bucket, tmp_path, capsys, monkeypatch):  # noqa: F811
    s = synthetic
    cat = s.root / "cat.fits"
    Table({"ra": s.ra, "dec": s.dec}).write(cat)
    uri = f"s3://{s3_bucket}/ingested"
    argv = ["ingest", "fits", "--band", "g", "--image", str(s.files["g"]["image"]), "--variance",
            str(s.files["g"]["variance"]), "--psf-fwhm", "3px", "--flux-unit", "nJy", "--catalog", str(cat),
            "--repo", uri]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"into {uri}; next: forcedphot run --repo {uri}" in out
    assert list(work.iterdir()) == []  # no local "s3:" folder
    repo = s3repo.open_repository(uri)
    assert any(r.startswith("coadd/") for r in repo.inputs()) and repo.metadata()["ingest"]["bands"]["g"]
    rows = s3repo.status_rows(repo, ForcedPhotConfig())
    assert rows and {r["state"] for r in rows} == {"new"}
    assert main(argv) == 2 and "repository exists" in capsys.readouterr().err
