"""Argument checks (no kernel needed: they happen before any netlink traffic), and the
host kernel's own answer when it has no sch_plug."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import plugqdisc
from plugqdisc import KernelSupportError, PlugQdisc, PlugQdiscError


@pytest.mark.parametrize("kw, exc, text", [
    ({"handle": "1:2:3"}, ValueError, "handle"),
    ({"handle": "zz"}, ValueError, "handle"),
    ({"handle": "10000:"}, ValueError, "handle"),
    ({"handle": "1:2"}, ValueError, "MAJ:"),
    ({"handle": "root"}, ValueError, "MAJ:"),
    ({"handle": "0:"}, ValueError, "MAJ:"),
    ({"handle": ""}, ValueError, "handle"),
    ({"handle": 1}, TypeError, "handle"),
    ({"parent": "zz"}, ValueError, "parent"),
    ({"parent": "none"}, ValueError, "parent"),
    ({"parent": "1:2:3"}, ValueError, "parent"),
    ({"parent": None}, TypeError, "parent"),
    ({"limit": -1}, ValueError, "limit"),
    ({"limit": 2**32}, ValueError, "limit"),
    ({"limit": "100"}, TypeError, "limit"),
    ({"limit": 1.5}, TypeError, "limit"),
    ({"limit": True}, TypeError, "limit"),
    ({"netns": 1.5}, TypeError, "netns"),
    ({"netns": -1}, ValueError, "netns"),
    ({"netns": ""}, ValueError, "netns"),
])
def test_bad_arguments_are_refused_at_construction(kw, exc, text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=text):
        PlugQdisc("lo", **kw)


@pytest.mark.parametrize("device, exc", [
    ("", ValueError), ("a" * 16, ValueError), ("a/b", ValueError), ("a b", ValueError),
    ("a:b", ValueError), ("..", ValueError), (0, ValueError), (-3, ValueError),
    (3.5, TypeError), (None, TypeError), (True, TypeError), (b"lo", TypeError),
])
def test_bad_devices_are_refused_at_construction(device, exc) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match="interface name|ifindex"):
        PlugQdisc(device)


def test_good_arguments_touch_nothing() -> None:
    q = PlugQdisc("lo", parent="1:2", handle="ffff:", limit=2**32 - 1, netns="nosuch")
    assert (q.device, q.parent, q.handle, q.limit, q.netns) == ("lo", "1:2", "ffff:",
                                                                 2**32 - 1, "nosuch")
    assert not q.closed and not q.is_buffering and not q.created and q.ifindex is None
    q.close()
    assert q.closed


def test_module_level_attach_checks_arguments_first() -> None:
    with pytest.raises(ValueError):
        plugqdisc.attach("lo", id="1:2:3")
    with pytest.raises(ValueError):
        plugqdisc.attach("lo", limit=-1)
    with pytest.raises(TypeError):
        plugqdisc.attach(5)  # type: ignore[arg-type]


def test_importing_has_no_side_effects() -> None:
    # pytest_plugin too: pytest imports it in every session of everyone who installs us.
    code = ("import os; before = set(os.listdir('/proc/self/fd')); import plugqdisc; "
            "import plugqdisc.lab, plugqdisc.netns, plugqdisc.pytest_plugin; "
            "print(len(set(os.listdir('/proc/self/fd')) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"  # no socket opened, nothing left open


CHILD = r"""
import json, sys
from plugqdisc.netns import CLONE_NEWNET, unshare
try:
    unshare(CLONE_NEWNET)  # a private netns: never touch the host's lo
except OSError as e:
    print(json.dumps({"skip": str(e)})); sys.exit()
import plugqdisc
out = {}
for api, attach in [("class", lambda: plugqdisc.PlugQdisc("lo").attach()),
                    ("module", lambda: plugqdisc.attach("lo", limit=None))]:
    try:
        attach()
        out[api] = {"attached": True}
    except OSError as e:
        out[api] = {"cls": [c.__name__ for c in type(e).__mro__], "errno": e.errno,
                    "msg": str(e)}
