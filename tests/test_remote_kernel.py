"""Remote holds (plugqdisc.remote and `plugqdisc hold --control`), in the lab: network
namespaces joined to the test's own by veth pairs stand in for machines (tests/machines.py),
and `ip netns exec NS` is the transport, as ssh or kubectl exec would be. Starting the remote end costs a Python start in the lab (about 1.5 s): each test starts
few."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict

import pytest

from machines import PY, Machines, machines, receiver, send_from  # noqa: F401 (a fixture)
from nettools import datagrams, fork_child, nothing_arrives, recv_all, report
from plugqdisc import DeviceNotFoundError, Match, PlugQdiscError, release_in_order
from plugqdisc.remote import Group, RemoteHold, TransportError, group, plugged

pytestmark = pytest.mark.plugqdisc


def test_a_remote_hold_holds_real_traffic_and_releases_it_in_order(machines: Machines
                                                                   ) -> None:
    rx, addr = receiver(1)
    sent = datagrams(30, 200, b"r")
    with plugged("eth0", via=machines.via(1), command=PY,
                 match=Match(proto="udp", dport=addr[1])) as q:
        assert isinstance(q, RemoteHold) and q.is_buffering
        assert q.info["device"] == "eth0" and q.info["direction"] == "egress"
        assert q.info["match"] == "Match(proto='udp', dport=%d)" % addr[1]
        send_from(machines, 1, addr, sent)
        st = q.wait_buffered(30, timeout=10)
        assert st.qlen == 30 and st.drops == 0
        assert nothing_arrives(rx)
        assert ("plug", 30, 0) in machines.qdiscs(1)
    assert recv_all(rx, 30) == sent  # every datagram, in order
    assert machines.as_found(1)  # released and removed: eth0 as it was


def test_buffer_release_one_stats_and_set_limit_act_there(machines: Machines) -> None:
    rx, addr = receiver(1)
    first, second = datagrams(3, 100, b"a"), datagrams(2, 100, b"b")
    with RemoteHold("eth0", via=machines.via(1), command=PY) as q:  # passing after attach
        assert not q.is_buffering
        q.set_limit(1 << 20)
        q.buffer()
        send_from(machines, 1, addr, first)
        q.wait_buffered(3, timeout=10)
        q.buffer()  # a new epoch
        send_from(machines, 1, addr, second)
        q.wait_buffered(5, timeout=10)
        q.release_one()  # the first epoch goes, the second stays
        assert recv_all(rx, 3) == first
        assert nothing_arrives(rx)
        assert q.stats().qlen == 2
        final = q.detach()
        assert final.qlen == 2 and final.drops == 0  # the counters just before
        assert q.closed and not q.attached
    assert recv_all(rx, 2) == second
    assert machines.as_found(1)


def test_a_group_cues_every_target_at_once(machines: Machines) -> None:
    rxs = [receiver(k) for k in (1, 2, 3)]
    sent = {k: datagrams(10, 150, b"%d" % k) for k in (1, 2, 3)}
    vias = [machines.via(k) for k in (1, 2, 3)]
    with plugged("eth0", via=vias, command=PY, match=Match(proto="udp")) as g:
        assert isinstance(g, Group) and len(g) == 3
        assert all(h.is_buffering for h in g)
        for k, (rx, addr) in zip((1, 2, 3), rxs):
            send_from(machines, k, addr, sent[k])
        assert [st.qlen for st in g.wait_buffered(10, timeout=10)] == [10, 10, 10]
        assert all(nothing_arrives(rx) for rx, _ in rxs)
        g.release()
        for k, (rx, _) in zip((1, 2, 3), rxs):
            assert recv_all(rx, 10) == sent[k]
        # the buffer of all three, sent before any answer was read, holds on all three
        g.buffer()
        for k, (rx, addr) in zip((1, 2, 3), rxs):
            send_from(machines, k, addr, sent[k][:2])
        assert [st.qlen for st in g.wait_buffered(2, timeout=10)] == [2, 2, 2]
    for k, (rx, _) in zip((1, 2, 3), rxs):
        assert recv_all(rx, 2) == sent[k][:2]
        assert machines.as_found(k)


def test_a_group_whose_one_target_fails_holds_on_none(machines: Machines) -> None:
    one = RemoteHold("eth0", via=machines.via(1), command=PY)
    bad = RemoteHold("nodev0", via=machines.via(2), command=PY)
    with pytest.raises(DeviceNotFoundError) as info:
        with group(one, bad):
            pytest.fail("the block must not run")
    assert info.value.errno == errno.ENODEV
    assert info.value.strerror.startswith("ip netns exec %s: attach on 'nodev0'"
                                          % machines.names[1])
    assert one.closed and bad.closed
    assert machines.as_found(1) and machines.as_found(2)


def test_a_killed_controller_releases_and_removes_every_target_within_a_second(
        machines: Machines) -> None:
    rxs = [receiver(k) for k in (1, 2, 3)]
    sent = {k: datagrams(20, 300, b"%d" % k) for k in (1, 2, 3)}

    def controller(w: int) -> None:
        with plugged("eth0", via=[machines.via(k) for k in (1, 2, 3)], command=PY) as g:
            report(w, holding=[h.info["pid"] for h in g])
            time.sleep(3600)

    pid, r = fork_child(controller)
    try:
        line = json.loads(r.readline())
        assert "holding" in line, line
        for k, (rx, addr) in zip((1, 2, 3), rxs):
            send_from(machines, k, addr, sent[k])
        for k in (1, 2, 3):
            assert ("plug", 20, 0) in machines.qdiscs(k)
    finally:
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        os.waitpid(pid, 0)
        r.close()
    done: Dict[int, float] = {}
    while len(done) < 3 and time.monotonic() - killed < 10:
        for k in (1, 2, 3):
            if k not in done and machines.as_found(k):
                done[k] = time.monotonic() - killed
        time.sleep(0.005)
    for k, (rx, _) in zip((1, 2, 3), rxs):
        assert recv_all(rx, 20) == sent[k]  # nothing lost, in order
    sys.stderr.write("released and removed after the controller's SIGKILL: %s\n"
                     % {k: "%.0f ms" % (s * 1000) for k, s in sorted(done.items())})
    assert len(done) == 3, "targets still holding 10 s after: %s" % done
    assert max(done.values()) < 1.0, done  # the bound (measured: tens of ms)


def control_process(m: Machines, *options: str) -> "subprocess.Popen[str]":
    p = subprocess.Popen([*m.via(1), *PY, "hold", "eth0", *options, "--control"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    return p


def ask(p: "subprocess.Popen[str]", line: str) -> Dict[str, Any]:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())  # type: ignore[no-any-return]


def test_the_protocol_answers_a_bad_command_with_an_error_and_changes_nothing(
        machines: Machines) -> None:
    rx, addr = receiver(1)
    p = control_process(machines, "--proto", "udp")
    try:
        assert p.stdout is not None
        hello = json.loads(p.stdout.readline())
        assert hello["ok"] and hello["protocol"] == 1 and hello["device"] == "eth0"
        assert hello["buffering"] is False and hello["match"] == "Match(proto='udp')"
        assert ask(p, '{"cmd": "buffer", "id": 1}')["buffering"] is True
        send_from(machines, 1, addr, [b"x"] * 4)
        assert ask(p, '{"cmd": "wait", "packets": 4, "timeout": 10}')["stats"]["qlen"] == 4
        bad = {
            'not json': "ValueError",
            '[1, 2]': "ValueError",
            '{"cmd": "explode"}': "ValueError",
            '{"cmd": "release", "now": true}': "TypeError",
            '{"cmd": "set_limit"}': "TypeError",
            '{"cmd": "set_limit", "bytes": -1}': "ValueError",
            '{"cmd": "set_limit", "bytes": "big"}': "TypeError",
            '{"cmd": "wait", "packets": "x"}': "TypeError",
            '{"cmd": "wait", "packets": 9, "timeout": 0.1}': "TimeoutError",
            '{"cmd": "detach", "timeout": -1}': "ValueError",
            "x" * 70000: "ValueError",
        }
        for line, kind in bad.items():
            answer = ask(p, line)
            assert answer["ok"] is False and answer["error"]["type"] == kind, (line, answer)
            assert answer["error"]["message"], answer
            assert answer["buffering"] is True  # still holding
        assert ask(p, '{"cmd": "wait", "packets": 9, "timeout": 0.1}')["error"]["errno"] == \
            errno.ETIMEDOUT
        st = ask(p, '{"cmd": "stats", "id": "s"}')
        assert st["id"] == "s" and st["stats"]["qlen"] == 4 and st["stats"]["drops"] == 0
        assert nothing_arrives(rx)
        final = ask(p, '{"cmd": "detach"}')
        assert final["ok"] and final["stats"]["qlen"] == 4
        assert p.wait(timeout=30) == 0  # a detach ends the session
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert recv_all(rx, 4) == [b"x"] * 4
    assert machines.as_found(1)


def test_remote_errors_arrive_as_the_local_class_naming_the_target(machines: Machines) -> None:
    with pytest.raises(DeviceNotFoundError) as info:
        with plugged("nodev0", via=machines.via(1), command=PY):
            pass
    e = info.value
    assert e.errno == errno.ENODEV and e.step == "find_device" and e.device == "nodev0"
    assert str(e).startswith("[Errno 19] ip netns exec %s: attach on 'nodev0'"
                             % machines.names[0]), str(e)
    with RemoteHold("eth0", via=machines.via(1), command=PY, name="machine 1") as q:
        with pytest.raises(TimeoutError) as t:
            q.wait_buffered(1, timeout=0.2)
        assert t.value.errno == errno.ETIMEDOUT
        assert str(t.value).startswith("[Errno 110] machine 1: 0 of 1 packets held on 'eth0'")
        with pytest.raises(ValueError):
            q.set_limit(-1)  # refused here, before anything is sent
    assert machines.as_found(1)


def test_a_missing_remote_command_is_a_clear_error_and_holds_nothing(machines: Machines
                                                                     ) -> None:
    with pytest.raises(TransportError) as info:
        with plugged("eth0", via=machines.via(1), command=["no-plugqdisc-here"]):
            pass
    e = info.value
    assert e.errno == errno.ENOENT and isinstance(e, PlugQdiscError)
    assert "the remote command 'no-plugqdisc-here' was not found" in str(e), str(e)
    assert "command=[...]" in str(e)
    # a shell's "command not found" (as over ssh): status 127
    with pytest.raises(TransportError) as info:
        with plugged("eth0", via=[*machines.via(1), "sh", "-c", '"$0" "$@"'],
                     command=["no-plugqdisc-here"]):
            pass
    assert info.value.errno == errno.ENOENT and "exit status 127" in str(info.value)
    assert machines.as_found(1)


def test_a_transport_that_fails_is_a_clear_error(machines: Machines) -> None:
    with pytest.raises(TransportError) as info:  # cannot start
        with plugged("eth0", via=["/nonexistent/ssh", "host"], command=PY):
            pass
    assert info.value.errno == errno.ENOENT and "cannot start the transport" in str(info.value)
    with pytest.raises(TransportError) as info:  # ends at once
        with plugged("eth0", via=["ip", "netns", "exec", "no-such-machine"], command=PY):
            pass
    assert info.value.errno == errno.EPIPE
    assert "Cannot open network namespace" in str(info.value), str(info.value)
    with pytest.raises(TransportError) as info:  # answers something else
        with plugged("eth0", via=machines.via(1), command=["echo", "hello"]):
            pass
    assert info.value.errno == errno.EPROTO
    assert machines.as_found(1)


def test_a_transport_that_dies_mid_hold_fails_the_next_call_and_loses_nothing(
        machines: Machines) -> None:
    rx, addr = receiver(1)
    q = RemoteHold("eth0", via=machines.via(1), command=PY).attach()
    try:
        q.buffer()
        send_from(machines, 1, addr, [b"held"] * 3)
        q.wait_buffered(3, timeout=10)
        os.kill(q.info["pid"], signal.SIGKILL)  # the remote end dies: its guardian acts
        with pytest.raises(TransportError) as info:
            q.stats()
        assert info.value.errno == errno.EPIPE and "exit status -9" in str(info.value)
    finally:
        q.close()
    assert recv_all(rx, 3) == [b"held"] * 3
    deadline = time.monotonic() + 5
    while not machines.as_found(1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert machines.as_found(1)


def test_a_hold_that_would_cut_its_own_ssh_session_is_refused(machines: Machines) -> None:
    # As sshd sets it on machine 1: the controller at 10.16.1.1 reached 10.16.1.2:22.
    via = [*machines.via(1), "env", "SSH_CONNECTION=10.16.1.1 40000 10.16.1.2 22"]
    for match in (None, Match(proto="tcp", sport=22), Match(dst="10.16.1.0/24")):
        with pytest.raises(PlugQdiscError) as info:
            with plugged("eth0", via=via, command=PY, match=match):
                pass
        assert info.value.errno == errno.EBUSY and info.value.step == "transport"
        assert "eth0 carries the ssh session" in str(info.value), str(info.value)
        assert "allow_transport_device=True" in str(info.value)
        assert machines.as_found(1)
    with plugged("eth0", via=via, command=PY, match=Match(proto="udp")) as q:
        assert q.is_buffering  # a match that leaves the session alone
    with plugged("lo", via=via, command=PY) as q:
        assert q.is_buffering  # another device
    with plugged("eth0", via=via, command=PY, allow_transport_device=True) as q:
        assert q.is_buffering  # asked for explicitly
    assert machines.as_found(1)


def test_ctrl_c_during_a_group_call_ends_every_session_and_loses_nothing(
        machines: Machines) -> None:
    rxs = [receiver(k) for k in (1, 2)]

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with plugged("eth0", via=[machines.via(1), machines.via(2)], command=PY) as g:
                for k, (rx, addr) in zip((1, 2), rxs):
                    send_from(machines, k, addr, [b"%d" % k] * 3)
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                g.wait_buffered(100, timeout=60)  # cut short by the "Ctrl-C"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert g.closed
    for k, (rx, _) in zip((1, 2), rxs):
        assert recv_all(rx, 3) == [b"%d" % k] * 3
        assert machines.as_found(k)


def test_max_hold_bounds_a_remote_hold_and_the_next_answer_says_so(machines: Machines
                                                                   ) -> None:
    rx, addr = receiver(1)
    with plugged("eth0", via=machines.via(1), command=PY, max_hold=0.5) as q:
        assert q.max_hold == 0.5 and q.info["max_hold"] == 0.5
        send_from(machines, 1, addr, [b"bounded"] * 2)
        assert recv_all(rx, 2, timeout=10) == [b"bounded"] * 2  # the guardian let them go
        st = q.stats()
        assert st.qlen == 0 and q.expired and not q.is_buffering
    assert machines.as_found(1)


def test_netns_names_a_namespace_on_the_target(machines: Machines) -> None:
    rx, addr = receiver(2)
    # Reached through machine 1, held in machine 2's namespace (as `--netns` on a host
    # whose containers' namespaces are named).
    with plugged("eth0", via=machines.via(1), command=PY, netns=machines.names[1],
                 match=Match(proto="udp")) as q:
        assert q.info["netns"] == machines.names[1]
        send_from(machines, 2, addr, [b"there"])
        assert q.wait_buffered(1, timeout=10).qlen == 1
        assert machines.as_found(1) and not machines.as_found(2)
    assert recv_all(rx, 1) == [b"there"]
    assert machines.as_found(2)


def test_remote_holds_on_one_device_go_in_the_order_chosen_and_overtake(machines: Machines
                                                                        ) -> None:
    """Two selective holds on one remote device (issue 15 there): released in the order the
    test chooses with plugqdisc.release_in_order; and a hold that lets later packets pass
    while it keeps what it holds swaps two datagrams of one flow."""
    (rx_a, addr_a), (rx_b, addr_b) = receiver(1), receiver(1)
    with plugged("eth0", via=machines.via(1), command=PY,
                 match=Match(proto="udp", dport=addr_a[1])) as a, \
            plugged("eth0", via=machines.via(1), command=PY,
                    match=Match(proto="udp", dport=addr_b[1])) as b:
        assert a.info["handle"] != b.info["handle"]
        send_from(machines, 1, addr_a, [b"a1"])
        send_from(machines, 1, addr_b, [b"b1"])
        a.wait_buffered(1, timeout=10)
        b.wait_buffered(1, timeout=10)
        assert nothing_arrives(rx_a) and nothing_arrives(rx_b)
        release_in_order(b, a)  # b's all gone on before a is released
        assert recv_all(rx_b, 1) == [b"b1"] and recv_all(rx_a, 1) == [b"a1"]
        # overtaking within a's flow: hold one, let the next pass, then release
        a.buffer()
        send_from(machines, 1, addr_a, [b"first"])
        a.wait_buffered(1, timeout=10)
        a.let_new_packets_pass()
        send_from(machines, 1, addr_a, [b"second"])
        assert recv_all(rx_a, 1) == [b"second"]
        a.release()
        assert a.wait_drained(timeout=10).qlen == 0
        assert recv_all(rx_a, 1) == [b"first"]
    assert machines.as_found(1)
