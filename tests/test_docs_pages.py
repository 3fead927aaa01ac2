"""What the built pages must show: the type aliases the signatures use, defined and
linked; code blocks that wrap rather than run off the page; the version from its one
source; the recipes that hold one connection."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import plugqdisc

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("sphinx", reason="sphinx is in the docs extra: pip install -e '.[docs]' "
                    "(make venv installs it)")


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    p = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                        "html", "-d", str(out / "doctrees"), str(ROOT / "docs"),
                        str(out / "html")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return out / "html"


@pytest.mark.parametrize("alias", ["Netns", "MatchArg", "Address", "Ports"])
def test_type_aliases_are_defined_and_linked(html: Path, alias: str) -> None:
    api = (html / "api.html").read_text()
    assert 'id="plugqdisc.%s"' % alias in api  # defined ...
    assert api.count('href="#plugqdisc.%s"' % alias) >= 2  # ... and linked from uses
    assert hasattr(plugqdisc, alias)  # the name the page gives exists


def test_code_blocks_wrap_long_lines(html: Path) -> None:
    css = (html / "_static" / "plugqdisc.css").read_text()
    assert re.search(r"div\.highlight pre[^{]*\{[^}]*white-space:\s*pre-wrap", css), css
    for page in ("cli.html", "recipes.html", "api.html"):
        assert '_static/plugqdisc.css' in (html / page).read_text(), page


def test_the_pages_carry_the_packages_version(html: Path) -> None:
    assert plugqdisc.__version__ in (html / "index.html").read_text()


def test_the_recipes_hold_one_connection(html: Path) -> None:
    recipes = (html / "recipes.html").read_text()
    for text in ("Hold one connection", "The stale keep-alive race", "RemoteDisconnected",
                 "one_try", "server.expire", "test_one_connection_is_held_both_ways"):
        assert text in recipes, text
