"""Sphinx configuration for the latim-captum documentation (built with ``-W``: warnings are errors)."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
HERE = Path(__file__).resolve().parent

project = "latim-captum"
author = "latim-captum developers"
copyright = "2025, latim-captum developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]
html_theme = "alabaster"
html_static_path: list[str] = []
exclude_patterns = ["_build", "_generated/*.py"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields are documented once, by autodoc
suppress_warnings = ["config.cache"]
nitpicky = False


def _make_figures(app) -> None:
    """Regenerate the comparison figures from the script, so the docs always show what the code does."""
    runpy.run_path(str(HERE / "make_figures.py"), run_name="__main__")
    (HERE / "_generated").mkdir(exist_ok=True)
    runpy.run_path(str(HERE / "scripts" / "hybrid_figure.py"))["main"](str(HERE / "_generated" / "hybrid_l2_maps.png"))


def setup(app):
    app.connect("builder-inited", _make_figures)
