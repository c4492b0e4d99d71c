"""Sphinx configuration for the rnla / rnla_kfac documentation.

Build with ``make docs`` (HTML in ``docs/_build/html``, warnings are errors). The
build needs no network: intersphinx is off unless ``RNLA_DOCS_INTERSPHINX=1`` is set,
the theme loads no remote assets, and only MathJax is fetched by the reader's browser
when a page with formulas is viewed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The build computes only small examples (the plot directive); multi-threaded BLAS
# on a busy machine would make them many times slower.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the working tree, installed or not

import rnla  # noqa: E402

project = "rnla"
author = "rnla developers"
copyright = "2026, rnla developers"  # noqa: A001
version = release = rnla.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
]
if os.environ.get("RNLA_DOCS_INTERSPHINX") == "1":  # needs network; off by default
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "torch": ("https://pytorch.org/docs/stable", None),
    }

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "conftest.py"]
root_doc = "index"
default_role = "code"

# -- autodoc / autosummary -------------------------------------------------------------
# One page per public object, generated at build time into docs/api/generated/
# (git-ignored), so the API reference always follows the docstrings in the code.
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc's Parameters section carries the types
autodoc_member_order = "bysource"

# -- numpydoc --------------------------------------------------------------------------
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True
# Parameters documented and matching the signature (PR01, PR02, PR10) for every public
# function and class; named-tuple results document their fields as attributes. That
# every public name has an example is checked in tests/test_docs.py.
numpydoc_validation_checks = {"PR01", "PR02", "PR10"}
numpydoc_validation_exclude = {
    r"(Result|ErrorEstimate)$",  # named tuples: fields documented as attributes
    r"\.__init__$",
    r"\.[A-Z]\w*\.\w+$",  # methods and properties (their class documents the API)
    r"^rnla_kfac\.experiments\.",  # application code, documented but not validated
    r"^rnla_kfac\.distributed\.",  # internal building blocks, not the public API
}

# -- matplotlib plot directive (figures computed at build time, small PNGs) ----------
plot_formats = [("png", 100)]
plot_html_show_source_link = False
plot_html_show_formats = False
plot_include_source = False
plot_rcparams = {"figure.figsize": (6.4, 3.6), "font.size": 9}

# -- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"rnla {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "icon_links": [],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": [], "installation": [], "quickstart": []}
