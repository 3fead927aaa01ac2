"""Hold and release against the real sch_plug (in the lab), real traffic over lo.

Each test runs in a fresh network namespace (the plugqdisc marker gives it one).
"""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from nettools import (Sender, datagrams, nothing_arrives, pattern, recv_all,
                      let_tcp_fill_the_queue, recv_exactly, send_spread, sh, tcp_pair,
                      udp_pair)
from plugqdisc import Match, PlugQdisc, PlugQdiscError, Stats, plugged
from plugqdisc.netns import UDP_OVERHEAD, UdpStream

pytestmark = pytest.mark.plugqdisc


def has_plug(dev: str = "lo") -> bool:
    return " plug " in sh("tc", "qdisc", "show", "dev", dev)


def test_udp_is_held_counted_and_released_in_order() -> None:
    rx, tx, addr = udp_pair()
    sent = datagrams(20, 300)
    with plugged("lo") as q:
        assert q.is_buffering
        for d in sent:
            tx.sendto(d, addr)
        st = q.wait_buffered(20, timeout=5)
        assert isinstance(st, Stats)
        assert (st.qlen, st.backlog, st.drops) == (20, 20 * (300 + UDP_OVERHEAD), 0)
        assert nothing_arrives(rx)
    assert recv_all(rx, 20) == sent
    assert not has_plug()  # plugged() created it, so it deleted it


def test_tcp_bytes_are_held_then_arrive_complete_and_in_order() -> None:
    client, server = tcp_pair()
    data = pattern(100_000)
    with plugged("lo") as q:
        sender = Sender(client, data)
        sender.start()
        st = q.wait_buffered(1, timeout=5)
        assert st.backlog > 0
        assert nothing_arrives(server)
    got = recv_exactly(server, len(data))
    sender.join(5)
    assert sender.error is None
    assert got == data


def test_a_held_syn_delays_accept_until_release() -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(0.5)
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setblocking(False)
    with plugged("lo") as q:
        assert c.connect_ex(ls.getsockname()) == errno.EINPROGRESS
        q.wait_buffered(1, timeout=5)  # the SYN
        with pytest.raises(socket.timeout):
            ls.accept()
    ls.settimeout(5)
    s, peer = ls.accept()
    assert peer == c.getsockname()
    c.setblocking(True)
    c.sendall(b"after release")
    assert recv_exactly(s, 13) == b"after release"


def test_release_one_releases_exactly_the_earlier_epoch() -> None:
    rx, tx, addr = udp_pair()
    q = PlugQdisc("lo").attach()
    try:
        q.buffer()
        first = datagrams(3, 100, b"A")
        for d in first:
            tx.sendto(d, addr)
        q.wait_buffered(3, timeout=5)
        q.release_one()  # the epoch before the latest buffer() is empty: nothing moves
        assert nothing_arrives(rx)
        assert q.stats().qlen == 3
        q.buffer()  # close epoch A, open epoch B
        second = datagrams(2, 100, b"B")
        for d in second:
            tx.sendto(d, addr)
        q.wait_buffered(5, timeout=5)
        q.release_one()  # lets A go, holds B
        assert recv_all(rx, 3) == first
        assert nothing_arrives(rx)
        assert q.stats().qlen == 2
        assert q.is_buffering
        q.release()
        assert recv_all(rx, 2) == second
        assert not q.is_buffering
    finally:
        q.detach()
        q.close()


def test_no_limit_means_the_device_default_not_the_limit0_trap() -> None:
    rx, tx, addr = udp_pair()
    sent = datagrams(100, 1000)
    with plugged("lo") as q:
        assert q.limit == 1000 * 65550  # tx_queue_len * (mtu + Ethernet header) on lo
        send_spread(addr, sent)
        st = q.wait_buffered(100, timeout=5)
        assert (st.qlen, st.drops) == (100, 0)
    assert recv_all(rx, 100) == sent


