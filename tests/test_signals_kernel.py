"""A block's end that a signal handler interrupts is finished, not forgotten (issue 14,
item 3), in the lab: a signal whose handler raises (a SIGTERM handler, Ctrl-C's
KeyboardInterrupt) is sent at every line that runs while a plugged() block ends, for
plain, match and ingress holds. Afterwards the device is as found (qdiscs, filters,
links) and the held datagrams have all arrived, in order; the handler's exception
reaches the code around the block."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import plugqdisc
from nettools import sh
from plugqdisc import Match, PlugQdisc, _plugqdisc, plugged
from plugqdisc.netns import NetNamespace

pytestmark = pytest.mark.plugqdisc

PACKAGE = os.path.dirname(os.path.abspath(plugqdisc.__file__))
#: Where the block's end runs: the package, and contextlib (if plugged() used it).
TRACED = (PACKAGE + os.sep, os.path.abspath(contextlib.__file__))
N = 3  # datagrams held
#: The tracer's first two events of a block's end, __exit__'s "call" and its first "line",
#: stand for the one place where CPython runs a pending handler before any line of
#: __exit__ (RESUME): no Python code can defer it there. The rest are all tried.
ENTRY = 2


class Stop(Exception):
    """What the test's SIGTERM handler raises."""


def raising(signum: int, frame: Optional[FrameType]) -> None:
    raise Stop(signum)


def kind(mode: str, port: int) -> Dict[str, Any]:
    if mode == "plain":
        return {}
    if mode == "match":
        return {"match": Match(proto="udp", dport=port)}
    return {"direction": "ingress", "match": Match(proto="udp", dport=port)}


def state() -> Tuple[List[Tuple[int, str, int, int]], List[str]]:
    """Every qdisc (filters hang on qdiscs: with no prio and no ingress qdisc, none is
    left) and link of this namespace."""
    rows, links = _plugqdisc.list_qdiscs(-1)
    return sorted((r[0], r[1], r[2], r[3]) for r in rows), sorted(l[1] for l in links)


class Injector:
    """A trace function that sends SIG to this process at the K-th line (or call) run in
    the package while it is set; K < 0 only counts."""

    def __init__(self, k: int, sig: int) -> None:
        self.k, self.sig, self.n, self.where = k, sig, 0, ""

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(TRACED):
            return None
        if event in ("call", "line"):
            if self.n == self.k:
                self.where = "%s:%d %s (%s)" % (os.path.basename(frame.f_code.co_filename),
                                                frame.f_lineno, frame.f_code.co_name, event)
                os.kill(os.getpid(), self.sig)  # its handler runs here, or is deferred
            self.n += 1
        return self


def one_end(mode: str, sig: int, k: int, block: Callable[..., Any] = plugged,
            ) -> Tuple[Injector, Optional[type]]:
    """A block holding N datagrams whose end gets SIG at trace event K, in a fresh
    namespace; asserts the device as found and every datagram delivered, in order.
    Returns the class of the exception that reached the code around the block (the
    exception itself is dropped, as an except clause drops it)."""
    with NetNamespace():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        before = state()
        inject = Injector(k, sig)
        caught: Optional[type] = None
        gc.disable()  # only the block's end is traced: no earlier object's __del__ in it
        try:
            try:
                with block("lo", **kind(mode, rx.getsockname()[1])) as q:
                    if block is PlugQdisc:
                        q.buffer()
                    for i in range(N):
                        tx.sendto(b"d%d" % i, rx.getsockname())
                    q.wait_buffered(N, timeout=5)
                    sys.settrace(inject)
            finally:
                sys.settrace(None)
                gc.enable()
        except (Stop, KeyboardInterrupt) as e:
            caught = type(e)
        assert state() == before, "signal at %s: %s" % (inject.where, state())
        rx.settimeout(5)
        got = [rx.recv(100) for _ in range(N)]
        assert got == [b"d%d" % i for i in range(N)], inject.where
        assert q.closed and not q.attached
        rx.close()
        tx.close()
    return inject, caught


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, raising)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


# The lines a block's end runs are the same in every mode (the modes differ in the C
# core's steps, during which a handler cannot run): Ctrl-C is tried on one, ~15 s each.
@pytest.mark.parametrize("mode, sig", [("plain", signal.SIGTERM), ("match", signal.SIGTERM),
                                       ("ingress", signal.SIGTERM), ("ingress", signal.SIGINT)],
                         ids=["plain-SIGTERM", "match-SIGTERM", "ingress-SIGTERM",
                              "ingress-SIGINT"])
def test_a_signal_at_every_line_of_a_blocks_end_waits_for_the_cleanup(mode: str,
                                                                    sig: int) -> None:
    expected = Stop if sig == signal.SIGTERM else KeyboardInterrupt
    with handlers():
        count, caught = one_end(mode, sig, -1)
        assert caught is None and count.n > 20
        for k in range(ENTRY, count.n):
            inject, caught = one_end(mode, sig, k)
            # the handler ran (after the cleanup), and its exception reached the caller
            assert caught is expected, (inject.where, caught)


def test_a_signal_at_every_line_of_a_plugqdisc_with_block_waits_for_the_cleanup() -> None:
    """`with PlugQdisc(...)`: the same."""
    with handlers():
        count, _ = one_end("plain", signal.SIGINT, -1, block=PlugQdisc)
        for k in range(ENTRY, count.n):
            inject, caught = one_end("plain", signal.SIGINT, k, block=PlugQdisc)
            assert caught is KeyboardInterrupt, (inject.where, caught)


@pytest.mark.parametrize("mode", ["plain", "match", "ingress"])
def test_sigterm_from_another_thread_at_many_offsets_of_a_blocks_end(mode: str) -> None:
    """The signal is sent by another thread at offsets spread over the block's end (it may
    be delivered to that thread: CPython still runs the handler in the main thread)."""
    with handlers():
        for i in range(24):
            delay = 0.0006 * i
            timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
            with NetNamespace():
                rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                rx.bind(("127.0.0.1", 0))
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                before = state()
                try:
                    with plugged("lo", **kind(mode, rx.getsockname()[1])) as q:
                        for n in range(N):
                            tx.sendto(b"d%d" % n, rx.getsockname())
                        q.wait_buffered(N, timeout=5)
                        timer.start()
                    timer.join()  # a signal sent after the block is handled here
                except Stop:
                    pass
                timer.join()
                assert state() == before, (delay, state())
                rx.settimeout(5)
                assert [rx.recv(100) for _ in range(N)] == [b"d%d" % n for n in range(N)]
                rx.close()
                tx.close()


def test_the_device_is_as_tc_shows_it_before_after_an_interrupted_ingress_block() -> None:
    """tc's own view (qdiscs, filters both ways, links), once, for the ingress hold."""
    def seen() -> str:
        return "\n".join([sh("tc", "qdisc", "show"), sh("tc", "filter", "show", "dev", "lo"),
                          sh("tc", "filter", "show", "dev", "lo", "ingress"),
                          sh("ip", "-o", "link", "show")])
    with handlers(), NetNamespace():
        before = seen()
        with pytest.raises(Stop):
            with plugged("lo", direction="ingress"):
                sys.settrace(Injector(3, signal.SIGTERM))
        sys.settrace(None)
        assert seen() == before
