"""Holds on one device take turns and know of each other (csrc/share.c): the device's
lock, a plain plug's users, and the guardian's removal of several holds of one device."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from nettools import fork_child, report, udp_pair
from plugqdisc import Match, PlugQdisc, PlugQdiscError, plugged

pytestmark = pytest.mark.plugqdisc


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def device_state() -> str:
    return (sh("tc", "qdisc", "show") + sh("tc", "filter", "show", "dev", "lo") +
            sh("tc", "filter", "show", "dev", "lo", "ingress") + sh("ip", "-o", "link"))


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
    it); the first one out leaves the plug to the other, which keeps holding what it
    holds; the last one out releases everything, in order, and removes it."""
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
        q.buffer()
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
