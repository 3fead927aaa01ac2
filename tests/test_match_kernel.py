"""Selective and ingress holds, in the lab, with real traffic: what a Match selects is
held and released in order; everything else flows; the device is left as found."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from typing import Callable, List, Optional, Tuple

import pytest

from nettools import QUIET, device_state, left_as_found, peer_namespace, sh
from plugqdisc import Match, PlugQdisc, PlugQdiscError, plugged
from plugqdisc.netns import SO_RCVBUFFORCE

pytestmark = pytest.mark.plugqdisc

SO_MARK = 36


# ---- traffic ---------------------------------------------------------------------------

class Udp:
    """A receiver on (addr, port); send() from a fresh sender bound as asked."""

    def __init__(self, addr: str = "127.0.0.1", port: int = 0) -> None:
        self.family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.rx = socket.socket(self.family, socket.SOCK_DGRAM)
        self.rx.bind((addr, port))
        self.addr = self.rx.getsockname()[:2]

    def send(self, data: bytes, src: Optional[Tuple[str, int]] = None, mark: int = 0) -> None:
        with socket.socket(self.family, socket.SOCK_DGRAM) as tx:
            if mark:
                tx.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            if src:
                tx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tx.bind(src)
            tx.sendto(data, self.addr)

    def got(self, wait: float = QUIET) -> List[bytes]:
        """Everything that arrives within WAIT seconds of quiet."""
        out = []
        self.rx.settimeout(wait)
        try:
            while True:
                out.append(self.rx.recv(65536))
        except socket.timeout:
            return out

    def close(self) -> None:
        self.rx.close()


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(family, kind) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def held_then_released(q: PlugQdisc, held: Udp, flows: Udp, n: int = 5,
                       send_held: Optional[Callable[[bytes], None]] = None,
                       send_flows: Optional[Callable[[bytes], None]] = None,
                       others: bool = False) -> None:
    """Send n datagrams each way: the flowing ones arrive now, the held ones only after
    release(), all of them, in order. OTHERS: the match may also hold other packets of
    the peer's (IGMP, ...), so the queue holds at least n."""
    send_held = send_held or held.send
    send_flows = send_flows or flows.send
    for i in range(n):
        send_held(b"held-%d" % i)
        send_flows(b"flows-%d" % i)
    assert flows.got() == [b"flows-%d" % i for i in range(n)]
    assert held.got() == []
    qlen = q.stats().qlen
    assert qlen >= n if others else qlen == n
    q.release()
    assert held.got() == [b"held-%d" % i for i in range(n)]
    q.buffer()


def add_addresses() -> None:
    """::2 and ::3 on lo (all of 127.0.0.0/8 is local on lo already)."""
    for a in ("::2", "::3"):
        sh("ip", "-6", "addr", "add", a + "/128", "dev", "lo", "nodad")


# ---- one field at a time ----------------------------------------------------------------

@pytest.mark.parametrize("proto", ["udp", 17])
def test_proto_holds_udp_and_tcp_flows(proto: object) -> None:
    u = Udp()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    with left_as_found(), plugged("lo", match=Match(proto=proto)) as q:  # type: ignore[arg-type]
        c = socket.create_connection(ls.getsockname(), timeout=5)  # TCP is not held
        s, _ = ls.accept()
        c.sendall(b"tcp flows")
        s.settimeout(5)
        assert s.recv(100) == b"tcp flows"
        for i in range(3):
            u.send(b"held-%d" % i)
        assert u.got() == []
        q.release()
        assert u.got() == [b"held-0", b"held-1", b"held-2"]
    c.close(), s.close(), ls.close(), u.close()


