"""The source distribution, built fresh: it holds every file of the tree (so that `make
test` runs from it), and its wheel installs in a new virtual environment and imports,
with the licence metadata and the pytest entry point. From the unpacked sdist (a source
tree without the built extension), `python -m plugqdisc.lab` runs and the C core says
what to do.

Offline: the build runs in this environment (the test extra brings setuptools, pkgconfig
and build) and the new environment gets the wheel alone, with no index."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = {".ci/run"}  # the repository's CI, not the package's


def run(*cmd: str, cwd: Path = ROOT, ok: bool = True) -> "subprocess.CompletedProcess[str]":
    # Without PYTHONPATH: the new environment must import its own plugqdisc, nothing else.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert p.returncode == 0, "%s failed:\n%s%s" % (" ".join(cmd), p.stdout, p.stderr)
    return p


def tree_files() -> Set[str]:
    """The files of this tree: what git tracks in a clone; in an unpacked sdist, every
    file but what .gitignore ignores."""
    if (ROOT / ".git").exists():
        return set(run("git", "ls-files").stdout.split("\n")) - {""}
    ignored = [line.rstrip("/") for line in (ROOT / ".gitignore").read_text().split("\n")
               if line and not line.startswith("#")]
    found = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in ignored)]
        for name in filenames:
            if not any(fnmatch.fnmatch(name, p) for p in ignored):
                found.add(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return found


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), ".")
    (path,) = out.glob("plugqdisc-*.tar.gz")
    return path


def test_the_sdist_holds_every_file_of_the_tree(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        shipped = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    missing = tree_files() - shipped - NOT_SHIPPED
    assert not missing, "not in the sdist (MANIFEST.in): %s" % sorted(missing)
    for needed in ("scripts/system-deps.sh", "Makefile", "LICENSE", "tests/conftest.py",
                   "tests/c/handle_api.c", "examples/reload_race.py", "bench/run.py",
                   "docs/conf.py", "plugqdisc/py.typed"):
        assert needed in shipped, needed
    assert not [n for n in shipped if n.endswith((".so", ".pyc"))]


def test_its_wheel_installs_in_a_new_venv_and_imports(sdist: Path, tmp_path: Path) -> None:
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
        "-w", str(tmp_path), str(sdist))
    (wheel,) = tmp_path.glob("plugqdisc-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index",
        "--no-deps", str(wheel))
    code = """if True:
        import json, os, importlib.metadata as md
        import plugqdisc, plugqdisc.lab, plugqdisc.netns
        q = plugqdisc.PlugQdisc("lo")  # constructing touches nothing
        q.close()
        meta = md.metadata("plugqdisc")
        dist = md.distribution("plugqdisc")
        print(json.dumps({
            "file": plugqdisc.__file__,
            "license": meta["License-Expression"],
            "license_files": meta.get_all("License-File"),
            "classifiers": meta.get_all("Classifier"),
            "plugin": [e.value for e in dist.entry_points if e.group == "pytest11"],
            "files": sorted(str(f) for f in dist.files),
        }))
    """
    got = json.loads(run(python, "-c", code, cwd=tmp_path).stdout)
    assert got["file"].startswith(str(venv))
    assert got["license"] == "LGPL-2.1-or-later" and got["license_files"] == ["LICENSE"]
    for classifier in ("Framework :: Pytest", "Operating System :: POSIX :: Linux",
                       "Programming Language :: C", "Topic :: System :: Networking",
                       "Programming Language :: Python :: 3.11"):
        assert classifier in got["classifiers"]
    assert got["plugin"] == ["plugqdisc.pytest_plugin"]
    for f in ("plugqdisc/py.typed", "plugqdisc/_plugqdisc.pyi", "plugqdisc/pytest_plugin.py",
              "plugqdisc-0.1.0.dist-info/licenses/LICENSE"):
        assert f in got["files"]

    # The unpacked sdist is a source tree without the built extension: from inside it,
    # `python -m` finds that tree first. The lab needs no extension and runs; the C core
    # says what to do on first use.
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.glob("plugqdisc-*/")
    p = run(python, "-m", "plugqdisc.lab", "--help", cwd=tree)
    assert "Run CMD as root" in p.stdout and not p.stderr
    p = run(python, "-c", "import plugqdisc; plugqdisc.PlugQdisc('lo')", cwd=tree, ok=False)
    assert p.returncode == 1 and "ImportError" in p.stderr
    assert "a source tree where its C extension is not built" in p.stderr
    assert "pip install -e ." in p.stderr and "python -P" in p.stderr
    for cmd, where in (([python, "-P"], tree), ([python], tmp_path)):  # the two fixes
        assert "Run CMD as root" in run(*cmd, "-m", "plugqdisc.lab", "--help", cwd=where).stdout
