"""Test bed: kernel tests run under a real sch_plug, each in a fresh network namespace.

Tests marked ``kernel`` need a kernel with sch_plug. On the host (whose kernel
has none) each one is collected as a proxy: the first proxy to run boots the lab
once and runs every selected kernel test inside it with pytest, which writes a
report; each proxy then passes, fails (with the inner traceback) or skips as its
test did inside. Inside the lab (or with PLUGQDISC_NATIVE=1 on a host whose
kernel has sch_plug) the kernel tests run directly.

Every kernel test gets its own network namespace (unshare(CLONE_NEWNET) on the
test's thread, lo brought up, and the thread's namespace restored after), so
tests cannot see each other's qdiscs and never touch the host's interfaces.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional

import pytest

from plugqdisc.netns import NetNamespace

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# Set for the pytest run that conftest starts inside the lab.
INNER_ENV = "PLUGQDISC_INNER"
LAB_TIMEOUT = float(os.environ.get("PLUGQDISC_LAB_TIMEOUT", "1500"))


def in_uml() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "User Mode Linux" in f.read()
    except OSError:
        return False


RUN_NATIVE = bool(os.environ.get(INNER_ENV) or os.environ.get("PLUGQDISC_NATIVE") or in_uml())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lab-report", default=None, help="(internal) where the inner run "
                     "inside the lab writes its results")


# CI sets it: no lab, or no kernel test passing in it, is a failure, never a silent skip.
REQUIRE_LAB = bool(os.environ.get("PLUGQDISC_REQUIRE_LAB"))
_kernel_passed: List[str] = []
_lab_nodeids: set = set()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: needs a kernel with sch_plug")
    if REQUIRE_LAB and not RUN_NATIVE:
        from plugqdisc import lab
        if not os.path.exists(lab.DEFAULT_KERNEL):
            raise pytest.UsageError("PLUGQDISC_REQUIRE_LAB is set but the lab kernel %s is "
                                    "missing: apt-get install user-mode-linux"
                                    % lab.DEFAULT_KERNEL)
    path = config.getoption("--lab-report")
    if path:
        config.pluginmanager.register(_Reporter(path), "plugqdisc-lab-reporter")


# ---- inside: record each test's outcome for the host ----

class _Reporter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.results: Dict[str, Dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        r = self.results.setdefault(report.nodeid, {"outcome": "passed", "longrepr": "",
                                                    "duration": 0.0})
        r["duration"] += report.duration
        if report.failed:
            r["outcome"] = "failed"
            r["longrepr"] += "[%s] %s\n" % (report.when, report.longreprtext)
            for name, text in report.sections:
                r["longrepr"] += "---- %s ----\n%s\n" % (name, text)
        elif report.skipped and r["outcome"] == "passed":
            r["outcome"] = "skipped"
            longrepr = report.longrepr
            r["longrepr"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)

    def pytest_sessionfinish(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.results, f)
        os.replace(self.path + ".tmp", self.path)


# ---- on the host: proxies that report what happened inside the lab ----

class _LabRun:
    """One boot of the lab running every selected kernel test; done on first need."""

    def __init__(self, nodeids: List[str]) -> None:
        self.nodeids = nodeids
        self.results: Optional[Dict[str, Dict[str, Any]]] = None
        self.error = ""
        self.output = b""

    def get(self) -> Dict[str, Dict[str, Any]]:
        if self.results is None:
            self._run()
        assert self.results is not None
        return self.results

    def _run(self) -> None:
        from plugqdisc import lab

        workdir = tempfile.mkdtemp(prefix="plugqdisc-tests-")
        report = os.path.join(workdir, "report.json")
        # The pytest console script beside our interpreter, so that the inner run imports
        # the same plugqdisc (python -m would put the working directory first on sys.path).
        script = os.path.join(os.path.dirname(sys.executable), "pytest")
        runner = [script] if os.path.exists(script) else [sys.executable, "-m", "pytest"]
        cmd = runner + ["-q", "-p", "no:cacheprovider", "--rootdir", ROOT,
                        "--lab-report", report] + self.nodeids
        env = dict(os.environ, **{INNER_ENV: "1"})
        try:
            done = lab.run(cmd, env=env, cwd=ROOT, timeout=LAB_TIMEOUT, capture_output=True)
            self.output = (done.stdout or b"") + (done.stderr or b"")
            with open(report) as f:
                self.results = json.load(f)
        except (lab.LabError, OSError, ValueError) as e:
            self.results = {}
            self.error = "the kernel tests did not run in the lab: %s\n%s" % (
                e, self.output.decode(errors="replace")[-4000:])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


class LabFailure(Exception):
    pass


class LabItem(pytest.Item):
    """Stands on the host for one kernel test run inside the lab."""

    def __init__(self, *, lab_run: _LabRun, target: pytest.Item, **kw: Any) -> None:
        super().__init__(**kw)
        self.lab_run = lab_run
        self.target_nodeid = target.nodeid
        self.location_ = target.location
        for mark in target.iter_markers():
            self.own_markers.append(mark)

    def runtest(self) -> None:
        results = self.lab_run.get()
        r = results.get(self.target_nodeid)
        if r is None:
            raise LabFailure(self.lab_run.error or "no result from the lab for %s; the inner "
                             "run said:\n%s" % (self.target_nodeid,
                                                self.lab_run.output.decode(errors="replace")[-4000:]))
        if r["outcome"] == "skipped":
            pytest.skip("in the lab: %s" % r["longrepr"])
        if r["outcome"] == "failed":
            raise LabFailure(r["longrepr"])

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, LabFailure):
            return "(ran in the lab)\n" + str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> Any:
        return self.location_[0], self.location_[1], "[lab] " + self.location_[2]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: List[pytest.Item]) -> None:
    if RUN_NATIVE:
        return
    kernel = [it for it in items if it.get_closest_marker("kernel")]
    if not kernel:
        return
    lab_run = _LabRun([it.nodeid for it in kernel])
    _lab_nodeids.update(lab_run.nodeids)
    for i, it in enumerate(items):
        if it.get_closest_marker("kernel"):
            items[i] = LabItem.from_parent(it.parent, name=it.name, lab_run=lab_run, target=it)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and report.nodeid in _lab_nodeids:
        _kernel_passed.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_LAB and not RUN_NATIVE and not _kernel_passed and exitstatus == 0:
        sys.stderr.write("\nPLUGQDISC_REQUIRE_LAB: no kernel test passed in the lab\n")
        session.exitstatus = 1


# ---- inside: a fresh network namespace for every kernel test ----

@pytest.fixture(autouse=True)
def _fresh_netns(request: pytest.FixtureRequest) -> Iterator[None]:
    if not request.node.get_closest_marker("kernel"):
        yield
        return
    with NetNamespace():
        yield