def test_a_small_limit_drops_the_excess_and_counts_it() -> None:
    rx, tx, addr = udp_pair()
    wire = 1000 + UDP_OVERHEAD
    sent = datagrams(10, 1000)
    with plugged("lo", limit=5 * wire + wire // 2) as q:
        for d in sent:
            tx.sendto(d, addr)
        st = q.wait_buffered(5, timeout=5)
        assert (st.qlen, st.backlog, st.drops) == (5, 5 * wire, 5)
    assert recv_all(rx, 5) == sent[:5]
    assert nothing_arrives(rx)


def test_set_limit_applies_to_what_comes_next() -> None:
    rx, tx, addr = udp_pair()
    wire = 500 + UDP_OVERHEAD
    with plugged("lo") as q:
        q.set_limit(2 * wire)
        assert q.limit == 2 * wire
        for d in datagrams(4, 500):
            tx.sendto(d, addr)
        st = q.wait_buffered(2, timeout=5)
        assert (st.qlen, st.drops) == (2, 2)


def test_detach_while_holding_200k_of_tcp_loses_nothing() -> None:
    let_tcp_fill_the_queue()
    client, server = tcp_pair(big_buffers=True)
    data = pattern(200_000)
    q = PlugQdisc("lo").attach()
    q.buffer()
    sender = Sender(client, data)
    sender.start()
    sender.join(10)
    assert sender.error is None and not sender.is_alive()
    st = q.wait_buffered(1, timeout=5)
    assert st.backlog >= 200_000  # the whole stream is in the qdisc, held
    q.detach()
    assert recv_exactly(server, len(data)) == data
    assert not has_plug()
    with pytest.raises(PlugQdiscError) as e:
        q.stats()
    assert e.value.errno == errno.ENOENT
    q.close()


CYCLES = 30


@pytest.mark.parametrize("mode", ["plain", "match"])
def test_holds_that_come_and_go_lose_almost_nothing_of_a_steady_stream(mode: str) -> None:
    """30 attach/buffer/release/detach cycles under UDP at 1,000 datagrams/s on lo: a plain
    hold holds the stream (every other cycle for 5 ms) and releases it, a match hold selects
    none of it (issue 14).

    Deleting a root qdisc that a release had just scheduled made the kernel wait a tick in
    dev_deactivate_many() with noop_qdisc in its place, and every datagram sent meanwhile
    was dropped: hundreds here (HZ=100), and at least one a cycle at this rate whatever HZ.
    Detach now gives the kernel's transmit softirq 2 ms to run first. Not zero: the stream
    runs at nice 19, so that it seldom preempts the holder inside the kernel's swap of an
    idle root qdisc (which loses a datagram now and then, `tc` alike: docs/semantics.rst),
    but the lab shares its host, and now and then the softirq thread does not get the CPU
    within those 2 ms, and a detach still waits a tick (about 10 datagrams). The bound,
    fewer than one a cycle, fails every time on a detach that always waits."""
    match = Match(proto="tcp", dport=9) if mode == "match" else None
    with UdpStream(rate=1000, nice=19) as stream:
        for i in range(CYCLES):
            q = PlugQdisc("lo", match=match).attach()
            q.buffer()
            if i % 2:
                time.sleep(0.005)
            q.release()
            q.detach()
            q.close()
            time.sleep(0.01)
    assert stream.sent >= CYCLES * 10
    assert stream.lost < CYCLES, "lost %d of %d" % (stream.lost, stream.sent)
    assert not has_plug()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_plugged_releases_on_the_way_out_of_an_error(exc: type) -> None:
    rx, tx, addr = udp_pair()
    with pytest.raises(exc):
        with plugged("lo") as q:
            tx.sendto(b"held across the error", addr)
            q.wait_buffered(1, timeout=5)
            raise exc("boom")
    assert q.closed
    assert recv_all(rx, 1) == [b"held across the error"]
    assert not has_plug()


def test_plugged_adopts_an_existing_plug_and_leaves_it_in_place() -> None:
    owner = PlugQdisc("lo").attach()
    assert owner.created
    rx, tx, addr = udp_pair()
    with plugged("lo") as q:
        assert not q.created
        tx.sendto(b"x", addr)
        q.wait_buffered(1, timeout=5)
    assert recv_all(rx, 1) == [b"x"]
    assert has_plug()  # not ours to delete
    owner.detach()
    owner.close()
    assert not has_plug()


def test_context_manager_of_plugqdisc_attaches_passing_and_cleans_up() -> None:
    rx, tx, addr = udp_pair()
    with PlugQdisc("lo") as q:
        assert q.created and not q.is_buffering
        tx.sendto(b"passes", addr)
        assert recv_all(rx, 1) == [b"passes"]
        q.buffer()
        tx.sendto(b"held", addr)
        q.wait_buffered(1, timeout=5)
    assert recv_all(rx, 1) == [b"held"]
    assert q.closed and not has_plug()


def test_wait_buffered_times_out_and_lets_other_threads_run() -> None:
    rx, tx, addr = udp_pair()
    with plugged("lo") as q:
        with pytest.raises(TimeoutError):
            q.wait_buffered(1, timeout=0.2)
        # a sender that only starts once the waiter is waiting: it needs the GIL
        timer = threading.Timer(0.2, lambda: tx.sendto(b"late", addr))
        timer.start()
        assert q.wait_buffered(1, timeout=5).qlen == 1
        timer.join()


def test_independent_plugs_on_two_devices_nested() -> None:
    sh("ip", "link", "add", "dummy0", "type", "dummy")
    sh("ip", "link", "set", "dummy0", "up")
    rx, tx, addr = udp_pair()
    with plugged("lo") as outer:
        with plugged("dummy0", handle="7:") as inner:
            assert inner.ifindex != outer.ifindex
            tx.sendto(b"on lo", addr)
            outer.wait_buffered(1, timeout=5)
        # leaving the inner block released dummy0 only
        assert outer.is_buffering and outer.stats().qlen == 1
        assert nothing_arrives(rx)
        assert not has_plug("dummy0")
    assert recv_all(rx, 1) == [b"on lo"]


def test_independent_plugs_in_threads() -> None:
    for i in range(3):
        sh("ip", "link", "add", "dm%d" % i, "type", "dummy")
    errors = []

    def work(i: int) -> None:
        try:
            for _ in range(20):
                with plugged("dm%d" % i) as q:
                    assert q.stats().qlen == 0
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for i in range(3):
        assert not has_plug("dm%d" % i)


def test_many_threads_hammering_one_object() -> None:
    rx, tx, addr = udp_pair()
    q = PlugQdisc("lo").attach()
    errors = []

    def hammer() -> None:
        try:
            for _ in range(100):
                q.buffer()
                q.stats()
                q.release()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    q.release()
    assert not q.is_buffering
    tx.sendto(b"still works", addr)
    assert recv_all(rx, 1) == [b"still works"]
    assert q.stats().qlen == 0
    q.detach()
    q.close()
