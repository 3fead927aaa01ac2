"""Sphinx configuration. Build with `make docs` (warnings are errors).

The API pages import the installed plugqdisc (``pip install -e '.[docs]'`` in a
checkout), C extension included, so that they show what users get.
"""

project = "plugqdisc"
author = "the plugqdisc authors"
copyright = "the plugqdisc authors; LGPL-2.1-or-later"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
nitpicky = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "hold a device's packets, release them on cue"}
