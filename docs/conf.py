"""Sphinx configuration of the forcedphot documentation (``make docs``).

The build is offline and fast: no intersphinx, no notebooks. The reference pages are generated
from the code: the command line from ``forcedphot.cli.build_parser`` (sphinx-argparse), the Python
API from docstrings (autodoc) and the output columns from ``schemas/*.yaml`` (``_ext/forcedphot_docs.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import forcedphot  # noqa: E402  (installed: `make venv` or `pip install -e '.[docs]'`)

project = "forcedphot"
author = "the forcedphot developers"
copyright = "the forcedphot developers"
release = forcedphot.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxarg.ext",
    "forcedphot_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
# docs/incoming/: notes waiting to be folded into these pages (not part of the site)
exclude_patterns = ["_build", "incoming", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links to headings down to ###

autodoc_default_options = {"members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"forcedphot {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

highlight_language = "text"  # unlabelled blocks are command lines, outputs and tables
