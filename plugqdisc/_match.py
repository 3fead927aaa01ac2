"""Match: which packets a selective hold holds, checked here and turned into the
terms the C core makes filters of (one flower or fw filter a term)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

Address = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                ipaddress.IPv6Network]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Ports = Union[int, Tuple[int, int]]

_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_ICMP = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
_WITH_PORTS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132)  # 132: SCTP
# Term kinds, as the C core numbers them (csrc/plug_qdisc.h).
from ._plugqdisc import TERM_FLOWER as _FLOWER, TERM_MARK as _MARK  # noqa: E402
Term = Tuple[Any, ...]


def _proto(value: Union[str, int, None]) -> Union[str, int, None]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError("proto must be 'tcp', 'udp', 'icmp', an int 0-255 or None, not %s"
                        % type(value).__name__)
    if isinstance(value, str):
        name = value.lower()
        if name not in ("tcp", "udp", "icmp"):
            raise ValueError("proto %r is not known: use 'tcp', 'udp', 'icmp' or a protocol "
                             "number 0-255" % value)
        return name
    if not 0 <= value <= 255:
        raise ValueError("proto must be a protocol number from 0 to 255, not %d" % value)
    return value


def _network(value: Optional[Address], field: str) -> Optional[Network]:
    if value is None:
        return None
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    if not isinstance(value, str):
        raise TypeError("%s must be an address or network as a str or ipaddress object, not %s"
                        % (field, type(value).__name__))
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("%s: %r is not an IP address or network (for example '127.0.0.2', "
                         "'10.0.0.0/8' or '::1')" % (field, value)) from None


def _ports(value: Optional[Ports], field: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    pair = value if isinstance(value, tuple) else (value, value)
    if len(pair) != 2 or any(isinstance(p, bool) or not isinstance(p, int) for p in pair):
        raise TypeError("%s must be a port (an int) or a range (low, high) of ints, not %r"
                        % (field, value))
    lo, hi = pair
    for p in pair:
        if not 1 <= p <= 65535:
            raise ValueError("%s: port %d is out of range: ports are 1 to 65535" % (field, p))
    if lo > hi:
        raise ValueError("%s: the range (%d, %d) is reversed: write (%d, %d)"
                         % (field, lo, hi, hi, lo))
    return lo, hi


def _mark(value: Union[int, Tuple[int, int], None]) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    pair = value if isinstance(value, tuple) else (value, 0xFFFFFFFF)
    if len(pair) != 2 or any(isinstance(p, bool) or not isinstance(p, int) for p in pair):
        raise TypeError("mark must be an int or a (value, mask) pair of ints, not %r"
                        % (value,))
    mark, mask = pair
    if not (0 <= mark < 2**32 and 0 < mask < 2**32):
        raise ValueError("mark: value and mask are 32-bit (value 0 to 2**32-1, mask 1 to "
                         "2**32-1), not %r" % (value,))
    if mark & mask != mark:
        raise ValueError("mark: the value %#x has bits outside the mask %#x: write (%#x, %#x)"
                         % (mark, mask, mark & mask, mask))
    if mark == 0:
        raise ValueError("mark: 0 is what every unmarked packet carries; give the marked "
                         "packets a non-zero mark (SO_MARK, iptables MARK, nft meta mark set)")
    return mark, mask


class Match:
    """Which packets to hold; all fields given must hold for a packet to match.

    ``proto``: ``"tcp"``, ``"udp"``, ``"icmp"`` (ICMP or ICMPv6 by family) or a
    protocol number. ``src``, ``dst``: an address or network (str or
    :mod:`ipaddress` object); one pins the family, without one IPv4 and IPv6
    both match. ``sport``, ``dport``: a port, or an inclusive range ``(low,
    high)``; with ``proto=None`` a port matches TCP and UDP. ``syn=True``: TCP
    segments with SYN set and ACK clear (connection attempts). ``mark``: the
    packet's fwmark, an int or ``(value, mask)``, as set by ``SO_MARK``,
    iptables ``MARK`` or nftables ``meta mark set``. Immutable and hashable.
    """

    __slots__ = ("_key",)
    _key: Tuple[Any, ...]

    def __init__(self, *, proto: Union[str, int, None] = None, src: Optional[Address] = None,
                 dst: Optional[Address] = None, sport: Optional[Ports] = None,
                 dport: Optional[Ports] = None, syn: bool = False,
                 mark: Union[int, Tuple[int, int], None] = None) -> None:
        p = _proto(proto)
        s, d = _network(src, "src"), _network(dst, "dst")
        sp, dp = _ports(sport, "sport"), _ports(dport, "dport")
        if not isinstance(syn, bool):
            raise TypeError("syn must be True or False, not %s" % type(syn).__name__)
        m = _mark(mark)
        if s is not None and d is not None and s.version != d.version:
            raise ValueError("src %s and dst %s are of different families: a packet is IPv4 "
                             "or IPv6, never both" % (s, d))
        if syn and p not in (None, "tcp", socket.IPPROTO_TCP):
            raise ValueError("syn=True selects TCP connection attempts: it cannot go with "
                             "proto=%r (drop proto, or use proto='tcp')" % (proto,))
        if (sp or dp) and not (p is None or p in ("tcp", "udp") or p in _WITH_PORTS):
            raise ValueError("ports need a protocol that has them: proto=%r has none (use "
                             "'tcp', 'udp', or no proto for both)" % (proto,))
        if m is not None and (p is not None or s or d or sp or dp or syn):
            raise ValueError("mark cannot be combined with other fields: Linux 6.1's flower "
                             "classifier has no mark key and fw matches the mark alone; mark "
                             "exactly the packets to hold with your netfilter rule, or pass "
                             "match=[Match(mark=...), Match(...)] to hold either")
        if p is None and s is None and d is None and not (sp or dp or syn) and m is None:
            raise ValueError("Match() with no field matches everything: use match=None to "
                             "hold every packet")
        object.__setattr__(self, "_key", (p, s, d, sp, dp, syn, m))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Match is immutable")

    @property
    def proto(self) -> Union[str, int, None]:
        return self._key[0]  # type: ignore[no-any-return]

    @property
    def src(self) -> Optional[Network]:
        return self._key[1]  # type: ignore[no-any-return]

    @property
    def dst(self) -> Optional[Network]:
        return self._key[2]  # type: ignore[no-any-return]

    @property
    def sport(self) -> Optional[Tuple[int, int]]:
        return self._key[3]  # type: ignore[no-any-return]

    @property
    def dport(self) -> Optional[Tuple[int, int]]:
        return self._key[4]  # type: ignore[no-any-return]

    @property
    def syn(self) -> bool:
        return self._key[5]  # type: ignore[no-any-return]

    @property
    def mark(self) -> Optional[Tuple[int, int]]:
        return self._key[6]  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Match) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        parts = []
        for name, value in zip(("proto", "src", "dst", "sport", "dport", "syn", "mark"),
                               self._key):
            if value is None or value is False:
                continue
            if name in ("sport", "dport") and value[0] == value[1]:
                value = value[0]
            elif name in ("src", "dst"):
                value = str(value)
            elif name == "mark":
                value = value[0] if value[1] == 0xFFFFFFFF else (hex(value[0]), hex(value[1]))
            parts.append("%s=%r" % (name, value))
        return "Match(%s)" % ", ".join(parts)

    def terms(self) -> List[Term]:
        """The C core's terms for this match: one a family and protocol it covers."""
        p, s, d, sp, dp, syn, m = self._key
        if m is not None:
            return [(_MARK, 0, -1, None, None, None, None, 0, 0, 0, 0, False, m[0], m[1])]
        pinned = s or d
        out = []
        for version in ([pinned.version] if pinned else [4, 6]):
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            if syn or p == "tcp":
                protos = [socket.IPPROTO_TCP]
            elif p == "udp":
                protos = [socket.IPPROTO_UDP]
            elif p == "icmp":
                protos = [_ICMP[version]]
            elif p is None:
                protos = [socket.IPPROTO_TCP, socket.IPPROTO_UDP] if (sp or dp) else [-1]
            else:
                protos = [int(p)]
            for ip_proto in protos:
                out.append((_FLOWER, family, ip_proto,
                            s.network_address.packed if s else None,
                            s.netmask.packed if s else None,
                            d.network_address.packed if d else None,
                            d.netmask.packed if d else None,
                            sp[0] if sp else 0, sp[1] if sp else 0,
                            dp[0] if dp else 0, dp[1] if dp else 0, syn, 0, 0))
        return out


def terms_of(match: Union[Match, Sequence[Match], None]) -> List[Term]:
    """The terms for ``match=`` (one Match, a list of them held if any matches, or None)."""
    if match is None:
        return []
    items: Iterable[Any] = [match] if isinstance(match, Match) else match
    if isinstance(match, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise TypeError("match must be a Match, a list of Match, or None, not %s"
                        % type(match).__name__)
    if not items:
        raise ValueError("match=[] matches nothing: pass None to hold everything, or at "
                         "least one Match")
    out: List[Term] = []
    for m in items:
        if not isinstance(m, Match):
            raise TypeError("match list items must be Match objects, not %s"
                            % type(m).__name__)
        out.extend(m.terms())
    return out
