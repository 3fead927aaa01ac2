"""The measuring half of the benchmark; runs as root INSIDE the lab (one boot).

bench/run.py starts this with plugqdisc.lab.run() and reads the raw samples it
writes to --json-out; all the statistics and the table are made on the host.
Progress goes to stderr. Each section (and each round of the hold section) works
in a network namespace of its own (plugqdisc.netns.NetNamespace), so nothing one
leaves behind reaches the next; the C loops and tools it starts are born in it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Iterator, Tuple

import plugqdisc
from plugqdisc import PlugQdisc
from plugqdisc.netns import UDP_OVERHEAD, NetNamespace, sysctl

SOL_TCP = 6
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
HANDLE = 0x10000  # "1:"


def log(msg: str) -> None:
    print("[inner] %s" % msg, file=sys.stderr, flush=True)


def run_c(binary: str, *args: object) -> int:
    """Run one of the C loops; returns the nanoseconds it timed itself."""
    out = subprocess.run([binary] + [str(a) for a in args], check=True, capture_output=True,
                         text=True).stdout.split()
    return int(out[1])


# ---- 1. cost of one operation ---------------------------------------------------------

def sec_ops(a: argparse.Namespace) -> dict:
    limit = 10 * 1000 * 1000
    q = PlugQdisc("lo", limit=limit).attach()
    ifindex = socket.if_nametoindex("lo")
    plugqdisc.attach("lo", "root", "1:", limit)  # the default handle adopts the same qdisc
    n = {"floor_peek": a.n_fast, "floor": a.n_fast, "plugqdisc": a.n_fast,
         "haproxy_api": a.n_fast,
         "pyroute2": a.n_pyroute2, "tc": a.n_tc}
    res: dict = {"pairs_per_round": n, "samples_us": {k: [] for k in n}, "notes": {}}

    ipr = None
    try:
        from pyroute2 import IPRoute  # the benchmark's own extra; never a runtime dependency
        import pyroute2
        ipr = IPRoute()
        res["notes"]["pyroute2"] = "pyroute2 %s" % getattr(pyroute2, "__version__", "?")
    except Exception as e:  # not installed (--no-install) or broken: the row says so
        res["notes"]["pyroute2"] = "unavailable: %s: %s" % (type(e).__name__, e)
        res["samples_us"]["pyroute2"] = None
    tc = shutil.which("tc") or "/usr/sbin/tc"

    def pyroute2_pair() -> None:
        # pyroute2's sched_plug takes the action by its TCQ_PLUG_* name (an int is
        # silently read as TCQ_PLUG_BUFFER); "change" sends RTM_NEWQDISC to the existing 1:.
        ipr.tc("change", "plug", ifindex, handle=HANDLE, action="TCQ_PLUG_BUFFER", limit=limit)
        ipr.tc("change", "plug", ifindex, handle=HANDLE, action="TCQ_PLUG_RELEASE_INDEFINITE",
               limit=limit)

    def tc_pair() -> None:
        subprocess.run([tc, "qdisc", "change", "dev", "lo", "root", "plug", "block"], check=True)
        subprocess.run([tc, "qdisc", "change", "dev", "lo", "root", "plug", "release_indefinite"],
                       check=True)

    # The floor runs in this same process (a shared object called through ctypes), so it
    # pays what this process pays; the three take turns in small chunks, in a rotating
    # order, so that a drift of the lab's speed hits them all alike.
    floor_lib = ctypes.CDLL(a.floor)
    floor_lib.floor_pairs.restype = ctypes.c_longlong
    floor_lib.floor_pairs.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_int,
                                      ctypes.c_int]

    def floor_run(pairs: int, no_peek: int) -> float:
        ns = floor_lib.floor_pairs(b"lo", pairs, limit, no_peek)
        if ns < 0:
            raise RuntimeError("floor_pairs failed: libnl error %d" % ns)
        return ns / 1e9

    def floor_chunk(pairs: int) -> float:
        return floor_run(pairs, 1)

    def floor_peek_chunk(pairs: int) -> float:
        return floor_run(pairs, 0)

    def plugqdisc_chunk(pairs: int) -> float:
        t = time.perf_counter()
        for _ in range(pairs):
            q.buffer()
            q.release()
        return time.perf_counter() - t

    def haproxy_chunk(pairs: int) -> float:
        t = time.perf_counter()
        for _ in range(pairs):
            plugqdisc.plug_buffer()
            plugqdisc.release_indefinite_buffer()
        return time.perf_counter() - t

    fast = [("floor_peek", floor_peek_chunk), ("floor", floor_chunk),
            ("plugqdisc", plugqdisc_chunk), ("haproxy_api", haproxy_chunk)]
    chunks = 10 if a.n_fast >= 10 else 1
    for r in range(a.rounds):
        spent = {name: 0.0 for name, _ in fast}
        for c in range(chunks):
            for name, fn in fast[c % len(fast):] + fast[:c % len(fast)]:
                spent[name] += fn(a.n_fast // chunks)
        for name, _ in fast:
            res["samples_us"][name].append(spent[name] * 1e6 / (a.n_fast // chunks * chunks))

        if ipr is not None:
            t = time.perf_counter()
            for _ in range(n["pyroute2"]):
                pyroute2_pair()
            res["samples_us"]["pyroute2"].append((time.perf_counter() - t) * 1e6 / n["pyroute2"])

        t = time.perf_counter()
        for _ in range(n["tc"]):
            tc_pair()
        res["samples_us"]["tc"].append((time.perf_counter() - t) * 1e6 / n["tc"])
        log("ops round %d/%d done" % (r + 1, a.rounds))

    # Every variant must have left the qdisc passing, with nothing dropped on the way.
    st = q.stats()
    res["final_stats"] = st._asdict()
    if ipr is not None:
        ipr.close()
    q.detach()
    q.close()
    return res


# ---- 3. hold capacity -----------------------------------------------------------------

def tcp_hold(segments: int) -> dict:
    """Hold SEGMENTS small TCP segments, release, check every byte arrives in order."""
    # Per-namespace TCP knobs that would otherwise stop the sender from emitting one
    # segment per write while earlier segments sit in the qdisc (they are not freed):
    # autocorking merges writes, TCP small queues (limit_output_bytes) throttles.
    # And a sender that is "application-limited" for longer than its retransmission
    # timeout has its congestion window cut (RFC 2861), unless slow_start_after_idle is 0.
    knobs = {"tcp_autocorking=0": sysctl("net.ipv4.tcp_autocorking", 0, missing_ok=True),
             "tcp_limit_output_bytes": sysctl("net.ipv4.tcp_limit_output_bytes", 256 << 20,
                                              missing_ok=True),
             "tcp_slow_start_after_idle=0": sysctl("net.ipv4.tcp_slow_start_after_idle", 0,
                                                   missing_ok=True)}
    # Held segments are never acked: the congestion window must cover them all from the
    # start. A host route for 127.0.0.1 carries a large initial cwnd (and receive window),
    # and a minimum retransmission timeout longer than the hold: sending 10,000 segments
    # takes over a second in the lab, and a retransmission timeout while they are held
    # collapses the window (segments stay in the socket; the drain then takes minutes).
    subprocess.run(["ip", "route", "replace", "local", "127.0.0.1", "dev", "lo", "table", "local",
                    "initcwnd", str(segments + 100), "initrwnd", str(segments + 100),
                    "rto_min", "60s"], check=True)

    chunk = 4  # bytes per write; the whole stream must fit in the receiver's first window
    payload = [struct.pack("!I", i) for i in range(segments)]
    expected = b"".join(payload)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Held segments stay charged to the sender's send buffer (skb truesize, ~1 KB each).
    cli.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 64 * 1024 * 1024)
    cli.setsockopt(SOL_TCP, socket.TCP_NODELAY, 1)
    cli.connect(lsock.getsockname())
    srv, _ = lsock.accept()
    # TCP small queues cap the bytes a socket has in the qdisc at about its pacing rate
    # (cwnd * mss / srtt) times 1 ms, and held segments count until released. One slow
    # RTT sample in the handshake (the lab's timing is coarse) can make that cap smaller
    # than 10,000 segments: some round trips first bring the smoothed RTT down.
    for _ in range(32):
        cli.send(b"p")
        srv.recv(1)
        srv.send(b"p")
        cli.recv(1)
    limit = 64 * 1024 * 1024
    q = PlugQdisc("lo", limit=limit).attach()
    out: dict = {"segments": segments, "chunk_bytes": chunk, "limit": limit, "sysctls_set": knobs}
    try:
        q.buffer()
        cli.setblocking(False)
        blocked = 0
        for p in payload:
            try:
                sent = cli.send(p)
            except BlockingIOError:
                sent = 0
            if sent != len(p):
                blocked += 1
                break
        try:
            st = q.wait_buffered(segments, timeout=30) if not blocked else q.stats()
        except TimeoutError:
            st = q.stats()  # reported as qlen_reached False; the rest is still checked
        out["held"] = st._asdict()
        out["send_blocked"] = bool(blocked)
        srv.setblocking(True)
        got = bytearray()
        t = time.perf_counter()
        q.release()
        while len(got) < len(expected):
            data = srv.recv(1 << 20)
            if not data:
                break
            got += data
        out["drain_s"] = time.perf_counter() - t
        after = q.stats()
        out["after"] = after._asdict()
        out["qlen_reached"] = st.qlen >= segments
        out["zero_drops"] = after.drops == 0
        out["in_order"] = bytes(got) == expected
        out["bytes_delivered"] = len(got)
    finally:
        q.detach()
        q.close()
        for s in (cli, srv, lsock):
            s.close()
    return out


def udp_limit(datagrams: int, payload: int, keep: int) -> dict:
    """With a limit that fits KEEP datagrams (plus half of one), send DATAGRAMS: exactly
    the rest must be dropped, and exactly the first KEEP received."""
    size = payload + UDP_OVERHEAD
    limit = keep * size + size // 2
    expected_kept = limit // size  # sch_plug enqueues while backlog + len <= limit
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 64 * 1024 * 1024)
    tx.setblocking(False)
    q = PlugQdisc("lo", limit=limit).attach()
    out: dict = {"datagrams": datagrams, "payload": payload, "bytes_on_lo": size,
                 "limit": limit, "expected_kept": expected_kept,
                 "expected_drops": datagrams - expected_kept}
    try:
        q.buffer()
        send_errors = 0
        for i in range(datagrams):
            msg = struct.pack("!I", i).ljust(payload, b".")
            try:
                tx.sendto(msg, rx.getsockname())
            except OSError:  # ENOBUFS would mean a drop was reported to us
                send_errors += 1
        held = q.stats()
        q.release()
        rx.settimeout(1.0)
        seqs = []
        try:
            while True:
                seqs.append(struct.unpack("!I", rx.recv(65536)[:4])[0])
        except socket.timeout:
            pass
        out.update(held=held._asdict(), send_errors=send_errors, received=len(seqs),
                   drops=held.drops)
        out["drops_match"] = (held.drops == out["expected_drops"]
                              and len(seqs) == expected_kept
                              and held.qlen == expected_kept
                              and held.backlog == expected_kept * size)
        out["first_kept_in_order"] = seqs == list(range(expected_kept))
    finally:
        q.detach()
        q.close()
        rx.close()
        tx.close()
    return out


def sec_hold(a: argparse.Namespace) -> dict:
    res: dict = {"tcp": [], "udp": []}
    for r in range(a.rounds):
        with NetNamespace():
            res["tcp"].append(tcp_hold(a.segments))
        with NetNamespace():
            res["udp"].append(udp_limit(a.udp_datagrams, 100, a.udp_keep))
        log("hold round %d/%d done (tcp qlen %d, send blocked %s, drain %.3f s)"
            % (r + 1, a.rounds, res["tcp"][-1]["held"]["qlen"], res["tcp"][-1]["send_blocked"],
               res["tcp"][-1]["drain_s"]))
    return res


# ---- 4. release latency ---------------------------------------------------------------

def sec_latency(a: argparse.Namespace) -> dict:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.setsockopt(SOL_TCP, socket.TCP_NODELAY, 1)
    cli.connect(lsock.getsockname())
    srv, _ = lsock.accept()
    q = PlugQdisc("lo").attach()
    poller = select.poll()
    poller.register(srv, select.POLLIN)
    samples, poll_floor = [], []
    try:
        for _ in range(a.rounds * a.latency_samples):
            q.buffer()
            cli.send(b"12345678")
            q.wait_buffered(1, timeout=10)
            q.release()
            t = time.perf_counter()
            ready = poller.poll(10000)
            samples.append((time.perf_counter() - t) * 1e6)
            if not ready:
                raise RuntimeError("released data not readable within 10 s")
            # The same poll on a socket already readable: what the measurement costs itself.
            t = time.perf_counter()
            poller.poll(0)
            poll_floor.append((time.perf_counter() - t) * 1e6)
            got = b""
            while len(got) < 8:
                got += srv.recv(8 - len(got))
    finally:
        q.detach()
        q.close()
        for s in (cli, srv, lsock):
            s.close()
    log("latency: %d samples" % len(samples))
    return {"samples_us": samples, "poll_floor_us": poll_floor,
            "method": "poll() on the server socket right after release() returns"}


# ---- 2. attach cost against the number of links ---------------------------------------

def sec_links(a: argparse.Namespace) -> dict:
    # One namespace per link count, all made first; the rounds then visit them in turn.
    with contextlib.ExitStack() as stack:
        spaces = {}
        tmp = tempfile.mkdtemp(prefix="bench-links-")
        for count in a.link_counts:
            ns = stack.enter_context(NetNamespace())
            if count:
                batch = os.path.join(tmp, "links-%d" % count)
                with open(batch, "w") as f:
                    f.writelines("link add d%d type dummy\n" % i for i in range(count))
                subprocess.run(["ip", "-batch", batch], check=True)
            spaces[count] = (ns, len(socket.if_nameindex()))
        shutil.rmtree(tmp, ignore_errors=True)
        return links_rounds(a, spaces)


def links_rounds(a: argparse.Namespace, spaces: dict) -> dict:
    limit = 10 * 1000 * 1000
    res: dict = {"iterations_per_round": a.n_attach, "by_dummies": {}}
    for count, (_, links) in spaces.items():
        res["by_dummies"][str(count)] = {"links": links, "plugqdisc_us": [], "cache_c_us": [],
                                         "plugqdisc_attach_only_us": []}
    for r in range(a.rounds):
        for count, (ns, _) in spaces.items():
            ns.enter()
            row = res["by_dummies"][str(count)]
            total = attach_only = 0.0
            for _ in range(a.n_attach):
                t = time.perf_counter()
                q = PlugQdisc("lo")
                q.attach()
                t1 = time.perf_counter()
                q.detach()
                q.close()
                t2 = time.perf_counter()
                total += t2 - t
                attach_only += t1 - t
            # Attach alone too: deleting a plug qdisc right after a release can wait for a
            # scheduler tick in the kernel (see RESULTS.md), whatever the number of links.
            row["plugqdisc_us"].append(total * 1e6 / a.n_attach)
            row["plugqdisc_attach_only_us"].append(attach_only * 1e6 / a.n_attach)
            ns = run_c(a.cache_attach, "lo", a.n_attach, limit)
            row["cache_c_us"].append(ns / 1000.0 / a.n_attach)
        log("links round %d/%d done" % (r + 1, a.rounds))
    return res


# ---- 5. selective and ingress holds, the guardian ----------------------------------------

def _dummy(name: str) -> str:
    subprocess.run(["ip", "link", "add", name, "type", "dummy"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    return name


@contextlib.contextmanager
def udp_echo() -> Iterator[Tuple[socket.socket, Tuple[str, int]]]:
    """A UDP echo server on lo in a thread: (a client socket, the server's address)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def echo() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(64)
            except socket.timeout:
                continue
            server.sendto(data, peer)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    try:
        yield client, server.getsockname()
    finally:
        stop.set()
        th.join()
        client.close()
        server.close()


def _udp_rtt(client: socket.socket, addr: tuple) -> float:
    """One UDP round trip on lo (the server echoes), in seconds."""
    t = time.perf_counter()
    client.sendto(b"ping", addr)
    client.recv(64)
    return time.perf_counter() - t


def sec_modes(a: argparse.Namespace) -> dict:
    """buffer+release cost of each kind of hold (each on its own dummy device, turn by
    turn in rotating chunks); attach+detach of each; the round-trip time of traffic a
    match hold does not select, against no qdisc at all."""
    from plugqdisc import Match

    variants = {
        "plain_unguarded": dict(guard=False),
        "plain": {},
        "plain_max_hold": dict(max_hold=3600),
        "match": dict(match=Match(proto="udp", dport=9)),
        "ingress": dict(direction="ingress"),
    }
    qs = {}
    for i, (name, kw) in enumerate(variants.items()):
        qs[name] = PlugQdisc(_dummy("bm%d" % i), **kw).attach()  # type: ignore[arg-type]
    res: dict = {"pairs_per_round": a.n_fast, "samples_us": {k: [] for k in variants}}

    def chunk(q: PlugQdisc, pairs: int) -> float:
        t = time.perf_counter()
        for _ in range(pairs):
            q.buffer()
            q.release()
        return time.perf_counter() - t

    names = list(variants)
    chunks = 10 if a.n_fast >= 10 else 1
    for r in range(a.rounds):
        spent = {k: 0.0 for k in names}
        for c in range(chunks):
            for k in names[c % len(names):] + names[:c % len(names)]:
                spent[k] += chunk(qs[k], a.n_fast // chunks)
        for k in names:
            res["samples_us"][k].append(spent[k] * 1e6 / (a.n_fast // chunks * chunks))
        log("modes round %d/%d done" % (r + 1, a.rounds))
    for q in qs.values():
        q.detach()
        q.close()

    # attach + detach of each kind (guarded, as users get it)
    res["attach_detach_us"] = {}
    for name, kw in (("plain", {}), ("match", dict(match=Match(proto="udp", dport=9))),
                     ("ingress", dict(direction="ingress"))):
        dev = _dummy("ad" + name[:3])
        xs = []
        for _ in range(a.n_attach):
            t = time.perf_counter()
            q = PlugQdisc(dev, **kw).attach()  # type: ignore[arg-type]
            q.detach()
            xs.append((time.perf_counter() - t) * 1e6)
            q.close()
        res["attach_detach_us"][name] = xs

    # unmatched traffic while a match hold holds: UDP round trips on lo
    with udp_echo() as (client, addr):
        hold = PlugQdisc("lo", match=Match(proto="udp", dport=addr[1] + 1 if addr[1] < 65535
                                           else 1)).attach()
        lat: dict = {"none": [], "match_hold": []}
        n = max(10, a.latency_samples)
        for r in range(a.rounds):
            for which in ("none", "match_hold") if r % 2 == 0 else ("match_hold", "none"):
                if which == "match_hold":
                    hold.attach()
                    hold.buffer()
                for _ in range(n):
                    lat[which].append(_udp_rtt(client, addr) * 1e6)
                if which == "match_hold":
                    hold.detach()
    hold.close()
    res["unmatched_rtt_us"] = lat
    return res


# ---- 6. what the guardian costs a test that attaches in every test --------------------

#: One attach + buffer + detach in a fresh interpreter, timed by itself (import excluded).
_FRESH_CYCLE = """
import sys, time
from plugqdisc import PlugQdisc
t = time.perf_counter()
q = PlugQdisc(sys.argv[1], guard=sys.argv[2] == "1").attach()
q.buffer()
q.detach()
print((time.perf_counter() - t) * 1e6)
"""


def sec_guard(a: argparse.Namespace) -> dict:
    """attach + buffer + detach with the guardian against guard=False: in one process
    (after its first guarded cycle: the guardian stays), and the first cycle of a fresh
    process, turn by turn."""
    from plugqdisc import Match

    def cycle(dev: str, guard: bool, **kw: object) -> float:
        t = time.perf_counter()
        q = PlugQdisc(dev, guard=guard, **kw).attach()  # type: ignore[arg-type]
        q.buffer()
        q.detach()
        took = (time.perf_counter() - t) * 1e6
        q.close()
        return took

    res: dict = {"in_process_us": {}, "fresh_process_us": {"guarded": [], "unguarded": []}}
    kinds = {"plain": {}, "match": dict(match=Match(proto="udp", dport=9))}
    for kind, kw in kinds.items():
        dev = _dummy("gc" + kind[:3])
        cycle(dev, True, **kw)  # this process's guardian starts (if no section did yet)
        xs: dict = {"guarded": [], "unguarded": []}
        for i in range(a.n_attach * 2):
            for guard in (True, False) if i % 2 == 0 else (False, True):
                xs["guarded" if guard else "unguarded"].append(cycle(dev, guard, **kw))
        res["in_process_us"][kind] = xs
    dev = _dummy("gcfresh")
    for i in range(a.n_attach):
        for guard in (True, False) if i % 2 == 0 else (False, True):
            out = subprocess.run([sys.executable, "-c", _FRESH_CYCLE, dev, "1" if guard else "0"],
                                 check=True, capture_output=True, text=True).stdout
            res["fresh_process_us"]["guarded" if guard else "unguarded"].append(float(out))
    return res


# ---- 7. traffic lost while holds come and go (issue 14) --------------------------------

def sec_loss(a: argparse.Namespace) -> dict:
    """UDP at 1,000 datagrams/s on lo that no hold selects (netns.UdpStream, its processes
    at the caller's priority, as a user's would be), during N cycles of each: plugqdisc
    plain (attach/buffer/release/detach: the stream is held and released), plugqdisc
    match (selecting none of it), and tc (add, change release_indefinite, del: a process
    each). Datagrams sent and lost, per kind, in the same run."""
    from plugqdisc import Match
    from plugqdisc.netns import UdpStream

    def tc(*args: str) -> None:
        subprocess.run(["tc", "qdisc"] + list(args), check=True, capture_output=True)

    def cycle(kind: str) -> None:
        if kind == "tc":
            tc("add", "dev", "lo", "root", "handle", "1:", "plug", "limit", "1000000")
            tc("change", "dev", "lo", "root", "handle", "1:", "plug", "release_indefinite")
            tc("del", "dev", "lo", "root")
            return
        q = PlugQdisc("lo", match=Match(proto="tcp", dport=9) if kind == "match" else None)
        q.attach()
        q.buffer()
        q.release()
        q.detach()
        q.close()

    res: dict = {"cycles": a.n_loss, "rate": 1000, "kinds": {}}
    for kind in ("plain", "match", "tc"):
        took = 0.0
        with UdpStream(rate=1000) as stream:
            for _ in range(a.n_loss):
                t = time.perf_counter()
                cycle(kind)
                took += time.perf_counter() - t
                time.sleep(0.01)
        res["kinds"][kind] = {"sent": stream.sent, "lost": stream.lost,
                              "cycle_ms": took * 1000 / a.n_loss}
        log("loss %s: lost %d of %d" % (kind, stream.lost, stream.sent))
    return res


# ---- 8. several holds on one device (issue 15) -------------------------------------------

def sec_multi(a: argparse.Namespace) -> dict:
    """buffer+release of one hold on a device that has 15 selective holds against one that
    has only it (each on its own dummy device, turn by turn in rotating chunks); the UDP
    round trip on lo of traffic none of 15 holding holds selects, against no qdisc; the
    attach of each of 15 holds, 1st to 15th, on an empty device."""
    from plugqdisc import MAX_HOLDS, Match

    def matches(n: int) -> list:
        return [Match(proto="udp", dport=1000 + i) for i in range(n)]

    one = [PlugQdisc(_dummy("mh1"), match=m).attach() for m in matches(1)]
    many = [PlugQdisc(_dummy("mh15") if i == 0 else "mh15", match=m).attach()
            for i, m in enumerate(matches(MAX_HOLDS))]
    res: dict = {"holds": MAX_HOLDS, "pairs_per_round": a.n_fast,
                 "samples_us": {"one_hold": [], "fifteen_holds": []}}

    def chunk(q: PlugQdisc, pairs: int) -> float:
        t = time.perf_counter()
        for _ in range(pairs):
            q.buffer()
            q.release()
        return time.perf_counter() - t

    # The hold measured on the busy device is the last attached: its filters come last.
    turns = [("one_hold", one[0]), ("fifteen_holds", many[-1])]
    chunks = 10 if a.n_fast >= 10 else 1
    for r in range(a.rounds):
        spent = {k: 0.0 for k, _ in turns}
        for c in range(chunks):
            for k, q in turns[c % 2:] + turns[:c % 2]:
                spent[k] += chunk(q, a.n_fast // chunks)
        for k, _ in turns:
            res["samples_us"][k].append(spent[k] * 1e6 / (a.n_fast // chunks * chunks))
        log("multi round %d/%d done" % (r + 1, a.rounds))
    for q in one + many[::-1]:
        q.detach()
        q.close()

    # attach of the k-th hold on one device, k = 1..15, then all detached; n_attach times
    dev = _dummy("mhat")
    attach_us: list = [[] for _ in range(MAX_HOLDS)]
    for _ in range(a.n_attach):
        qs = []
        for k, m in enumerate(matches(MAX_HOLDS)):
            t = time.perf_counter()
            qs.append(PlugQdisc(dev, match=m).attach())
            attach_us[k].append((time.perf_counter() - t) * 1e6)
        for q in qs[::-1]:
            q.detach()
            q.close()
    res["attach_kth_us"] = attach_us
    # The target's pair, measured close together in time (the lab slows down and speeds up
    # by the second, whatever is on the device: a k-th column measured in order mixes that
    # in): the first hold on the empty device, and the 15th beside 14, in turn, in either
    # order, n_attach times.
    pair: dict = {"first": [], "fifteenth": []}

    def timed_attach(m: Any, key: str) -> PlugQdisc:
        t = time.perf_counter()
        q = PlugQdisc(dev, match=m).attach()
        pair[key].append((time.perf_counter() - t) * 1e6)
        return q

    ms = matches(MAX_HOLDS)
    for i in range(a.n_attach):
        for key in ("first", "fifteenth") if i % 2 == 0 else ("fifteenth", "first"):
            if key == "first":
                q = timed_attach(ms[0], key)
                q.detach()
                q.close()
                continue
            qs = [PlugQdisc(dev, match=m).attach() for m in ms[:-1]]
            qs.append(timed_attach(ms[-1], key))
            for q in qs[::-1]:
                q.detach()
                q.close()
    res["attach_first_fifteenth_us"] = pair

    # unselected traffic: UDP round trips on lo with 15 holds holding, against no qdisc
    with udp_echo() as (client, addr):
        lat: dict = {"none": [], "fifteen_holds": []}
        n = max(10, a.latency_samples)
        for r in range(a.rounds):
            for which in ("none", "fifteen_holds") if r % 2 == 0 else ("fifteen_holds", "none"):
                holds = []
                if which == "fifteen_holds":
                    holds = [PlugQdisc("lo", match=m).attach() for m in matches(MAX_HOLDS)]
                    for q in holds:
                        q.buffer()
                for _ in range(n):
                    lat[which].append(_udp_rtt(client, addr) * 1e6)
                for q in holds[::-1]:
                    q.detach()
                    q.close()
    res["unselected_rtt_us"] = lat
    return res


# ---- 9. remote holds (issue 16) ---------------------------------------------------------

def sec_remote(a: argparse.Namespace) -> dict:
    """A buffer + release pair over plugqdisc.remote (`ip netns exec NS` as the transport,
    the remote end a `python -m plugqdisc hold --control` there) against a local PlugQdisc
    on the same kind of device, turn by turn; and the skew between the first and the last of
    4 targets to start holding (each answer carries the target's CLOCK_MONOTONIC, one clock
    here) after one Group.buffer() against 4 buffer() calls one after another."""
    from plugqdisc.remote import Group, RemoteHold

    names = ["pqbench-r%d" % k for k in range(1, 5)]
    for ns in names:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "add", "d0", "type", "dummy"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "d0", "up"], check=True)
    py = [sys.executable, "-m", "plugqdisc"]
    holds = [RemoteHold("d0", via=["ip", "netns", "exec", ns], command=py) for ns in names]
    local = PlugQdisc("d0", netns=names[0])
    res: dict = {"pairs_per_round": a.n_remote, "cues": a.n_skew,
                 "samples_us": {"local": [], "remote": []},
                 "skew_us": {"group": [], "sequential": []}}
    g = Group(holds)
    try:
        g.attach()
        local.attach()

        def chunk(q: object) -> float:
            t = time.perf_counter()
            for _ in range(a.n_remote):
                q.buffer()  # type: ignore[attr-defined]
                q.release()  # type: ignore[attr-defined]
            return (time.perf_counter() - t) * 1e6 / a.n_remote

        remote = holds[1]
        for r in range(a.rounds):
            for kind in (("local", "remote") if r % 2 == 0 else ("remote", "local")):
                res["samples_us"][kind].append(chunk(local if kind == "local" else remote))
        for i in range(a.n_skew * 2):
            kind = ("group", "sequential")[(i + i // 2) % 2]
            if kind == "group":
                g.buffer()
            else:
                for h in holds:
                    h.buffer()
            times = [h.last_time for h in holds]
            res["skew_us"][kind].append((max(times) - min(times)) * 1e6)
            g.release()
        log("remote: pair local %.0f us, remote %.0f us; skew group %.0f us, sequential %.0f us"
            % tuple(sorted(xs)[len(xs) // 2] for xs in (
                res["samples_us"]["local"], res["samples_us"]["remote"],
                res["skew_us"]["group"], res["skew_us"]["sequential"])))
    finally:
        g.close()
        local.close()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns])
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json-out", required=True)
    p.add_argument("--floor", required=True)
    p.add_argument("--cache-attach", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--n-fast", type=int, required=True)
    p.add_argument("--n-pyroute2", type=int, required=True)
    p.add_argument("--n-tc", type=int, required=True)
    p.add_argument("--n-attach", type=int, required=True)
    p.add_argument("--link-counts", type=lambda s: [int(x) for x in s.split(",")], required=True)
    p.add_argument("--segments", type=int, required=True)
    p.add_argument("--udp-datagrams", type=int, required=True)
    p.add_argument("--udp-keep", type=int, required=True)
    p.add_argument("--latency-samples", type=int, required=True)
    p.add_argument("--n-loss", type=int, required=True)
    p.add_argument("--n-remote", type=int, required=True)
    p.add_argument("--n-skew", type=int, required=True)
    a = p.parse_args()

    result: dict = {"uml_kernel": os.uname().release, "errors": {}}
    # TCP memory is accounted machine-wide (net.ipv4.tcp_mem, in pages; ~90 MB in a 1 GB
    # guest). 10,000 held segments, plus what an earlier round's namespace has not freed
    # yet, reach its pressure mark, and the sender then blocks short of 10,000. Raise it
    # for this guest (the lab's own kernel, gone when the run ends).
    result["tcp_mem_raised"] = sysctl("net.ipv4.tcp_mem", "1000000 1500000 2000000",
                                      missing_ok=True)
    t0 = time.perf_counter()
    # Links last: tearing down namespaces of 1000 devices is slow kernel work we keep
    # away from the other sections.
    for name, fn in (("ops", sec_ops), ("hold", sec_hold), ("latency", sec_latency),
                     ("modes", sec_modes), ("guard", sec_guard), ("loss", sec_loss),
                     ("multi", sec_multi), ("remote", sec_remote), ("links", sec_links)):
        t = time.perf_counter()
        try:
            with NetNamespace():
                result[name] = fn(a)
        except Exception:
            result["errors"][name] = traceback.format_exc()
            log("section %s FAILED:\n%s" % (name, result["errors"][name]))
        log("section %s: %.1f s" % (name, time.perf_counter() - t))
    result["inner_wall_s"] = time.perf_counter() - t0
    with open(a.json_out, "w") as f:
        json.dump(result, f)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
