"""The pytest plugin as a user meets it: a throwaway project with marked and unmarked
tests, run by pytest on the host, with and without --plugqdisc-lab. Outcomes are read
from pytest's JUnit XML report. At the end, in the lab: the plug fixture with several
holds on one device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from nettools import device_state, nothing_arrives, recv_all, udp_pair
from plugqdisc import Match, _cli_records, lab
from plugqdisc.pytest_plugin import INNER_ENV, PlugFactory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROJECT = '''
import os
import signal
import socket
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
OUTSIDE = os.stat("/proc/thread-self/ns/net").st_ino  # pytest's own namespace


def note(name):
    """Leave a trace of where a test ran: the boot id is the same for one boot."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    with open(os.path.join(HERE, "ran.txt"), "a") as f:
        f.write("%s %s\\n" % (name, boot))


@pytest.fixture
def broken():
    raise RuntimeError("distinctive setup error")


@pytest.mark.plugqdisc
def test_holds(plug):
    note("holds")
    assert socket.if_nameindex() == [(1, "lo")]  # a namespace of its own
    assert os.stat("/proc/thread-self/ns/net").st_ino != OUTSIDE
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    q = plug("lo")
    q.buffer()
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"held", rx.getsockname())
    assert q.wait_buffered(1, timeout=5).qlen == 1
    q.release()
    rx.settimeout(5)
    assert rx.recv(10) == b"held"


@pytest.mark.plugqdisc(netns=False)
def test_fails_while_holding(plug):
    note("fails")
    q = plug("lo")
    q.buffer()
    assert not q.is_buffering, "distinctive failure: still holding"


@pytest.mark.plugqdisc(netns=False)
def test_nothing_left_behind():
    note("left")
    out = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True,
                         text=True, check=True).stdout
    assert " plug " not in out, out


@pytest.mark.plugqdisc
def test_skips():
    note("skips")
    pytest.skip("distinctive skip reason")


@pytest.mark.plugqdisc
def test_setup_fails(broken):
    pass


@pytest.mark.plugqdisc
@pytest.mark.xfail(reason="distinctive known bug", strict=True)
def test_known_bug():
    assert False


@pytest.mark.plugqdisc
def test_deselected():
    note("deselected")


def test_unmarked():
    note("unmarked")
    with open("/proc/cpuinfo") as f:
        assert "User Mode Linux" not in f.read()
