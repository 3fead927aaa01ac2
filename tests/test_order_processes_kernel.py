"""Holds on one device from several processes (issue 15), in the lab, with real traffic:
four processes attaching and detaching for 30 s, on lo and across a veth at ingress, lose
nothing and leave the device as found; a holder SIGKILLed never lets go of another's
packets; two processes sharing one plain plug both attach at once and lose nothing."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import time
from typing import Any, Callable, Dict, List

import pytest

from nettools import fork_child, left_as_found, peer_namespace, recv_all, report
from plugqdisc import Match, plugged
from plugqdisc.netns import SO_RCVBUFFORCE, UdpStream

pytestmark = pytest.mark.plugqdisc

SECONDS = 30.0  # how long the four processes come and go
PROCESSES = 4


class Child:
    """A forked process running body(cue, w): it waits for the parent's cues with cue(),
    and reports JSON lines on w (nettools.report)."""

    def __init__(self, body: Callable[[Callable[[], None], int], None]) -> None:
        cue_r, cue_w = os.pipe()

        def run(w: int) -> None:
            os.close(cue_w)
            body(lambda: self._wait_cue(cue_r), w)

        self.pid, self.out = fork_child(run)
        os.close(cue_r)
        self._cue_w = cue_w
        self._lines = b""

    @staticmethod
    def _wait_cue(fd: int) -> None:
        if os.read(fd, 1) != b"x":
            raise SystemExit(1)  # the parent is gone

    def cue(self) -> None:
        os.write(self._cue_w, b"x")

    def next(self, timeout: float = 30.0) -> Dict[str, Any]:
        """The child's next report; its traceback as the failure if it raised. Reads the
        pipe itself, a line at a time (a buffered readline could hold the next one back
        from select)."""
        fd = self.out.fileno()
        while b"\n" not in self._lines:
            if not select.select([fd], [], [], timeout)[0]:
                raise AssertionError("child %d reported nothing within %s s"
                                     % (self.pid, timeout))
            chunk = os.read(fd, 65536)
            assert chunk, "child %d ended without a report" % self.pid
            self._lines += chunk
        line, self._lines = self._lines.split(b"\n", 1)
        got: Dict[str, Any] = json.loads(line)
        assert "error" not in got, got["error"]
        return got

    def end(self) -> int:
        """Wait for the child; its exit status (or -signal)."""
        os.close(self._cue_w)
        _, status = os.waitpid(self.pid, 0)
        self.out.close()
        return os.waitstatus_to_exitcode(status)


def bound_udp(addr: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    return s


# ---- four processes, 30 s -----------------------------------------------------------------

def come_and_go(dev: str, direction: str, rx: socket.socket, send: Callable[[bytes], object],
                seconds: float, w: int) -> None:
    """Until SECONDS have passed: attach a hold of what goes to RX, hold 3 datagrams, check
    none arrives while held, let go; all 3 must arrive, in order. Reports the rounds."""
    match = Match(proto="udp", dport=rx.getsockname()[1])
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        sent = [b"%d-%d" % (rounds, j) for j in range(3)]
        with plugged(dev, match=match, direction=direction) as q:
            for d in sent:
                send(d)
            q.wait_buffered(3, timeout=10)
            if select.select([rx], [], [], 0)[0]:
                raise AssertionError("a datagram arrived while held")
        got = recv_all(rx, 3, timeout=10)
        if got != sent:
            raise AssertionError("round %d: sent %r, received %r" % (rounds, sent, got))
        rounds += 1
    report(w, rounds=rounds)


def run_together(make: Callable[[int], Callable[[Callable[[], None], int], None]],
                 seconds: float) -> List[int]:
    """PROCESSES children, each make(i)(cue, w) coming and going for SECONDS, started at
    the same cue; the rounds each reports."""
    kids = [Child(make(i)) for i in range(PROCESSES)]
    for k in kids:
        k.cue()
    rounds = [int(k.next(seconds + 60)["rounds"]) for k in kids]
    assert [k.end() for k in kids] == [0] * PROCESSES
    return rounds


def test_four_processes_come_and_go_on_lo_for_30_s_under_traffic() -> None:
    """For the first half, the device has no hold at times (the last one out removes the
    shared prio qdisc, the next one in adds it back); for the second, a hold of the
    test's own stays: then holds that come and go beside it lose nothing of the traffic
    none of them selects (swapping the root qdisc can drop some: docs/semantics.rst)."""
    def make(i: int) -> Callable[[Callable[[], None], int], None]:
        def body(cue: Callable[[], None], w: int) -> None:
            rx, tx = bound_udp(), bound_udp()
            cue()
            come_and_go("lo", "egress", rx, lambda d: tx.sendto(d, rx.getsockname()),
                        SECONDS / 2, w)
        return body

    with left_as_found("lo"):
        with UdpStream(rate=500) as swapping:
            rounds = run_together(make, SECONDS / 2)
        with plugged("lo", match=Match(proto="udp", dport=9)), \
                UdpStream(rate=500) as beside:
            rounds += run_together(make, SECONDS / 2)
    assert all(n > 0 for n in rounds), rounds
    assert swapping.sent > 0 and swapping.received > 0
    assert beside.sent > 0 and beside.lost == 0, (beside.sent, beside.lost)


def test_four_processes_come_and_go_at_ingress_across_a_veth_for_30_s() -> None:
    with peer_namespace() as peer_socket:
        def make(i: int) -> Callable[[Callable[[], None], int], None]:
            def body(cue: Callable[[], None], w: int) -> None:
                rx = bound_udp("10.99.0.1")
                tx = peer_socket(socket.AF_INET, socket.SOCK_DGRAM)
                tx.bind(("10.99.0.2", 0))
                cue()
                come_and_go("vb", "ingress", rx, lambda d: tx.sendto(d, rx.getsockname()),
                            SECONDS, w)
            return body

        with left_as_found("vb"), stream_across(peer_socket) as counts:
            rounds = run_together(make, SECONDS)
        assert all(n > 0 for n in rounds), rounds
        assert counts["sent"] > 0 and counts["received"] == counts["sent"], counts


class stream_across:
    """UDP at 500 datagrams/s from the peer namespace to 10.99.0.1, which no hold selects:
    a forked sender; counted on arrival here. Yields {"sent", "received"} (filled at the
    end)."""

    def __init__(self, peer_socket: Callable[[int, int], socket.socket]) -> None:
        self.peer_socket = peer_socket
        self.counts: Dict[str, int] = {}

    def __enter__(self) -> Dict[str, int]:
        self.rx = bound_udp("10.99.0.1")
        self.rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # read at the end
        tx = self.peer_socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = self.rx.getsockname()
        self.stop_r, self.stop_w = os.pipe()

        def send(w: int) -> None:
            os.close(self.stop_w)
            n = 0
            while not select.select([self.stop_r], [], [], 0.002)[0]:
                tx.sendto(struct.pack("!I", n), addr)
                n += 1
            report(w, sent=n)

        self.pid, self.out = fork_child(send)
        tx.close()
        os.close(self.stop_r)
        return self.counts

    def __exit__(self, *exc: object) -> None:
        os.close(self.stop_w)
        sent = json.loads(self.out.readline())["sent"]
        os.waitpid(self.pid, 0)
        self.out.close()
        received = 0
        self.rx.settimeout(1.0)
        try:
            while True:
                self.rx.recv(100)
                received += 1
        except socket.timeout:
            pass
        self.rx.close()
        self.counts.update(sent=sent, received=received)


# ---- a holder killed while another holds ----------------------------------------------------

def hold_until_cued(rx_port: int, cue: Callable[[], None], w: int) -> None:
    """Attach a hold of what goes to RX_PORT, report; hold 3, report; wait for the cue to
    report the stats, and for another to let go."""
    with plugged("lo", match=Match(proto="udp", dport=rx_port)) as q:
        report(w, attached=True)
        q.wait_buffered(3, timeout=10)
        report(w, held=3)
        cue()
        report(w, qlen=q.stats().qlen)
        cue()
    report(w, out=True)


def test_a_holder_sigkilled_while_another_holds_never_lets_go_of_the_others_packets() -> None:
    rx_a, rx_b, tx = bound_udp(), bound_udp(), bound_udp()
    with left_as_found("lo"):
        a = Child(lambda cue, w: hold_until_cued(rx_a.getsockname()[1], cue, w))
        assert a.next()["attached"]
        b = Child(lambda cue, w: hold_until_cued(rx_b.getsockname()[1], cue, w))
        assert b.next()["attached"]
        for i in range(3):
            tx.sendto(b"a%d" % i, rx_a.getsockname())
            tx.sendto(b"b%d" % i, rx_b.getsockname())
        assert a.next()["held"] == 3 and b.next()["held"] == 3
        os.kill(a.pid, signal.SIGKILL)
        assert a.end() == -signal.SIGKILL
        assert recv_all(rx_a, 3) == [b"a0", b"a1", b"a2"]  # the guardian let go of a's
        rx_b.settimeout(1.0)
        with pytest.raises(socket.timeout):
            rx_b.recv(100)  # b's stay held ...
        b.cue()
        assert b.next()["qlen"] == 3  # ... all three, in b's own plug
        b.cue()  # until b lets go
        assert b.next()["out"]
        assert b.end() == 0
        assert recv_all(rx_b, 3) == [b"b0", b"b1", b"b2"]
    for s in (rx_a, rx_b, tx):
        s.close()


# ---- two processes sharing one plain plug ---------------------------------------------------

def test_two_processes_share_one_plain_plug_in_rounds_and_lose_nothing() -> None:
    rx, tx = bound_udp(), bound_udp()
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    with left_as_found("lo"):
        for r in range(10):
            go_r, go_w = os.pipe()

            def body(cue: Callable[[], None], w: int) -> None:
                os.close(go_w)
                select.select([go_r], [], [])  # both attach at the same moment
                with plugged("lo") as q:
                    report(w, created=q.created)
                    cue()  # "leave" (the first one out) or "stay"
                    if os.read(stay_r, 1) == b"s":
                        q.buffer()  # hold again, after the other left
                        report(w, buffering=True)
                        cue()
                        st = q.stats()
                        report(w, qlen=st.qlen, drops=st.drops)
                        cue()
                report(w, out=True)

            stay_r, stay_w = os.pipe()
            kids = [Child(body), Child(body)]
            os.close(go_r)
            os.close(go_w)  # readable (end of file) for both at once
            created = [k.next()["created"] for k in kids]
            assert sorted(created) == [False, True], created  # one made it, one adopted it
            sent = [b"%d-first-%d" % (r, i) for i in range(5)]
            for d in sent:
                tx.sendto(d, rx.getsockname())  # held by the shared plug
            creator, adopter = kids if created[0] else kids[::-1]
            first, other = (creator, adopter) if r % 2 == 0 else (adopter, creator)
            os.write(stay_w, b"ls")  # the first child to read leaves: cue them in turn
            first.cue()
            assert first.next()["out"]
            assert first.end() == 0
            assert recv_all(rx, 5) == sent  # released by the one leaving: nothing lost
            other.cue()
            assert other.next()["buffering"]
            more = [b"%d-more-%d" % (r, i) for i in range(5)]
            for d in more:
                tx.sendto(d, rx.getsockname())
            other.cue()
            assert other.next() == {"qlen": 5, "drops": 0}  # the plug is still there, holding
            other.cue()
            assert other.next()["out"]
            assert other.end() == 0
            assert recv_all(rx, 5) == more
            os.close(stay_r), os.close(stay_w)
    rx.close(), tx.close()
