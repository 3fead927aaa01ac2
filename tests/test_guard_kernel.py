"""A hold never outlives its holder: the guardian, max_hold, the finalizer and interpreter
exit, cleanup errors, permissions; in the lab, with real traffic and real signals."""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Any, Dict, List

import pytest

import plugqdisc
from nettools import QUIET, fork_child, report, sh
from plugqdisc import Match, PlugQdisc, PlugQdiscPermissionError, plugged
from plugqdisc._plugqdisc import guardian_pid

pytestmark = pytest.mark.plugqdisc

RELEASE_BOUND = 0.5  # seconds: the promise
MODES: Dict[str, Dict[str, Any]] = {
    "plain": {},
    "match": {"match": Match(proto="udp")},
    "ingress": {"direction": "ingress"},
}


def device_state() -> str:
    return "\n".join([sh("tc", "qdisc", "show"), sh("tc", "filter", "show", "dev", "lo"),
                      sh("tc", "filter", "show", "dev", "lo", "ingress"),
                      sh("ip", "-o", "link", "show")])


def settled(before: str, within: float = RELEASE_BOUND) -> bool:
    """Whether the device state is BEFORE again within WITHIN seconds."""
    deadline = time.monotonic() + within
    while device_state() != before:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether PID has exited and been reaped within WITHIN seconds (a zombie is not gone:
    an orphan is reaped by init soon; a guardian whose holder lives, by the holder)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not os.path.exists("/proc/%d" % pid):
            return True
        time.sleep(0.01)
    return False


def udp_receiver() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    return rx


