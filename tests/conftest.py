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


@pytest.fixture(scope="session")
def star_field_repo(tmp_path_factory) -> Path:
    """Many isolated stars and few galaxies, no artefacts: for flux-versus-truth pulls."""
    root = tmp_path_factory.mktemp("stars") / "repo"
    recipe = load_recipe("tiny", seed=11, patch_inner=600, n_stars=1500, n_galaxies=80, n_close_pairs=0,
                         n_bright_stars=0, star_mag=(18.0, 23.0), isolation_radius=16.0, bad_columns=(),
                         no_data_boxes=())
    simulate(recipe, root, progress=False)
    summary = run_all(_repo(root), ForcedPhotConfig(), progress=False)
    assert summary.ok, summary.failed
    return root


def _repo(root):
    from forcedphot.repository import Repository

    return Repository(root)
