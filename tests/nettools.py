"""Small real-traffic helpers for the kernel tests: sockets on lo, tc/ip when needed, and
a forked child that reports back."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import socket
import subprocess
import threading
import traceback
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO, Tuple

from plugqdisc.netns import (CLONE_NEWNET, SO_RCVBUFFORCE, SO_SNDBUFFORCE, setns,
                             tcp_for_holding)

QUIET = 0.3  # how long "nothing arrives" is waited for
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def setup_py() -> ModuleType:
    """The repository's setup.py as a module (importing it builds nothing): the one home of
    the C core's source list and of compiling C against libnl."""
    spec = importlib.util.spec_from_file_location("plugqdisc_setup_py",
                                                  os.path.join(ROOT, "setup.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def udp_pair() -> Tuple[socket.socket, socket.socket, Tuple[str, int]]:
    """(receiver bound on 127.0.0.1, sender, receiver's address)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return rx, tx, rx.getsockname()


def send_spread(addr: Tuple[str, int], payloads: List[bytes], per_socket: int = 20) -> None:
    """Send datagrams in order from several sockets: held packets stay charged to their
    sender's send buffer, and one socket blocks once about 200 KB of it is held."""
    socks = []
    try:
        for i, d in enumerate(payloads):
            if i % per_socket == 0:
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            socks[-1].sendto(d, addr)
    finally:
        for s in socks:
            s.close()


def datagrams(n: int, size: int, tag: bytes = b"d") -> List[bytes]:
    """n distinct payloads of exactly size bytes, numbered so order can be checked."""
    return [(tag + b"%06d:" % i).ljust(size, b"x") for i in range(n)]


def recv_all(sock: socket.socket, n: int, timeout: float = 5.0) -> List[bytes]:
    sock.settimeout(timeout)
    return [sock.recv(65536) for _ in range(n)]


def nothing_arrives(sock: socket.socket, wait: float = QUIET) -> bool:
    sock.settimeout(wait)
    try:
        sock.recv(65536, socket.MSG_PEEK)
    except socket.timeout:
        return True
    return False


def tcp_pair(big_buffers: bool = False) -> Tuple[socket.socket, socket.socket]:
    """(client, server side) of an established TCP connection on lo. big_buffers: 8 MB
    send and receive buffers, so that the receive window does not cap what is in flight."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if big_buffers:
        ls.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        c.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    ls.listen(1)
    c.connect(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    if big_buffers:
        # A receiver opens its window as data arrives (from 64 KB): a warm-up of 4 MB
        # opens it wide before anything is held.
        warm = 4 << 20
        Sender(c, bytes(warm)).start()
        assert len(recv_exactly(s, warm)) == warm
    return c, s


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    parts = []
    got = 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def let_tcp_fill_the_queue() -> None:
    """In this (test's own) namespace, let one TCP connection put a lot into the qdisc:
    TCP small queues and the initial congestion window otherwise keep all but about two
    segments in the socket, waiting for ACKs that the plug holds too."""
    tcp_for_holding()
    # rto_min: no retransmission timeout (and collapsed window) while segments are held
    sh("ip", "route", "replace", "local", "127.0.0.1", "dev", "lo", "table", "local",
       "initcwnd", "200", "initrwnd", "200", "rto_min", "60s")


def pattern(n: int) -> bytes:
    """n bytes in which any reordering or loss shows."""
    block = bytes(range(251))  # prime length: offsets do not line up with segment sizes
    return (block * (n // len(block) + 1))[:n]


def sh(*argv: str) -> str:
    """Run a tool (tc, ip) and return its stdout; raise with its stderr if it fails."""
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), p.stderr.strip()))
    return p.stdout


def device_state(dev: str = "lo") -> str:
    """What holds on DEV must leave as they found it: its qdiscs, its filters both ways,
    the links (ingress holds add ifbs)."""
    return "\n".join([sh("tc", "qdisc", "show", "dev", dev),
                      sh("tc", "filter", "show", "dev", dev),
                      sh("tc", "filter", "show", "dev", dev, "ingress"),
                      sh("ip", "-o", "link", "show")])


class Sender(threading.Thread):
    """sendall() in the background (it may block while packets are held)."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock, self.data = sock, data
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.sock.sendall(self.data)
        except BaseException as e:  # reported by the test
            self.error = e


def report(w: int, **kw: Any) -> None:
    """Send one JSON line on the pipe end W (from a child of fork_child)."""
    os.write(w, (json.dumps(kw) + "\n").encode())


def fork_child(body: Callable[[int], None]) -> Tuple[int, TextIO]:
    """Run body(w) in a forked child, w the write end of a pipe to report() on. The child
    never returns into pytest: it exits 0, or 1 after reporting {"error": traceback} if
    BODY raised. Returns (its pid, to wait for; the read end of the pipe, as text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            body(w)
        except BaseException:
            code = 1
            report(w, error=traceback.format_exc())
        finally:
            os._exit(code)
    os.close(w)
    return pid, os.fdopen(r)


def in_child(fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """What fn() returns (a JSON-able dict) when run in a forked child; {"error": ...}
    if it raised."""
    pid, r = fork_child(lambda w: report(w, **fn()))
    with r:
        data = r.read()
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


@contextlib.contextmanager
def left_as_found(dev: str = "lo") -> Iterator[None]:
    before = device_state(dev)
    yield
    assert device_state(dev) == before


@contextlib.contextmanager
def peer_namespace() -> Iterator[Callable[[int, int], socket.socket]]:
    """A namespace 'pqpeer' joined to ours by a veth pair: ours is vb (10.99.0.1), the peer's
    va (10.99.0.2 and .3), with static neighbours (an ingress hold holds ARP too). Yields a
    function that opens a socket inside the peer."""
    sh("ip", "netns", "add", "pqpeer")
    try:
        sh("ip", "link", "add", "vb", "type", "veth", "peer", "name", "va", "netns", "pqpeer")
        inp = ("ip", "netns", "exec", "pqpeer")
        sh("ip", "addr", "add", "10.99.0.1/24", "dev", "vb")
        sh("ip", "link", "set", "vb", "up")
        for a in ("10.99.0.2/24", "10.99.0.3/24"):
            sh(*inp, "ip", "addr", "add", a, "dev", "va")
        sh(*inp, "ip", "link", "set", "va", "up")
        sh(*inp, "ip", "link", "set", "lo", "up")
        # /sys shows the initial namespace's devices: ask ip for the addresses
        mac_a = sh(*inp, "ip", "-o", "link", "show", "va").split("link/ether ")[1].split()[0]
        mac_b = sh("ip", "-o", "link", "show", "vb").split("link/ether ")[1].split()[0]
        for a in ("10.99.0.2", "10.99.0.3"):
            sh("ip", "neigh", "replace", a, "lladdr", mac_a, "dev", "vb", "nud", "permanent")
        sh(*inp, "ip", "neigh", "replace", "10.99.0.1", "lladdr", mac_b, "dev", "va", "nud",
           "permanent")
    except BaseException:
        sh("ip", "netns", "del", "pqpeer")
        raise

    def peer_socket(family: int, kind: int) -> socket.socket:
        ours = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        theirs = os.open("/run/netns/pqpeer", os.O_RDONLY)
        try:
            setns(theirs, CLONE_NEWNET)
            return socket.socket(family, kind)
        finally:
            setns(ours, CLONE_NEWNET)
            os.close(ours), os.close(theirs)

    try:
        yield peer_socket
    finally:
        sh("ip", "netns", "del", "pqpeer")  # takes va, and with it vb
