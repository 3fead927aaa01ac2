"""A hold that lets go by itself (release_when_holding, release_after), in the lab, with real
traffic: the test's own thread blocks behind what is held, as a client waiting for an
answer does, and no thread of the test's releases it. The library's thread never outlives
the hold, and what goes wrong in it is raised by the holder's next call, never printed."""

from __future__ import annotations

import gc
import select
import socket
import threading
import time
from typing import List, Tuple

import pytest

from nettools import QUIET, sh
from plugqdisc import Match, PlugQdisc, PlugQdiscError, plugged
from plugqdisc._auto import THREAD_NAME

pytestmark = pytest.mark.plugqdisc


def auto_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def auto_threads_end(within: float = 5.0) -> bool:
    """Whether the automatic release's threads are all gone within WITHIN seconds (one that
    has just released may still be returning from it)."""
    deadline = time.monotonic() + within
    while auto_threads():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def udp_echo() -> Tuple[socket.socket, threading.Thread]:
    """A UDP server on lo that answers each datagram with it, upper-cased."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            data, peer = server.recvfrom(100)
            if data == b"stop":
                return
            server.sendto(data.upper(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return server, t


class LineServer:
    """A keep-alive TCP server of our own on lo: answers each line with b"ok\\n" and closes
    a connection when told to (its idle timeout, on cue)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket

    def accept(self) -> None:
        self.conn, _ = self.listener.accept()

    def serve_one(self) -> None:
        self.conn.settimeout(5)
        line = self.conn.recv(100)
        assert line.endswith(b"\n")
        self.conn.sendall(b"ok\n")

    def idle_timeout(self) -> None:
        self.conn.close()  # its FIN leaves; a later request gets a reset

    def close(self) -> None:
        self.listener.close()


def test_a_client_blocked_behind_the_servers_close_is_let_go_without_a_thread_of_ours() -> None:
    """The stale keep-alive race with a client whose one call sends and waits: the server's
    FIN and then its reset are held (TCP flags), the client's check finds the idle
    connection open and it sends its request in the same call that waits for the answer.
    No thread of the test's could release; the hold does, once it holds both."""
    server = LineServer()
    client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    server.accept()
    client.sendall(b"GET 1\n")
    server.serve_one()
    assert client.recv(3) == b"ok\n"
    close = [Match(proto="tcp", sport=server.port, fin=True),  # the server's FIN
             Match(proto="tcp", sport=server.port, rst=True)]  # and its reset
    with plugged("lo", match=close) as q:
        server.idle_timeout()
        q.wait_buffered(1, timeout=5)  # the FIN is held: the client cannot know yet
        q.release_when_holding(2, timeout=5)  # the FIN and the reset the request gets
        assert not select.select([client], [], [], 0)[0]  # a pool's check: "still open"
        started = time.monotonic()
        client.sendall(b"GET 2\n")  # reused ...
        answer = client.recv(3)  # ... and this blocks until the hold lets go
        waited = time.monotonic() - started
        st = q.stats()
        assert st.packets >= 2 and st.qlen == 0 and st.drops == 0  # FIN and reset, released
    assert answer == b""  # the end of the connection where an answer was expected
    assert waited < 5  # released when the reset was held, not by its timeout
    assert auto_threads() == []  # the block's end waited for it
    client.close(), server.close()


def test_release_after_lets_a_held_request_go_while_the_client_waits() -> None:
    server, t = udp_echo()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    port = server.getsockname()[1]
    with plugged("lo", match=Match(proto="udp", dport=port)) as q:
        q.release_after(0.3)
        started = time.monotonic()
        client.sendto(b"ping", ("127.0.0.1", port))  # held for 0.3 s ...
        assert client.recv(100) == b"PING"  # ... while this waits
        waited = time.monotonic() - started
        assert waited >= 0.3  # not before the delay: the request was held
        assert q.stats().packets == 1
        assert auto_threads_end()  # it released, and its thread ends
    client.sendto(b"stop", ("127.0.0.1", port))
    t.join(5)
    client.close(), server.close()


def test_a_timeout_releases_all_the_same_and_the_blocks_end_raises_it() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(TimeoutError) as info:
        with plugged("lo", match=Match(proto="udp", dport=rx.getsockname()[1])) as q:
            q.release_when_holding(3, timeout=0.3)
            tx.sendto(b"one of three", rx.getsockname())
            assert rx.recv(100) == b"one of three"  # released at the timeout
            assert not q.is_buffering
    assert "1 of 3 packets held" in str(info.value)
    assert "release_when_holding(3, timeout=0.3)" in "".join(
        getattr(info.value, "__notes__", []))
    # The next call raises it too, when it is the first to learn of it.
    with plugged("lo", match=Match(proto="udp", dport=rx.getsockname()[1])) as q:
        q.release_when_holding(3, timeout=0.1)
        assert auto_threads_end()
        with pytest.raises(TimeoutError, match="0 of 3 packets held"):
            q.release()
        q.release()  # once
    rx.close(), tx.close()