def send_held(q: PlugQdisc, rx: socket.socket, n: int) -> None:
    """Send N datagrams "held-0".. to RX and wait until Q holds them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(n):
            tx.sendto(b"held-%d" % i, rx.getsockname())
    q.wait_buffered(n, timeout=5)


def recv_n(rx: socket.socket, n: int, timeout: float = 5.0) -> List[bytes]:
    rx.settimeout(timeout)
    return [rx.recv(100) for _ in range(n)]


# ---- the crash matrix --------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("death", ["SIGKILL", "SIGTERM", "SIGSEGV", "os._exit"])
def test_a_holder_that_dies_is_released_within_half_a_second(death: str, mode: str) -> None:
    rx = udp_receiver()
    before = device_state()

    go_r, go_w = os.pipe()

    def holder(w: int) -> None:
        q = PlugQdisc("lo", **MODES[mode]).attach()
        q.buffer()
        send_held(q, rx, 5)
        report(w, guardian=guardian_pid())
        os.read(go_r, 1)  # dies when told
        if death == "os._exit":
            os._exit(3)
        if death == "SIGSEGV":
            ctypes.string_at(0)  # a real segmentation fault
        time.sleep(60)

    pid, r = fork_child(holder)
    guardian = json.loads(r.readline())["guardian"]
    assert guardian > 0
    rx.settimeout(QUIET)
    with pytest.raises(socket.timeout):
        rx.recv(100)  # held while the holder lives
    t0 = time.monotonic()
    if death in ("SIGKILL", "SIGTERM"):
        os.kill(pid, getattr(signal, death))
    os.write(go_w, b"!")
    os.close(go_w), os.close(go_r)
    _, status = os.waitpid(pid, 0)
    died = time.monotonic()
    got = recv_n(rx, 5)
    released = time.monotonic() - (died if death in ("os._exit", "SIGSEGV") else t0)
    assert got == [b"held-%d" % i for i in range(5)]  # nothing lost, in order
    assert released < RELEASE_BOUND, released
    if death == "SIGSEGV":
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    assert gone(guardian)  # its work done, it exits (and init reaps it)
    assert device_state() == before  # what the holder created is removed
    print("%s/%s: released %.1f ms after the holder died" % (mode, death, released * 1000))
    rx.close()


def test_a_holder_in_another_namespace_is_guarded_too() -> None:
    sh("ip", "netns", "add", "pqg")
    inside = ("ip", "netns", "exec", "pqg")
    try:
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "link", "add", "pqd0", "type", "dummy")
        sh(*inside, "ip", "link", "set", "pqd0", "up")

        def qdiscs() -> str:
            return sh(*inside, "tc", "qdisc", "show")

        def state() -> str:
            return qdiscs() + sh(*inside, "ip", "-o", "link")

        before = state()

        def holder(w: int) -> None:
            holds = [PlugQdisc(dev, netns="pqg", **MODES[mode]).attach()  # kept: a
                     for dev, mode in (("lo", "plain"), ("lo", "ingress"), ("pqd0", "match"))]
            for q in holds:  # holding object collected would release itself
                q.buffer()
            report(w, guardian=guardian_pid())
            time.sleep(60)

        pid, r = fork_child(holder)
        guardian = json.loads(r.readline())["guardian"]
        assert qdiscs().count(" plug ") == 3 and "pqifb" in state()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert gone(guardian)
        assert state() == before
    finally:
        sh("ip", "netns", "del", "pqg")


# ---- max_hold -----------------------------------------------------------------------------

def test_max_hold_releases_a_stopped_holder_and_the_holder_learns_of_it() -> None:
    rx = udp_receiver()

    def holder(w: int) -> None:
        q = PlugQdisc("lo", max_hold=0.3).attach()
        report(w, buffering=q.is_buffering, expired=q.expired)  # nothing held yet
        q.buffer()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"held", rx.getsockname())
        report(w, buffering=q.is_buffering, expired=q.expired)
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped while holding
        # resumed: the hold was released behind our back, and we can tell
        report(w, buffering=q.is_buffering, expired=q.expired)
        q.release()  # still works
        q.buffer()
        report(w, buffering=q.is_buffering, expired=q.expired)
        q.detach()

    pid, r = fork_child(holder)
    try:
        assert json.loads(r.readline()) == {"buffering": False, "expired": False}
        assert json.loads(r.readline()) == {"buffering": True, "expired": False}
        t0 = time.monotonic()
        assert recv_n(rx, 1, timeout=5) == [b"held"]
        waited = time.monotonic() - t0
        assert waited < 0.3 + RELEASE_BOUND, waited
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        os.kill(pid, signal.SIGCONT)
        assert json.loads(r.readline()) == {"buffering": False, "expired": True}
        assert json.loads(r.readline()) == {"buffering": True, "expired": False}
        os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:  # a failed check: the holder must not stay stopped, holding
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    rx.close()


def test_without_expiry_a_hold_lasts() -> None:
    rx = udp_receiver()
    with plugged("lo", max_hold=5) as q:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"held", rx.getsockname())
        rx.settimeout(0.5)
        with pytest.raises(socket.timeout):
            rx.recv(100)
        q.release()  # before max_hold: the guardian is told, and stands down
        assert recv_n(rx, 1) == [b"held"] and not q.expired
    rx.close()


# 4294967.297 s is 2**32 + 1 ms: wrapped to 32 bits it would be a 1 ms hold.
@pytest.mark.parametrize("max_hold", [4294967.295, 4294967.297, 1e12, float("inf"), 2**1100])
def test_a_huge_max_hold_means_no_limit(max_hold: float) -> None:
    rx = udp_receiver()
    with plugged("lo", max_hold=max_hold) as q:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"held", rx.getsockname())
        assert q.wait_buffered(1, timeout=5).qlen == 1
        rx.settimeout(QUIET)
        with pytest.raises(socket.timeout):
            rx.recv(100)
        assert q.is_buffering and not q.expired and q.stats().qlen == 1
    assert recv_n(rx, 1) == [b"held"]  # released on the way out
    rx.close()


# ---- the guardian's life -----------------------------------------------------------------

def test_one_guardian_per_process_kept_until_the_process_exits() -> None:
    """In a fresh process (a forked child starts with no guardian of its own): the first
    guarded attach starts it; later holds, even after the last detach, use the same one;
    the holder's own wait() never sees it; it goes when the holder exits."""

    def holder(w: int) -> None:
        out: Dict[str, Any] = {"at_start": guardian_pid()}
        u = PlugQdisc("lo", guard=False).attach()
        out["unguarded"] = guardian_pid()  # guard=False starts none
        u.detach()
        fds_before = set(os.listdir("/proc/self/fd"))
        a = PlugQdisc("lo").attach()
        g = guardian_pid()
        b = PlugQdisc("lo", direction="ingress").attach()
        out["same"] = guardian_pid() == g and g > 0
        # every fd a hold added here is close-on-exec: no program we run inherits one
        new = set(os.listdir("/proc/self/fd")) - fds_before
        out["inheritable"] = [fd for fd in new if os.path.exists("/proc/self/fd/" + fd)
                              and os.get_inheritable(int(fd))]
        # It reads what attach handed it when it next runs: give it that moment.
        deadline = time.monotonic() + 2
        while len(os.listdir("/proc/%d/fd" % g)) < 9 and time.monotonic() < deadline:
            time.sleep(0.01)
        out["guardian_fds"] = sorted(os.listdir("/proc/%d/fd" % g), key=int)
        with open("/proc/%d/comm" % g) as f:
            out["comm"] = f.read().strip()
        a.detach()
        out["after_one"] = guardian_pid() == g
        b.detach()
        out["after_last"] = guardian_pid() == g and not gone(g, 0.2)
        with PlugQdisc("lo") as c:
            c.buffer()
            out["reused"] = guardian_pid() == g
        try:
            os.wait()  # no child of ours but the guardian, which the holder's wait ignores
            out["wait"] = "a child was reaped"
        except ChildProcessError:
            out["wait"] = "ECHILD"
        out["guardian"] = g
        report(w, **out)

    pid, r = fork_child(holder)
    out = json.loads(r.readline())
    os.waitpid(pid, 0)
    assert out["at_start"] == 0 and out["unguarded"] == 0
    assert out["same"] and out["after_one"]
    assert out["inheritable"] == []
    # stdio, its end of the pair (3), the holder's pidfd, and for each of the two holds a
    # netlink socket and the unix socket its plan's gate takes the device's lock with (an
    # ingress hold's are handed over again once its ifb exists: their numbers may move up)
    fds = out["guardian_fds"]
    assert len(fds) == 9 and fds[:4] == ["0", "1", "2", "3"], fds
    assert out["comm"] == "plugqdisc-guard"
    assert out["after_last"] and out["reused"]
    assert out["wait"] == "ECHILD"
    assert gone(out["guardian"], 1.0)  # the holder exited: so did its guardian


