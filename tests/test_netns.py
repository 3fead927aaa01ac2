"""plugqdisc.netns on the host: namespaces need no sch_plug, only CAP_SYS_ADMIN."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from typing import List

import pytest

from plugqdisc.netns import NetNamespace, link_up, sysctl

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="a network namespace needs CAP_SYS_ADMIN: run the suite as root (make test does)")

CORKING = "/proc/sys/net/ipv4/tcp_autocorking"


def here() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_a_fresh_namespace_has_lo_up_and_is_left_on_exit() -> None:
    outside = here()
    with NetNamespace() as ns:
        assert here() != outside
        assert os.fstat(ns.fd).st_ino == here()
        assert socket.if_nameindex() == [(1, "lo")]
        out = subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True,
                             text=True, check=True).stdout  # a child is born inside
        assert ",UP," in out
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
            rx.bind(("127.0.0.1", 0))  # lo is up: 127.0.0.1 works
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.sendto(b"hi", rx.getsockname())
            rx.settimeout(5)
            assert rx.recv(10) == b"hi"
    assert here() == outside
    with pytest.raises(ValueError, match="not entered"):
        ns.fd


def test_an_exception_inside_still_leaves() -> None:
    outside = here()
    with pytest.raises(KeyError):
        with NetNamespace():
            raise KeyError("boom")
    assert here() == outside


def test_only_the_calling_thread_moves() -> None:
    outside = here()
    seen: List[int] = []
    go = threading.Event()

    def look() -> None:
        go.wait(5)
        seen.append(here())
    other = threading.Thread(target=look)  # started before: it keeps its namespace
    other.start()
    with NetNamespace() as ns:
        go.set()
        other.join()
        assert seen == [outside]
        child = threading.Thread(target=lambda: seen.append(here()))  # born inside
        child.start()
        child.join()

        def visit() -> None:
            ns.enter()  # another thread joins by the fd
            seen.append(here())
        with NetNamespace():
            visitor = threading.Thread(target=visit)
            visitor.start()
            visitor.join()
        assert seen[1:] == [here(), here()] and here() != outside


def test_namespaces_nest_and_can_be_revisited() -> None:
    outside = here()
    with NetNamespace() as a:
        with NetNamespace() as b:
            assert len({outside, os.fstat(a.fd).st_ino, here()}) == 3
            a.enter()
            assert here() == os.fstat(a.fd).st_ino
            b.enter()
        assert here() == os.fstat(a.fd).st_ino
    assert here() == outside


def test_a_namespace_object_is_entered_once() -> None:
    ns = NetNamespace()
    with ns:
        with pytest.raises(RuntimeError, match="already entered"):
            ns.__enter__()


def test_sysctl_sets_the_namespace_own_value() -> None:
    before = read(CORKING)
    with NetNamespace():
        new = "0" if before == "1" else "1"
        assert sysctl("net.ipv4.tcp_autocorking", int(new)) is True
        assert read(CORKING) == new
        assert sysctl("net/ipv4/tcp_autocorking", before) and read(CORKING) == before
        sysctl("net.ipv4.tcp_autocorking", new)
    assert read(CORKING) == before


def test_tcp_for_holding_sets_the_namespace_own_tcp_sysctls() -> None:
    from plugqdisc.netns import TCP_HOLD_SYSCTLS, tcp_for_holding
    path = {name: "/proc/sys/" + name.replace(".", "/") for name in TCP_HOLD_SYSCTLS}
    before = {name: read(p) for name, p in path.items()}
    with NetNamespace():
        assert tcp_for_holding() == {name: True for name in TCP_HOLD_SYSCTLS}
        assert {name: read(p) for name, p in path.items()} == {
            name: str(value) for name, value in TCP_HOLD_SYSCTLS.items()}
    assert {name: read(p) for name, p in path.items()} == before


def test_a_missing_sysctl_is_named_or_reported() -> None:
    with pytest.raises(FileNotFoundError, match="no sysctl net.ipv4.no_such_knob"):
        sysctl("net.ipv4.no_such_knob", 1)
    assert sysctl("net.ipv4.no_such_knob", 1, missing_ok=True) is False


def test_link_up_on_a_missing_device_names_it() -> None:
    with NetNamespace():
        with pytest.raises(OSError, match="cannot bring nosuch0 up") as e:
            link_up("nosuch0")
        assert e.value.errno == errno.ENODEV


def test_without_the_capability_the_error_names_the_fix() -> None:
    # Root without CAP_SYS_ADMIN in its bounding set is root that may not unshare.
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    code = "from plugqdisc.netns import NetNamespace\nwith NetNamespace(): pass"
    p = subprocess.run(drop + [sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1
    assert "PermissionError" in p.stderr and "[Errno 1]" in p.stderr, p.stderr
    assert "CAP_SYS_ADMIN" in p.stderr and "unshare -rn" in p.stderr
