"""The pytest plugin: fixtures ``netns`` and ``plug``, marker ``plugqdisc``, the lab runner.

Installing plugqdisc enables it (entry point ``pytest11``; ``-p no:plugqdisc``
turns it off). What it gives a test suite:

* ``@pytest.mark.plugqdisc``: the test needs a kernel with ``sch_plug``. It runs
  in a fresh network namespace with ``lo`` up (``plugqdisc(netns=False)``: in the
  namespace pytest runs in). Where the kernel lacks ``sch_plug``, the marked tests
  run inside the lab with ``--plugqdisc-lab`` (one User-Mode Linux boot for all of
  them, or one per pytest-xdist worker, each test run once and its outcome reported
  as that test's own as soon as the lab has run it), and are skipped without it.
* fixture ``netns``: a fresh network namespace with ``lo`` up, entered by the
  test's thread for the test's duration (:class:`plugqdisc.netns.NetNamespace`).
* fixture ``plug``: ``plug(device="lo", **PlugQdisc keywords)`` returns an attached
  :class:`plugqdisc.PlugQdisc`, as many as the test asks for (several selective holds
  on one device included); after the test each one is released, detached and closed,
  the last made first (the ingress holds last), whatever the outcome.

Whether the kernel has ``sch_plug`` is decided once per session, and only when a
marked test is selected: yes inside User-Mode Linux (the lab); else as the
environment variable ``PLUGQDISC_NATIVE`` says (``1`` yes, ``0`` no); else by
trying to create a plug qdisc in a throwaway network namespace, on a thread of
its own (a few milliseconds; it needs root, and answers no without it).

Importing this module (pytest does it in every session) opens nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import threading
import time
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
#: The longest one marked test may run in the lab (setup, call and teardown), by default.
LAB_TIMEOUT = 600.0
#: The least time the lab is given to boot, start pytest and collect, before the first test.
LAB_START_TIMEOUT = 300.0

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
        help="stop the lab when one marked test runs longer than this in it; that test "
        "fails, the ones it had not run are skipped (default %d)" % LAB_TIMEOUT)
    group.addoption(
        "--plugqdisc-lab-modules", action="append", default=[], metavar="LIST",
        help="kernel modules to load in the lab before the tests, besides the defaults, by "
        "name and comma-separated (sch_netem,sch_tbf); tests can also modprobe any other")
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
    PlugQdisc (passing: call ``buffer()`` to hold); call it once per hold, several on one
    device included. After the test, each one is released, detached and closed, the
    last made first (the ingress holds last). A detach removes only what no other hold uses: a plain plug that
    another holder shares stays."""
    made: List[PlugQdisc] = []

    def factory(device: Union[str, int] = "lo", *, replace: bool = False,
                **kwargs: Any) -> PlugQdisc:
        q = PlugQdisc(device, **kwargs)
        made.append(q)
        return q.attach(replace=replace)

    yield factory
    errors: List[BaseException] = []
    # The last made first, the ingress holds after the others: the last ingress hold out
    # removes the device's ingress qdisc, which would make the kernel drop what the
    # device's egress holds (the detach then stops, with an error, and leaves it).
    for q in sorted(reversed(made), key=lambda q: q.direction == "ingress"):
        try:
            if q.attached:
                q.detach()  # releases, drains, removes what this hold alone uses
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


# ---- on the host: marked tests skipped, or run in the lab ----------------------------

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
    try:
        lab.parse_modules(config.getoption("plugqdisc_lab_modules"))
    except ValueError as e:
        raise pytest.UsageError("--plugqdisc-lab-modules: %s" % e) from None
    labs = _Labs(config, [items[i].nodeid for i in marked])
    config.stash[_LABS] = labs
    for i in marked:
        parent = items[i].parent
        assert parent is not None  # a test item always has one
        items[i] = LabItem.from_parent(parent, name=items[i].name, labs=labs,
                                       target=items[i])


