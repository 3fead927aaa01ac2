"""Why ``plugqdisc._plugqdisc`` would not import, in words that say what to do.

Used only when that import has failed: nothing here runs on a good import.
"""

from __future__ import annotations

import importlib.machinery
import os


def import_failed(error: ImportError) -> ImportError:
    """The error to raise in place of ``error``. When the package folder holds no
    built extension, it is a source tree (the current directory comes first on
    ``sys.path`` for ``python -m`` and ``python -c``) hiding the installed package."""
    here = os.path.dirname(os.path.abspath(__file__))
    built = [name for name in os.listdir(here)
             if name.startswith("_plugqdisc.")
             and any(name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)]
    if built:
        return ImportError("plugqdisc's C extension %s would not load: %s (it needs libnl 3: "
                           "apt-get install libnl-3-200 libnl-route-3-200)"
                           % (os.path.join(here, built[0]), error), name="plugqdisc._plugqdisc")
    return ImportError(
        "plugqdisc was imported from %s, a source tree where its C extension is not built, "
        "rather than from where it is installed: Python puts the current directory first on "
        "sys.path for `python -m` and `python -c`. Either build it in place with "
        "`pip install -e .` in that tree, or run from another directory, or (Python 3.11+) "
        "use `python -P` to leave the current directory out of sys.path." % here,
        name="plugqdisc._plugqdisc")
