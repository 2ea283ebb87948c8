"""Fixtures for ingest tests (helpers live in :mod:`tests.ingest.synth`)."""

import pytest

from tests.ingest.synth import Synthetic, make_synthetic


@pytest.fixture
def synthetic(tmp_path) -> Synthetic:
    """Two bands (g, r) of Gaussian stars with a TAN WCS and a variance HDU, in tmp_path/in."""
    return make_synthetic(tmp_path / "in")