def test_a_forked_child_that_holds_is_guarded_in_its_own_right() -> None:
    rx_parent, rx_child = udp_receiver(), udp_receiver()
    mine = PlugQdisc("lo", match=Match(proto="udp", dport=rx_parent.getsockname()[1]))
    mine.attach().buffer()
    parent_guardian = guardian_pid()

    def child(w: int) -> None:
        q = PlugQdisc("lo", direction="ingress",
                      match=Match(proto="udp", dport=rx_child.getsockname()[1])).attach()
        q.buffer()
        report(w, guardian=guardian_pid())
        time.sleep(60)

    pid, r = fork_child(child)
    child_guardian = json.loads(r.readline())["guardian"]
    assert child_guardian not in (0, parent_guardian)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"to parent", rx_parent.getsockname())
        tx.sendto(b"to child", rx_child.getsockname())
    assert mine.wait_buffered(1, timeout=5).qlen == 1
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert recv_n(rx_child, 1) == [b"to child"]  # the child's guardian released its hold
    assert gone(child_guardian)
    rx_parent.settimeout(QUIET)
    with pytest.raises(socket.timeout):
        rx_parent.recv(100)  # ours is untouched
    assert mine.stats().qlen == 1
    # Deleting the child's ingress qdisc would have purged what our egress holds: the
    # guardian left it, empty, rather than lose our packet.
    assert "qdisc ingress" in sh("tc", "qdisc", "show", "dev", "lo")
    assert "pqifb" not in sh("ip", "-o", "link")
    assert guardian_pid() == parent_guardian
    mine.detach()
    assert recv_n(rx_parent, 1) == [b"to parent"]
    mine.close(), rx_parent.close(), rx_child.close()


