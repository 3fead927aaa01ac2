"""Holds on one device take turns and know of each other (csrc/share.c): the device's
lock, a plain plug's users, and the guardian's removal of several holds of one device."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time

import pytest

from nettools import device_state, fork_child, report, sh, udp_pair
from plugqdisc import Match, PlugQdisc, PlugQdiscError, plugged

pytestmark = pytest.mark.plugqdisc


def lock_name(dev: str) -> bytes:
    return b"\0plugqdisc/lock/%x" % socket.if_nametoindex(dev)


def test_an_attach_waits_for_the_devices_lock_and_says_who_kept_it() -> None:
    """A process that keeps the lock (a stopped attach) makes the next attach fail after
    5 s with EBUSY at step lock, nothing changed; once it lets go, attach works."""
    before = device_state()
    keeper = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    keeper.bind(lock_name("lo"))
    try:
        start = time.monotonic()
        with pytest.raises(PlugQdiscError) as e:
            PlugQdisc("lo", match=Match(proto="udp", dport=5)).attach()
        assert time.monotonic() - start >= 4.5
        assert e.value.errno == errno.EBUSY and e.value.step == "lock", e.value
        assert "ss -xlp | grep plugqdisc/lock" in str(e.value)
        assert device_state() == before
    finally:
        keeper.close()
    with plugged("lo", match=Match(proto="udp", dport=5)) as q:
        assert q.attached and q.band == 2
    assert device_state() == before


def test_a_holder_killed_with_three_holds_on_one_device_leaves_it_as_found() -> None:
    """Its guardian removes each hold in turn, taking and letting go of the device's lock
    for each: the last one removes what they shared (prio, ingress qdisc), within 1 s, and
    releases what they held."""
    before = device_state()
    rx, tx, addr = udp_pair()

    def holder(w: int) -> None:
        holds = [PlugQdisc("lo", match=Match(proto="udp", dport=addr[1])).attach(),
                 PlugQdisc("lo", match=Match(proto="udp", dport=1)).attach(),
                 PlugQdisc("lo", direction="ingress", match=Match(proto="udp", dport=2))
                 .attach()]
        for q in holds:
            q.buffer()
        tx.sendto(b"held", addr)
        holds[0].wait_buffered(1, timeout=5)
        report(w, bands=[q.band for q in holds])
        time.sleep(60)

    pid, r = fork_child(holder)
    out = json.loads(r.readline())
    assert out["bands"] == [2, 3, 1]
    rx.settimeout(0.3)
    with pytest.raises(socket.timeout):
        rx.recv(100)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 1.0
    while device_state() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert device_state() == before
    rx.settimeout(2)
    assert rx.recv(100) == b"held"


def test_two_processes_attach_one_plain_plug_at_once_and_the_first_out_removes_nothing(
        ) -> None:
    """Both attach at the same moment (no EEXIST: one makes the plug, the other joins
    it); the first one out (the maker, which let traffic pass) leaves the plug to the
    other, which keeps holding what it holds; the last one out releases everything, in
    order, and removes it."""
    before = device_state()
    rx, tx, addr = udp_pair()
    go_r, go_w = os.pipe()

    def holder(w: int) -> None:
        os.read(go_r, 1)
        try:
            q = PlugQdisc("lo").attach()
        except PlugQdiscError as e:
            report(w, error=str(e))
            return
        if not q.created:
            q.buffer()  # the one that joined holds; the maker lets traffic pass
        report(w, created=q.created)
        time.sleep(60)

    kids = [fork_child(holder) for _ in range(2)]
    os.write(go_w, b"xx")
    outs = [json.loads(r.readline()) for _, r in kids]
    assert all("error" not in o for o in outs), outs
    assert sorted(o["created"] for o in outs) == [False, True]
    for i in range(5):
        tx.sendto(b"%d" % i, addr)
    rx.settimeout(0.3)
    with pytest.raises(socket.timeout):
        rx.recv(100)
    # the creator dies first: its guardian sees the other user alive and leaves the plug
    creator = next(pid for (pid, _), o in zip(kids, outs) if o["created"])
    other = next(pid for (pid, _), o in zip(kids, outs) if not o["created"])
    os.kill(creator, signal.SIGKILL)
    os.waitpid(creator, 0)
    time.sleep(0.5)
    with pytest.raises(socket.timeout):
        rx.recv(100)
    assert " plug 1: " in sh("tc", "qdisc", "show", "dev", "lo")
    os.kill(other, signal.SIGKILL)
    os.waitpid(other, 0)
    rx.settimeout(2)
    assert [rx.recv(100) for _ in range(5)] == [b"%d" % i for i in range(5)]
    deadline = time.monotonic() + 1.0
    while device_state() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert device_state() == before


def keep_lock(dev: str = "lo") -> socket.socket:
    """Bind the device's lock as a stuck attach would (the guardian lets go of its copy
    just after an attach returns: retry a moment)."""
    keeper = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 2
    while True:
        try:
            keeper.bind(lock_name(dev))
            return keeper
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def test_a_detach_retried_after_a_failure_never_touches_the_hold_that_took_its_place(
        ) -> None:
    """A's detach fails at its last step (the lock kept by another): its filters and plug
    are gone, so C takes the same band, handle and preferences. A's retry undoes only what
    is left of A: C keeps holding what it holds."""
    before = device_state()
    rx_a, tx_a, addr_a = udp_pair()
    rx_c, tx_c, addr_c = udp_pair()
    a = PlugQdisc("lo", match=Match(proto="udp", dport=addr_a[1])).attach()
    keeper = keep_lock()
    try:
        with pytest.raises(PlugQdiscError) as e:
            a.detach()
        assert e.value.errno == errno.EBUSY and e.value.step == "lock"
        assert a.attached
    finally:
        keeper.close()
    with plugged("lo", match=Match(proto="udp", dport=addr_c[1])) as c:
        assert (c.band, c.handle) == (2, "1:")  # A's, now free
        tx_c.sendto(b"held by C", addr_c)
        c.wait_buffered(1, timeout=5)
        a.detach()
        assert not a.attached
        rx_c.settimeout(0.3)
        with pytest.raises(socket.timeout):
            rx_c.recv(100)
        assert c.stats().qlen == 1
    rx_c.settimeout(2)
    assert rx_c.recv(100) == b"held by C"
    a.close()
    assert device_state() == before


def test_a_forked_child_of_a_dead_holder_keeps_no_lock() -> None:
    """The guardian undoes the dead holder's hold with a socket of its own: the device's
    lock is free after, though a child the holder forked lives on."""
    before = device_state()

    def holder(w: int) -> None:
        PlugQdisc("lo", match=Match(proto="udp", dport=9)).attach().buffer()
        kid = os.fork()
        if kid == 0:
            time.sleep(30)
            os._exit(0)
        report(w, kid=kid)
        time.sleep(60)

    pid, r = fork_child(holder)
    kid = json.loads(r.readline())["kid"]
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 2
        while device_state() != before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert device_state() == before
        keep_lock().close()  # free (within the 2 s keep_lock allows)
        with plugged("lo", match=Match(proto="udp", dport=9)) as q:
            assert q.attached
    finally:
        os.kill(kid, signal.SIGKILL)
    assert device_state() == before


def test_the_guardian_waits_for_the_lock_and_releases_a_dead_holders_shared_plug() -> None:
    """A dead holder's plain plug: its guardian waits past a lock kept for 6 s (a stopped
    attach) and then releases and removes it; and a holding user of a plug that a living
    user shares is released at its death, the plug left to the living one."""
    before = device_state()
    rx, tx, addr = udp_pair()

    def holder(w: int) -> None:
        q = PlugQdisc("lo").attach()
        q.buffer()
        tx.sendto(b"held", addr)
        q.wait_buffered(1, timeout=5)
        report(w, ok=1)
        time.sleep(60)

    pid, r = fork_child(holder)
    json.loads(r.readline())
    keeper = keep_lock()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    time.sleep(6)
    rx.settimeout(0.2)
    with pytest.raises(socket.timeout):
        rx.recv(100)  # still held: the guardian waits for the lock
    keeper.close()
    rx.settimeout(3)
    assert rx.recv(100) == b"held"
    deadline = time.monotonic() + 2
    while device_state() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert device_state() == before

    living = PlugQdisc("lo").attach()  # passing; the dead one shares its plug and holds
    try:
        pid, r = fork_child(holder)
        json.loads(r.readline())
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert rx.recv(100) == b"held"
        assert living.stats().qlen == 0 and " plug 1: " in sh("tc", "qdisc", "show", "dev",
                                                               "lo")
    finally:
        living.detach()
        living.close()
    assert device_state() == before


def test_replace_never_deletes_a_living_hold_below_the_qdisc_in_the_way() -> None:
    """replace=True over a prio of the user's with a living plain hold in one of its
    classes: EBUSY, nothing changed, the hold keeps what it holds."""
    rx, tx, addr = udp_pair()
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio")
    try:
        with plugged("lo", parent="1:2", handle="10:") as p:
            sh("tc", "filter", "add", "dev", "lo", "parent", "1:", "matchall", "classid",
               "1:2")
            tx.sendto(b"p", addr)
            p.wait_buffered(1, timeout=5)
            state = device_state()
            with pytest.raises(PlugQdiscError) as e:
                PlugQdisc("lo", match=Match(proto="udp", dport=1)).attach(replace=True)
            assert e.value.errno == errno.EBUSY and e.value.step == "in_use", e.value
            assert device_state() == state and p.stats().qlen == 1
        rx.settimeout(2)
        assert rx.recv(100) == b"p"
    finally:
        sh("tc", "qdisc", "del", "dev", "lo", "root")


def test_an_ingress_replace_checks_the_egress_before_deleting_anything() -> None:
    """An ingress attach(replace=True) over the user's ingress qdisc while an egress hold
    holds: EBUSY, and the ingress qdisc in the way is still there."""
    rx, tx, addr = udp_pair()
    sh("tc", "qdisc", "add", "dev", "lo", "ingress")
    try:
        with plugged("lo") as e:
            tx.sendto(b"e", addr)
            e.wait_buffered(1, timeout=5)
            with pytest.raises(PlugQdiscError) as err:
                PlugQdisc("lo", direction="ingress").attach(replace=True)
            assert err.value.errno == errno.EBUSY
            assert " ingress ffff: " in sh("tc", "qdisc", "show", "dev", "lo")
            assert e.stats().qlen == 1
        rx.settimeout(2)
        assert rx.recv(100) == b"e"
    finally:
        sh("tc", "qdisc", "del", "dev", "lo", "ingress")
