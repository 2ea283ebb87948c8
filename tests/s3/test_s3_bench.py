"""``forcedphot bench --s3``: the same quanta from local disk and from an s3 repository on a local server the
bench starts and stops itself (:mod:`forcedphot.s3server`, shared with this folder's conftest)."""

from __future__ import annotations

import json
import math
import os

import pytest

from forcedphot import s3server
from forcedphot.cli import main


def test_the_s3_overhead_bench_on_the_tiny_survey_with_moto(tiny_repo, tmp_path, capsys):
    out = tmp_path / "s3.json"
    before = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")}
    assert main(["bench", "--repo", str(tiny_repo), "--s3", "--s3-server", "moto", "--band", "g", "--repeat", "1",
                 "--json", str(out), "-q"]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())["s3_overhead"]
    (row,) = result["rows"]
    assert row["server"] == "moto" and row["quanta"] == 4 and row["band"] == "g"
    # both sides measured the same quanta; the overhead is a finite number (not a timing target)
    assert row["local_s"] > 0 and row["s3_s"] > 0 and len(row["local_runs_s"]) == len(row["s3_runs_s"]) == 1
    assert math.isfinite(row["overhead_pct"]) and math.isfinite(row["overhead_s_per_quantum"])
    assert row["upload_mb"] > 0 and len(result["load_average"]["before"]) == 3
    assert "moto" in table and "overhead" in table and "load average" in table
    # the bench's environment is restored and its server stopped
    assert {k: os.environ.get(k) for k in before} == before
    with pytest.raises(SystemExit):  # an unknown server is refused by the argument parser, naming the choices
        main(["bench", "--repo", str(tiny_repo), "--s3", "--s3-server", "minio"])
    assert "choose from moto, seaweedfs" in capsys.readouterr().err


def test_a_missing_seaweedfs_is_a_row_that_says_so(tiny_repo, monkeypatch):
    from forcedphot.s3_overhead import format_s3_overhead, run_s3_overhead

    monkeypatch.setattr(s3server, "weed_executable", lambda: None)
    result = run_s3_overhead(tiny_repo, servers=["seaweedfs"], band="g", repeat=1, progress=False)
    assert result["rows"] == [{"server": "seaweedfs", "skipped": result["rows"][0]["skipped"]}]
    assert "not installed" in format_s3_overhead(result)
