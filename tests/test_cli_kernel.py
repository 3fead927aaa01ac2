"""The plugqdisc command, in the lab, with real traffic: hold around a command and until a
signal, status, release of a dead holder's plug, cleanup of only what plugqdisc made.

Each test runs in a fresh network namespace (the plugin's), and so does each command it
starts. Starting Python in the lab costs about 1.5 s: each test runs the command once or
twice, and holds made by a "dead holder" come from a forked child, not a new Python."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Callable, List

import pytest

from nettools import nothing_arrives, recv_all, sh, udp_pair
from plugqdisc import Match, PlugQdisc, _plugqdisc

pytestmark = pytest.mark.plugqdisc

CLI = [sys.executable, "-m", "plugqdisc"]


def cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def started(*args: str) -> "subprocess.Popen[str]":
    """The command, running; returns once it says it holds (its first line on stderr)."""
    p = subprocess.Popen([*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    line = p.stderr.readline()
    assert "holding" in line, line + p.stderr.read()
    return p


def dead_holder(make: Callable[[], List[PlugQdisc]]) -> None:
    """Run MAKE in a forked child that holds what it made and is then SIGKILLed: the
    holds are left behind, as by a holder that crashed (guard=False: no guardian)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            holds = make()  # kept: an object garbage-collected releases and detaches
            for q in holds:
                q.buffer()
            os.kill(os.getpid(), signal.SIGKILL)
        except BaseException as e:
            os.write(w, repr(e).encode())
        os._exit(1)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        failure = f.read()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, failure


def qdiscs() -> List[tuple]:  # type: ignore[type-arg]
    """(device, kind, handle, parent) of every qdisc here, from the C core's dump."""
    rows, links = _plugqdisc.list_qdiscs(-1)
    names = {i: name for i, name, _ in links}
    return [(names[r[0]], r[1], r[2], r[3]) for r in rows]


def veth(a: str, b: str) -> None:
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", a, "up")
    sh("ip", "link", "set", b, "up")


# ---- hold ------------------------------------------------------------------------------

def test_hold_holds_while_cmd_runs_and_exits_with_its_status() -> None:
    rx, tx, addr = udp_pair()
    # CMD says when it runs, then waits for the exit status the test gives it.
    p = started("hold", "lo", "--proto", "udp", "--dport", str(addr[1]), "--",
                "sh", "-c", "echo running; read code; exit $code")
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline() == "running\n"
    tx.sendto(b"during", addr)
    assert nothing_arrives(rx)
    out, err = p.communicate("3\n", timeout=60)
    assert p.returncode == 3, err
    assert recv_all(rx, 1) == [b"during"]
    assert "released lo: 1 packet (48 bytes) was held, 0 dropped\n" in err, err
    assert qdiscs() == [("lo", "noqueue", 0, 0xFFFFFFFF)]  # the tree is gone


@pytest.mark.parametrize("script, status", [("exit 0", 0), ("kill -TERM $$", 128 + 15)])
def test_hold_exit_status_is_cmds_signals_included(script: str, status: int) -> None:
    p = cli("hold", "lo", "--", "sh", "-c", script)
    assert p.returncode == status, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 2 and "holding" in lines[0]
    assert lines[1] == "plugqdisc: released lo: 0 packets (0 bytes) were held, 0 dropped"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_hold_without_cmd_lasts_until_a_signal(sig: int) -> None:
    rx, tx, addr = udp_pair()
    p = started("hold", "lo")
    tx.sendto(b"held", addr)
    assert nothing_arrives(rx)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert recv_all(rx, 1) == [b"held"]
    assert "released lo: 1 packet (46 bytes) was held, 0 dropped\n" in err, err


def test_hold_names_the_namespace_in_its_lines() -> None:
    sh("ip", "netns", "add", "plugqdisc-t1")
    try:
        p = cli("hold", "lo", "--netns", "plugqdisc-t1", "--", "true")
        assert p.returncode == 0, p.stderr
        assert p.stderr.splitlines() == [
            "plugqdisc: holding what lo in netns plugqdisc-t1 sends while true runs",
            "plugqdisc: released lo in netns plugqdisc-t1: 0 packets (0 bytes) were held, "
            "0 dropped"]
    finally:
        sh("ip", "netns", "del", "plugqdisc-t1")


def test_released_counts_after_an_outside_release_say_what_left_before() -> None:
    rx, tx, addr = udp_pair()
    p = started("hold", "lo")
    tx.sendto(b"first", addr)
    assert nothing_arrives(rx)
    assert cli("release", "lo").returncode == 0  # someone else lets go
    assert recv_all(rx, 1) == [b"first"]
    tx.sendto(b"second", addr)  # the plug passes now, though the hold still runs
    assert recv_all(rx, 1) == [b"second"]
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert err.splitlines()[-1] == (
        "plugqdisc: released lo: 0 packets (0 bytes) were held, 0 dropped; 2 packets (95 "
        "bytes) had left before: something else (plugqdisc release, tc?) released it while "
        "it held"), err


