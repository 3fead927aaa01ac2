"""Errors, permissions, namespaces, fork and the HAProxy-compatible API, in the lab."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from typing import Sequence

import pytest

import plugqdisc
from nettools import (ROOT, fork_child, in_child, nothing_arrives, recv_all, setup_py, sh,
                      udp_pair)
from plugqdisc import (DeviceNotFoundError, PlugQdisc, PlugQdiscError,
                       PlugQdiscPermissionError, plugged)
from plugqdisc.netns import CLONE_NEWNET, unshare

pytestmark = pytest.mark.plugqdisc


def test_another_qdisc_in_the_way_needs_replace() -> None:
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "5:", "pfifo")
    q = PlugQdisc("lo")
    with pytest.raises(PlugQdiscError) as e:
        q.attach()
    assert e.value.errno == errno.EEXIST
    assert "pfifo" in str(e.value) and "replace=True" in str(e.value)
    assert " pfifo " in sh("tc", "qdisc", "show", "dev", "lo")  # untouched
    other = PlugQdisc("lo")
    with pytest.raises(PlugQdiscError):
        with other:
            pass
    assert other.closed  # a failed entry does not leave its socket open
    q.attach(replace=True)
    assert q.created
    assert " plug " in sh("tc", "qdisc", "show", "dev", "lo")
    q.detach()
    q.close()


def test_replace_over_another_kind_with_the_same_handle() -> None:
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio")
    with pytest.raises(PlugQdiscError) as e:
        PlugQdisc("lo").attach()
    assert e.value.errno == errno.EEXIST and "prio" in str(e.value)
    with plugged("lo", replace=True) as q:
        assert q.created
        assert " plug 1: " in sh("tc", "qdisc", "show", "dev", "lo")
    assert " prio " not in sh("tc", "qdisc", "show", "dev", "lo")


def test_attaching_twice_still_knows_it_created_the_qdisc() -> None:
    with PlugQdisc("lo") as q:
        q.attach()
        assert q.created
    assert not has_any_plug()


def test_closed_object_raises_valueerror_and_close_is_idempotent() -> None:
    q = PlugQdisc("lo").attach()
    q.detach()
    q.close()
    q.close()
    assert q.closed
    for op in (q.buffer, q.release, q.release_one, q.stats, q.attach, q.detach):
        with pytest.raises(ValueError, match="closed") as e:
            op()
        assert not isinstance(e.value, OSError)  # outside the errno channel


def has_any_plug() -> bool:
    return " plug " in sh("tc", "qdisc", "show")


def test_an_unprivileged_uid_gets_permissionerror() -> None:
    def attempt() -> dict:  # type: ignore[type-arg]
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        try:
            PlugQdisc("lo").attach()
        except OSError as e:
            return {"cls": [c.__name__ for c in type(e).__mro__], "errno": e.errno,
                    "msg": str(e), "step": getattr(e, "step", "")}
        return {"cls": [], "errno": 0, "msg": "attached"}

    got = in_child(attempt)
    assert "PlugQdiscPermissionError" in got["cls"], got
    assert "PermissionError" in got["cls"] and "PlugQdiscError" in got["cls"]
    assert got["errno"] == errno.EPERM and got["step"] == "create"
    assert "CAP_NET_ADMIN" in got["msg"] and "'lo'" in got["msg"]
    assert issubclass(PlugQdiscPermissionError, PermissionError)
    assert not has_any_plug()


def test_netns_by_name_path_and_fd_leave_our_namespace_alone() -> None:
    own = os.stat("/proc/thread-self/ns/net").st_ino
    sh("ip", "netns", "add", "pqtest")
    try:
        for netns in ("pqtest", "/run/netns/pqtest"):
            with plugged("lo", netns=netns) as q:
                assert q.netns == netns
                assert " plug " in sh("ip", "netns", "exec", "pqtest", "tc", "qdisc", "show")
                assert not has_any_plug()  # not in our namespace
                assert os.stat("/proc/thread-self/ns/net").st_ino == own
        fd = os.open("/run/netns/pqtest", os.O_RDONLY)
        try:
            q = PlugQdisc("lo", netns=fd).attach()
        finally:
            os.close(fd)  # the object keeps its own reference
        q.buffer()
        assert " plug " in sh("ip", "netns", "exec", "pqtest", "tc", "qdisc", "show")
        q.detach()
        q.close()
        assert " plug " not in sh("ip", "netns", "exec", "pqtest", "tc", "qdisc", "show")
    finally:
        sh("ip", "netns", "del", "pqtest")
    assert os.stat("/proc/thread-self/ns/net").st_ino == own


def test_netns_name_with_a_slash_is_a_path() -> None:
    with pytest.raises(FileNotFoundError) as e:
        PlugQdisc("lo", netns="sub/pqtest").attach()
    assert "sub/pqtest" in str(e.value) and "/run/netns/sub" not in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        PlugQdisc("lo", netns="nosuchns").attach()
    assert "/run/netns/nosuchns" in str(e.value)


def test_a_forked_child_gets_its_own_socket() -> None:
    q = PlugQdisc("lo").attach()

    def child(w: int) -> None:
        for _ in range(100):
            q.buffer()
            q.stats()
            q.release()

    pid, r = fork_child(child)
    # the parent keeps using the same object at the same time: a shared socket would
    # mix up replies (sequence mismatches) on one side or the other
    for _ in range(100):
        q.stats()
        q.release()
    _, status = os.waitpid(pid, 0)
    with r:
        assert status == 0, r.read()
    q.detach()
    q.close()


def test_a_forked_child_that_moved_namespace_still_drives_the_original() -> None:
    q = PlugQdisc("lo").attach()
    q.buffer()

    def child() -> dict:  # type: ignore[type-arg]
        unshare(CLONE_NEWNET)
        q.release()  # a new socket, made in the namespace the object was opened in
        return {"ok": True}

    rx, tx, addr = udp_pair()
    assert in_child(child) == {"ok": True}
    tx.sendto(b"passes: the child released our qdisc", addr)
    assert recv_all(rx, 1) == [b"passes: the child released our qdisc"]
    q.detach()
    q.close()


def test_a_child_that_cannot_open_a_socket_gets_an_error_not_a_crash() -> None:
    q = PlugQdisc("lo").attach()

    def child() -> dict:  # type: ignore[type-arg]
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))
        try:
            q.detach()
        except OSError as e:
            return {"errno": e.errno, "cls": type(e).__name__}
        return {"errno": 0}

    got = in_child(child)
    assert got["errno"] == errno.EMFILE, got
    q.detach()
    q.close()


def test_module_level_haproxy_api() -> None:
    rx, tx, addr = udp_pair()
    plugqdisc.attach("lo", limit=None)  # the device's default, not the limit-0 trap
    tx.sendto(b"passes", addr)
    assert recv_all(rx, 1) == [b"passes"]
    plugqdisc.plug_buffer()
    tx.sendto(b"held", addr)
    assert nothing_arrives(rx)
    plugqdisc.release_indefinite_buffer()
    assert recv_all(rx, 1) == [b"held"]
    with pytest.raises(DeviceNotFoundError):
        plugqdisc.attach("nosuchdev0")
    with pytest.raises(PlugQdiscError):
        plugqdisc.plug_buffer()  # the failed attach left no usable default


VALGRIND = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
            "--errors-for-leak-kinds=definite"]


def run_c_test(name: str, under: Sequence[str] = ()) -> str:
    """Compile tests/c/NAME.c against csrc/*.c and libnl, run it (UNDER a tool such as
    valgrind), return its report (one line per check; exit 0 only if every check held)."""
    build = setup_py()
    with tempfile.TemporaryDirectory() as d:
        sources = [os.path.join(ROOT, "tests", "c", name + ".c")]
        sources += [os.path.join(ROOT, s) for s in build.core_sources()]
        exe = build.compile_c(sources, os.path.join(d, name), ["-std=gnu11", "-Wall", "-Werror",
                                                               "-I", os.path.join(ROOT, "csrc")])
        p = subprocess.run([*under, exe], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL" not in p.stdout
    return p.stdout


def test_c_program_against_the_header_uses_the_haproxy_functions() -> None:
    out = run_c_test("haproxy_compat")
    assert "nosuchdev0 fails and we keep going" in out, out


def test_c_handle_api() -> None:
    out = run_c_test("handle_api")
    assert "ok:" in out and "PASSED" in out, out


def test_c_holds_api() -> None:
    """Selective and ingress holds, the guardian, pq_dump and pq_remove_hold from C."""
    out = run_c_test("holds_api")
    assert "ok:" in out and "PASSED" in out, out


@pytest.mark.parametrize("name", ["haproxy_compat", "handle_api", "holds_api"])
def test_c_tests_under_valgrind(name: str) -> None:
    """No invalid read or write, no use of uninitialised memory, no definite leak in the C
    core (valgrind runs inside UML; AddressSanitizer cannot: its shadow memory does not fit
    in UML's address space, which ends at 0x7fc0000000)."""
    assert shutil.which("valgrind"), "valgrind is needed: scripts/system-deps.sh installs it"
    out = run_c_test(name, VALGRIND)
    assert "PASSED" in out or "keep going" in out, out
