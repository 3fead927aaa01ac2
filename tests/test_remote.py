"""plugqdisc.remote and the Chaos Toolkit extension on the host (no kernel needed): bad
arguments are refused before any transport starts, the remote command line says what
was asked, `chaos discover` lists the extension's activities. The holds themselves are
tested in the lab: tests/test_remote_kernel.py, tests/test_chaos_kernel.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from plugqdisc import Match
from plugqdisc._control import _selects, ssh_session
from plugqdisc.remote import Group, RemoteHold, plugged


@pytest.mark.parametrize("kw, exc, words", [
    ({"device": 3}, TypeError, "interface name (str)"),
    ({"device": "a/b"}, ValueError, "not a valid interface name"),
    ({"via": "ssh host"}, TypeError, "argv prefix"),
    ({"via": ["ssh", ""]}, ValueError, "non-empty str"),
    ({"command": []}, ValueError, "command is empty"),
    ({"match": [Match(proto="tcp"), Match(proto="udp")]}, ValueError, "one Match"),
    ({"match": "tcp"}, TypeError, "match must be a Match"),
    ({"direction": "up"}, ValueError, "direction must be"),
    ({"limit": -1}, ValueError, "limit must be from 0"),
    ({"max_hold": 0}, ValueError, "max_hold must be"),
    ({"netns": 3}, TypeError, "on the target (str)"),
    ({"timeout": -1}, ValueError, "timeout must be"),
])
def test_bad_arguments_are_refused_before_anything_starts(kw: Dict[str, Any], exc: type,
                                                          words: str) -> None:
    args: Dict[str, Any] = {"device": "eth0", "via": ["/nonexistent/transport"]}
    args.update(kw)
    device = args.pop("device")
    with pytest.raises(exc) as info:  # type: ignore[var-annotated]
        RemoteHold(device, **args)
    assert words in str(info.value)


def test_the_remote_command_line_says_what_was_asked() -> None:
    q = RemoteHold("eth0", via=["ssh", "-T", "db2"], command=["/opt/venv/bin/plugqdisc"],
                   match=Match(proto="tcp", src="10.0.0.0/8", dport=(5432, 5433), syn=True),
                   direction="ingress", limit=100000, max_hold=2.5, netns="blue",
                   allow_transport_device=True)
    assert q.argv(replace=True) == [
        "ssh", "-T", "db2", "/opt/venv/bin/plugqdisc", "hold", "eth0", "--proto", "tcp",
        "--src", "10.0.0.0/8", "--dport", "5432-5433", "--syn", "--ingress", "--limit",
        "100000", "--max-hold", "2.5", "--netns", "blue", "--replace",
        "--allow-transport-device", "--control"]
    assert RemoteHold("lo", match=Match(proto="tcp", fin=True, rst=True)).argv()[5:] == [
        "--proto", "tcp", "--fin", "--rst", "--control"]
    assert RemoteHold("lo", match=Match(mark=(0x40, 0xF0))).argv() == [
        sys.executable, "-m", "plugqdisc", "hold", "lo", "--mark", "0x40/0xf0", "--control"]
    assert RemoteHold("lo", via=["ssh", "h"]).command == ["plugqdisc"]
    assert not q.attached and not q.closed and q.name == "ssh -T db2"


def test_a_list_of_via_prefixes_is_a_group() -> None:
    p = plugged("eth0", via=[["ssh", "a"], ["ssh", "b"]])
    g = p._q
    assert isinstance(g, Group) and [h.name for h in g] == ["ssh a", "ssh b"]
    with pytest.raises(ValueError, match="twice"):
        h = RemoteHold("eth0", via=["ssh", "a"])
        Group([h, h])


def test_calls_before_attach_say_what_to_do() -> None:
    q = RemoteHold("eth0", via=["ssh", "a"])
    with pytest.raises(ValueError, match="not attached: call attach"):
        q.buffer()
    q.close()  # nothing started: nothing to end


def test_the_ssh_session_and_whether_a_match_selects_its_packets() -> None:
    assert ssh_session({}) is None
    assert ssh_session({"SSH_CONNECTION": "garbage"}) is None
    s = ssh_session({"SSH_CONNECTION": "10.0.0.1 40000 10.0.0.2 22"})
    assert s == ("10.0.0.1", 40000, "10.0.0.2", 22)
    egress = (6, "10.0.0.2", "10.0.0.1", 22, 40000)  # what the server sends back
    assert _selects(Match(proto="tcp"), *egress)
    assert _selects(Match(sport=22), *egress)
    assert _selects(Match(dst="10.0.0.0/24"), *egress)
    assert _selects(Match(mark=1), *egress)  # a mark may be set on anything
    assert not _selects(Match(proto="udp"), *egress)
    assert not _selects(Match(proto="tcp", dport=5432), *egress)
    assert not _selects(Match(proto="tcp", syn=True), *egress)
    assert not _selects(Match(proto="tcp", fin=True), *egress)
    assert not _selects(Match(src="192.168.0.0/16"), *egress)


def test_chaos_discover_lists_the_extension(tmp_path: Path) -> None:
    pytest.importorskip("chaosplugqdisc", reason="`make venv` installs ./chaostoolkit-plugqdisc")
    chaos = os.path.join(os.path.dirname(sys.executable), "chaos")
    out = tmp_path / "discovery.json"
    p = subprocess.run([chaos, "--no-version-check", "--no-log-file", "discover",
                        "chaostoolkit-plugqdisc", "--no-install", "--discovery-path",
                        str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    assert d["extension"]["name"] == "chaostoolkit-plugqdisc"
    found = {(a["type"], a["mod"], a["name"]): [x["name"] for x in a["arguments"]]
             for a in d["activities"]}
    assert found[("action", "chaosplugqdisc.actions", "hold")][:14] == [
        "device", "targets", "name", "direction", "proto", "src", "dst", "sport", "dport",
        "syn", "mark", "limit", "max_hold", "netns"]
    assert found[("action", "chaosplugqdisc.actions", "release")] == ["name"]
    assert found[("action", "chaosplugqdisc.actions", "release_all")] == []
    assert found[("probe", "chaosplugqdisc.probes", "hold_status")] == ["name"]
    assert found[("probe", "chaosplugqdisc.probes", "wait_buffered")] == [
        "name", "packets", "timeout"]
