"""The pytest plugin: fixtures ``netns`` and ``plug``, marker ``plugqdisc``, the lab runner.

Installing plugqdisc enables it (entry point ``pytest11``; ``-p no:plugqdisc``
turns it off). What it gives a test suite:

* ``@pytest.mark.plugqdisc``: the test needs a kernel with ``sch_plug``. It runs
  in a fresh network namespace with ``lo`` up (``plugqdisc(netns=False)``: in the
  namespace pytest runs in). Where the kernel lacks ``sch_plug``, the marked tests
  run inside the lab with ``--plugqdisc-lab`` (one User-Mode Linux boot for all of
  them, each outcome reported as that test's own), and are skipped without it.
* fixture ``netns``: a fresh network namespace with ``lo`` up, entered by the
  test's thread for the test's duration (:class:`plugqdisc.netns.NetNamespace`).
* fixture ``plug``: ``plug(device="lo", **PlugQdisc keywords)`` returns an attached
  :class:`plugqdisc.PlugQdisc`; after the test each one is released, detached if
  it created its qdisc, and closed, whatever the outcome.

Whether the kernel has ``sch_plug`` is decided once per session, and only when a
marked test is selected: yes inside User-Mode Linux (the lab); else as the
environment variable ``PLUGQDISC_NATIVE`` says (``1`` yes, ``0`` no); else by
trying to create a plug qdisc in a throwaway network namespace, on a thread of
its own (a few milliseconds; it needs root, and answers no without it).

Importing this module (pytest does it in every session) opens nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
from typing import Any, Dict, Iterator, List, Optional, Protocol, Tuple, Union

import pytest

from . import KernelSupportError, PlugQdisc, lab
from .netns import NetNamespace

__all__ = ["PlugFactory", "LabItem", "MARKER", "INNER_ENV", "NATIVE_ENV"]

#: The marker's name: ``@pytest.mark.plugqdisc``.
MARKER = "plugqdisc"
#: Set (to ``1``) in the environment of the pytest run inside the lab.
INNER_ENV = "PLUGQDISC_INNER"
#: ``1``: this kernel has sch_plug, run marked tests here; ``0``: it has not.
NATIVE_ENV = "PLUGQDISC_NATIVE"
#: The longest the lab may take for all the marked tests of a session, by default.
LAB_TIMEOUT = 1800.0

_SUPPORT = pytest.StashKey[Tuple[bool, str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("plugqdisc", "plugqdisc: tests that need a kernel with sch_plug")
    group.addoption(
        "--plugqdisc-lab", action="store_true", default=False,
        help="where this kernel has no sch_plug, run the tests marked plugqdisc inside the lab "
        "(User-Mode Linux with sch_plug; one boot for all of them) instead of skipping them")
    group.addoption(
        "--plugqdisc-lab-kernel", default=None, metavar="PATH",
        help="the User-Mode Linux kernel of the lab (default %s)" % lab.DEFAULT_KERNEL)
    group.addoption(
        "--plugqdisc-lab-timeout", type=float, default=LAB_TIMEOUT, metavar="SECONDS",
        help="stop the lab after this long; the marked tests then error (default %d)"
        % LAB_TIMEOUT)
    group.addoption("--plugqdisc-lab-report", default=None, help=argparse.SUPPRESS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "plugqdisc(netns=True): needs a kernel with sch_plug; runs in a fresh "
        "network namespace with lo up (netns=False: in pytest's own). Where the kernel lacks "
        "sch_plug: run in the lab with --plugqdisc-lab, skipped otherwise.")
    path = config.getoption("plugqdisc_lab_report")
    if path:
        config.pluginmanager.register(_Reporter(path), "plugqdisc-lab-reporter")


# ---- does this kernel have sch_plug? --------------------------------------------------

def _in_uml() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "User Mode Linux" in f.read()
    except OSError:
        return False


def _try_a_plug() -> Tuple[bool, str]:
    """Create a plug qdisc on lo in a throwaway namespace, on a thread of its own (the
    namespace, and the qdisc in it, go away with the thread)."""
    answer: List[Tuple[bool, str]] = []

    def attempt() -> None:
        try:
            with NetNamespace():
                q = PlugQdisc("lo")
                try:
                    q.attach()
                finally:
                    q.close()
            answer.append((True, "this kernel has sch_plug"))
        except KernelSupportError:
            answer.append((False, "this kernel has no sch_plug"))
        except Exception as e:  # no privilege, no netlink...: we cannot tell
            answer.append((False, "cannot tell whether this kernel has sch_plug (%s: %s)"
                           % (type(e).__name__, e)))

    t = threading.Thread(target=attempt, name="plugqdisc-probe")
    t.start()
    t.join()
    return answer[0]


def kernel_support(config: pytest.Config) -> Tuple[bool, str]:
    """(whether marked tests run here, why), decided once per session."""
    if _SUPPORT not in config.stash:
        native = os.environ.get(NATIVE_ENV, "")
        if os.environ.get(INNER_ENV) or _in_uml():
            found = (True, "inside User-Mode Linux")
        elif native:
            found = (native != "0", "%s=%s" % (NATIVE_ENV, native))
        else:
            found = _try_a_plug()
        config.stash[_SUPPORT] = found
    return config.stash[_SUPPORT]


# ---- fixtures -------------------------------------------------------------------------

@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    """A fresh network namespace with lo up, entered by the test's thread for its
    duration; ``netns.fd`` is open meanwhile (``PlugQdisc(..., netns=netns.fd)``)."""
    with NetNamespace() as ns:
        yield ns


class PlugFactory(Protocol):
    """The type of the ``plug`` fixture."""

    def __call__(self, device: Union[str, int] = "lo", *, replace: bool = False,
                 **kwargs: Any) -> PlugQdisc: ...


@pytest.fixture
def plug() -> Iterator[PlugFactory]:
    """``plug(device="lo", *, replace=False, **PlugQdisc keywords)``: an attached
    PlugQdisc (passing: call ``buffer()`` to hold). After the test, each one is
    released, detached if it created its qdisc, and closed."""
    made: List[PlugQdisc] = []

    def factory(device: Union[str, int] = "lo", *, replace: bool = False,
                **kwargs: Any) -> PlugQdisc:
        q = PlugQdisc(device, **kwargs)
        made.append(q)
        return q.attach(replace=replace)

    yield factory
    errors: List[BaseException] = []
    for q in reversed(made):
        try:
            if q.attached and q.created:
                q.detach()
            elif q.attached:
                q.release()  # adopted: leave the qdisc, passing
        except Exception as e:  # the others are cleaned all the same; the first is raised
            errors.append(e)
        finally:
            q.close()
    if errors:
        raise errors[0]


@pytest.fixture(autouse=True)
def _plugqdisc_marked_netns(request: pytest.FixtureRequest) -> None:
    """A test marked plugqdisc runs in the ``netns`` fixture's namespace (set up before
    its other function fixtures, torn down after them) unless marked netns=False."""
    mark = request.node.get_closest_marker(MARKER)
    if mark is None:
        return
    if mark.args or set(mark.kwargs) - {"netns"}:
        raise TypeError("%s: the plugqdisc marker takes only netns=True/False, not %s"
                        % (request.node.nodeid, mark))
    if mark.kwargs.get("netns", True):
        request.getfixturevalue("netns")


# ---- on the host: marked tests skipped, or run in one lab boot ------------------------

@pytest.hookimpl(trylast=True)  # after -m/-k deselection: boot for the selected only
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: List[pytest.Item]) -> None:
    marked = [i for i, it in enumerate(items) if it.get_closest_marker(MARKER)]
    if not marked:
        return
    native, why = kernel_support(config)
    if native:
        return
    if not config.getoption("plugqdisc_lab"):
        reason = ("needs a kernel with sch_plug (%s): run pytest with --plugqdisc-lab to run "
                  "it in the lab (User-Mode Linux)" % why)
    else:
        try:
            lab.find_kernel(config.getoption("plugqdisc_lab_kernel"),
                            option="--plugqdisc-lab-kernel")
            reason = ""
        except lab.LabError as e:
            reason = "--plugqdisc-lab: %s" % e
    if reason:
        for i in marked:
            items[i].add_marker(pytest.mark.skip(reason=reason))
        return
    run = _LabRun(config, [items[i].nodeid for i in marked])
    for i in marked:
        parent = items[i].parent
        assert parent is not None  # a test item always has one
        items[i] = LabItem.from_parent(parent, name=items[i].name, lab_run=run,
                                       target=items[i])


class _LabRun:
    """One boot of the lab running every selected marked test; done when first needed."""

    def __init__(self, config: pytest.Config, nodeids: List[str]) -> None:
        self.config = config
        self.nodeids = nodeids
        self.results: Optional[Dict[str, Dict[str, Dict[str, str]]]] = None
        self.error = ""

    def get(self, nodeid: str) -> Dict[str, Dict[str, str]]:
        if self.results is None:
            self.results = self._run()
        found = self.results.get(nodeid)
        if found is None:
            raise LabFailure(self.error or "the lab reported nothing for this test")
        return found

    def _command(self, report: str) -> List[str]:
        # The pytest script beside our interpreter, so that the run inside imports what this
        # one does (python -m pytest would put the working directory first on sys.path).
        script = os.path.join(os.path.dirname(sys.executable), "pytest")
        cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "pytest"]
        cmd += ["-q", "-p", "no:cacheprovider", "--rootdir", str(self.config.rootpath),
                "--import-mode", self.config.getoption("importmode"),
                "--plugqdisc-lab-report", report]
        if self.config.inipath is not None:
            cmd += ["-c", str(self.config.inipath)]
        return cmd + self.nodeids

    def _run(self) -> Dict[str, Dict[str, Dict[str, str]]]:
        workdir = tempfile.mkdtemp(prefix="plugqdisc-pytest-")
        report = os.path.join(workdir, "report.json")
        timeout = self.config.getoption("plugqdisc_lab_timeout")
        output = ""
        try:
            done = lab.run(self._command(report), env=dict(os.environ, **{INNER_ENV: "1"}),
                           cwd=self.config.rootpath, timeout=timeout, capture_output=True,
                           kernel=self.config.getoption("plugqdisc_lab_kernel"))
            output = ((done.stdout or b"") + (done.stderr or b"")).decode(errors="replace")
            if done.returncode == lab.TIMEOUT_STATUS and not os.path.exists(report):
                self.error = ("the lab was stopped after %s s (--plugqdisc-lab-timeout) before "
                              "the marked tests had finished; their pytest run said:\n%s"
                              % (timeout, output[-4000:]))
                return {}
            with open(report) as f:
                results: Dict[str, Dict[str, Dict[str, str]]] = json.load(f)
            self.error = ("the lab reported nothing for this test; its pytest run said:\n%s"
                          % output[-4000:])
            return results
        except (lab.LabError, OSError, ValueError) as e:
            self.error = "the marked tests did not run in the lab: %s\n%s" % (e, output[-4000:])
            return {}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


class LabFailure(Exception):
    """A marked test failed inside the lab (or the lab failed); the text says how."""


class LabItem(pytest.Item):
    """Stands on the host for one marked test that runs inside the lab: its setup, call
    and teardown end as they did inside (passed, failed with the inner traceback,
    skipped with the inner reason, xfailed)."""

    def __init__(self, *, lab_run: _LabRun, target: pytest.Item, **kw: Any) -> None:
        super().__init__(**kw)
        self.lab_run = lab_run
        self._target_info = target.reportinfo()
        self.own_markers.extend(target.own_markers)
        self.keywords.update(dict(target.keywords))

    def _replay(self, when: str) -> None:
        phase = self.lab_run.get(self.nodeid).get(when)
        if phase is None:
            return
        if phase["outcome"] == "failed":
            raise LabFailure(phase["text"])
        if phase["outcome"] == "skipped":
            pytest.skip("in the lab: %s" % phase["text"])
        if phase["outcome"] == "xfailed":
            pytest.xfail("in the lab: %s" % phase["text"])

    def setup(self) -> None:
        self._replay("setup")

    def runtest(self) -> None:
        self._replay("call")

    def teardown(self) -> None:
        self._replay("teardown")

    def reportinfo(self) -> Tuple[Any, Optional[int], str]:
        path, line, name = self._target_info
        return path, line, "[lab] " + name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """A lab test's report shows the inner failure text alone (no host traceback of the
    replay), in every phase, and its skips point at the test, not at this file."""
    outcome = yield
    if not isinstance(item, LabItem) or call.excinfo is None:
        return
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    exc = call.excinfo.value
    if isinstance(exc, LabFailure):
        report.longrepr = "(ran in the lab) %s" % exc
    elif report.skipped and not hasattr(report, "wasxfail"):
        path, line, _ = item.reportinfo()
        report.longrepr = (str(path), (line or 0) + 1, "Skipped: %s" % getattr(exc, "msg", exc))


# ---- inside the lab: each phase's outcome, for the host -------------------------------

class _Reporter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.results: Dict[str, Dict[str, Dict[str, str]]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        text = ""
        outcome: str = report.outcome
        if report.failed:
            # The crash line first: the host's short summary shows a report's first line.
            crash = str(getattr(getattr(report.longrepr, "reprcrash", None), "message", ""))
            text = "%s\n%s%s" % (crash.split("\n")[0], report.longreprtext, "".join(
                "\n---- %s ----\n%s" % section for section in report.sections))
        elif report.skipped:
            if hasattr(report, "wasxfail"):
                outcome, text = "xfailed", report.wasxfail
            else:
                longrepr = report.longrepr
                text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
                text = text[len("Skipped: "):] if text.startswith("Skipped: ") else text
        self.results.setdefault(report.nodeid, {})[report.when] = {"outcome": outcome,
                                                                    "text": text}

    def pytest_sessionfinish(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.results, f)
        os.replace(self.path + ".tmp", self.path)
