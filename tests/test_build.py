"""The build stops with one clear message when pkg-config or libnl is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = "libnl-3-dev libnl-route-3-dev libnl-genl-3-dev libnl-cli-3-dev"


def setup_py(env: dict) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_the_build_finds_libnl_with_pkg_config() -> None:
    p = setup_py(dict(os.environ))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("plugqdisc")


def test_missing_libnl_names_the_packages(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path), PKG_CONFIG_PATH=str(tmp_path))
    p = setup_py(env)
    assert p.returncode != 0
    assert "libnl-3.0" in p.stderr and PACKAGES in p.stderr and "libnl3-devel" in p.stderr


def test_missing_pkg_config_names_the_packages(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a PATH with our interpreter's folder but no pkg-config
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python")
    if shutil.which("pkg-config", path=str(bindir)):
        pytest.fail("pkg-config should not be reachable here")
    p = setup_py(dict(os.environ, PATH=str(bindir)))
    assert p.returncode != 0
    assert "pkg-config" in p.stderr and PACKAGES in p.stderr


def test_the_core_is_every_c_file_in_csrc_but_the_glue(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file added to csrc/ is built into the extension, the C tests and nothing else
    needs a list edit (setup.py's core_sources, which tests/ and bench/ use too)."""
    from nettools import setup_py
    build = setup_py()
    here = sorted(n for n in os.listdir(os.path.join(ROOT, "csrc")) if n.endswith(".c"))
    assert build.core_sources() == ["csrc/" + n for n in here if n != "module.c"]
    (tmp_path / "csrc").mkdir()
    for name in ("zz_new.c", "module.c", "a_new.c", "a_new.h", "notes.txt"):
        (tmp_path / "csrc" / name).write_text("")
    assert build.core_sources(str(tmp_path)) == ["csrc/a_new.c", "csrc/zz_new.c"]
