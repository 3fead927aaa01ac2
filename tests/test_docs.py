"""The documentation builds, with every warning an error (as `make docs` builds it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("sphinx", reason="sphinx is in the docs extra: pip install -e '.[docs]' "
                    "(make venv installs it)")


def test_the_docs_build_without_warnings(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                        "html", "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"),
                        str(tmp_path / "html")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    for name in ("PlugQdisc.wait_buffered", "PlugQdisc.parent", "PlugQdisc.expired",
                 "Match", "netns.NetNamespace", "lab.run", "KernelSupportError"):
        assert 'id="plugqdisc.%s"' % name in api, name
    recipes = (tmp_path / "html" / "recipes.html").read_text()
    for title in ("Hold only new connections", "Hold what arrives on a NIC",
                  "A hold that cannot outlive its holder"):
        assert title in recipes, title
    assert os.path.exists(tmp_path / "html" / "pytest.html")
