"""The plugqdisc command, in the lab, with real traffic: hold around a command and until a
signal, status, release of a dead holder's plug, cleanup of only what plugqdisc made;
several holds on one device from several commands at once (issue 15).

Each test runs in a fresh network namespace (the plugin's), and so does each command it
starts. Starting Python in the lab costs about 1.5 s: each test runs the command once or
twice, and holds made by a "dead holder" come from a forked child, not a new Python."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any, Callable, Dict, List, Tuple

import pytest

from nettools import device_state, nothing_arrives, recv_all, sh, udp_pair
from plugqdisc import Match, PlugQdisc, _cli_records, _plugqdisc

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
        assert (rows["ingress"]["handle"], rows["ingress"]["ifb"]) == ("2:", ifb)
        assert (rows["match"]["match"], rows["plain"]["match"]) == ("proto='udp'", "")
        assert {r["holder"] for r in rows.values()} == {os.getpid()}
        assert {r["alive"] for r in rows.values()} == {True}
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
        table = [re.split(r"\s{2,}", line.strip())
                 for line in cli("status").stdout.splitlines()]
        assert table[0] == ["DEVICE", "MODE", "ON", "PARENT", "HANDLE", "QLEN", "BACKLOG",
                            "DROPS", "PACKETS", "BYTES", "HOLDER", "MATCH"]
        assert sorted(" ".join([c[0]] + c[-2:]) for c in table[1:]) == [
            "d0 ? -", "d1 %d -" % os.getpid()]  # no record of tc's plug: holder unknown
    finally:
        alive.detach()
        alive.close()


# ---- several holds on one device (issue 15) ----------------------------------------------

Hold = Tuple["subprocess.Popen[str]", str]  # a hold command running, and its plug's handle


def hold_commands(*ports: int, ingress: bool = False) -> List[Hold]:
    """`plugqdisc hold lo --proto udp --dport PORT` for each port, all started at once (as
    from several shells); returns once each says it holds, and with which plug."""
    extra = ["--ingress"] if ingress else []
    procs = [subprocess.Popen([*CLI, "hold", "lo", *extra, "--proto", "udp", "--dport",
                               str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for port in ports]
    out = []
    for p in procs:
        assert p.stderr is not None
        line = p.stderr.readline()
        found = re.search(r" \(plug ([0-9a-f]+:)%s\) until Enter" % (
            r" on pqifb1-\d+" if ingress else ""), line)
        assert found, line + p.stderr.read()
        out.append((p, found.group(1)))
    return out


def ended(p: "subprocess.Popen[str]") -> str:
    """SIGTERM the hold command P; its stderr, once it has released and exited."""
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return err


def status_rows() -> Dict[str, Dict[str, Any]]:
    """`plugqdisc status lo --json`, by handle."""
    p = cli("status", "lo", "--json")
    assert p.returncode == 0, p.stderr
    return {r["handle"]: r for r in json.loads(p.stdout)}


def table_rows() -> List[List[str]]:
    """`plugqdisc status lo` as cells (two spaces or more apart; none holds two)."""
    p = cli("status", "lo")
    assert p.returncode == 0, p.stderr
    return [re.split(r"\s{2,}", line.strip()) for line in p.stdout.splitlines()]


def test_hold_commands_at_once_on_one_device_each_hold_their_own() -> None:
    before = device_state()
    (rx1, tx, a1), (rx2, _, a2) = udp_pair(), udp_pair()
    (one, h1), (two, h2) = hold_commands(a1[1], a2[1])
    try:
        assert h1 != h2
        tx.sendto(b"one", a1)
        tx.sendto(b"two", a2)
        tx.sendto(b"two again", a2)
        assert nothing_arrives(rx1) and nothing_arrives(rx2)
        rows = status_rows()
        assert sorted(rows) == sorted([h1, h2])
        for p, h, port, held in ((one, h1, a1[1], 1), (two, h2, a2[1], 2)):
            r = rows[h]
            assert (r["device"], r["mode"], r["on"], r["qlen"], r["drops"]) == (
                "lo", "match", "lo", held, 0)
            assert 2 <= r["band"] <= 16 and r["parent"] == "fffe:%x" % r["band"]
            assert (r["match"], r["ifb"]) == ("proto='udp', dport=%d" % port, "")
            assert (r["holder"], r["alive"], r["users"]) == (p.pid, True, [p.pid])
        assert rows[h1]["band"] != rows[h2]["band"]
        table = table_rows()
        assert table[0] == ["DEVICE", "MODE", "ON", "PARENT", "HANDLE", "QLEN", "BACKLOG",
                            "DROPS", "PACKETS", "BYTES", "HOLDER", "MATCH"]
        # 42 bytes of headers on lo (Ethernet, IPv4, UDP) and the payload
        assert sorted(table[1:]) == sorted(
            ["lo", "match", "lo", rows[h]["parent"], h, str(n), str(b), "0", "0", "0",
             str(p.pid), "proto='udp', dport=%d" % port]
            for p, h, n, b, port in ((one, h1, 1, 45, a1[1]), (two, h2, 2, 96, a2[1])))

        # One hold named: only its packets go; the other's stay held.
        p = cli("release", "lo", "--handle", h1)
        assert p.returncode == 0, p.stderr
        assert p.stdout == "released lo (match, plug %s at %s of lo): 1 packet\n" % (
            h1, rows[h1]["parent"])
        assert recv_all(rx1, 1) == [b"one"]
        assert nothing_arrives(rx2)
        p = cli("release", "lo", "--handle", "fff0")
        assert (p.returncode, p.stdout) == (1, ""), p.stderr
        assert p.stderr == ("plugqdisc: no plug qdisc with handle fff0: holds what lo sends: "
                            "`plugqdisc status lo` lists the holds and their handles\n")
        # The device named alone: every hold lets go.
        p = cli("release", "lo")
        assert p.returncode == 0, p.stderr
        assert sorted(p.stdout.splitlines()) == sorted(
            "released lo (match, plug %s at %s of lo): %s" % (h, rows[h]["parent"], n)
            for h, n in ((h1, "0 packets"), (h2, "2 packets")))
        assert recv_all(rx2, 2) == [b"two", b"two again"]
    finally:
        errs = [ended(p) for p in (one, two)]
    assert "had left before" in errs[0] and "had left before" in errs[1], errs
    assert device_state() == before


def kill_with_its_guardian(p: "subprocess.Popen[str]") -> None:
    """SIGKILL the hold command P and its guardian (P stopped first, so that it cannot
    start another): its hold is left holding, with its record, as by a holder that
    crashed unguarded."""
    os.kill(p.pid, signal.SIGSTOP)
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue  # not a process, or gone
        if int(stat[stat.rindex(b")") + 2:].split()[1]) == p.pid:  # field 4: the parent
            children.append(int(entry))
    assert len(children) == 1, children  # its guardian (hold runs no command here)
    os.kill(children[0], signal.SIGKILL)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)


@pytest.mark.parametrize("ingress", [False, True], ids=["egress", "ingress"])
def test_cleanup_after_a_killed_hold_command_removes_its_hold_only(ingress: bool) -> None:
    # An ifb with IPv6 sends its own packets (MLD, router solicitations) into its plug,
    # where they count as held: none here, so that each hold's count is its datagrams.
    sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    before = device_state()
    mode = "ingress" if ingress else "match"
    (rx1, tx, a1), (rx2, _, a2) = udp_pair(), udp_pair()
    (dead, hd), (live, hl) = hold_commands(a1[1], a2[1], ingress=ingress)
    try:
        tx.sendto(b"left behind", a1)
        tx.sendto(b"kept", a2)
        assert nothing_arrives(rx1) and nothing_arrives(rx2)
        kill_with_its_guardian(dead)
        assert nothing_arrives(rx1)  # nobody let it go
        rows = status_rows()
        gone = rows[hd]
        assert (gone["mode"], gone["holder"], gone["alive"], gone["qlen"]) == (
            mode, dead.pid, False, 1)
        assert rows[hl]["alive"] is True
        if ingress:
            assert gone["on"] == gone["ifb"] == "pqifb%d-%d" % (
                socket.if_nametoindex("lo"), gone["band"])
            # At ingress, --handle names an ingress hold with --ingress only.
            p = cli("release", "lo", "--handle", hl)
            assert (p.returncode, p.stdout) == (1, ""), p.stderr
            assert "no plug qdisc with handle %s holds what lo sends: " % hl in p.stderr
            assert nothing_arrives(rx2)
        (cells,) = [r for r in table_rows()[1:] if r[4] == hd]
        assert cells[-2:] == ["%d gone" % dead.pid, "proto='udp', dport=%d" % a1[1]]

        p = cli("cleanup", "lo")
        assert p.returncode == 0, p.stderr
        name = "the %s hold on lo (plug %%s, matching proto='udp', dport=%%d)" % mode
        assert sorted(p.stdout.splitlines()) == [
            ("kept " + name + ": its holder, pid %d, is alive") % (hl, a2[1], live.pid),
            ("removed " + name + ": its holder, pid %d, is gone; nothing held was lost") % (
                hd, a1[1], dead.pid)], p.stdout
        assert recv_all(rx1, 1) == [b"left behind"]  # released, not dropped
        assert nothing_arrives(rx2)  # the other hold still holds, and goes on holding
        tx.sendto(b"kept too", a2)
        assert nothing_arrives(rx2)
        assert sorted(status_rows()) == [hl]
        if ingress:  # and --ingress --handle lets go of that one
            p = cli("release", "lo", "--ingress", "--handle", hl)
            assert p.stdout == "released lo (ingress, plug %s at root of %s): 2 packets\n" % (
                hl, rows[hl]["ifb"]), p.stderr
            assert recv_all(rx2, 2) == [b"kept", b"kept too"]
    finally:
        err = ended(live)
    if not ingress:
        assert "released lo: 2 packets" in err, err
        assert recv_all(rx2, 2) == [b"kept", b"kept too"]
    assert cli("cleanup").stdout.startswith("nothing to clean up: ")
    assert device_state() == before


def test_records_name_each_hold_and_what_its_attach_chose() -> None:
    """One record per hold, even on one device, named before the attach (the handle may
    be chosen by it) and completed after: handle, band, ifb, match. A record of the older
    format (one per place) is still read, and acted on by cleanup."""
    here = _cli_records.netns_id(None)
    holds = [PlugQdisc("lo", match=Match(proto="udp", dport=5001 + i)) for i in range(2)]
    holds.append(PlugQdisc("lo", direction="ingress", match=Match(proto="udp")))
    try:
        for q in holds:
            q.attach()
        # an ingress hold's plug is on its ifb: its handle may be an egress plug's too
        recs = {(r.mode, r.handle): r for r in _cli_records.records(here)}
        assert len(recs) == 3 and len({r.path for r in recs.values()}) == 3
        for q in holds:
            r = recs["ingress" if q.direction == "ingress" else "match",
                     _plugqdisc.parse_handle(q.handle)]
            assert (r.state, r.pid, r.band, r.ifb) == ("made", os.getpid(), q.band, q.ifb)
            assert r.match == repr(q.match)[len("Match("):-1]
            assert os.path.basename(r.path).startswith(
                "ns%s-if1-%s-p%d-" % (here, r.mode, os.getpid()))
        assert recs["ingress", _plugqdisc.parse_handle(holds[2].handle)].ifb.startswith(
            "pqifb1-")
    finally:
        for q in holds:
            q.detach()
            q.close()
    assert _cli_records.records(here) == []

    rx, tx, addr = udp_pair()
    dead_holder(lambda: [PlugQdisc("lo", guard=False).attach()])
    (rec,) = _cli_records.records(here)
    with open(rec.path) as f:
        body = json.load(f)
    old = os.path.join(_cli_records.RUN_DIR, _cli_records.place_name(
        here, 1, "plain", rec.parent, rec.handle))
    with open(old, "w") as f:  # as plugqdisc wrote records before several holds per device
        json.dump({k: body[k] for k in ("netns", "ifindex", "device", "mode", "parent",
                                        "handle", "pid", "start")}, f)
    os.unlink(rec.path)
    tx.sendto(b"held", addr)
    assert nothing_arrives(rx)
    assert status_rows()["1:"]["holder"] == rec.pid
    p = cli("cleanup")
    assert p.returncode == 0, p.stderr
    assert "removed the plain hold on lo: its holder, pid %d, is gone" % rec.pid in p.stdout
    assert recv_all(rx, 1) == [b"held"]
    assert not os.path.exists(old)


def test_a_hold_that_cannot_go_beside_the_others_says_so_in_options() -> None:
    """A plain hold where selective holds are (and the reverse) is refused, naming the
    holder, with advice the command line can follow: never --replace (it would delete a
    living hold), never Python's words."""
    q = PlugQdisc("lo", match=Match(proto="udp", dport=1000)).attach()
    try:
        for extra in ([], ["--replace"]):
            p = cli("hold", "lo", *extra, "--", "true")
            assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
            assert "held by pid %d" % os.getpid() in p.stderr, p.stderr
            assert "match options (--proto, --dport, ...)" in p.stderr, p.stderr
            assert "=True" not in p.stderr and "Match" not in p.stderr, p.stderr
        assert "--replace never deletes a hold that someone holds with" in p.stderr
        assert "pass --replace" not in p.stderr
    finally:
        q.detach()
        q.close()
    q = PlugQdisc("lo").attach()
    try:
        p = cli("hold", "lo", "--dport", "80", "--", "true")
        assert p.returncode == 1, p.stderr
        assert ("that plain hold already holds everything 'lo' sends; share it (`plugqdisc "
                "hold DEV` without match options) or wait until it ends") in p.stderr, p.stderr
        p = cli("hold", "lo", "--", "true")  # a plain hold shares it
        assert p.returncode == 0, p.stderr
        assert qdiscs() == [("lo", "plug", 0x10000, 0xFFFFFFFF)]  # left to its maker
    finally:
        q.detach()
        q.close()


