"""Sphinx configuration of the rtgevent documentation.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The build needs no network (no intersphinx) and no theme beyond Sphinx's own alabaster.
"""

from __future__ import annotations

import sys
from pathlib import Path

# the package from this checkout, whether or not it is installed
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rtgevent

# -- Project -----------------------------------------------------------------

project = "rtgevent"
author = "the rtgevent authors"
copyright = "the rtgevent authors"
release = rtgevent.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
# architecture.md is shown by architecture.rst (as a literal include), not parsed itself
exclude_patterns = ["_build", "architecture.md"]
templates_path: list[str] = []

# `Name` in docstrings is a cross-reference when Sphinx knows the name, plain code otherwise
default_role = "py:obj"
nitpicky = False
pygments_style = "sphinx"

# -- autodoc -----------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "class"

# -- HTML --------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"rtgevent {release}"
html_short_title = "rtgevent"
html_theme_options = {
    "description": "A realtime WebSocket gateway framework on gevent, with Flask integration.",
    "fixed_sidebar": True,
    "show_relbars": True,
    "sidebar_collapse": True,
    "page_width": "1180px",
    "sidebar_width": "240px",
}
html_sidebars = {
    "**": [
        "about.html",
        "navigation.html",
        "relations.html",
        "searchbox.html",
    ]
}
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False