'''

needs_lab = pytest.mark.skipif(
    bool(os.environ.get(INNER_ENV)) or not os.path.exists(lab.DEFAULT_KERNEL),
    reason="UML cannot run inside the lab; outside it needs /usr/bin/linux.uml "
    "(apt-get install user-mode-linux)")
Outcome = Tuple[str, str]  # (passed|failed|error|skipped|xfailed, message)


def project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent(PROJECT))
    return tmp_path


def run_pytest(where: Path, *args: str, native: str = "0"
               ) -> Tuple[Dict[str, Outcome], "subprocess.CompletedProcess[str]"]:
    """pytest on the throwaway project; {test name: outcome} from its JUnit report."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PLUGQDISC_") and k != "PYTEST_ADDOPTS"}
    if native:
        env["PLUGQDISC_NATIVE"] = native
    xml = where / "report.xml"
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        "--junitxml", str(xml), *args], cwd=where, env=env,
                       capture_output=True, text=True, timeout=600)
    return junit_outcomes(xml), p


def junit_outcomes(xml: Path) -> Dict[str, Outcome]:
    """{test name: outcome} from a JUnit report."""
    outcomes: Dict[str, Outcome] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        result: Outcome = ("passed", "")
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed" if child.tag == "failure" else "error"
                result = (kind, (child.get("message") or "") + "\n" + (child.text or ""))
            elif child.tag == "skipped":
                kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                result = (kind, child.get("message") or "")
        outcomes[case.get("name", "")] = result
    return outcomes


def traces(where: Path) -> Dict[str, str]:
    """{test name: boot id} for each test that ran."""
    path = where / "ran.txt"
    lines = path.read_text().split("\n") if path.exists() else []
    return dict(line.split() for line in lines if line)


def test_without_the_option_marked_tests_are_skipped_saying_how(tmp_path: Path) -> None:
    where = project(tmp_path)
    outcomes, p = run_pytest(where, "-rs")
    assert p.returncode == 0, p.stdout + p.stderr
    assert outcomes.pop("test_unmarked") == ("passed", "")
    assert len(outcomes) == 7
    for name, (kind, message) in outcomes.items():
        assert kind == "skipped", name
        assert "needs a kernel with sch_plug (PLUGQDISC_NATIVE=0)" in message
        assert "--plugqdisc-lab" in message
    assert list(traces(where)) == ["unmarked"]  # no marked test started, no fixture ran
    assert "--plugqdisc-lab" in p.stdout  # the -rs summary tells the person, too


def test_a_missing_lab_kernel_skips_them_naming_the_fix(tmp_path: Path) -> None:
    where = project(tmp_path)
    outcomes, p = run_pytest(where, "--plugqdisc-lab", "--plugqdisc-lab-kernel",
                             "/nonexistent/linux", "-k", "holds or unmarked")
    assert p.returncode == 0, p.stdout + p.stderr
    assert outcomes["test_unmarked"] == ("passed", "")
    kind, message = outcomes["test_holds"]
    assert kind == "skipped" and message.startswith("--plugqdisc-lab: the lab kernel")
    assert "/nonexistent/linux" in message and "to --plugqdisc-lab-kernel" in message


def test_this_suite_requires_a_kernel_test_to_pass_in_ci() -> None:
    """PLUGQDISC_REQUIRE_LAB (tests/conftest.py): kernel tests that all skip fail the run."""
    env = dict(os.environ, PLUGQDISC_REQUIRE_LAB="1", PLUGQDISC_NATIVE="0")
    env.pop(INNER_ENV, None)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o",
                        "addopts=", "tests/test_hold_release.py", "-k", "udp_is_held"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "1 skipped" in p.stdout
    assert "PLUGQDISC_REQUIRE_LAB: no kernel test passed (1 selected" in p.stderr


def host_has_plug() -> bool:
    """tc's own answer, in a private network namespace."""
    p = subprocess.run(["unshare", "-n", "tc", "qdisc", "add", "dev", "lo", "root", "plug",
                        "limit", "1000"], capture_output=True, text=True)
    return p.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe creates a network namespace: it "
                    "needs root (make test runs as root)")
def test_the_kernel_is_probed_once_and_the_environment_overrides(tmp_path: Path) -> None:
    where = project(tmp_path)
    outcomes, p = run_pytest(where, "-k", "holds or unmarked", native="")
    if host_has_plug():
        assert outcomes["test_holds"] == ("passed", ""), p.stdout
    else:
        kind, message = outcomes["test_holds"]
        assert kind == "skipped" and "(this kernel has no sch_plug)" in message
    # PLUGQDISC_NATIVE=1: the marked test runs here, whatever the kernel says.
    outcomes, p = run_pytest(where, "-k", "holds", native="1")
    kind, message = outcomes["test_holds"]
    if host_has_plug():
        assert kind == "passed", message
    else:
        assert kind == "failed" and "KernelSupportError" in message and "lab" in message


@needs_lab
def test_with_the_option_each_marked_test_reports_its_own_outcome_from_one_boot(
        tmp_path: Path) -> None:
    where = project(tmp_path)
    outcomes, p = run_pytest(where, "--plugqdisc-lab", "-k", "not deselected")
    assert p.returncode == 1, p.stdout + p.stderr  # one test failed, one errored
    assert outcomes.pop("test_holds") == ("passed", "")
    assert outcomes.pop("test_nothing_left_behind") == ("passed", "")
    assert outcomes.pop("test_unmarked") == ("passed", "")
    kind, text = outcomes.pop("test_fails_while_holding")
    assert kind == "failed"
    assert "ran in the lab" in text
    assert "AssertionError: distinctive failure: still holding" in text
    assert "assert not q.is_buffering" in text and "test_user.py:" in text  # the traceback
    kind, text = outcomes.pop("test_setup_fails")
    assert kind == "error" and "RuntimeError: distinctive setup error" in text
    assert outcomes.pop("test_skips") == ("skipped", "in the lab: distinctive skip reason")
    assert outcomes.pop("test_known_bug") == ("xfailed", "in the lab: distinctive known bug")
    assert outcomes == {}  # test_deselected was not collected for the lab either
    ran = traces(where)
    assert sorted(ran) == ["fails", "holds", "left", "skips", "unmarked"]
    host_boot = ran.pop("unmarked")
    assert len(set(ran.values())) == 1 and host_boot not in ran.values()  # one boot


HANGS = """
import os
import signal
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def note(name):
    with open(os.path.join(HERE, "ran.txt"), "a") as f:
        f.write(name + "\\n")


@pytest.mark.plugqdisc(netns=False)
def test_first():
    note("first")


@pytest.mark.plugqdisc(netns=False)
def test_waits_for_the_host():
    # Ends once the host has shown test_first's outcome: the host shows each test as the
    # lab finishes it. Were it shown only at the end, this would run into the timeout.
    note("waits")
    while not os.path.exists(os.path.join(HERE, "go")):
        time.sleep(0.05)


@pytest.mark.plugqdisc(netns=False)
def test_hangs():
    note("hangs")
    time.sleep(3600)


@pytest.mark.plugqdisc(netns=False)
def test_after():
    note("after")


def test_unmarked():
    note("unmarked")
"""


def count_results(xml: Path) -> Dict[str, int]:
    """{test name: how many failure/error elements its test case has}."""
    return {case.get("name", ""): sum(1 for c in case if c.tag in ("failure", "error"))
            for case in ET.parse(xml).getroot().iter("testcase")}


@needs_lab
def test_progress_shows_while_the_lab_runs_and_a_hung_test_is_named_and_fails_once(
        tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent(HANGS))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PLUGQDISC_") and k != "PYTEST_ADDOPTS"}
    env["PLUGQDISC_NATIVE"] = "0"
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                          "--junitxml", str(tmp_path / "report.xml"), "--plugqdisc-lab",
                          "--plugqdisc-lab-timeout", "10"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    lines = []
    for line in p.stdout:
        lines.append(line)
        if "test_user.py::test_first PASSED (in the lab)" in line:
            (tmp_path / "go").touch()  # while the lab still runs: test_waits_for_the_host
    out = "".join(lines)
    assert p.wait() == 1, out
    outcomes = junit_outcomes(tmp_path / "report.xml")
    assert outcomes.pop("test_first") == ("passed", "")
    assert outcomes.pop("test_waits_for_the_host") == ("passed", ""), out
    assert outcomes.pop("test_unmarked") == ("passed", "")
    kind, text = outcomes.pop("test_hangs")
    assert kind == "failed", out
    assert "this test ran longer than 10.0 s (--plugqdisc-lab-timeout)" in text
    kind, text = outcomes.pop("test_after")
    assert kind == "skipped"
    assert text == ("not run: test_user.py::test_hangs had run longer than 10.0 s "
                    "(--plugqdisc-lab-timeout)")
    assert outcomes == {}
    assert set(count_results(tmp_path / "report.xml").values()) == {0, 1}  # failed once
    assert "test_user.py::test_hangs FAILED (in the lab)" in out
    assert "1 failed, 3 passed, 1 skipped" in out
    assert traces_list(tmp_path) == ["first", "waits", "hangs", "unmarked"]  # after: not run




def traces_list(where: Path) -> List[str]:
    path = where / "ran.txt"
    return [line for line in path.read_text().split("\n") if line] if path.exists() else []


@needs_lab
def test_a_lab_that_cannot_start_the_tests_in_time_errors_each_once(tmp_path: Path) -> None:
    """No test to blame (the lab never reached one): each marked test errors once."""
    where = project(tmp_path)
    # The least time the lab gets to start (300 s), made short for this test.
    (where / "conftest.py").write_text(
        "import plugqdisc.pytest_plugin as p\np.LAB_START_TIMEOUT = 0.5\n")
    outcomes, p = run_pytest(where, "--plugqdisc-lab", "--plugqdisc-lab-timeout", "0.5",
                             "-k", "holds or left or unmarked")
    assert p.returncode == 1, p.stdout + p.stderr
    assert outcomes.pop("test_unmarked") == ("passed", "")
    for name in ("test_holds", "test_nothing_left_behind"):
        kind, text = outcomes.pop(name)
        assert kind == "error"  # at setup, where the lab run is waited for
        assert "it had not started the marked tests after 0.5 s" in text
    assert set(count_results(where / "report.xml").values()) == {0, 1}


XDIST = """
import os
import signal

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def note(name):
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    with open(os.path.join(HERE, "ran.txt"), "a") as f:
        f.write("%s %s %s\\n" % (name, boot, os.environ.get("PYTEST_XDIST_WORKER", "-")))


@pytest.mark.plugqdisc
@pytest.mark.parametrize("n", range(6))
def test_marked(n, plug):
    note("marked%d" % n)
    q = plug("lo")
    q.buffer()
    q.release()


@pytest.mark.plugqdisc
def test_netem_is_loaded():
    note("netem")
    with open("/proc/modules") as f:
        assert "sch_netem " in f.read()


@pytest.mark.plugqdisc
def test_fails():
    note("fails")
    assert False, "distinctive failure"


@pytest.mark.parametrize("n", range(2))
def test_unmarked(n):
    note("unmarked%d" % n)
"""


@needs_lab
def test_with_xdist_each_marked_test_runs_once(tmp_path: Path) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is in the test extra: "
                        "pip install -e '.[test]'")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent(XDIST))
    outcomes, p = run_pytest(tmp_path, "-n", "2", "--plugqdisc-lab",
                             "--plugqdisc-lab-modules", "sch_netem")
    assert p.returncode == 1, p.stdout + p.stderr
    kind, text = outcomes.pop("test_fails")
    assert kind == "failed" and "AssertionError: distinctive failure" in text
    assert all(outcome == ("passed", "") for outcome in outcomes.values()), outcomes
    assert len(outcomes) == 9
    assert "1 failed, 9 passed" in p.stdout
    runs = [line.split() for line in (tmp_path / "ran.txt").read_text().split("\n") if line]
    names = sorted(name for name, _, _ in runs)
    assert names == sorted(["marked%d" % n for n in range(6)] +
                           ["netem", "fails", "unmarked0", "unmarked1"])  # each once
    host = {boot for name, boot, _ in runs if name.startswith("unmarked")}
    inside = {boot for name, boot, _ in runs if not name.startswith("unmarked")}
    assert len(inside) == 2 and not host & inside  # a lab per worker's share: two boots
    assert {worker for name, _, worker in runs if not name.startswith("unmarked")} == {"-"}
    assert {worker for name, _, worker in runs if name.startswith("unmarked")} <= {"gw0", "gw1"}


def uml_processes(under: Path) -> List[int]:
    """UML processes of labs whose files are under ``under`` (their uml_dir=)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if b"uml_dir=" + str(under).encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


@needs_lab
def test_ctrl_c_stops_the_lab_and_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent(HANGS))
    labs = tmp_path / "tmp"
    labs.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PLUGQDISC_") and k != "PYTEST_ADDOPTS"}
    env.update(PLUGQDISC_NATIVE="0", TMPDIR=str(labs))
    # SIGINT's default restored: a shell may start us with it ignored.
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          "--plugqdisc-lab"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while "waits" not in traces_list(tmp_path):  # the lab runs a test that waits
            assert p.poll() is None, p.communicate()[0]
            time.sleep(0.1)
        assert uml_processes(labs)
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=120)[0]
    finally:
        p.kill()
    assert p.returncode == 2, out  # interrupted
    assert "KeyboardInterrupt" in out
    assert uml_processes(labs) == [] and os.listdir(labs) == []


CRASH = """
import os

import pytest


@pytest.mark.plugqdisc(netns=False)
def test_before():
    pass


@pytest.mark.plugqdisc(netns=False)
def test_ends_the_lab():
    os.system("poweroff -f")


@pytest.mark.plugqdisc(netns=False)
def test_later():
    pass
"""


@needs_lab
def test_a_lab_that_dies_during_a_test_fails_that_test_alone(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent(CRASH))
    outcomes, p = run_pytest(tmp_path, "--plugqdisc-lab")
    assert p.returncode == 1, p.stdout + p.stderr
    assert outcomes["test_before"] == ("passed", "")
    kind, text = outcomes["test_ends_the_lab"]
    assert kind == "failed" and "the lab failed: the lab kernel ended" in text
    assert outcomes["test_later"] == ("skipped", "not run: the lab ended while "
                                      "test_user.py::test_ends_the_lab ran (see its failure)")
    assert set(count_results(tmp_path / "report.xml").values()) == {0, 1}


# ---- the plug fixture: several holds on one device (issue 15), in the lab ---------------

@pytest.mark.plugqdisc
def test_the_plug_fixture_makes_several_holds_on_one_device(plug: PlugFactory) -> None:
    pairs = [udp_pair() for _ in range(3)]
    holds = [plug("lo", match=Match(proto="udp", dport=addr[1])) for _, _, addr in pairs]
    assert len({q.handle for q in holds}) == 3  # each its own plug, handles chosen for it
    for q in holds:
        q.buffer()
    for i, (_, tx, addr) in enumerate(pairs):
        tx.sendto(b"to %d" % i, addr)
    for q in holds:
        assert q.wait_buffered(1, timeout=5).qlen == 1  # each holds its own, and only it
    holds[1].release()
    assert recv_all(pairs[1][0], 1) == [b"to 1"]
    assert nothing_arrives(pairs[0][0]) and nothing_arrives(pairs[2][0])
    holds[2].release()
    assert recv_all(pairs[2][0], 1) == [b"to 2"]
    assert nothing_arrives(pairs[0][0])
    # holds[0] still holds: the fixture's teardown lets it go (the next test shows it)


HOLDS_AND_FAILS = '''
import os
import socket

