"""A Match is a value (copied, deep-copied and pickled as one), takes ipaddress interface
objects as their network, and refuses in the words of whoever built it: keywords for
Python, options for the command line. Public classes carry their public name."""

from __future__ import annotations

import copy
import ipaddress
import pickle
import subprocess
import sys
import traceback

import pytest

import plugqdisc
from plugqdisc import Match
from plugqdisc._match import from_options


@pytest.mark.parametrize("m", [
    Match(proto="tcp", src="10.0.0.0/8", dport=(1000, 2000), syn=True),
    Match(dst=ipaddress.ip_address("::1"), sport=53),
    Match(mark=(0x40, 0xF0)),
])
def test_a_match_copies_deep_copies_and_pickles(m: Match) -> None:
    assert copy.copy(m) == m and copy.deepcopy(m) == m
    assert copy.deepcopy({"match": [m]}) == {"match": [m]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(m, protocol))
        assert back == m and hash(back) == hash(m) and repr(back) == repr(m)
        assert back.terms() == m.terms()
    assert b"plugqdisc._match" not in pickle.dumps(m)  # the public name: plugqdisc.Match
    with pytest.raises(AttributeError, match="immutable"):
        copy.copy(m).proto = "udp"  # type: ignore[misc]


@pytest.mark.parametrize("interface, network", [
    (ipaddress.IPv4Interface("10.0.0.7/24"), "10.0.0.0/24"),
    (ipaddress.IPv4Interface("10.0.0.7"), "10.0.0.7/32"),
    (ipaddress.IPv6Interface("fd00::7/64"), "fd00::/64"),
])
def test_an_interface_object_stands_for_its_network(interface: object, network: str) -> None:
    m = Match(src=interface, dst=interface)  # type: ignore[arg-type]
    assert str(m.src) == str(m.dst) == network
    assert m == Match(src=str(interface), dst=str(interface))  # as the same text would


@pytest.mark.parametrize("fields, python, command_line", [
    ({"dport": (10, 5)}, "dport: the range (10, 5) is reversed: write (5, 10)",
     "--dport: the range 10-5 is reversed: write 5-10"),
    ({"proto": "udp", "syn": True},
     "syn=True selects TCP connection attempts: it cannot go with proto='udp' (drop proto, "
     "or use proto='tcp')",
     "--syn selects TCP connection attempts: it cannot go with --proto udp (drop --proto, "
     "or use --proto tcp)"),
    ({"mark": 0x42, "dport": 80}, "or pass match=[Match(mark=...), Match(...)] to hold either",
     "--mark cannot be combined with other options: Linux 6.1's flower classifier has no "
     "mark key and fw matches the mark alone; mark exactly the packets to hold with your "
     "netfilter rule"),
    ({"mark": (0x41, 0xF0)}, "write (0x40, 0xf0)", "write 0x40/0xf0"),
    ({"proto": "gre"}, "proto 'gre' is not known: use 'tcp', 'udp', 'icmp'",
     "--proto gre is not known: use tcp, udp, icmp"),
    ({"src": "10.0.0.1", "dst": "::1"}, "src='10.0.0.1' and dst='::1' are of different",
     "--src 10.0.0.1 and --dst ::1 are of different"),
])
def test_refusals_speak_the_callers_language(fields: dict,  # type: ignore[type-arg]
                                             python: str, command_line: str) -> None:
    with pytest.raises(ValueError) as e:
        Match(**fields)
    assert python in str(e.value)
    with pytest.raises(ValueError) as e:
        from_options(**fields)
    assert command_line in str(e.value)
    assert "Match(" not in str(e.value) and "=" not in str(e.value)


@pytest.mark.parametrize("name", ["PlugQdiscError", "KernelSupportError",
                                  "DeviceNotFoundError", "ParentNotFoundError",
                                  "PlugQdiscPermissionError", "Match", "PlugQdisc", "Stats"])
def test_public_classes_carry_their_public_name(name: str) -> None:
    cls = getattr(plugqdisc, name)
    assert cls.__module__ == "plugqdisc" and cls.__qualname__ == name
    if issubclass(cls, BaseException):
        text = "".join(traceback.format_exception_only(cls(2, "why")))
        assert text.startswith("plugqdisc.%s: " % name), text
        back = pickle.loads(pickle.dumps(cls(17, "in the way")))
        assert type(back) is cls and back.errno == 17


def test_an_uncaught_error_names_the_public_class() -> None:
    p = subprocess.run([sys.executable, "-c", "import plugqdisc; raise "
                        "plugqdisc.KernelSupportError(2, 'no sch_plug')"],
                       capture_output=True, text=True)
    assert p.stderr.splitlines()[-1] == "plugqdisc.KernelSupportError: [Errno 2] no sch_plug"
    assert "_errors" not in p.stderr
