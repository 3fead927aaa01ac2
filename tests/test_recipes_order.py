"""The recipes of docs/recipes.rst for several holds on one device: each hold its own
packets, release in a chosen order, a later datagram overtaking a held one; and
examples/ordered_sessions.py, whose lost update must happen every time with the holds,
in the order chosen."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from plugqdisc import Match, plugged, release_in_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def receiver() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    return rx


@pytest.mark.plugqdisc
def test_two_holds_on_one_device_each_hold_their_own() -> None:
    dns, web = receiver(), receiver()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with plugged("lo", match=Match(proto="udp", dport=dns.getsockname()[1])) as a, \
            plugged("lo", match=Match(proto="udp", dport=web.getsockname()[1])) as b:
        tx.sendto(b"to dns", dns.getsockname())
        tx.sendto(b"to web", web.getsockname())
        a.wait_buffered(1, timeout=5)
        b.wait_buffered(1, timeout=5)
        b.release()                      # b lets go of its own packets only
        assert web.recv(100) == b"to web"
        assert a.stats().qlen == 1       # a still holds its own
    assert dns.recv(100) == b"to dns"    # released at the end of the block


@pytest.mark.plugqdisc
def test_release_in_a_chosen_order() -> None:
    rx = receiver()
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first.bind(("127.0.0.1", 0))
    second.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    with plugged("lo", match=Match(proto="udp", sport=first.getsockname()[1],
                                   dport=port)) as a, \
            plugged("lo", match=Match(proto="udp", sport=second.getsockname()[1],
                                      dport=port)) as b:
        first.sendto(b"sent first", rx.getsockname())
        second.sendto(b"sent second", rx.getsockname())
        a.wait_buffered(1, timeout=5)
        b.wait_buffered(1, timeout=5)
        release_in_order(b, a)           # b's packets leave, then a's
    assert [rx.recv(100), rx.recv(100)] == [b"sent second", b"sent first"]


@pytest.mark.plugqdisc
def test_a_later_datagram_overtakes_a_held_one() -> None:
    rx = receiver()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with plugged("lo", match=Match(proto="udp", dport=rx.getsockname()[1])) as q:
        tx.sendto(b"1", rx.getsockname())
        q.wait_buffered(1, timeout=5)    # datagram 1 is held
        q.let_new_packets_pass()         # from now on the hold selects nothing new
        tx.sendto(b"2", rx.getsockname())
        assert rx.recv(10) == b"2"       # 2 passes ...
        q.release()
        assert rx.recv(10) == b"1"       # ... and 1 follows: the receiver saw 2, 1


@pytest.mark.plugqdisc
def test_the_ordered_sessions_example_loses_the_update_chosen_every_time() -> None:
    p = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "ordered_sessions.py")],
                       capture_output=True, text=True, timeout=300)
    lines = p.stdout.splitlines()
    assert len(lines) == 3, p.stdout + p.stderr
    assert lines[0].startswith("without holds: ") and lines[0].endswith(" of 20 tries lost "
                                                                         "an update")
    assert lines[1:] == ["with A's write released first: 20 of 20 tries lost A's update",
                         "with B's write released first: 20 of 20 tries lost B's update"]
    assert p.returncode == 0, p.stderr
