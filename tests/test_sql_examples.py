"""Every file of the SQL library (sql/examples/) is documented, listed in the query guide and runs on the tiny survey."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from forcedphot import query
from forcedphot.cli import main
from forcedphot.resources import EXAMPLES_DIR

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "query.md"
EXAMPLES = sorted(p.stem for p in EXAMPLES_DIR.glob("*.sql"))
PARAMS = {"snr_histogram": {"bins_per_decade": 4}, "mag_histogram": {"bin_width": 0.5},
          "colour_magnitude": {"r_min": 16, "r_max": 24, "colour_min": 0.0, "colour_max": 1.0},
          "colour_colour": {"min_snr": 20}}


def _header(name: str) -> dict[str, str]:
    lines = []
    for line in (EXAMPLES_DIR / f"{name}.sql").read_text().splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[2:].strip())
    fields, key = {}, None
    for line in lines:
        m = re.match(r"(Answers|Parameters|Run):\s*(.*)", line)
        key = m.group(1) if m else key
        fields[key] = (fields.get(key, "") + " " + (m.group(2) if m else line)).strip()
    return fields


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_documented_and_listed(name):
    header = _header(name)
    assert set(header) == {"Answers", "Parameters", "Run"}, name
    body = (EXAMPLES_DIR / f"{name}.sql").read_text()
    used = set(re.findall(r"\$(\w+)", "\n".join(l for l in body.splitlines() if not l.startswith("--"))))
    documented = set(re.findall(r"\$(\w+)", header["Parameters"]))
    assert used == documented, (name, used, documented)
    assert f"--example {name}" in header["Run"]
    assert f"`{name}`" in GUIDE.read_text(), f"{GUIDE.name} does not list {name}"


@pytest.fixture(scope="module")
def results(measured_tiny_repo) -> dict:
    out = {}
    for name in EXAMPLES:
        params = PARAMS.get(name)
        if name == "cone_search":
            star = query.sql(measured_tiny_repo, "SELECT coord_ra, coord_dec FROM object ORDER BY r_psfMag LIMIT 1")
            params = {"ra": star.column("coord_ra")[0].as_py(), "dec": star.column("coord_dec")[0].as_py(),
                      "radius_arcsec": 10.0}
        out[name] = (params, query.sql(measured_tiny_repo, (EXAMPLES_DIR / f"{name}.sql").read_text(), params).to_pylist())
    return out


def test_every_example_runs_with_rows(results):
    assert set(results) == set(EXAMPLES) and len(EXAMPLES) >= 9
    for name, (_, rows) in results.items():
        assert rows, name


def test_example_answers_are_plausible(results):
    depth = results["depth_5sigma"][1]
    assert {r["band"] for r in depth} == {"g", "r", "i", "z"}
    assert all(22 < r["depth_5sigma_from_errors"] < 30 for r in depth)
    flags = results["flag_rates"][1]
    assert all(0 <= r["rate"] <= 1 for r in flags) and any(r["rate"] > 0 for r in flags)
    assert {"psfFlux_flag", "pixelFlags_edge"} <= {r["flag"] for r in flags}
    hist = results["mag_histogram"][1]
    assert all(r["psfMag_bin"] % 0.5 == 0 for r in hist)
    snr = results["snr_histogram"][1]
    assert sum(r["n"] for r in snr if r["band"] == "g") == next(r for r in depth if r["band"] == "g")["n_primary"]
    cmd = results["colour_magnitude"][1]
    assert cmd and all(16 <= r["r_psfMag"] <= 24 and 0 <= r["g_r_psfColor"] <= 1 for r in cmd)  # rounded to 3 digits
    stars = [r for r in results["truth_comparison"][1] if r["kind"] == "star"]
    assert stars and all(abs(r["median_psf_ratio"] - 1) < 0.02 for r in stars)
    params, cone = results["cone_search"]
    assert cone[0]["separation_arcsec"] < 1e-6 and all(r["separation_arcsec"] <= 10 for r in cone)
    assert [r["separation_arcsec"] for r in cone] == sorted(r["separation_arcsec"] for r in cone)


def test_cli_runs_an_installed_example_with_parameters(measured_tiny_repo, capsys):
    assert main(["sql", "--repo", str(measured_tiny_repo), "--example", "mag_histogram", "--param", "bin_width=1",
                 "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(float(r["psfMag_bin"]).is_integer() for r in rows)
    assert main(["sql", "--repo", str(measured_tiny_repo), "--example", "no_such_example"]) == 2
    assert "known examples: " in capsys.readouterr().err