_LABS = pytest.StashKey["_Labs"]()
_SHARED = pytest.StashKey[str]()
#: Where pytest-xdist's controller tells its workers the folder they share.
_SHARED_KEY = "plugqdisc_lab_dir"
#: What the run inside must not inherit from the host's environment: pytest's own
#: per-test variable and pytest-xdist's worker identity (the lab is not a worker).
_NOT_INHERITED = ("PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
                  "PYTEST_XDIST_TESTRUNUID")
_POLL = 0.1  # seconds between two looks at a lab's progress


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist's controller, for each worker: the folder all workers share, where
    each lab writes how its tests went (a worker may replay a test another one's lab
    ran). Removed when the controller's session ends."""
    config: pytest.Config = node.config
    if _SHARED not in config.stash:
        config.stash[_SHARED] = tempfile.mkdtemp(prefix="plugqdisc-xdist-")
    node.workerinput[_SHARED_KEY] = config.stash[_SHARED]


@pytest.hookimpl(tryfirst=True)  # before pytest tears down an interrupted test's LabItem
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    labs = session.config.stash.get(_LABS, None)
    if labs is not None:
        # Interrupted, or stopped early (-x): nobody will read what the labs still run.
        labs.finish(stop=exitstatus == pytest.ExitCode.INTERRUPTED
                    or bool(session.shouldstop or session.shouldfail))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SHARED in config.stash:
        shutil.rmtree(config.stash[_SHARED], ignore_errors=True)
    labs = config.stash.get(_LABS, None)
    if labs is not None:
        labs.remove()


