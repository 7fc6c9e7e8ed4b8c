"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors; CI runs it)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "fastact"
author = "the fastact developers"
copyright = "2026, the fastact developers"

import fastact  # noqa: E402

release = version = fastact.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",   # numpydoc-style sections in the docstrings
    "sphinx.ext.mathjax",
    "myst_parser",           # design.md and performance.md
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
autodoc_member_order = "bysource"
autodoc_mock_imports = ["numba.cuda"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
html_static_path = []


def setup(app):
    """``.. fastact-help:: train``: the ``--help`` text of a subcommand, taken from the parser itself."""
    from docutils import nodes
    from docutils.parsers.rst import Directive

    from fastact.__main__ import build_parser

    class FastactHelp(Directive):
        optional_arguments = 1

        def run(self):
            parser = build_parser()
            if self.arguments:
                sub = next(a for a in parser._actions if a.dest == "command")
                parser = sub.choices[self.arguments[0]]
            os.environ["COLUMNS"] = "100"
            text = parser.format_help()
            return [nodes.literal_block(text, text)]

    app.add_directive("fastact-help", FastactHelp)