import pytest

from plugqdisc import Match

PORTS = [int(p) for p in os.environ["HELD_PORTS"].split(",")]


@pytest.mark.plugqdisc(netns=False)  # in the namespace of the test that runs this one
def test_holds_then_fails(plug):
    holds = [plug("lo", match=Match(proto="udp", dport=port)) for port in PORTS[:-1]]
    holds.append(plug("lo", direction="ingress", match=Match(proto="udp", dport=PORTS[-1])))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for q, port in zip(holds, PORTS):
        q.buffer()
        tx.sendto(b"held for %d" % port, ("127.0.0.1", port))
        assert q.wait_buffered(1, timeout=5).qlen == 1
    raise RuntimeError("distinctive failure while holding")
'''


@pytest.mark.plugqdisc
def test_the_plug_fixture_lets_every_hold_go_after_a_test_that_failed_holding(
        tmp_path: Path) -> None:
    """Three selective holds and an ingress hold on lo, made with plug() in a test that
    fails while they hold: after it, every datagram has arrived, and lo, its filters and
    the links are as before, with no record left."""
    before = device_state()
    pairs = [udp_pair() for _ in range(4)]
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(HOLDS_AND_FAILS)
    os.environ["HELD_PORTS"] = ",".join(str(addr[1]) for _, _, addr in pairs)
    try:
        outcomes, p = run_pytest(tmp_path, "test_inner.py", native="")
    finally:
        del os.environ["HELD_PORTS"]
    assert list(outcomes) == ["test_holds_then_fails"], p.stdout + p.stderr
    kind, text = outcomes["test_holds_then_fails"]
    assert kind == "failed" and "distinctive failure while holding" in text, text
    for rx, _, addr in pairs:
        assert recv_all(rx, 1) == [b"held for %d" % addr[1]]
    assert device_state() == before
    assert _cli_records.records(_cli_records.netns_id(None)) == []
