"""Locations of the project's non-Python sources: ``sql/``, ``schemas/`` and ``datasets/``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "sql"
SCHEMA_DIR = ROOT / "schemas"
DATASETS_DIR = ROOT / "datasets"


def read_sql(name: str) -> str:
    """The text of ``sql/<name>.sql``."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"{path}: SQL file not found (is forcedphot installed from its source tree?)")
    return path.read_text()
