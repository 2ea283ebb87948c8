"""The project's non-Python sources: ``sql/``, ``schemas/`` and ``datasets/``.

They are top-level folders of the project that ship inside the package as ``forcedphot.sql``,
``forcedphot.schemas`` and ``forcedphot.datasets`` (``setup.py`` maps them), so they are found with
``importlib.resources`` in a wheel and in an editable install alike, from any working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _folder(name: str) -> Path:
    # Installed packages are plain folders (the package is never imported from a zip file).
    try:
        return Path(str(files(f"forcedphot.{name}")))
    except ModuleNotFoundError as exc:  # an editable install made before setup.py mapped the folders
        raise ImportError(f"forcedphot.{name} is not installed; reinstall forcedphot (`make venv` or "
                          "`pip install -e .`)") from exc


SQL_DIR = _folder("sql")
SCHEMA_DIR = _folder("schemas")
DATASETS_DIR = _folder("datasets")
EXAMPLES_DIR = SQL_DIR / "examples"


def read_sql(name: str) -> str:
    """The text of ``sql/<name>.sql``."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"{path}: SQL file not found (forcedphot is installed without its sql/ folder)")
    return path.read_text()
