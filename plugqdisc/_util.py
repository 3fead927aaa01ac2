"""Small helpers the package's modules share; each does its one job here, once.

Standard library only, and nothing runs at import: tc handles as text, exception
notes, durations in seconds, and a network namespace given by name, path or fd.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple, Union

#: A network namespace as the API takes it: a name as `ip netns` knows it, a path
#: (anything with a '/'), an open file descriptor, or None for the caller's own.
Netns = Union[str, "os.PathLike[str]", int, None]

#: tc's handle of a device's root (TC_H_ROOT).
ROOT = 0xFFFFFFFF
#: Where `ip netns` keeps named namespaces.
NETNS_DIR = "/run/netns"


def handle_text(h: int) -> str:
    """A tc handle as tc writes it: ``root``, ``1:``, ``1:2``."""
    if h == ROOT:
        return "root"
    major, minor = h >> 16, h & 0xFFFF
    return "%x:%x" % (major, minor) if minor else "%x:" % major


def add_note(exc: BaseException, note: str) -> None:
    """BaseException.add_note, also before Python 3.11 (where it only stores it)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python < 3.11
        notes = list(getattr(exc, "__notes__", []))
        notes.append(note)
        setattr(exc, "__notes__", notes)


def seconds(value: Optional[float], name: str, *, zero: bool = True) -> Optional[float]:
    """A duration in seconds, checked: None, inf or an int beyond any float mean no
    limit (None is returned); NaN, negatives (and 0 unless ZERO) and non-numbers are
    refused with a message naming NAME."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds or None, not %s"
                        % (name, type(value).__name__))
    try:
        v = float(value)
    except OverflowError:
        return None  # an int beyond any float: no limit, as inf
    if math.isnan(v) or v < 0 or (v == 0 and not zero):
        raise ValueError("%s must be a number of seconds %s (None or inf: no limit), not %r"
                         % (name, ">= 0" if zero else "> 0", value))
    return None if math.isinf(v) else v


def netns_path(netns: Union[str, "os.PathLike[str]"]) -> str:
    """The file of a namespace given by name (under /run/netns) or path (with a '/')."""
    path = os.fspath(netns)
    return path if "/" in path else os.path.join(NETNS_DIR, path)


def open_netns(netns: Netns) -> Tuple[int, bool]:
    """(an fd of the namespace NETNS, -1 for None: the calling thread's own; whether it
    was opened here, and so is the caller's to close). A name or path that is no
    namespace raises FileNotFoundError saying what to pass."""
    if netns is None:
        return -1, False
    if isinstance(netns, int):
        return netns, False
    path = netns_path(netns)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), True
    except FileNotFoundError as e:
        raise FileNotFoundError(
            e.errno, "no network namespace at %s: `ip netns list` names them (`ip netns add "
            "NAME` makes one); or pass a path such as /proc/PID/ns/net, or an open fd"
            % path, path) from None
