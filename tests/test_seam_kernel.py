"""The C/Python seam, in the lab: facts from C (errno, step, the kernel's text) become
one exception class and one message in Python; two syscalls per operation."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict

import pytest

import plugqdisc
from nettools import sh
from plugqdisc import DeviceNotFoundError, ParentNotFoundError, PlugQdisc, PlugQdiscError

pytestmark = pytest.mark.plugqdisc


def failure(fn: Callable[[], object]) -> PlugQdiscError:
    with pytest.raises(PlugQdiscError) as e:
        fn()
    return e.value


def assert_names(err: PlugQdiscError, *words: str) -> None:
    text = str(err)
    for w in words:
        assert w in text, "%r not in %r" % (w, text)


@pytest.mark.parametrize("parent", ["1:1", "ffff:", "ffff:fff2", "1:ffff", "7:3"])
def test_a_missing_parent_has_its_own_class_and_message(parent: str) -> None:
    e = failure(lambda: PlugQdisc("lo", parent=parent, handle="9:").attach())
    assert type(e) is ParentNotFoundError
    assert e.errno == errno.ENOENT and e.step == "find_parent"
    assert_names(e, "'lo'", "finding the parent %s" % parent, "does not exist",
                 "tc class show dev lo")
    assert "gone" not in str(e) and "sch_plug" not in str(e)
    assert e.kernel_message  # the kernel's own words come along


def test_a_missing_class_under_an_existing_qdisc_is_a_missing_parent() -> None:
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio")
    e = failure(lambda: PlugQdisc("lo", parent="1:ffff", handle="9:").attach())
    assert type(e) is ParentNotFoundError and e.step == "find_parent"
    # and the class that exists takes the plug
    with PlugQdisc("lo", parent="1:1", handle="9:") as q:
        q.attach(replace=True)
        assert " plug 9: parent 1:1 " in sh("tc", "qdisc", "show", "dev", "lo")


def test_an_unknown_device_names_the_device_and_the_step() -> None:
    for dev, name in (("nosuchdev0", "'nosuchdev0'"), (4242, "with index 4242")):
        e = failure(lambda: PlugQdisc(dev).attach())
        assert type(e) is DeviceNotFoundError and e.errno == errno.ENODEV
        assert e.step == "find_device"
        assert_names(e, name, "looking up the device", "ip link")
        assert not str(e).startswith("open")  # no internal step names


def test_a_device_that_vanished_names_the_step() -> None:
    sh("ip", "link", "add", "gone0", "type", "dummy")
    q = PlugQdisc("gone0").attach()
    sh("ip", "link", "del", "gone0")
    e = failure(q.buffer)
    assert type(e) is DeviceNotFoundError and e.errno == errno.ENODEV
    assert e.step == "change" and e.device == "gone0"
    assert_names(e, "buffer on 'gone0'", "telling the plug qdisc to buffer")
    q.close()


def test_another_qdisc_in_the_way_says_what_and_how() -> None:
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "5:", "pfifo")
    q = PlugQdisc("lo")
    e = failure(q.attach)
    assert type(e) is PlugQdiscError and e.errno == errno.EEXIST and e.step == "occupied"
    assert_names(e, "attach on 'lo'", "a pfifo qdisc (handle 5:) is already at root of 'lo'",
                 "replace=True")
    # calls after the failed attach say why it is not attached
    e2 = failure(q.buffer)
    assert e2.errno == errno.EEXIST and e2.step == "occupied"
    assert_names(e2, "buffer on 'lo'", "not attached, because attach() failed", "replace=True")
    q.close()


def test_a_qdisc_deleted_behind_our_back_is_gone_not_missing() -> None:
    q = PlugQdisc("lo").attach()
    sh("tc", "qdisc", "del", "dev", "lo", "root")
    for action, op in (("buffer", q.buffer), ("release", q.release), ("stats", q.stats)):
        e = failure(op)
        assert type(e) is PlugQdiscError and e.errno == errno.ENOENT
        assert e.step in ("change", "read_stats")
        assert_names(e, "%s on 'lo'" % action, "is gone", "attach() again")
    assert_names(e, "the device's default qdisc, noqueue, is there now")
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "5:", "pfifo")
    e = failure(q.stats)
    assert_names(e, "a pfifo qdisc (handle 5:) is there now")
    q.close()


def test_use_before_attach_is_not_attached() -> None:
    q = PlugQdisc("lo")
    e = failure(q.buffer)
    assert e.errno == errno.ENOTCONN and e.step == "not_attached"
    assert_names(e, "buffer on 'lo'", "not attached", "attach()")
    assert "failed: 'lo'" not in str(e)  # not the old "... failed: 'lo' is not attached"


def test_a_netns_that_is_not_a_namespace_names_the_step() -> None:
    with tempfile.NamedTemporaryFile() as f:
        e = failure(lambda: PlugQdisc("lo", netns=f.name).attach())
    assert e.errno == errno.EINVAL and e.step == "enter_netns"
    assert_names(e, "entering the network namespace", "not a network namespace")


def test_the_haproxy_api_reports_through_the_same_words() -> None:
    e = failure(lambda: plugqdisc.attach("lo", parent="3:3"))
    assert type(e) is ParentNotFoundError and e.step == "find_parent"
    assert_names(e, "attach on 'lo'", "finding the parent 3:3")
    e = failure(plugqdisc.plug_buffer)
    assert type(e) is ParentNotFoundError  # why the default qdisc is not attached
    assert_names(e, "plug_buffer", "not attached, because attach() failed")


# ---- two syscalls per operation -------------------------------------------------------

COUNT_SCRIPT = r"""
import sys, plugqdisc
n = int(sys.argv[2])
if sys.argv[1] == "class":
    q = plugqdisc.PlugQdisc("lo").attach()
    for _ in range(n):
        q.buffer(); q.release()
    q.detach()
