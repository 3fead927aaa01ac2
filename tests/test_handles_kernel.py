"""A plug whose handle another qdisc on the device already has: the kernel says only
"Cannot move an existing qdisc to a different parent" (EINVAL); the error says whose
handle it is and names one that is free. In the lab, each test in its own namespace."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from nettools import sh
from plugqdisc import PlugQdisc, PlugQdiscError

pytestmark = pytest.mark.plugqdisc

HTB = "/usr/lib/uml/modules/%s/kernel/net/sched/sch_htb.ko" % os.uname().release


def htb_on_lo() -> None:
    """htb 1: at lo's root with classes 1:1 and 1:2, a pfifo 2: under 1:2."""
    if not os.path.exists("/sys/module/sch_htb"):
        if not os.path.exists(HTB):
            pytest.skip("no sch_htb module at %s" % HTB)
        subprocess.run(["insmod", HTB], check=True)
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1")
    for minor in ("1", "2"):
        sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:" + minor, "htb",
           "rate", "100mbit")
    sh("tc", "qdisc", "add", "dev", "lo", "parent", "1:2", "handle", "2:", "pfifo")


@pytest.mark.parametrize("handle, whose", [
    ("1:", "the htb qdisc that class 1:1 belongs to"),  # the default handle
    ("2:", "a pfifo qdisc at 1:2"),
])
def test_a_taken_handle_is_named_with_a_free_one(handle: str, whose: str) -> None:
    htb_on_lo()
    q = PlugQdisc("lo", parent="1:1", handle=handle)
    with pytest.raises(PlugQdiscError) as e:
        q.attach()
    q.close()
    assert e.value.errno == errno.EINVAL and e.value.step == "create"
    text = str(e.value)
    assert ("handle %s is taken on 'lo' by %s, and a handle names one qdisc on a device: "
            "give the plug a free one, such as handle='3:'" % (handle, whose)) in text, text
    assert "[kernel: " in text  # the kernel's own words stay
    # the handle named is free: the plug goes there
    with PlugQdisc("lo", parent="1:1", handle="3:") as q:
        q.buffer()
        q.release()
    assert "plug" not in sh("tc", "qdisc", "show", "dev", "lo")
