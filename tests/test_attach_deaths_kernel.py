"""A death at any point of attach is undone like a death while holding.

The holder (tests/c/attach_once.c, the C core itself) is killed by SIGKILL just before
each netlink request its attach sends (each is one sendmsg), and at the start of its
guardian (clone): strace's fault injection does it, at exactly that syscall. Every kill
point of every mode must leave the device, its filters and the links as they were found,
and the hold's record file gone, within 0.5 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Iterator, List, Tuple

import pytest

from nettools import ROOT, setup_py

pytestmark = pytest.mark.plugqdisc

#: How long the guardian may take to undo what a dead holder's attach made.
UNDONE_WITHIN = 0.5


@pytest.fixture(scope="module")
def holder() -> Iterator[str]:
    build = setup_py()
    with tempfile.TemporaryDirectory() as d:
        sources = [os.path.join(ROOT, "tests", "c", "attach_once.c")]
        sources += [os.path.join(ROOT, s) for s in build.core_sources()]
        yield build.compile_c(sources, os.path.join(d, "attach_once"),
                              ["-std=gnu11", "-Wall", "-Werror", "-I",
                               os.path.join(ROOT, "csrc")])


def device_state() -> Tuple[str, ...]:
    """What attach may change: lo's qdiscs, its filters both ways, the links."""
    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return (sh("tc", "qdisc", "show", "dev", "lo"),
            sh("tc", "filter", "show", "dev", "lo", "egress"),
            sh("tc", "filter", "show", "dev", "lo", "ingress"),
            sh("ip", "-o", "link", "show"))


def kill_at(holder: str, mode: str, syscall: str, n: int, record: str, trace: str
            ) -> Tuple[str, bool]:
    """Run the holder under strace, SIGKILLed at its Nth SYSCALL: (its output, whether it
    had handed its plan to the guardian: a sendmsg carrying SCM_RIGHTS that completed)."""
    p = subprocess.Popen(["strace", "-qq", "-o", trace, "-e", "trace=sendmsg,clone",
                          "-e", "inject=%s:signal=KILL:when=%d" % (syscall, n),
                          holder, mode, "lo", record], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    out = p.stdout.readline()  # "attached", or "" when it was killed first
    if "attached" in out:
        p.kill()  # strace: its tracee goes with it (the kill point was past attach)
        subprocess.run(["pkill", "-KILL", "-x", "attach_once"])
    p.wait(timeout=60)
    with open(trace) as f:
        calls = [line for line in f if line.startswith("sendmsg(")]
    done = calls if "attached" in out else calls[:-1]  # the last one was killed
    return out, any("SCM_RIGHTS" in c for c in done)


def settled(before: Tuple[str, ...], record: str, registered: bool) -> bool:
    """Whether, within UNDONE_WITHIN, lo is as found and, if the guardian had the hold's
    plan, the record is gone (before that, attach has made nothing and there is nothing
    for the guardian to undo; a record written by then is cleanup's to drop)."""
    deadline = time.monotonic() + UNDONE_WITHIN
    while True:
        if device_state() == before and not (registered and os.path.exists(record)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["plain", "match", "ingress"])
def test_a_kill_at_every_request_of_attach_leaves_nothing_behind(holder: str, mode: str,
                                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert shutil.which("strace"), "strace is needed: scripts/system-deps.sh installs it"
    before = device_state()
    record, trace = str(tmp_path / "record"), str(tmp_path / "trace")
    left: List[str] = []
    points = registered_points = 0
    for syscall, n in [("clone", 1)] + [("sendmsg", i) for i in range(1, 40)]:
        open(record, "w").close()
        out, registered = kill_at(holder, mode, syscall, n, record, trace)
        if syscall == "sendmsg" and "attached" in out:
            # past the last request of attach: the hold is made and held; its holder is
            # killed now, as in the crash tests, and undone the same way
            assert settled(before, record, True), device_state()
            break
        assert "failed" not in out, out
        points += 1
        registered_points += registered
        if not settled(before, record, registered):
            left.append("%s #%d: %r" % (syscall, n, device_state()))
            subprocess.run([sys.executable, "-m", "plugqdisc", "release", "lo"],
                           capture_output=True)
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "ingress"], capture_output=True)
            subprocess.run(["ip", "link", "del", "pqifb1-1"], capture_output=True)
    else:
        pytest.fail("attach never completed within 40 requests")
    assert points >= 4 and registered_points >= 2, (points, registered_points)
    assert left == [], "\n".join(left)