def test_cleanup_leaves_a_plain_plug_a_living_process_holds_with() -> None:
    """A plain plug whose maker died unguarded, adopted since by a living holder: cleanup
    leaves it, holding what the living one holds, and keeps the dead one's record; once
    the living one is done with it, cleanup removes it."""
    before = device_state()
    rx, tx, addr = udp_pair()
    dead_holder(lambda: [PlugQdisc("lo", guard=False).attach()])
    q = PlugQdisc("lo", guard=False).attach()  # adopts it (and releases it)
    try:
        assert not q.created
        q.buffer()
        tx.sendto(b"mine", addr)
        assert q.wait_buffered(1, timeout=5).qlen == 1
        (row,) = status_rows().values()
        dead = row["holder"]
        assert (row["mode"], row["alive"]) == ("plain", False)
        p = cli("cleanup")
        assert p.returncode == 0, p.stderr
        assert p.stdout == ("kept the plain hold on lo: its holder, pid %d, is gone, but "
                            "another living process holds with its plug; a cleanup removes "
                            "it once none does\n" % dead), p.stdout
        assert q.stats().qlen == 1 and nothing_arrives(rx)  # still held, by the living one
        q.release()
        assert recv_all(rx, 1) == [b"mine"]
    finally:
        q.detach()  # it adopted a plug whose maker is gone: it leaves it, passing
        q.close()
    p = cli("cleanup")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("removed the plain hold on lo: its holder, pid %d" % dead)
    assert device_state() == before