class _Labs:
    """The lab boots of one session. The selected marked tests are cut into shares, in
    order: one share without pytest-xdist, one per worker with it. Each share runs in one
    boot, started by the first process of the session that needs one of its tests,
    which then writes each test's progress to the share's events file as it goes. That
    file is all there is to know about a share: any worker can replay any test, and
    each test runs once."""

    def __init__(self, config: pytest.Config, nodeids: List[str]) -> None:
        self.config = config
        workerinput: Dict[str, Any] = getattr(config, "workerinput", {})
        self._dir: Optional[str] = workerinput.get(_SHARED_KEY)
        self._own_dir = self._dir is None
        count = int(workerinput.get("workercount", 1)) if self._dir else 1
        count = max(1, min(count, len(nodeids)))
        self.shares = [_Share(self, k, nodeids[k * len(nodeids) // count:
                                                (k + 1) * len(nodeids) // count])
                       for k in range(count)]
        self.share_of = {nodeid: share for share in self.shares for nodeid in share.nodeids}

    def directory(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="plugqdisc-pytest-")
        return self._dir

    def work_ahead(self, every: bool = False) -> None:
        """Start the lab of a share no process runs yet, if this one runs none (or, with
        ``every``, of every such share): a worker waiting for another's lab, or done with
        its own tests, runs the labs the others will need."""
        for share in self.shares:
            if share.running() and not every:
                return
        for share in self.shares:
            if not share.running():
                share.claim()
                if share.running() and not every:
                    return

    def finish(self, stop: bool) -> None:
        """Wait for the labs this process runs (a worker must not end while another
        waits for one of them), stopping them first when ``stop``. A pytest-xdist worker
        first starts those no worker has started."""
        if not stop and not self._own_dir:
            self.work_ahead(every=True)
        for share in self.shares:
            share.finish(stop)

    def remove(self) -> None:
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


class _State:
    """What a share's events file says so far."""

    def __init__(self) -> None:
        self.claimed = False
        self.started: Dict[str, None] = {}  # in order
        self.finished: Dict[str, None] = {}
        self.running: Optional[str] = None
        self.moves = 0  # tests started and finished: the lab's pace
        self.phases: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self.collect_errors: Dict[str, str] = {}
        self.done = False  # the pytest run inside reached its end
        self.ended: Optional[Dict[str, Any]] = None  # the host's last word on the lab

    def add(self, event: Dict[str, Any]) -> None:
        if "start" in event:
            self.started[event["start"]] = None
            self.running = event["start"]
            self.moves += 1
        elif "finish" in event:
            self.finished[event["finish"]] = None
            self.running = None
            self.moves += 1
        elif "when" in event:
            self.phases.setdefault(event["nodeid"], {})[event["when"]] = event
        elif "collect_error" in event:
            self.collect_errors[event["collect_error"]] = event["text"]
        elif "done" in event:
            self.done = True
        elif "claimed" in event:
            self.claimed = True
        elif "ended" in event:
            self.ended = event


class _Share:
    """Some of the marked tests, run in one lab boot (see :class:`_Labs`)."""

    def __init__(self, labs: _Labs, index: int, nodeids: List[str]) -> None:
        self.labs = labs
        self.index = index
        self.nodeids = nodeids
        self.state = _State()
        self._offset = 0
        self._lock = threading.Lock()  # the runner's thread reads the events too
        self._claim_fd: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def _path(self, ext: str) -> str:
        return os.path.join(self.labs.directory(), "lab-%d.%s" % (self.index, ext))

    def poll(self) -> _State:
        """Read what the events file gained since the last look."""
        with self._lock:
            try:
                with open(self._path("jsonl"), "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return self.state
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next look
            for line in data[:end].splitlines():
                if line.strip():
                    self.state.add(json.loads(line))
            self._offset += end
            return self.state

    def _append(self, event: Dict[str, Any]) -> None:
        with open(self._path("jsonl"), "a") as f:
            f.write(json.dumps(event) + "\n")

    def wait(self, nodeid: str) -> _State:
        """The state once ``nodeid`` has finished in the lab, or the lab has ended;
        starts the lab when no process of the session has."""
        while True:
            state = self.poll()
            if nodeid in state.finished or state.ended is not None:
                return state
            if self._thread is not None and not self._thread.is_alive():
                return self.poll()  # it wrote its last word before it ended
            if self._thread is None:
                self.claim()
                if self._thread is None:  # another process runs it: run another meanwhile
                    self.labs.work_ahead()
            time.sleep(_POLL)

    def running(self) -> bool:
        """Whether this process runs (or ran) this share's lab."""
        return self._thread is not None

    def claim(self) -> None:
        """Run this share's lab unless another process does (it holds the lock for the
        lab's whole run)."""
        fd = os.open(self._path("lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        state = self.poll()
        if state.ended is None and state.claimed:
            # Its process died (the lock went with it) before it could say how the lab went.
            self._append({"ended": True, "blame": state.running, "not_run": "", "output": "",
                          "failure": "the pytest process that ran the lab for this test "
                          "(a pytest-xdist worker) ended before the lab did"})
        if state.ended is not None or state.claimed:
            os.close(fd)
            return
        self._claim_fd = fd
        self._append({"claimed": os.getpid()})
        self._thread = threading.Thread(target=self._run, name="plugqdisc-lab-%d" % self.index,
                                        daemon=True)
        self._thread.start()

    def finish(self, stop: bool) -> None:
        if self._thread is not None:
            self._stopping = stop
            self._thread.join()
            self.poll()

    def _command(self) -> List[str]:
        config = self.labs.config
        # The pytest script beside our interpreter, so that the run inside imports what this
        # one does (python -m pytest would put the working directory first on sys.path).
        script = os.path.join(os.path.dirname(sys.executable), "pytest")
        cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "pytest"]
        cmd += ["-q", "-p", "no:cacheprovider", "--rootdir", str(config.rootpath),
                "--import-mode", config.getoption("importmode"),
                "--plugqdisc-lab-report", self._path("jsonl")]
        if config.pluginmanager.hasplugin("xdist"):
            cmd += ["-n", "0"]  # one CPU inside; and a -n in the configuration stays out
        if config.inipath is not None:
            cmd += ["-c", str(config.inipath)]
        return cmd + self.nodeids

    def _run(self) -> None:
        config = self.labs.config
        watch = _Watch(self, config.getoption("plugqdisc_lab_timeout"))
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env[INNER_ENV] = "1"
        output, failure = "", ""
        try:
            done = lab.run(self._command(), env=env, cwd=config.rootpath, capture_output=True,
                           kernel=config.getoption("plugqdisc_lab_kernel"),
                           modules=config.getoption("plugqdisc_lab_modules"), stop=watch)
            output = ((done.stdout or b"") + (done.stderr or b"")).decode(errors="replace")
            if not watch.reason and not self.poll().done:
                failure = ("the pytest run in the lab ended (status %d) before the marked tests "
                           "had finished" % done.returncode)
        except Exception as e:  # the lab itself failed; every test waiting must hear it
            failure = "the lab failed: %s" % e
        finally:
            state = self.poll()
            blame = watch.blame if watch.reason else state.running
            failure = watch.reason or failure
            not_run = ""
            if failure and watch.blame:  # one test to blame: it fails, the rest did not run
                not_run = ("not run: %s had run longer than %s s (--plugqdisc-lab-timeout)"
                           % (blame, watch.timeout))
            elif failure and blame:
                not_run = "not run: the lab ended while %s ran (see its failure)" % blame
            # A test that ran out of time: the output of the run inside is only pytest's dots.
            self._append({"ended": True, "failure": failure, "blame": blame,
                          "not_run": not_run, "seconds": watch.ran_for,
                          "host_ended": watch.host_ended,
                          "output": "" if watch.blame else output[-4000:]})
            assert self._claim_fd is not None
            os.close(self._claim_fd)  # lets go of the claim

    def stopping(self) -> bool:
        return self._stopping


class _Watch:
    """Stops a lab (as ``lab.run``'s ``stop``) when one test runs longer than the
    timeout, the lab takes longer than that (and at least :data:`LAB_START_TIMEOUT`) to
    start the first, or the host's session ended early."""

    def __init__(self, share: _Share, timeout: float) -> None:
        self.share = share
        self.timeout = timeout
        self.reason = ""
        self.blame: Optional[str] = None
        self.ran_for: Optional[float] = None  # how long the blamed test had run
        self.host_ended = False
        self._moves = -1
        self._since = time.monotonic()

    def __call__(self) -> bool:
        if self.share.stopping():
            self.reason = "the pytest session on the host ended first (interrupted, or -x)"
            self.host_ended = True
            return True
        state = self.share.poll()
        now = time.monotonic()
        if state.moves != self._moves:
            self._moves, self._since = state.moves, now
        limit = self.timeout if state.started else max(self.timeout, LAB_START_TIMEOUT)
        if now - self._since <= limit:
            return False
        if state.running is not None:
            self.blame, self.ran_for = state.running, now - self._since
            self.reason = ("the lab was stopped: this test ran longer than %s s "
                           "(--plugqdisc-lab-timeout)" % self.timeout)
        elif not state.started:
            self.reason = ("the lab was stopped: it had not started the marked tests after %s s "
                           "(booting, starting pytest and collecting)" % limit)
        else:
            self.reason = ("the lab was stopped: it did nothing for %s s (--plugqdisc-lab-"
                           "timeout) after %s" % (limit, list(state.finished)[-1]))
        return True


class LabFailure(Exception):
    """A marked test failed inside the lab (or the lab failed); the text says how."""


class LabItem(pytest.Item):
    """Stands on the host for one marked test that runs inside the lab: its setup, call
    and teardown end as they did inside (passed, failed with the inner traceback,
    skipped with the inner reason, xfailed), as soon as the lab has run it. If the lab
    stopped while it ran (timeout, crash), it fails once, in the phase that was running;
    if the lab stopped before it ran, it is skipped as not run (or, when no test is to
    blame, errors with the lab's reason)."""

    def __init__(self, *, labs: _Labs, target: pytest.Item, **kw: Any) -> None:
        super().__init__(**kw)
        self.labs = labs
        self._target_info = target.reportinfo()
        self.own_markers.extend(target.own_markers)
        self.keywords.update(dict(target.keywords))
        self._settled = False  # its one failure (or skip) for a stopped lab is reported
        self.ran_for: Optional[float] = None  # how long it ran before the lab was stopped

    def inner_phase(self, when: str) -> Optional[Dict[str, Any]]:
        state = self.labs.share_of[self.nodeid].state
        return state.phases.get(self.nodeid, {}).get(when)

    def _replay(self, when: str) -> None:
        state = self.labs.share_of[self.nodeid].wait(self.nodeid)
        phase = self.inner_phase(when)
        if phase is not None:
            if phase["outcome"] == "failed":
                raise LabFailure(phase["text"])
            if phase["outcome"] == "skipped":
                pytest.skip("in the lab: %s" % phase["text"])
            if phase["outcome"] == "xfailed":
                pytest.xfail("in the lab: %s" % phase["text"])
            return
        if self._settled or self.nodeid in state.finished:
            return  # a phase that did not run inside either (a call after a failed setup)
        self._settled = True
        ended = state.ended or {}
        if ended.get("host_ended"):
            return  # interrupted (or -x) on the host: pytest says so, nothing to add
        said = ("\nThe pytest run in the lab said:\n%s" % ended["output"]
                if ended.get("output") else "")
        if self.nodeid in state.started:  # running when the lab stopped: this is its failure
            self.ran_for = ended.get("seconds")
            raise LabFailure("%s%s" % (ended.get("failure", ""), said))
        if ended.get("not_run"):
            pytest.skip(ended["not_run"])
        for prefix, text in state.collect_errors.items():
            if self.nodeid.startswith(prefix + "::") or self.nodeid == prefix:
                raise LabFailure("collecting it in the lab failed:\n%s" % text)
        raise LabFailure("%s%s" % (ended.get("failure") or "the lab reported nothing for this "
                                   "test", said))

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
    """A lab test's report has the duration measured inside, shows the inner failure
    text alone (no host traceback of the replay), in every phase, and its skips point at
    the test, not at this file."""
    outcome = yield
    if not isinstance(item, LabItem):
        return
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if item.nodeid in item.labs.share_of[item.nodeid].state.started:  # not "not run"
        report.plugqdisc_lab = True  # type: ignore[attr-defined]  # pytest_report_teststatus
    inner = item.inner_phase(call.when)
    if inner is not None and "duration" in inner:
        report.duration = inner["duration"]
    elif item.ran_for is not None and isinstance(getattr(call.excinfo, "value", None),
                                                 LabFailure):
        report.duration = item.ran_for
    if call.excinfo is None:
        return
    exc = call.excinfo.value
    if isinstance(exc, LabFailure):
        report.longrepr = "(ran in the lab) %s" % exc
    elif report.skipped and not hasattr(report, "wasxfail"):
        path, line, _ = item.reportinfo()
        report.longrepr = (str(path), (line or 0) + 1, "Skipped: %s" % getattr(exc, "msg", exc))


@pytest.hookimpl(hookwrapper=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config
                             ) -> Iterator[None]:
    """With -v, a lab test's outcome says where it ran: ``PASSED (in the lab)``."""
    outcome = yield
    if not getattr(report, "plugqdisc_lab", False):
        return
    found = outcome.get_result()  # type: ignore[attr-defined]
    if isinstance(found, tuple) and len(found) == 3 and found[2]:
        word = found[2]
        word = ((word[0] + " (in the lab)", word[1]) if isinstance(word, tuple)
                else word + " (in the lab)")
        outcome.force_result((found[0], found[1], word))  # type: ignore[attr-defined]


# ---- inside the lab: each test's progress, for the host -------------------------------

class _Reporter:
    """Appends one JSON line per event to the host's events file, as it happens: a test
    started, one of its phases ended (outcome, text, duration), it finished; a collection
    error; the end of the session."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a")

    def _write(self, event: Dict[str, Any]) -> None:
        self.file.write(json.dumps(event) + "\n")
        self.file.flush()

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._write({"start": nodeid})

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._write({"finish": nodeid})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write({"collect_error": report.nodeid, "text": report.longreprtext})

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
        self._write({"nodeid": report.nodeid, "when": report.when, "outcome": outcome,
                     "text": text, "duration": report.duration})

    def pytest_sessionfinish(self) -> None:
        self._write({"done": True})
        self.file.close()