else:
    plugqdisc.attach("lo")
    for _ in range(n):
        plugqdisc.plug_buffer(); plugqdisc.release_indefinite_buffer()
"""


def _netlink_calls(api: str, pairs: int) -> Dict[str, Dict[str, int]]:
    """sendmsg and recvmsg calls made by a process that makes PAIRS buffer+release pairs
    ("holder"), and by the processes it started, its guardian ("others")."""
    assert shutil.which("strace"), "strace is needed: scripts/system-deps.sh installs it"
    counts = {who: {"sendmsg": 0, "recvmsg": 0} for who in ("holder", "others")}
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "count.py")
        with open(script, "w") as f:
            f.write(COUNT_SCRIPT)
        prefix = os.path.join(d, "trace")
        # --seccomp-bpf: only the traced calls stop the process (ptrace is slow under UML)
        subprocess.run(["strace", "-f", "-ff", "--seccomp-bpf", "-o", prefix,
                        "-e", "trace=sendmsg,recvmsg",
                        sys.executable, script, api, str(pairs)], check=True)
        if api == "haproxy":
            sh("tc", "qdisc", "del", "dev", "lo", "root")
        files = sorted((int(n.rsplit(".", 1)[1]), n) for n in os.listdir(d)
                       if n.startswith("trace."))
        for i, (_, name) in enumerate(files):  # the lowest pid is the holder
            with open(os.path.join(d, name)) as f:
                text = f.read()
            for call in ("sendmsg", "recvmsg"):
                counts["holder" if i == 0 else "others"][call] += len(
                    re.findall(r"^%s\(" % call, text, re.M))
    return counts


@pytest.mark.parametrize("api", ["class", "haproxy"])
def test_each_operation_is_one_sendmsg_and_one_recvmsg(api: str) -> None:
    few, many = _netlink_calls(api, 10), _netlink_calls(api, 110)
    ops = 2 * (110 - 10)
    assert many["holder"]["sendmsg"] - few["holder"]["sendmsg"] == ops, (few, many)
    assert many["holder"]["recvmsg"] - few["holder"]["recvmsg"] == ops, (few, many)
    # the guardian (class API: guarded by default) does nothing per operation
    for call in ("sendmsg", "recvmsg"):
        assert abs(many["others"][call] - few["others"][call]) <= 3, (few, many)