# ---- garbage collection and interpreter exit -------------------------------------------

def test_a_holding_object_garbage_collected_releases_and_warns() -> None:
    rx = udp_receiver()
    before = device_state()
    q = PlugQdisc("lo", guard=False).attach()
    q.buffer()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"held", rx.getsockname())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del q
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "garbage-collected" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    assert recv_n(rx, 1) == [b"held"]
    assert device_state() == before
    rx.close()


EXIT_SCRIPT = """
import socket, sys, plugqdisc
q = plugqdisc.PlugQdisc("lo", guard=False, **MODE).attach()
q.buffer()
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"held", ("127.0.0.1", PORT))
print("holding", flush=True)
"""


@pytest.mark.parametrize("mode", ["plain", "match"])
def test_a_holding_object_alive_at_interpreter_exit_releases_and_warns(mode: str) -> None:
    rx = udp_receiver()
    before = device_state()
    code = EXIT_SCRIPT.replace("PORT", str(rx.getsockname()[1])).replace(
        "MODE", "{'match': plugqdisc.Match(proto='udp')}" if mode == "match" else "{}")
    p = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "holding\n", p.stderr
    assert "ResourceWarning" in p.stderr and "at interpreter exit" in p.stderr
    assert recv_n(rx, 1) == [b"held"]  # released by the exit handler (guard=False here)
    assert device_state() == before
    rx.close()


def test_a_forked_childs_exit_leaves_the_parents_hold_alone() -> None:
    rx = udp_receiver()
    q = PlugQdisc("lo").attach()
    q.buffer()
    # what the child's interpreter exit would run
    pid, r = fork_child(lambda w: plugqdisc._guard._at_exit())
    _, status = os.waitpid(pid, 0)
    with r:
        assert status == 0, r.read()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"still held", rx.getsockname())
    rx.settimeout(QUIET)
    with pytest.raises(socket.timeout):
        rx.recv(100)
    q.detach()
    assert recv_n(rx, 1) == [b"still held"]
    q.close(), rx.close()


# ---- errors on the way out, permissions --------------------------------------------------

def test_plugged_never_hides_the_users_exception() -> None:
    with pytest.raises(RuntimeError) as e:
        with plugged("lo"):
            sh("tc", "qdisc", "del", "dev", "lo", "root")  # the cleanup will fail
            raise RuntimeError("the user's own error")
    assert str(e.value) == "the user's own error"
    notes = getattr(e.value, "__notes__", [])
    assert any("cleaning up" in n and "gone" in n for n in notes), notes
    with pytest.raises(RuntimeError, match="mine"):
        with PlugQdisc("lo") as q:
            sh("tc", "qdisc", "del", "dev", "lo", "root")
            raise RuntimeError("mine")
    assert q.closed
    with pytest.raises(plugqdisc.PlugQdiscError):  # no user exception: the cleanup's
        with plugged("lo"):
            sh("tc", "qdisc", "del", "dev", "lo", "root")