print(json.dumps(out))
"""


@pytest.mark.parametrize("api", ["class", "module"])
def test_a_kernel_without_sch_plug_gives_kernelsupporterror(api: str) -> None:
    """This machine's own kernel is one (tests run in the lab otherwise). Both APIs, the
    module's with limit=None as the class takes it, reach the kernel, in a private
    network namespace (the host's lo is never touched)."""
    if os.environ.get("PLUGQDISC_INNER"):
        pytest.skip("inside the lab the kernel has sch_plug; this test is for the host")
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    if "skip" in got:
        pytest.skip("cannot make a private network namespace here (%s): needs root or "
                    "user namespaces" % got["skip"])
    got = got[api]
    if got.get("attached"):
        pytest.skip("this host's kernel has sch_plug")
    assert "KernelSupportError" in got["cls"] and "PlugQdiscError" in got["cls"], got
    assert got["errno"] == errno.ENOENT
    for hint in ("CONFIG_NET_SCH_PLUG", "modprobe sch_plug", "plugqdisc.lab"):
        assert hint in got["msg"]
    assert issubclass(KernelSupportError, PlugQdiscError)
    assert issubclass(PlugQdiscError, OSError)


def test_constructing_opens_nothing_and_the_type_is_subclassable() -> None:
    before = set(os.listdir("/proc/self/fd"))
    q = PlugQdisc("lo", limit=1000)
    assert set(os.listdir("/proc/self/fd")) == before  # no socket, no namespace fd
    assert (q.device, q.ifindex, q.limit, q.attached, q.closed) == ("lo", None, 1000, False,
                                                                    False)

    class Tagged(PlugQdisc):
        def __init__(self, tag: str) -> None:
            super().__init__("lo")
            self.tag = tag

    t = Tagged("mine")
    assert t.tag == "mine" and isinstance(t, PlugQdisc) and t.device == "lo"
    assert PlugQdisc(7).device == 7  # an ifindex stays one until the device is found


# ---- selective and ingress holds: every bad input is refused before anything changes ----

@pytest.mark.parametrize("kw, exc, words", [
    ({}, ValueError, "match=None"),
    ({"dport": 0}, ValueError, "dport: port 0 is out of range"),
    ({"dport": 70000}, ValueError, "dport: port 70000"),
    ({"sport": (2000, 1000)}, ValueError, "reversed: write (1000, 2000)"),
    ({"dport": (1, 2, 3)}, TypeError, "dport"),
    ({"dport": "80"}, TypeError, "dport"),
    ({"dport": True}, TypeError, "dport"),
    ({"proto": "udp", "syn": True}, ValueError, "syn=True"),
    ({"proto": "icmp", "syn": True}, ValueError, "syn=True"),
    ({"proto": "icmp", "dport": 80}, ValueError, "ports need a protocol"),
    ({"proto": 1, "dport": 80}, ValueError, "ports need a protocol"),
    ({"proto": "sctpx"}, ValueError, "proto 'sctpx' is not known"),
    ({"proto": 256}, ValueError, "0 to 255"),
    ({"proto": -1}, ValueError, "0 to 255"),
    ({"proto": 1.5}, TypeError, "proto"),
    ({"src": "10.0.0.300"}, ValueError, "src: '10.0.0.300' is not an IP address"),
    ({"dst": "nonsense"}, ValueError, "dst: 'nonsense'"),
    ({"src": 167772162}, TypeError, "src"),
    ({"src": "10.0.0.1", "dst": "::1"}, ValueError, "different families"),
    ({"syn": 1}, TypeError, "syn"),
    ({"mark": 0}, ValueError, "mark: 0"),
    ({"mark": 2**32}, ValueError, "32-bit"),
    ({"mark": (0x41, 0xF0)}, ValueError, "bits outside the mask"),
    ({"mark": (1, 0)}, ValueError, "32-bit"),
    ({"mark": "1"}, TypeError, "mark"),
    ({"mark": 1, "dport": 80}, ValueError, "mark cannot be combined"),
])
def test_bad_matches_are_refused_with_the_field_and_the_fix(kw, exc, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as e:
        plugqdisc.Match(**kw)
    assert words in str(e.value)


def test_a_match_is_immutable_hashable_and_readable() -> None:
    from plugqdisc import Match
    m = Match(proto="tcp", dport=8080, syn=True)
    assert m == Match(proto="TCP", dport=(8080, 8080), syn=True)
    assert len({m, Match(proto="tcp", dport=8080, syn=True)}) == 1
    assert repr(m) == "Match(proto='tcp', dport=8080, syn=True)"
    assert repr(Match(src="10.0.0.0/8", mark=None)) == "Match(src='10.0.0.0/8')"
    assert repr(Match(mark=(0x40, 0xF0))) == "Match(mark=('0x40', '0xf0'))"
    with pytest.raises(AttributeError):
        m.dport = 1  # type: ignore[misc]
    assert m.dport == (8080, 8080) and m.proto == "tcp"


@pytest.mark.parametrize("kw, exc, words", [
    ({"direction": "both"}, ValueError, "direction must be 'egress'"),
    ({"direction": "ingress", "parent": "1:1"}, ValueError, "leave parent='root'"),
    ({"match": plugqdisc.Match(proto="udp"), "parent": "1:1"}, ValueError, "parent='root'"),
    ({"match": plugqdisc.Match(proto="udp"), "handle": "fffe:"}, ValueError, "fffe:"),
    # the same handle however it is written (it is compared by value, as C compares it)
    ({"match": plugqdisc.Match(proto="udp"), "handle": "FFFE:"}, ValueError, "fffe:"),
    ({"match": plugqdisc.Match(proto="udp"), "handle": "fffe:0"}, ValueError, "fffe:"),
    ({"match": plugqdisc.Match(proto="udp"), "handle": "FFFE:0", "direction": "ingress"},
     ValueError, "fffe:"),
    ({"match": []}, ValueError, "match=[]"),
    ({"match": ["udp"]}, TypeError, "Match objects"),
    ({"match": "udp"}, TypeError, "match must be a Match"),
])
def test_bad_modes_are_refused_at_construction(kw, exc, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as e:
        PlugQdisc("lo", **kw)
    assert words in str(e.value)
    with pytest.raises(exc):
        with plugqdisc.plugged("lo", **kw):
            pass


# ---- inputs that used to escape (issue 9): clear errors in the user's terms, no hang ----

@pytest.mark.parametrize("call, exc, words", [
    (lambda q: q.wait_buffered(1, timeout=float("nan")), ValueError, "timeout must be a number of seconds >= 0 (None or inf: no limit), not nan"),
    (lambda q: q.wait_buffered(1, timeout=-1), ValueError, "timeout must be a number of seconds >= 0"),
    (lambda q: q.wait_buffered(1, timeout="5"), TypeError, "timeout must be a number"),
    (lambda q: q.wait_buffered(-1), ValueError, "packets must be >= 0"),
    (lambda q: q.detach(timeout=float("nan")), ValueError, "not nan"),
    (lambda q: q.detach(timeout=True), TypeError, "timeout must be a number"),
    (lambda q: q.set_limit(2**64), ValueError, "nbytes must be from 0 to 2**32-1"),
])
def test_bad_call_arguments_are_refused_before_anything_is_sent(call, exc, words) -> None:  # type: ignore[no-untyped-def]
    q = PlugQdisc("lo")
    with pytest.raises(exc) as e:
        call(q)
    assert words in str(e.value) and "timeout_ms" not in str(e.value)
    assert not q.connected  # nothing was sent: not even the device was looked up


@pytest.mark.parametrize("kw, exc, words", [
    ({"netns": 2**31}, ValueError, "netns file descriptor"),
    ({"netns": 2**64}, ValueError, "netns file descriptor"),
    ({"max_hold": float("nan")}, ValueError, "max_hold must be a number of seconds > 0"),
    ({"max_hold": 0}, ValueError, "max_hold must be a number of seconds > 0"),
    ({"max_hold": "1"}, TypeError, "max_hold must be a number"),
    ({"max_hold": 5, "guard": False}, ValueError, "max_hold needs the guardian"),
    ({"guard": 1}, TypeError, "guard must be True or False"),
])
def test_bad_guard_and_netns_arguments(kw, exc, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as e:
        PlugQdisc("lo", **kw)
    assert words in str(e.value)


def test_module_level_attach_checks_limit_like_the_class() -> None:
    """(limit=None reaching the kernel: test_a_kernel_without_sch_plug_gives_..., and
    holding in the lab: test_errors_kernel.py's test_module_level_haproxy_api.)"""
    with pytest.raises(TypeError, match="limit must be an int number of bytes or None"):
        plugqdisc.attach("lo", limit="x")  # type: ignore[arg-type]


# ---- every step the C core can report has words in the messages ----

#: Steps whose message deliberately says no "while ...", and why.
WORDLESS = {
    "none": "the step of no failure: nothing failed, there is nothing to say",
    "not_attached": "the advice says it all (call attach() first), or the message replays "
                    "the failed attach's own step",
}


@pytest.mark.parametrize("step", plugqdisc._plugqdisc.STEPS)
def test_every_step_of_the_c_core_has_words(step: str) -> None:
    from plugqdisc._errors import _STEP_WORDS, translate
    assert step in _STEP_WORDS, "no words for the C core's step %r in _errors._STEP_WORDS" % step
    e = OSError(errno.EINVAL, "Invalid argument")
    e.step = step  # type: ignore[attr-defined]
    msg = str(translate(e, "attach", "'lo'"))
    if step in WORDLESS:
        assert _STEP_WORDS[step] == "" and " while " not in msg, msg
    else:
        assert _STEP_WORDS[step] and "{" not in msg and " while %s:" % step not in msg, msg


def test_the_words_name_only_steps_the_c_core_has() -> None:
    from plugqdisc._errors import _STEP_WORDS
    assert set(_STEP_WORDS) == set(plugqdisc._plugqdisc.STEPS)
    assert set(WORDLESS) <= set(plugqdisc._plugqdisc.STEPS)


def test_a_missing_namespace_is_named_with_what_to_pass() -> None:
    """The same words as the command line's (tests/test_cli.py): one function opens a
    namespace given by name or path, for attach, status, release and cleanup."""
    q = PlugQdisc("lo", netns="plugqdisc-no-such-ns")
    with pytest.raises(FileNotFoundError) as e:
        q.attach()
    assert e.value.filename == "/run/netns/plugqdisc-no-such-ns"
    assert "`ip netns list` names them" in str(e.value) and "/proc/PID/ns/net" in str(e.value)
    assert not q.connected
    q.close()
