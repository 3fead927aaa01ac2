"""Several holds on one device, released in the order a test chooses (issue 15), in the lab,
with real traffic: two TCP sessions reach a server of our own in the order chosen, every
time; a later datagram overtakes a held one; fifteen holds at once, each letting go of its
own packets only; the sixteenth refused; overlap; a plain hold beside selective ones."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import selectors
import socket
import threading
from typing import Iterator, List

import pytest

from nettools import device_state, left_as_found, recv_all
from plugqdisc import MAX_HOLDS, Match, PlugQdisc, PlugQdiscError, plugged, release_in_order

pytestmark = pytest.mark.plugqdisc


# ---- traffic ---------------------------------------------------------------------------

class OrderServer:
    """A TCP server of our own: one thread, one event loop over epoll (as nginx, HAProxy or
    asyncio serve), that answers each request line with b"ok\\n" and records the requests
    in the order it served them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.served: "queue.Queue[bytes]" = queue.Queue()
        self._stop_r, self._stop_w = os.pipe()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._sel.register(self._stop_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.fileobj == self._stop_r:
                    return
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    self._sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                data = conn.recv(100)
                if not data:
                    self._sel.unregister(conn)
                    conn.close()
                    continue
                self.served.put(data)
                conn.sendall(b"ok\n")

    def client(self) -> socket.socket:
        c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def session(self, client: socket.socket) -> Match:
        """What CLIENT sends the server on its connection (its requests)."""
        return Match(proto="tcp", sport=client.getsockname()[1], dport=self.port)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self.listener.close()
        os.close(self._stop_r), os.close(self._stop_w)


class Receivers:
    """N UDP receivers on lo, and a sender; hold(i) selects what goes to receiver i."""

    def __init__(self, n: int) -> None:
        self.rx = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            self.rx.append(s)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def port(self, i: int) -> int:
        return int(self.rx[i].getsockname()[1])

    def match(self, i: int) -> Match:
        return Match(proto="udp", dport=self.port(i))

    def send(self, i: int, data: bytes) -> None:
        self.tx.sendto(data, self.rx[i].getsockname())

    def nothing_queued(self, i: int) -> bool:
        return not select.select([self.rx[i]], [], [], 0)[0]

    def close(self) -> None:
        for s in self.rx + [self.tx]:
            s.close()


@contextlib.contextmanager
def receivers(n: int) -> Iterator[Receivers]:
    r = Receivers(n)
    try:
        yield r
    finally:
        r.close()


# ---- order between sessions -------------------------------------------------------------

def test_two_sessions_reach_the_server_in_the_order_chosen_every_time() -> None:
    server = OrderServer()
    clients = {"A": server.client(), "B": server.client()}
    orders: List[List[bytes]] = []
    with left_as_found():
        for first, second in [("A", "B")] * 10 + [("B", "A")] * 10:
            with plugged("lo", match=server.session(clients["A"])) as qa, \
                    plugged("lo", match=server.session(clients["B"])) as qb:
                holds = {"A": qa, "B": qb}
                for name, c in clients.items():
                    c.sendall(b"%s\n" % name.encode())
                for q in holds.values():
                    q.wait_buffered(1, timeout=5)
                assert server.served.empty()
                release_in_order(holds[first], holds[second])
            orders.append([server.served.get(timeout=5), server.served.get(timeout=5)])
            for c in clients.values():
                assert c.recv(3) == b"ok\n"
            assert orders[-1] == [b"%s\n" % first.encode(), b"%s\n" % second.encode()]
    assert orders == [[b"A\n", b"B\n"]] * 10 + [[b"B\n", b"A\n"]] * 10
    for c in clients.values():
        c.close()
    server.close()


def test_release_in_order_waits_for_each_backlog_to_leave() -> None:
    """Each hold's packets have all left its plug before the next is released: with many
    datagrams behind each hold, the receiver of the first sees all of its own before any
    of the second's (one receiving socket, so arrival order is the order seen)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0)), b.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    with plugged("lo", match=Match(proto="udp", sport=a.getsockname()[1], dport=port)) as qa, \
            plugged("lo", match=Match(proto="udp", sport=b.getsockname()[1],
                                      dport=port)) as qb:
        for i in range(50):
            a.sendto(b"a%02d" % i, rx.getsockname())
            b.sendto(b"b%02d" % i, rx.getsockname())
        qa.wait_buffered(50, timeout=5), qb.wait_buffered(50, timeout=5)
        release_in_order(qb, qa)
        assert qa.stats().qlen == 0 and qb.stats().qlen == 0
    assert recv_all(rx, 100) == [b"b%02d" % i for i in range(50)] + [b"a%02d" % i
                                                                      for i in range(50)]
    rx.close(), a.close(), b.close()


# ---- a swap within one flow (the recipe: tests/test_recipes_order.py) -----------------------

def test_let_new_packets_pass_needs_a_selective_or_ingress_hold() -> None:
    with plugged("lo") as q:
        with pytest.raises(ValueError, match="needs a selective or ingress hold"):
            q.let_new_packets_pass()
        assert q.is_buffering


# ---- fifteen at once ------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_fifteen_holds_each_let_go_of_their_own_packets_only_and_a_sixteenth_is_refused(
        direction: str) -> None:
    assert MAX_HOLDS == 15
    with receivers(MAX_HOLDS) as r, left_as_found(), contextlib.ExitStack() as stack:
        holds = [stack.enter_context(plugged("lo", match=r.match(i), direction=direction))
                 for i in range(MAX_HOLDS)]
        assert len({q.handle for q in holds}) == MAX_HOLDS  # chosen at attach, all free
        assert len({q.band for q in holds}) == MAX_HOLDS and all(q.band for q in holds)
        for i in range(MAX_HOLDS):
            for j in range(3):
                r.send(i, b"%02d-%d" % (i, j))
        for q in holds:
            assert q.wait_buffered(3, timeout=5).qlen == 3  # its own three, no more

        before = device_state("lo")
        extra = PlugQdisc("lo", match=Match(proto="udp", dport=9), direction=direction)
        with pytest.raises(PlugQdiscError) as info:
            extra.attach()
        assert info.value.errno == errno.ENOSPC
        assert str(MAX_HOLDS) in str(info.value)  # names the limit
        extra.close()
        assert device_state("lo") == before  # nothing changed
        assert [q.stats().qlen for q in holds] == [3] * MAX_HOLDS

        for k in reversed(range(MAX_HOLDS)):
            assert all(r.nothing_queued(i) for i in range(k + 1))  # none before its release
            holds[k].release()
            holds[k].wait_drained(timeout=5)
            assert recv_all(r.rx[k], 3) == [b"%02d-%d" % (k, j) for j in range(3)]
            assert [q.stats().qlen for q in holds[:k]] == [3] * k


def test_an_ingress_holds_plug_holds_nothing_but_what_it_selects() -> None:
    """The ifb an ingress hold adds is a device of its own: what it would send itself (an
    IPv6 router solicitation once it is up, about a second later, then every few seconds)
    must not sit in the hold's plug, counted by stats() and wait_buffered() as if it were
    the user's. Held for 3 s, with nothing sent to what it selects: it holds nothing."""
    with left_as_found(), plugged("lo", direction="ingress",
                                  match=Match(proto="udp", dport=9)) as q:
        with pytest.raises(TimeoutError):
            q.wait_buffered(1, timeout=3.0)
        assert q.stats().qlen == 0


# ---- overlap ----------------------------------------------------------------------------------

def test_a_packet_two_holds_select_goes_to_the_one_attached_first() -> None:
    with receivers(1) as r, left_as_found():
        every_udp, this_port = Match(proto="udp"), r.match(0)
        for first, second in ((every_udp, this_port), (this_port, every_udp)):
            with plugged("lo", match=first) as q1, plugged("lo", match=second) as q2:
                r.send(0, b"both select it")
                assert q1.wait_buffered(1, timeout=5).qlen == 1
                assert q2.stats().qlen == 0
                q2.release()  # not its packet to let go
                assert r.nothing_queued(0) and q1.stats().qlen == 1
                q1.release()
                assert recv_all(r.rx[0], 1) == [b"both select it"]


# ---- a plain hold and selective holds ---------------------------------------------------------

def test_a_plain_hold_beside_selective_holds_is_refused_and_replace_deletes_nothing() -> None:
    with receivers(2) as r, left_as_found():
        with plugged("lo", match=r.match(0)) as a, plugged("lo", match=r.match(1)) as b:
            r.send(0, b"held by a"), r.send(1, b"held by b")
            a.wait_buffered(1, timeout=5), b.wait_buffered(1, timeout=5)
            before = device_state("lo")
            plain = PlugQdisc("lo")
            with pytest.raises(PlugQdiscError) as info:
                plain.attach()
            assert info.value.errno == errno.EEXIST
            # names the holds there, and their holder
            assert "has selective holds" in str(info.value)
            assert "held by pid %d" % os.getpid() in str(info.value)
            assert "pass replace=True" not in str(info.value)  # no advice to delete a hold
            with pytest.raises(PlugQdiscError) as info:
                plain.attach(replace=True)
            assert info.value.errno == errno.EBUSY
            plain.close()
            assert device_state("lo") == before
            assert a.stats().qlen == 1 and b.stats().qlen == 1
        assert recv_all(r.rx[0], 1) == [b"held by a"] and recv_all(r.rx[1], 1) == [b"held by b"]


def test_a_selective_hold_beside_a_plain_hold_is_refused_and_replace_deletes_nothing() -> None:
    with receivers(1) as r, left_as_found():
        with plugged("lo") as plain:
            r.send(0, b"held by the plain hold")
            plain.wait_buffered(1, timeout=5)
            before = device_state("lo")
            sel = PlugQdisc("lo", match=r.match(0))
            with pytest.raises(PlugQdiscError) as info:
                sel.attach()
            assert info.value.errno == errno.EEXIST
            assert "plug qdisc (handle 1:)" in str(info.value)
            assert "held by pid %d" % os.getpid() in str(info.value)
            assert "pass replace=True" not in str(info.value)
            with pytest.raises(PlugQdiscError) as info:
                sel.attach(replace=True)
            assert info.value.errno == errno.EBUSY
            sel.close()
            assert device_state("lo") == before
            assert plain.stats().qlen == 1
        assert recv_all(r.rx[0], 1) == [b"held by the plain hold"]