def _as_nobody(code: str) -> Dict[str, Any]:
    script = textwrap.dedent("""
        import json, os, plugqdisc
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        out = {}
        """) + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_permission_errors_name_the_capability_and_stay_actionable() -> None:
    sh("ip", "netns", "add", "pqp")
    try:
        got = _as_nobody("""
            try:
                plugqdisc.PlugQdisc("lo", netns="pqp").attach()
            except plugqdisc.PlugQdiscPermissionError as e:
                out["netns"] = [e.errno, e.step, str(e)]
            q = plugqdisc.PlugQdisc("lo")
            try:
                q.attach()
            except plugqdisc.PlugQdiscPermissionError as e:
                out["attach"] = [e.errno, e.step]
            for name in ("buffer", "release", "stats"):
                try:
                    getattr(q, name)()
                except plugqdisc.PlugQdiscPermissionError as e:
                    out[name] = [e.errno, e.step, str(e)]
            """)
    finally:
        sh("ip", "netns", "del", "pqp")
    errno_, step, text = got["netns"]
    assert errno_ == errno.EPERM and step == "enter_netns"
    assert "CAP_SYS_ADMIN" in text
    assert got["attach"] == [errno.EPERM, "create"]
    for name in ("buffer", "release", "stats"):
        assert got[name][:2] == [errno.EPERM, "create"], got
        assert "CAP_NET_ADMIN" in got[name][2] and "attach() failed" in got[name][2]
    assert issubclass(PlugQdiscPermissionError, PermissionError)


# ---- inputs that used to escape --------------------------------------------------------

def test_timeouts_take_inf_and_huge_values_as_no_limit() -> None:
    rx = udp_receiver()
    with plugged("lo") as q:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"x", rx.getsockname())
        for t in (float("inf"), 2**1100, 1e20, None):
            assert q.wait_buffered(1, timeout=t).qlen == 1  # type: ignore[arg-type]
        for t in (float("inf"), 1e20, 1e9, None):
            q.detach(timeout=t)  # type: ignore[arg-type]
            q.attach()
    plugqdisc.attach("lo", limit=None)  # the module-level attach takes None like the class
    plugqdisc.plug_buffer()
    plugqdisc.release_indefinite_buffer()
    rx.close()


# ---- a guardian that dies is replaced; close() keeps the promise ----------------------------

def test_a_guardian_killed_by_hand_is_replaced_and_takes_over_every_hold() -> None:
    """SIGKILL the guardian while a hold holds; the holder's next attach starts a new one
    that is handed every live hold: SIGKILL the holder, and both holds are released (in
    order, nothing lost) and removed."""
    rx = udp_receiver()
    before = device_state()

    def holder(w: int) -> None:
        a = PlugQdisc("lo", match=Match(proto="udp", dport=rx.getsockname()[1])).attach()
        a.buffer()
        first = guardian_pid()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5  # dead: a zombie (ours to reap) or gone
        while time.monotonic() < deadline:
            try:
                with open("/proc/%d/stat" % first) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.01)
        b = PlugQdisc("lo", direction="ingress", handle="2:").attach()  # a new guardian
        b.buffer()
        send_held(a, rx, 3)
        report(w, first=first, second=guardian_pid())
        time.sleep(60)

    pid, r = fork_child(holder)
    out = json.loads(r.readline())
    assert out.get("second", 0) > 0 and out["second"] != out["first"], out
    rx.settimeout(QUIET)
    with pytest.raises(socket.timeout):
        rx.recv(100)  # held while the holder lives
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert recv_n(rx, 3) == [b"held-%d" % i for i in range(3)]
    assert gone(out["second"])
    assert settled(before), device_state()
    rx.close()


@pytest.mark.parametrize("mode", list(MODES))
def test_a_hold_closed_while_holding_is_still_released_when_the_holder_dies(mode: str) -> None:
    """close() leaves the qdisc as it is, still holding; the guardian still releases it
    (and removes what attach made) when the process dies."""
    rx = udp_receiver()
    before = device_state()

    def holder(w: int) -> None:
        q = PlugQdisc("lo", **MODES[mode]).attach()
        q.buffer()
        send_held(q, rx, 3)
        q.close()
        report(w, closed=q.closed)
        time.sleep(60)

    pid, r = fork_child(holder)
    assert json.loads(r.readline()) == {"closed": True}
    rx.settimeout(QUIET)
    with pytest.raises(socket.timeout):
        rx.recv(100)  # close() released nothing
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert recv_n(rx, 3) == [b"held-%d" % i for i in range(3)]
    assert settled(before), device_state()
    rx.close()
