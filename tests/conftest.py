"""Fixtures that build tiny simulated surveys in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from forcedphot.config import ForcedPhotConfig
from forcedphot.runner import run_all
from forcedphot.sim import load_recipe, simulate

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def tiny_repo_master(tmp_path_factory) -> Path:
    """The tiny recipe simulated once per session (do not modify: copy it with ``tiny_repo``)."""
    root = tmp_path_factory.mktemp("tiny") / "repo"
    simulate(load_recipe("tiny"), root, progress=False)
    return root


@pytest.fixture
def tiny_repo(tiny_repo_master, tmp_path) -> Path:
    """A private, unmeasured copy of the tiny survey."""
    dst = tmp_path / "repo"
    shutil.copytree(tiny_repo_master, dst)
    return dst


@pytest.fixture(scope="session")
def measured_tiny_repo(tiny_repo_master, tmp_path_factory) -> Path:
    """The tiny survey with forced photometry run on every quantum (read-only)."""
    dst = tmp_path_factory.mktemp("tiny-measured") / "repo"
    shutil.copytree(tiny_repo_master, dst)
    summary = run_all(_repo(dst), ForcedPhotConfig(), progress=False)
    assert summary.ok, summary.failed
    return dst


STAR_FIELD = dict(seed=11, patch_inner=800, n_stars=2600, n_galaxies=140, n_close_pairs=0, n_bright_stars=0,
                  star_mag=(18.0, 23.0), isolation_radius=16.0, bad_columns=(), no_data_boxes=())


def _simulate_and_run(root: Path, **recipe) -> Path:
    simulate(load_recipe("tiny", **recipe), root, progress=False)
    summary = run_all(_repo(root), ForcedPhotConfig(), progress=False)
    assert summary.ok, summary.failed
    return root


@pytest.fixture(scope="session")
def star_field_repo(tmp_path_factory) -> Path:
    """Many isolated stars and few galaxies, no artefacts: for flux-versus-truth pulls."""
    return _simulate_and_run(tmp_path_factory.mktemp("stars") / "repo", **STAR_FIELD)


@pytest.fixture(scope="session")
def star_field_noiseless_repo(tmp_path_factory) -> Path:
    """The star field without pixel noise (same sources, PSFs and variance planes): the expected values."""
    return _simulate_and_run(tmp_path_factory.mktemp("stars-noiseless") / "repo", noise=False, **STAR_FIELD)


def _repo(root):
    from forcedphot.repository import Repository

    return Repository(root)
