"""A real kernel without sch_plug: the lab's own, booted for this test alone, with the
module unloaded and the kernel's module loading off (the lab's modprobe would load it
back). A lab of its own: in a shared one, a plug qdisc still held by an earlier test (its
hold guarded till that process exits, its namespace with it) keeps the module in use."""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest

from plugqdisc import lab

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("PLUGQDISC_INNER")) or not os.path.exists(lab.DEFAULT_KERNEL),
    reason="UML cannot run inside the lab; outside it needs /usr/bin/linux.uml "
    "(apt-get install user-mode-linux)",
)

SCRIPT = r"""
import json, os, subprocess
from plugqdisc import PlugQdisc, lab
ko = os.path.join(lab.MODULE_ROOT, os.uname().release, "kernel/net/sched/sch_plug.ko")
subprocess.run(["rmmod", "sch_plug"], check=True)
with open("/proc/sys/kernel/modprobe", "w") as f:
    f.write("\n")  # empty: the kernel asks no one for a module
out = {"ko": os.path.exists(ko)}
for name, kw in (("root", {}), ("missing_parent", {"parent": "1:1"})):
    try:
        PlugQdisc("lo", **kw).attach()
        out[name] = None
    except Exception as e:
        out[name] = {"type": type(e).__name__, "errno": e.errno, "step": e.step,
                     "message": str(e)}
print(json.dumps(out))
"""


def test_a_kernel_without_sch_plug_gives_kernelsupporterror() -> None:
    done = lab.run([sys.executable, "-c", SCRIPT], capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.decode())
    assert out["ko"]
    e = out["root"]
    assert e["type"] == "KernelSupportError" and e["errno"] == errno.ENOENT, e
    assert e["step"] == "create", e
    for words in ("attach on 'lo'", "creating the plug qdisc", "sch_plug",
                  "CONFIG_NET_SCH_PLUG", "plugqdisc.lab", "[kernel: "):
        assert words in e["message"], (words, e["message"])
    # a missing parent is still told apart on such a kernel
    assert out["missing_parent"]["type"] == "ParentNotFoundError", out["missing_parent"]