@pytest.mark.parametrize("how", ["release", "detach", "with"])
def test_every_way_out_cancels_the_thread_at_once(how: str) -> None:
    with plugged("lo", match=Match(proto="udp", dport=9)) as q:
        q.release_after(30)
        started = time.monotonic()
        if how == "release":
            q.release()
        elif how == "detach":
            q.detach()
        assert auto_threads() == [] or how == "with"
    assert time.monotonic() - started < 5  # cancelled, not waited for
    assert auto_threads() == []


def test_close_cancels_it_and_leaves_the_hold_as_it_is() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    q = PlugQdisc("lo").attach()
    q.buffer()
    q.release_after(0.2)
    q.close()  # frees the socket; the qdisc stays as it is: holding
    assert auto_threads() == []
    tx.sendto(b"held", rx.getsockname())
    time.sleep(0.5)  # past the cancelled release's delay
    with pytest.raises(BlockingIOError):
        rx.recv(100, socket.MSG_DONTWAIT)
    sh("tc", "qdisc", "change", "dev", "lo", "root", "plug", "release_indefinite")
    rx.settimeout(5)
    assert rx.recv(100) == b"held"
    sh("tc", "qdisc", "del", "dev", "lo", "root")
    rx.close(), tx.close()


def test_a_new_hold_after_a_cancelled_release_stays_held_past_its_delay() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with plugged("lo", match=Match(proto="udp", dport=rx.getsockname()[1])) as q:
        q.release_after(0.2)
        q.release()  # by hand, first: the automatic release is cancelled
        q.buffer()
        tx.sendto(b"held", rx.getsockname())
        q.wait_buffered(1, timeout=5)
        rx.settimeout(0.5)
        with pytest.raises(socket.timeout):
            rx.recv(100)  # 0.5 s: well past the cancelled 0.2 s
        assert q.stats().qlen == 1
    rx.settimeout(5)
    assert rx.recv(100) == b"held"
    rx.close(), tx.close()


def test_a_forgotten_hold_is_not_kept_alive_by_its_thread() -> None:
    q = PlugQdisc("lo", match=Match(proto="udp", dport=9)).attach()
    q.buffer()
    q.release_when_holding(5)  # never: nothing goes to port 9
    assert len(auto_threads()) == 1
    with pytest.warns(ResourceWarning, match="still attached when garbage-collected"):
        del q
        gc.collect()  # (or the thread's own reference goes last: it finishes it then)
        assert auto_threads_end()
    assert "prio" not in sh("tc", "qdisc", "show", "dev", "lo")  # released and detached


def test_an_error_in_the_thread_is_kept_for_the_next_call_and_never_printed(
        capfd: pytest.CaptureFixture[str]) -> None:
    q = PlugQdisc("lo", match=Match(proto="udp", dport=9)).attach()
    q.buffer()
    q.release_when_holding(5)
    sh("tc", "qdisc", "del", "dev", "lo", "root")  # the hold's tree, behind its back
    assert auto_threads_end()  # it ended on the error ...
    time.sleep(QUIET)
    assert capfd.readouterr().err == ""  # ... and printed nothing
    with pytest.raises(PlugQdiscError) as info:
        q.close()  # the next call that may raise it
    assert "automatic release release_when_holding(5)" in "".join(info.value.__notes__)
    q.close()  # once: closed now


def test_bad_input_is_refused_before_anything_is_touched() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with plugged("lo", match=Match(proto="udp", dport=rx.getsockname()[1])) as q:
        tx.sendto(b"held", rx.getsockname())
        q.wait_buffered(1, timeout=5)
        for call, exc, words in [
                (lambda: q.release_when_holding(0), ValueError, "packets must be >= 1"),
                (lambda: q.release_when_holding("2"), TypeError, "packets must be an int"),
                (lambda: q.release_when_holding(True), TypeError, "packets must be an int"),
                (lambda: q.release_when_holding(2, timeout=-1), ValueError, "timeout"),
                (lambda: q.release_after(-1), ValueError, "seconds"),
                (lambda: q.release_after(float("inf")), ValueError, "finite"),
                (lambda: q.release_after(None), ValueError, "finite"),
                (lambda: q.release_after("1"), TypeError, "seconds")]:
            with pytest.raises(exc, match=words):
                call()  # type: ignore[no-untyped-call]
        q.release_after(60)
        with pytest.raises(RuntimeError, match=r"release_after\(60\) is still pending"):
            q.release_when_holding(1)
        assert auto_threads() and q.is_buffering and q.stats().qlen == 1
        q.release()
        with pytest.raises(RuntimeError, match="not holding: attach.. and buffer.. first"):
            q.release_after(1)
        q.buffer()
    with pytest.raises(ValueError, match="closed"):
        q.release_after(1)
    rx.settimeout(5)
    assert rx.recv(100) == b"held"
    assert auto_threads() == []
    rx.close(), tx.close()