def test_hold_over_a_foreign_root_qdisc_advises_the_replace_option() -> None:
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "5:", "pfifo")
    p = cli("hold", "lo", "--", "true")
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    assert ("a pfifo qdisc (handle 5:) is already at root of 'lo': pass --replace to replace "
            "it (it is deleted, with what it holds)") in p.stderr, p.stderr
    assert "replace=True" not in p.stderr and "parent/handle" not in p.stderr
    assert ("lo", "pfifo", 0x50000, 0xFFFFFFFF) in qdiscs()  # nothing changed
    p = cli("hold", "lo", "--replace", "--", "true")
    assert p.returncode == 0, p.stderr
    assert qdiscs() == [("lo", "noqueue", 0, 0xFFFFFFFF)]  # replaced, then removed


# ---- status, release -------------------------------------------------------------------

def test_status_json_lists_the_three_modes() -> None:
    veth("va", "vb")
    holds = [PlugQdisc("lo"), PlugQdisc("va", match=Match(proto="udp")),
             PlugQdisc("vb", direction="ingress", handle="2:")]
    try:
        for q in holds:
            q.attach()
        holds[0].buffer()
        rx, tx, addr = udp_pair()
        tx.sendto(b"x" * 100, addr)
        p = cli("status", "--json")
        assert p.returncode == 0, p.stderr
        rows = {r["mode"]: r for r in json.loads(p.stdout)}
        assert set(rows) == {"plain", "match", "ingress"}
        assert rows["plain"]["device"] == "lo" and rows["plain"]["qlen"] == 1
        assert rows["plain"]["backlog"] == 142 and rows["plain"]["drops"] == 0
        assert (rows["match"]["device"], rows["match"]["parent"]) == ("va", "fffe:2")
        ifb = "pqifb%d-1" % socket.if_nametoindex("vb")
        assert (rows["ingress"]["device"], rows["ingress"]["on"]) == ("vb", ifb)
        assert rows["ingress"]["handle"] == "2:"
        assert {r["holder"] for r in rows.values()} == {os.getpid()}
    finally:
        for q in holds:
            q.detach()
            q.close()


def test_release_recovers_a_device_held_by_a_killed_process() -> None:
    rx, tx, addr = udp_pair()
    dead_holder(lambda: [PlugQdisc("lo", guard=False).attach()])
    tx.sendto(b"stuck", addr)
    assert nothing_arrives(rx)  # held, and the holder is gone
    p = cli("release", "lo")
    assert p.returncode == 0, p.stderr
    assert recv_all(rx, 1) == [b"stuck"]
    assert "released lo (plain, plug 1: at root of lo): 1 packet\n" in p.stdout, p.stdout


def test_cleanup_says_so_when_there_is_nothing_to_do() -> None:
    p = cli("cleanup")
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout == ("nothing to clean up: no hold of plugqdisc's is left by a holder "
                        "that is gone (`plugqdisc status` lists the plug qdiscs)\n")
    p = cli("cleanup", "lo")
    assert p.stdout.startswith("nothing to clean up on lo: "), p.stdout


# ---- cleanup ---------------------------------------------------------------------------

def test_cleanup_removes_only_what_plugqdisc_made_for_a_dead_holder() -> None:
    veth("va", "vb")
    for dev in ("d0", "d1"):
        sh("ip", "link", "add", dev, "type", "dummy")
    # The user's own: a plug made with tc (no record: never ours to remove), a pfifo.
    sh("tc", "qdisc", "add", "dev", "d0", "root", "handle", "5:", "plug")
    sh("tc", "qdisc", "add", "dev", "vb", "root", "handle", "5:", "pfifo")
    rx, tx, addr = udp_pair()
    dead_holder(lambda: [
        PlugQdisc("va", guard=False).attach(),
        PlugQdisc("lo", guard=False, match=Match(proto="udp", dport=addr[1])).attach(),
        PlugQdisc("vb", guard=False, direction="ingress").attach()])
    tx.sendto(b"left behind", addr)
    assert nothing_arrives(rx)
    alive = PlugQdisc("d1").attach()  # a living holder's: kept
    try:
        p = cli("cleanup")
        assert p.returncode == 0, p.stderr
        assert recv_all(rx, 1) == [b"left behind"]  # released, not dropped
        for mode, dev in (("plain", "va"), ("match", "lo"), ("ingress", "vb")):
            assert "removed the %s hold on %s" % (mode, dev) in p.stdout, p.stdout
        assert "kept the plain hold on d1: its holder, pid %d" % os.getpid() in p.stdout
        left = qdiscs()
        assert ("d0", "plug", 0x50000, 0xFFFFFFFF) in left  # the user's
        assert ("vb", "pfifo", 0x50000, 0xFFFFFFFF) in left
        assert ("d1", "plug", 0x10000, 0xFFFFFFFF) in left  # the living holder's
        assert not [q for q in left if q[0] in ("va", "lo") and q[2]]  # back to defaults
        assert not [q for q in left if q[1] == "ingress" or q[0].startswith("pqifb")]
        table = cli("status").stdout.splitlines()
        assert table[0].split() == ["DEVICE", "MODE", "ON", "PARENT", "HANDLE", "QLEN",
                                    "BACKLOG", "DROPS", "PACKETS", "BYTES", "HOLDER"]
        assert sorted(line.split()[0] + " " + line.split()[-1] for line in table[1:]) == [
            "d0 ?", "d1 %d" % os.getpid()]
    finally:
        alive.detach()
        alive.close()
