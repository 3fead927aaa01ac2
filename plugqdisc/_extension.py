"""Why ``plugqdisc._plugqdisc`` would not import, in words that say what to do.

Used only when that import has failed: nothing here runs on a good import.
"""

from __future__ import annotations

import importlib.machinery
import os
import types
from typing import Any, List


def _built(here: str) -> List[str]:
    return [name for name in os.listdir(here)
            if name.startswith("_plugqdisc.")
            and any(name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)]


def import_failed(error: ImportError) -> ImportError:
    """The error to raise in place of ``error``. When the package folder holds no
    built extension, it is a source tree (the current directory comes first on
    ``sys.path`` for ``python -m`` and ``python -c``) hiding the installed package."""
    here = os.path.dirname(os.path.abspath(__file__))
    built = _built(here)
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


class _Unbuilt(types.ModuleType):
    """Stands for the C extension in a source tree where it is not built: the package
    imports, so that ``python -m plugqdisc.lab`` (which needs no extension) runs from
    the tree, and the first use of the C core raises :func:`import_failed`'s error."""

    def __init__(self, error: ImportError) -> None:
        super().__init__("plugqdisc._plugqdisc")
        self._error = error
        unbuilt = self

        class Qdisc:  # PlugQdisc's base: constructing one says what to do
            def __new__(cls, *args: Any, **kwargs: Any) -> "Qdisc":
                raise import_failed(unbuilt._error)

        self.Qdisc = Qdisc

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # hasattr(), pickle, inspect: a plain module's answer
            raise AttributeError(name)
        raise import_failed(self._error)


def unbuilt(error: ImportError) -> Any:
    """What ``plugqdisc/__init__.py`` uses in place of the extension when importing it
    failed with ``error``: a stand-in in a source tree where it is not built; otherwise
    (built but it will not load) it raises :func:`import_failed`'s error at once."""
    here = os.path.dirname(os.path.abspath(__file__))
    if _built(here):
        raise import_failed(error) from error
    return _Unbuilt(error)
