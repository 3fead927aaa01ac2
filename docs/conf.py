"""Sphinx configuration. Build with `make docs` (warnings are errors).

The API pages import the installed plugqdisc (``pip install -e '.[docs]'`` in a
checkout), C extension included, so that they show what users get.
"""

import plugqdisc

project = "plugqdisc"
author = "the plugqdisc authors"
copyright = "the plugqdisc authors; LGPL-2.1-or-later"
release = version = plugqdisc.__version__

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
nitpicky = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "hold a device's packets, release them on cue"}
# Long lines in code blocks wrap instead of running off the page.
html_static_path = ["_static"]
html_css_files = ["plugqdisc.css"]
