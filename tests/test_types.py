"""The types that ship with the package hold: mypy --strict, and the stub of the
extension against the built module."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
mypy = pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")


def run(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_mypy_strict_is_clean() -> None:
    p = run("mypy", "--strict", "plugqdisc")
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_stub_matches_the_extension() -> None:
    p = run("mypy.stubtest", "plugqdisc._plugqdisc")
    assert p.returncode == 0, p.stdout + p.stderr
