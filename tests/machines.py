"""Machines for the remote-hold tests: network namespaces joined to the test's own by veth
pairs, reached with `ip netns exec NS` as ssh or kubectl exec would reach a machine.

Machine k is namespace "<prefix>m<k>" whose eth0 (10.16.k.2) is joined to the test's
namespace (10.16.k.1, device c<k>); what a machine sends to the test is held on its eth0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from nettools import sh
from plugqdisc import _plugqdisc
from plugqdisc.netns import CLONE_NEWNET, setns, sysctl

#: The remote plugqdisc: this interpreter's (the lab's PATH has no venv).
PY = [sys.executable, "-m", "plugqdisc"]


class Machines:
    """N namespaces, each joined to the test's namespace by a veth pair."""

    def __init__(self, n: int) -> None:
        self.prefix = "pq%d" % os.getpid()
        self.names: List[str] = []
        for k in range(1, n + 1):
            ns = "%sm%d" % (self.prefix, k)
            sh("ip", "netns", "add", ns)
            self.names.append(ns)
            # Quiet machines: no IPv6 (router solicitations, DAD) among what a plain hold
            # holds, so that the counts are the test's datagrams.
            self.run_in(k, lambda: [sysctl("net.ipv6.conf.%s.disable_ipv6" % c, 1,
                                           missing_ok=True) for c in ("all", "default")])
            here, there = "02:00:00:00:%02x:01" % k, "02:00:00:00:%02x:02" % k
            sh("ip", "link", "add", "c%d" % k, "address", here, "type", "veth", "peer", "name",
               "eth0", "address", there, "netns", ns)
            sh("ip", "addr", "add", "10.16.%d.1/24" % k, "dev", "c%d" % k)
            sh("ip", "link", "set", "c%d" % k, "up")
            sh("ip", "-n", ns, "addr", "add", "10.16.%d.2/24" % k, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # Static neighbours: a hold of all a device sends holds ARP too.
            sh("ip", "neigh", "replace", "10.16.%d.2" % k, "lladdr", there, "dev", "c%d" % k,
               "nud", "permanent")
            sh("ip", "-n", ns, "neigh", "replace", "10.16.%d.1" % k, "lladdr", here, "dev",
               "eth0", "nud", "permanent")

    def via(self, k: int) -> List[str]:
        return ["ip", "netns", "exec", self.names[k - 1]]

    def run_in(self, k: int, fn: Callable[[], Any]) -> Any:
        """FN's result, run by a thread that entered machine k's namespace."""
        out: List[Any] = []

        def body() -> None:
            try:
                fd = os.open("/run/netns/" + self.names[k - 1], os.O_RDONLY)
                try:
                    setns(fd, CLONE_NEWNET)
                finally:
                    os.close(fd)
                out.append(fn())
            except BaseException as e:
                out.append(e)
        t = threading.Thread(target=body)
        t.start()
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def socket(self, k: int, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket made in machine k's namespace."""
        return self.run_in(k, lambda: socket.socket(socket.AF_INET, kind))  # type: ignore[no-any-return]

    def qdiscs(self, k: int) -> List[Tuple[str, int, int]]:
        """(kind, qlen, drops) of each qdisc on machine k's eth0."""
        fd = os.open("/run/netns/" + self.names[k - 1], os.O_RDONLY)
        try:
            rows, links = _plugqdisc.list_qdiscs(fd)
        finally:
            os.close(fd)
        eth0 = next(i for i, name, _ in links if name == "eth0")
        return [(r[1], r[6], r[8]) for r in rows if r[0] == eth0]

    def as_found(self, k: int) -> bool:
        return [kind for kind, _, _ in self.qdiscs(k)] == ["noqueue"]

    def remove(self) -> None:
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def machines() -> Iterator[Machines]:
    m = Machines(3)
    try:
        yield m
    finally:
        m.remove()


def receiver(k: int, port: int = 0) -> Tuple[socket.socket, Tuple[str, int]]:
    """A UDP socket on the test's side of machine k's link."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("10.16.%d.1" % k, port))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return rx, rx.getsockname()


def send_from(m: Machines, k: int, addr: Tuple[str, int], payloads: List[bytes]) -> None:
    """Send PAYLOADS from machine k to ADDR, one datagram each."""
    tx = m.socket(k)
    with tx:
        for d in payloads:
            tx.sendto(d, addr)
