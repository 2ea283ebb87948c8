"""The tiny survey's report, written once per session through the command line."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from forcedphot.cli import main


@dataclass
class Report:
    folder: Path
    stdout: str
    seconds: float


@pytest.fixture(scope="session")
def tiny_report(measured_tiny_repo, tmp_path_factory) -> Report:
    """`forcedphot report` over the measured tiny survey (read-only)."""
    out = tmp_path_factory.mktemp("report") / "qa"
    stdout = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        rc = main(["report", "--repo", str(measured_tiny_repo), "--out", str(out)])
    seconds = time.perf_counter() - start
    assert rc == 0
    return Report(out, stdout.getvalue(), seconds)
