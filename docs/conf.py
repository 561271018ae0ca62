"""Sphinx configuration of the specnmf documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` from
the repository root (``pip install -e ".[docs]"``).  The pages are MyST
markdown; the API reference is generated from the docstrings by autodoc and
numpydoc.  The Python code blocks of the pages are executed by
``specnmf/tests/test_docs.py``, not by Sphinx.
"""

import os
import sys

# The package is documented from this checkout, installed or not.
sys.path.insert(0, os.path.abspath(".."))

import specnmf  # noqa: E402

project = "specnmf"
author = "specnmf developers"
copyright = "2026, specnmf developers"
version = release = specnmf.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: `$...$` maths, ```{directive} blocks, heading anchors for #links.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# autodoc + numpydoc: members listed in each module's __all__, in source order.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"          # the numpydoc Parameters sections say the types
autodoc_mock_imports = []
numpydoc_show_class_members = False  # autodoc lists the members; no autosummary tables
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

nitpicky = False

html_theme = "alabaster"
html_title = f"specnmf {release}"
html_static_path = []
html_theme_options = {
    "description": "Non-negative templates from noisy spectra",
    "fixed_sidebar": True,
}
