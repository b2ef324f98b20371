"""Sphinx configuration of the API reference: every public module's docstrings
(``sphinx-build -W -b html docs/api BUILD``; tests/test_api_docs.py builds it)."""

project = "anyarray_nn"
extensions = ["sphinx.ext.autodoc"]
autodoc_typehints = "none"  # the signatures show the defaults; the docstrings say the types
autodoc_member_order = "bysource"
html_theme = "alabaster"
exclude_patterns = ["_build"]
