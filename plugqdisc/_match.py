"""Match: which packets a selective hold holds, checked here and turned into the
terms the C core makes filters of (one flower or fw filter a term)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ._words import COMMAND_LINE, PYTHON, Python
# The term kinds are the C core's (TERM_FLOWER, TERM_MARK), read when terms are made: in a
# source tree without the built extension, the package (and the lab) still imports.
from . import _plugqdisc

#: An address or network: a str (``"10.0.0.1"``, ``"10.0.0.0/8"``, ``"::1"``) or an
#: :mod:`ipaddress` address, network or interface (an interface stands for its network).
Address = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
#: A port, or an inclusive range ``(low, high)``.
Ports = Union[int, Tuple[int, int]]
_FIELDS = ("proto", "src", "dst", "sport", "dport", "syn", "fin", "rst", "mark")
#: The TCP flag fields, False unless given.
_FLAGS = ("syn", "fin", "rst")

_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_ICMP = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
_WITH_PORTS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132)  # 132: SCTP
Term = Tuple[Any, ...]


def _proto(value: Union[str, int, None], w: Python) -> Union[str, int, None]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError("proto must be 'tcp', 'udp', 'icmp', an int 0-255 or None, not %s"
                        % type(value).__name__)
    if isinstance(value, str):
        name = value.lower()
        if name not in ("tcp", "udp", "icmp"):
            raise ValueError("%s %s is not known: use %s, %s, %s or a protocol number 0-255"
                             % (w.name("proto"), w.value(value), w.value("tcp"),
                                w.value("udp"), w.value("icmp")))
        return name
    if not 0 <= value <= 255:
        raise ValueError("%s must be a protocol number from 0 to 255, not %d"
                         % (w.name("proto"), value))
    return value


def _network(value: Optional[Address], field: str, w: Python) -> Optional[Network]:
    if value is None:
        return None
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return value.network  # an address with its prefix: as the str "10.0.0.1/24" is
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    if not isinstance(value, str):
        raise TypeError("%s must be an address or network as a str or ipaddress object, not %s"
                        % (field, type(value).__name__))
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("%s: %s is not an IP address or network (for example %s, %s or %s)"
                         % (w.name(field), w.value(value), w.value("127.0.0.2"),
                            w.value("10.0.0.0/8"), w.value("::1"))) from None


def _ports(value: Optional[Ports], field: str, w: Python) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    pair = value if isinstance(value, tuple) else (value, value)
    if len(pair) != 2 or any(isinstance(p, bool) or not isinstance(p, int) for p in pair):
        raise TypeError("%s must be a port (an int) or a range (low, high) of ints, not %r"
                        % (field, value))
    lo, hi = pair
    for p in pair:
        if not 1 <= p <= 65535:
            raise ValueError("%s: port %d is out of range: ports are 1 to 65535"
                             % (w.name(field), p))
    if lo > hi:
        raise ValueError("%s: the range %s is reversed: write %s"
                         % (w.name(field), w.ports(lo, hi), w.ports(hi, lo)))
    return lo, hi


def _mark(value: Union[int, Tuple[int, int], None], w: Python) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    pair = value if isinstance(value, tuple) else (value, 0xFFFFFFFF)
    if len(pair) != 2 or any(isinstance(p, bool) or not isinstance(p, int) for p in pair):
        raise TypeError("mark must be an int or a (value, mask) pair of ints, not %r"
                        % (value,))
    mark, mask = pair
    if not (0 <= mark < 2**32 and 0 < mask < 2**32):
        raise ValueError("%s: value and mask are 32-bit (value 0 to 2**32-1, mask 1 to "
                         "2**32-1), not %s" % (w.name("mark"), w.mark(mark, mask)))
    if mark & mask != mark:
        raise ValueError("%s: the value %#x has bits outside the mask %#x: write %s"
                         % (w.name("mark"), mark, mask, w.mark(mark & mask, mask)))
    if mark == 0:
        raise ValueError("%s: 0 is what every unmarked packet carries; give the marked "
                         "packets a non-zero mark (SO_MARK, iptables MARK, nft meta mark set)"
                         % w.name("mark"))
    return mark, mask


def _key(w: Python, proto: Union[str, int, None], src: Optional[Address],
         dst: Optional[Address], sport: Optional[Ports], dport: Optional[Ports], syn: bool,
         mark: Union[int, Tuple[int, int], None], fin: bool = False,
         rst: bool = False) -> Tuple[Any, ...]:
    """The checked, normalised fields of a Match; a refusal speaks as W spells."""
    p = _proto(proto, w)
    s, d = _network(src, "src", w), _network(dst, "dst", w)
    sp, dp = _ports(sport, "sport", w), _ports(dport, "dport", w)
    for name, flag in (("syn", syn), ("fin", fin), ("rst", rst)):
        if not isinstance(flag, bool):
            raise TypeError("%s must be True or False, not %s" % (name, type(flag).__name__))
    m = _mark(mark, w)
    if s is not None and d is not None and s.version != d.version:
        raise ValueError("%s and %s are of different families: a packet is IPv4 or IPv6, "
                         "never both" % (w.setting("src", str(src)),
                                         w.setting("dst", str(dst))))
    for name, flag, what in (("syn", syn, "connection attempts"),
                             ("fin", fin, "segments that close a connection"),
                             ("rst", rst, "segments that reset a connection")):
        if flag and p not in (None, "tcp", socket.IPPROTO_TCP):
            raise ValueError("%s selects TCP %s: it cannot go with %s (drop %s, or use %s)"
                             % (w.flag(name), what, w.setting("proto", proto),
                                w.name("proto"), w.setting("proto", "tcp")))
    flags = syn or fin or rst
    if (sp or dp) and not (p is None or p in ("tcp", "udp") or p in _WITH_PORTS):
        raise ValueError("ports need a protocol that has them: %s has none (use %s, %s, or "
                         "no %s for both)" % (w.setting("proto", proto),
                                              w.setting("proto", "tcp"),
                                              w.setting("proto", "udp"), w.name("proto")))
    if m is not None and (p is not None or s or d or sp or dp or flags):
        raise ValueError("%s cannot be combined with other %s: Linux 6.1's flower classifier "
                         "has no mark key and fw matches the mark alone; mark exactly the "
                         "packets to hold with your netfilter rule%s"
                         % (w.name("mark"), w.fields,
                            ", or pass %s to hold either" % w.either if w.either else ""))
    if p is None and s is None and d is None and not (sp or dp or flags) and m is None:
        raise ValueError("Match() with no field matches everything: use match=None to "
                         "hold every packet")
    return (p, s, d, sp, dp, syn, fin, rst, m)


class Match:
    """Which packets to hold; all fields given must hold for a packet to match.

    ``proto``: ``"tcp"``, ``"udp"``, ``"icmp"`` (ICMP or ICMPv6 by family) or a
    protocol number. ``src``, ``dst``: an address or network (str or
    :mod:`ipaddress` object; an interface object stands for its network); one
    pins the family, without one IPv4 and IPv6 both match. ``sport``, ``dport``: a port, or an inclusive range ``(low,
    high)``; with ``proto=None`` a port matches TCP and UDP. ``syn=True``: TCP
    segments with SYN set and ACK clear (connection attempts); ``fin=True``: TCP
    segments with FIN set (a side closing), ``rst=True``: with RST set (a reset);
    given together, all of them must be set. ``mark``: the
    packet's fwmark, an int or ``(value, mask)``, as set by ``SO_MARK``,
    iptables ``MARK`` or nftables ``meta mark set``. Immutable and hashable; copies,
    deep copies and pickles are equal to it.
    """

    __module__ = "plugqdisc"  # its public name, in reprs of the class, docs and pickles
    __slots__ = ("_key",)
    _key: Tuple[Any, ...]

    def __init__(self, *, proto: Union[str, int, None] = None, src: Optional[Address] = None,
                 dst: Optional[Address] = None, sport: Optional[Ports] = None,
                 dport: Optional[Ports] = None, syn: bool = False,
                 mark: Union[int, Tuple[int, int], None] = None, fin: bool = False,
                 rst: bool = False) -> None:
        object.__setattr__(self, "_key", _key(PYTHON, proto, src, dst, sport, dport, syn,
                                              mark, fin, rst))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Match is immutable")

    # Immutable, as a tuple: a copy is the object itself; pickle keeps the checked fields.
    def __copy__(self) -> "Match":
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Match":
        return self

    def __getstate__(self) -> Dict[str, Any]:
        return dict(zip(_FIELDS, self._key))

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # a pickle from before fin and rst has neither
        object.__setattr__(self, "_key", tuple(state.get(f, False) if f in _FLAGS
                                               else state[f] for f in _FIELDS))

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
    def fin(self) -> bool:
        return self._key[6]  # type: ignore[no-any-return]

    @property
    def rst(self) -> bool:
        return self._key[7]  # type: ignore[no-any-return]

    @property
    def mark(self) -> Optional[Tuple[int, int]]:
        return self._key[8]  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Match) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        parts = []
        for name, value in zip(_FIELDS, self._key):
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
        p, s, d, sp, dp, syn, fin, rst, m = self._key
        if m is not None:
            return [(_plugqdisc.TERM_MARK, 0, -1, None, None, None, None, 0, 0, 0, 0, False,
                     False, False, m[0], m[1])]
        pinned = s or d
        out = []
        for version in ([pinned.version] if pinned else [4, 6]):
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            if syn or fin or rst or p == "tcp":
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
                out.append((_plugqdisc.TERM_FLOWER, family, ip_proto,
                            s.network_address.packed if s else None,
                            s.netmask.packed if s else None,
                            d.network_address.packed if d else None,
                            d.netmask.packed if d else None,
                            sp[0] if sp else 0, sp[1] if sp else 0,
                            dp[0] if dp else 0, dp[1] if dp else 0, syn, fin, rst, 0, 0))
        return out


def from_options(**fields: Any) -> Match:
    """A Match from the command line's options; a refusal names them as it spells them
    (``--dport 5-10``, ``--proto tcp``)."""
    m: Match = Match.__new__(Match)
    object.__setattr__(m, "_key", _key(COMMAND_LINE, fields.get("proto"), fields.get("src"),
                                       fields.get("dst"), fields.get("sport"),
                                       fields.get("dport"), bool(fields.get("syn")),
                                       fields.get("mark"), bool(fields.get("fin")),
                                       bool(fields.get("rst"))))
    return m


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