def _ping(family: int, dst: str, ident: int) -> socket.socket:
    """Send one ICMP(v6) echo request from a raw socket; return the socket."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    s = socket.socket(family, socket.SOCK_RAW, proto)
    kind = 8 if family == socket.AF_INET else 128
    body = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"plugqdisc"
    if family == socket.AF_INET:  # the kernel sums ICMPv6 itself, not ICMP
        padded = body + b"\0" * (len(body) % 2)
        total = sum(struct.unpack("!%dH" % (len(padded) // 2), padded))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        body = body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]
    s.sendto(body, (dst, 0))
    return s


def _echo_reply(s: socket.socket, family: int, wait: float) -> bool:
    reply = 0 if family == socket.AF_INET else 129
    s.settimeout(wait)
    try:
        while True:
            data = s.recv(2048)
            icmp = data[20:] if family == socket.AF_INET else data  # v4 raw sees the IP header
            if icmp[0] == reply:
                return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("family, dst", [(socket.AF_INET, "127.0.0.1"),
                                         (socket.AF_INET6, "::1")])
def test_icmp_holds_pings_of_either_family_and_udp_flows(family: int, dst: str) -> None:
    u = Udp(dst)
    with left_as_found(), plugged("lo", match=Match(proto="icmp")) as q:
        s = _ping(family, dst, 77)
        u.send(b"udp flows")
        assert u.got() == [b"udp flows"]
        assert not _echo_reply(s, family, QUIET)
        assert q.stats().qlen >= 1
        q.release()
        assert _echo_reply(s, family, 5)
    s.close(), u.close()


@pytest.mark.parametrize("held_src, flowing_src, match_src", [
    ("127.0.0.2", "127.0.0.1", "127.0.0.2"),
    ("127.0.2.5", "127.0.3.5", "127.0.2.0/24"),
    ("::2", "::1", "::2"),
])
def test_src_holds_one_sender(held_src: str, flowing_src: str, match_src: str) -> None:
    add_addresses()
    dst = "::1" if ":" in held_src else "127.0.0.1"
    u = Udp(dst)
    with left_as_found(), plugged("lo", match=Match(src=match_src)) as q:
        held_then_released(q, u, u, send_held=lambda d: u.send(d, src=(held_src, 0)),
                           send_flows=lambda d: u.send(d, src=(flowing_src, 0)))
    u.close()


@pytest.mark.parametrize("held_dst, flowing_dst, match_dst", [
    ("127.0.0.3", "127.0.0.1", "127.0.0.3"),
    ("::3", "::1", "::3"),
])
def test_dst_holds_one_receiver(held_dst: str, flowing_dst: str, match_dst: str) -> None:
    add_addresses()
    held, flows = Udp(held_dst), Udp(flowing_dst)
    with left_as_found(), plugged("lo", match=Match(dst=match_dst)) as q:
        held_then_released(q, held, flows)
    held.close(), flows.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_dport_and_a_range_of_them(family: int) -> None:
    addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    base = free_port(family)
    lo_, hi_ = 40100, 40102
    a, b, outside = Udp(addr, lo_), Udp(addr, hi_), Udp(addr, hi_ + 1)
    with left_as_found(), plugged("lo", match=Match(proto="udp", dport=(lo_, hi_))) as q:
        held_then_released(q, a, outside)
        held_then_released(q, b, outside)
    one = Udp(addr, base)
    with left_as_found(), plugged("lo", match=Match(dport=base)) as q:
        held_then_released(q, one, outside)
    for x in (a, b, outside, one):
        x.close()


def test_sport_holds_one_sending_port() -> None:
    u = Udp()
    p_held, p_flows = free_port(), free_port()
    with left_as_found(), plugged("lo", match=Match(proto="udp", sport=p_held)) as q:
        held_then_released(q, u, u, send_held=lambda d: u.send(d, src=("127.0.0.1", p_held)),
                           send_flows=lambda d: u.send(d, src=("127.0.0.1", p_flows)))
    u.close()


def test_a_port_without_proto_holds_tcp_and_udp() -> None:
    port = free_port(socket.AF_INET, socket.SOCK_STREAM)
    u = Udp("127.0.0.1", port)
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(1)
    with left_as_found(), plugged("lo", match=Match(dport=port)) as q:
        u.send(b"udp held")
        c = socket.socket()
        c.setblocking(False)
        assert c.connect_ex(ls.getsockname()) == errno.EINPROGRESS
        ls.settimeout(QUIET)
        with pytest.raises(socket.timeout):
            ls.accept()  # the SYN is held
        assert u.got() == []
        q.release()
        ls.settimeout(5)
        s, _ = ls.accept()
        assert u.got() == [b"udp held"]
    c.close(), s.close(), ls.close(), u.close()


def test_syn_holds_new_connections_while_an_established_one_keeps_talking() -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ctl = socket.create_connection(ls.getsockname(), timeout=5)
    srv_ctl, _ = ls.accept()
    match = Match(dport=ls.getsockname()[1], syn=True)
    with left_as_found(), plugged("lo", match=match) as q:
        result: List[object] = []
        t = threading.Thread(target=lambda: result.append(
            socket.create_connection(ls.getsockname(), timeout=10)))
        t.start()
        for i in range(20):  # the established connection talks all through the hold
            ctl.sendall(b"ping %02d" % i)
            srv_ctl.settimeout(5)
            assert srv_ctl.recv(7) == b"ping %02d" % i
            srv_ctl.sendall(b"pong %02d" % i)
            ctl.settimeout(5)
            assert ctl.recv(7) == b"pong %02d" % i
        assert q.wait_buffered(1, timeout=5).qlen == 1  # the SYN
        assert t.is_alive() and not result
        q.release()
        t.join(10)
        new = result[0]
        assert isinstance(new, socket.socket)
        s, _ = ls.accept()
        new.sendall(b"connected after release")
        s.settimeout(5)
        assert s.recv(100) == b"connected after release"
    new.close(), s.close(), ctl.close(), srv_ctl.close(), ls.close()


def test_a_list_of_matches_holds_what_any_of_them_selects() -> None:
    a, b, c = Udp(), Udp(), Udp()
    match = [Match(proto="udp", dport=a.addr[1]), Match(proto="udp", dport=b.addr[1])]
    with left_as_found(), plugged("lo", match=match) as q:
        held_then_released(q, a, c)
        held_then_released(q, b, c)
    a.close(), b.close(), c.close()


@pytest.mark.parametrize("match, held_mark, flowing_mark", [
    (0x42, 0x42, 0x43),
    ((0x40, 0xF0), 0x4E, 0x50),
])
def test_mark_set_by_so_mark(match: object, held_mark: int, flowing_mark: int) -> None:
    u = Udp()
    with left_as_found(), plugged("lo", match=Match(mark=match)) as q:  # type: ignore[arg-type]
        held_then_released(q, u, u, send_held=lambda d: u.send(d, mark=held_mark),
                           send_flows=lambda d: u.send(d, mark=flowing_mark))
        u.send(b"unmarked")
        assert u.got() == [b"unmarked"]
    u.close()


# ---- nothing lost, detach, the device as found -------------------------------------------

def test_many_held_all_arrive_in_order_and_detach_while_holding_loses_nothing() -> None:
    u = Udp()
    u.rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # past rmem_max: root
    before = device_state("lo")
    q = PlugQdisc("lo", match=Match(proto="udp", dport=u.addr[1])).attach()
    q.buffer()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
    for i in range(500):  # spread over senders: held bytes count against each sender
        socks[i // 50].sendto(b"%05d" % i + b"x" * 500, u.addr)
    assert q.wait_buffered(500, timeout=5).drops == 0
    q.detach()  # releases, waits for the backlog, then removes the tree
    got = u.got(1.0)
    assert [g[:5] for g in got] == [b"%05d" % i for i in range(500)]
    assert device_state("lo") == before
    q.close()
    for s in socks:
        s.close()
    u.close()


def test_the_devices_default_qdisc_is_not_taken_and_comes_back() -> None:
    sh("ip", "link", "add", "pqd0", "type", "ifb")  # an ifb's default root is pfifo_fast
    sh("ip", "link", "set", "pqd0", "up")
    before = device_state("pqd0")
    assert "pfifo_fast" in before
    for mode in ({"match": Match(proto="udp")}, {"direction": "ingress"}):
        with plugged("pqd0", **mode):  # type: ignore[arg-type]
            pass
        assert device_state("pqd0") == before
    sh("ip", "link", "del", "pqd0")


@pytest.mark.parametrize("setup, mode", [
    (("root", "handle", "5:", "pfifo"), {"match": Match(proto="udp")}),
    (("ingress",), {"direction": "ingress"}),
    (("clsact",), {"direction": "ingress", "match": Match(proto="udp")}),
])
def test_a_foreign_qdisc_is_refused_unless_replace(setup: Tuple[str, ...], mode: dict) -> None:  # type: ignore[type-arg]
    sh("tc", "qdisc", "add", "dev", "lo", *setup)
    before = device_state("lo")
    with pytest.raises(PlugQdiscError) as e:
        PlugQdisc("lo", **mode).attach()
    assert e.value.errno == errno.EEXIST and e.value.step == "occupied"
    assert setup[-1] in str(e.value) and "replace=True" in str(e.value)
    assert device_state("lo") == before  # nothing changed
    with plugged("lo", replace=True, **mode) as q:
        assert q.created
    assert setup[-1] not in sh("tc", "qdisc", "show", "dev", "lo")


def test_netns_works_for_selective_and_ingress_holds() -> None:
    sh("ip", "netns", "add", "pqm")
    try:
        inside = lambda: sh("ip", "netns", "exec", "pqm", "tc", "qdisc", "show")  # noqa: E731
        sh("ip", "netns", "exec", "pqm", "ip", "link", "set", "lo", "up")
        empty = inside()
        for mode in ({"match": Match(proto="udp")}, {"direction": "ingress"}):
            with plugged("lo", netns="pqm", **mode):  # type: ignore[arg-type]
                now = inside()
                assert " plug " in now
                assert " plug " not in sh("tc", "qdisc", "show")  # not in ours
            assert inside() == empty
    finally:
        sh("ip", "netns", "del", "pqm")


# ---- ingress across two namespaces -------------------------------------------------------

def test_ingress_holds_what_arrives_and_our_own_sends_flow() -> None:
    with peer_namespace() as peer_socket:
        here = Udp("10.99.0.1")
        there = peer_socket(socket.AF_INET, socket.SOCK_DGRAM)
        there.bind(("10.99.0.2", 0))
        before = device_state("vb")
        with PlugQdisc("vb") as plain:
            vb_default = plain.limit
        q = PlugQdisc("vb", direction="ingress").attach()
        assert q.limit == vb_default  # the received device's default, not the ifb's
        q.buffer()
        # 60 KB: more than an ifb's own default limit (~48 KB), less than what one sender
        # may have held against its send buffer
        for i in range(60):
            there.sendto(b"%03d" % i + b"x" * 1000, here.addr)
        # what we send the peer is not held (egress)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"our own send", there.getsockname())
        there.settimeout(5)
        assert there.recv(100) == b"our own send"
        assert here.got() == []
        st = q.wait_buffered(60, timeout=5)
        assert st.drops == 0
        q.release()
        got = here.got(1.0)
        assert [g[:3] for g in got] == [b"%03d" % i for i in range(60)]
        q.detach()
        q.close()
        assert device_state("vb") == before
        there.close(), here.close()


def test_ingress_with_a_match_holds_one_sender() -> None:
    with peer_namespace() as peer_socket:
        here = Udp("10.99.0.1")
        held = peer_socket(socket.AF_INET, socket.SOCK_DGRAM)
        held.bind(("10.99.0.2", 0))
        flows = peer_socket(socket.AF_INET, socket.SOCK_DGRAM)
        flows.bind(("10.99.0.3", 0))
        with left_as_found("vb"), plugged("vb", direction="ingress",
                                          match=Match(src="10.99.0.2")) as q:
            held_then_released(q, here, here,
                               send_held=lambda d: held.sendto(d, here.addr),
                               send_flows=lambda d: flows.sendto(d, here.addr), others=True)
        held.close(), flows.close(), here.close()


def test_ingress_on_lo_holds_arrivals_in_order() -> None:
    u = Udp()
    with left_as_found(), plugged("lo", direction="ingress", match=Match(proto="udp")) as q:
        for i in range(5):
            u.send(b"in-%d" % i)
        assert u.got() == []
        q.release()
        assert u.got() == [b"in-%d" % i for i in range(5)]
    u.close()


def test_an_ingress_hold_never_makes_the_kernel_drop_what_egress_holds() -> None:
    """Adding or deleting an ingress qdisc resets the device's egress qdiscs, purging what
    they hold, uncounted (seen in 6.1): an ingress hold works around it both ways."""
    u = Udp()
    egress = PlugQdisc("lo", match=Match(proto="udp", dport=u.addr[1])).attach()
    egress.buffer()
    u.send(b"held at egress")
    assert egress.wait_buffered(1, timeout=5).qlen == 1
    # attach: refused before anything changes
    before = device_state("lo")
    with pytest.raises(PlugQdiscError) as e:
        PlugQdisc("lo", direction="ingress").attach()
    assert e.value.errno == errno.EBUSY and e.value.step == "make_ingress"
    assert "holds 1 packets" in str(e.value) and "drop them" in str(e.value)
    assert device_state("lo") == before and egress.stats().qlen == 1
    # detach of an ingress hold made before: the ingress qdisc stays rather than purge
    egress.release()
    ingress = PlugQdisc("lo", direction="ingress", match=Match(proto="tcp")).attach()
    egress.buffer()
    u.send(b"held again")
    assert egress.wait_buffered(1, timeout=5).qlen == 1
    with pytest.raises(PlugQdiscError) as e:
        ingress.detach()
    assert e.value.errno == errno.EBUSY and e.value.step == "undo"
    assert "tc qdisc del dev lo ingress" in str(e.value)
    assert not ingress.attached and "pqifb" not in sh("ip", "-o", "link")
    assert egress.stats().qlen == 1  # nothing purged
    egress.detach()
    assert u.got() == [b"held at egress", b"held again"]
    sh("tc", "qdisc", "del", "dev", "lo", "ingress")
    ingress.close(), egress.close(), u.close()


def test_the_selective_reload_example_holds_only_new_connections() -> None:
    """examples/selective_reload.py, as a person runs it (it checks itself; exit 0)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(root, "examples", "selective_reload.py")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert ", 0 refused, 0 broken" in p.stdout
