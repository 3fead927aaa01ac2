"""Records for the command line: which holds plugqdisc made, and which process made them.

Nothing in the kernel says who made a qdisc. So when a :class:`PlugQdisc` attach
*creates* its plug (or its selective hold's band, or its ingress ifb), it writes one
small record under :data:`RUN_DIR`, one per hold, named by the hold before anything
is made (network namespace cookie, device, mode, then the holder's pid, start time
and a serial of its own: several holds share a device, and a selective hold's plug
handle may be chosen only by the attach) and holding the creator's pid and start
time; once the attach has made the hold, the record gets its handle, band, ifb and
match. A successful detach removes it. ``plugqdisc cleanup`` removes only what a record
names and whose creator is no longer alive (the pid is gone, or belongs to a
process started later). A plug qdisc without a record (made by ``tc``, or by a
holder that could not write here) is never removed by cleanup.

Best effort: where the folder cannot be written (EACCES: not root; EROFS: a
read-only ``/run``), attach goes on without a record, and the process stops
trying; any other failure (a full ``/run``, a namespace it may not enter) costs
that one record only. Importing this module touches
nothing; the first attach that records reads this process's start time once.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import stat
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from . import _plugqdisc
from ._util import ROOT, open_netns

#: Where the records live (a tmpfs: they vanish with the boot, as the qdiscs do).
RUN_DIR = "/run/plugqdisc"
#: getsockopt(SOL_SOCKET, SO_NETNS_COOKIE) (Linux 5.14): the namespace's 64-bit cookie.
SO_NETNS_COOKIE = 71
_THREAD_NS = "/proc/thread-self/ns/net"


class Record(NamedTuple):
    """One hold that plugqdisc made: where, and who made it."""

    path: str
    netns: str  #: its network namespace (netns_id)
    ifindex: int  #: the held device
    device: str
    mode: str  #: "plain", "match" or "ingress"
    parent: int  #: where the plug hangs on the device it is on (plain: as given)
    handle: int
    pid: int
    start: int  #: the creator's start time, in clock ticks after boot
    #: "attaching" (written before attach made anything; its guardian did not have the
    #: hold's plan yet if the holder is gone and the record is not) or "made"
    state: str = "made"
    #: a selective hold's band k (its plug is in class fffe:k); an ingress hold's ifb
    #: number n; 0 for a plain hold, before attach, or in a record of the older format
    band: int = 0
    ifb: str = ""  #: an ingress hold's ifb device ("" otherwise, or not known yet)
    match: str = ""  #: what a selective hold selects, in Match's words ("" for all)

    @property
    def alive(self) -> bool:
        """Whether the process that made it still runs."""
        return start_time(self.pid) == self.start


_me: Optional[Tuple[int, int]] = None  # (pid, start time) of this process, once read
_serial = itertools.count(1)  # this process's holds, numbered (next() is atomic)
_unwritable = False  # RUN_DIR can never be written here: do not try on every attach
#: The errors that say so (EPERM is not one: setns gives it for a namespace, not RUN_DIR).
_NEVER_WRITABLE = (errno.EACCES, errno.EROFS)


def _forget_me() -> None:
    global _me, _serial
    _me = None
    _serial = itertools.count(1)


os.register_at_fork(after_in_child=_forget_me)


def start_time(pid: int) -> int:
    """When process PID started (clock ticks after boot; field 22 of /proc/PID/stat),
    or -1 if there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return -1
    # The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def place_name(netns: str, ifindex: int, mode: str, parent: int, handle: int) -> str:
    """The name of a record of the older format (one hold per place); still read."""
    return "ns%s-if%d-%s-%08x-%08x" % (netns, ifindex, mode, parent, handle)


def hold_name(netns: str, ifindex: int, mode: str, pid: int, start: int, serial: int) -> str:
    """The name of one hold's record: its holder (pid and start time: unique for the
    boot, a reused pid has another start) and the holder's serial number for it."""
    return "ns%s-if%d-%s-p%d-%d-%d" % (netns, ifindex, mode, pid, start, serial)


def mode_of(q: Any) -> Tuple[str, int]:
    """(mode, the plug's parent on the device it is on) of the PlugQdisc Q: a selective
    hold's is its band's class (fffe:k), 0 until its attach has chosen the band."""
    if q.direction == "ingress":
        return "ingress", ROOT
    if q.match is not None:
        return "match", (_plugqdisc.TREE_HANDLE | q.band) if q.band else 0
    return "plain", int(_plugqdisc.parse_handle(q.parent) or 0)


def match_text(match: Any) -> str:
    """What MATCH selects, in Match's words: "proto='udp', dport=5001"; a list of
    matches joined by " or "; "" for None (everything)."""
    if match is None:
        return ""
    if isinstance(match, (list, tuple)):
        return " or ".join("(%s)" % match_text(m) for m in match) if len(match) > 1 \
            else match_text(match[0]) if match else ""
    text = repr(match)
    return text[len("Match("):-1] if text.startswith("Match(") and text.endswith(")") \
        else text


def _cookie_here() -> str:
    """This thread's namespace: its cookie (unique for the boot, never reused), or, on a
    kernel before 5.14, its inode (reused once the namespace is gone)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            return "c%d" % struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE,
                                                           8))[0]
        except OSError:
            return "i%d" % os.stat(_THREAD_NS).st_ino


def netns_id(netns: Any) -> str:
    """The identity of the namespace NETNS (as PlugQdisc takes it; None: this thread's).
    Raises OSError when it cannot be entered."""
    if netns is None:
        return _cookie_here()
    from .netns import CLONE_NEWNET, setns
    fd, own = open_netns(netns)
    saved = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(saved).st_ino == os.fstat(fd).st_ino:
            return _cookie_here()  # already there: no setns (it needs CAP_SYS_ADMIN)
        setns(fd, CLONE_NEWNET)
        try:
            return _cookie_here()
        finally:
            setns(saved, CLONE_NEWNET)
    finally:
        os.close(saved)
        if own:
            os.close(fd)


def _body(q: Any, ns: str, state: str) -> Dict[str, Any]:
    """What a record of Q says but its holder (Q connected; its handle, band and ifb
    once attached)."""
    mode, parent = mode_of(q)
    return {"netns": ns, "ifindex": q.ifindex, "device": q.device, "mode": mode,
            "parent": parent, "handle": int(q.handle_id),
            "band": int(q.band), "ifb": str(q.ifb),
            "match": _shortened(match_text(q.match)), "state": state}


#: The longest match text a record keeps (a record must stay under _MAX_RECORD).
_MAX_MATCH_TEXT = 1024


def _shortened(text: str) -> str:
    return text if len(text) <= _MAX_MATCH_TEXT else text[:_MAX_MATCH_TEXT - 3] + "..."


def record(q: Any) -> Optional[str]:
    """Before Q's attach (Q connected): write the record of the hold it is about to make,
    under a name of its own (Q.handle may still be "": chosen by the attach). The
    record's path, or None (nowhere to write). The caller forgets it if the attach
    fails or adopts what is there; the C core's plan unlinks it with the hold."""
    global _me, _unwritable
    if _unwritable:
        return None
    try:
        if _me is None:
            pid = os.getpid()
            _me = (pid, start_time(pid))
        ns = netns_id(q.netns)
        d = dict(_body(q, ns, "attaching"), pid=_me[0], start=_me[1])
        path = os.path.join(RUN_DIR, hold_name(ns, q.ifindex, d["mode"], _me[0], _me[1],
                                               next(_serial)))
        body = json.dumps(d)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            data = body.encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write", path)
        except OSError:
            forget(path)  # a half record would only confuse cleanup
            raise
        finally:
            os.close(fd)
        return path
    except OSError as e:
        # Best effort: holding matters more than the record. Only a folder this process
        # may never write (not root, a read-only /run) turns records off for good;
        # anything else (a full /run, a namespace it cannot enter) costs this record only.
        if e.errno in _NEVER_WRITABLE:
            _unwritable = True
        return None


def made(path: str, q: Any) -> None:
    """After the attach that wrote the record at PATH made its hold Q: say so, with what
    the attach chose (the plug's handle, the band, the ifb) and the match. The file is
    replaced whole, under the same name, which the hold's plan unlinks. Best effort: a
    record left "attaching" is only ever dropped by cleanup, never acted upon."""
    try:
        with open(path) as f:
            d = json.load(f)
        d.update(_body(q, d["netns"], "made"))
        # a name records() does not read (it reads ns<cookie>-...), in the same folder
        tmp = os.path.join(os.path.dirname(path), ".new-" + os.path.basename(path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, json.dumps(d).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except (OSError, ValueError, KeyError, TypeError):
        pass


def forget(path: Optional[str]) -> None:
    """Remove a record (after a successful detach, or a cleanup); None does nothing."""
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


class Skipped(NamedTuple):
    """A file among the records that is not one (the command line says so, and goes on)."""

    path: str
    why: str  #: what is wrong with it, as a fact: "a directory", "not JSON", "pid: ..."


#: The most a record can weigh; one plugqdisc writes is about 200 bytes.
_MAX_RECORD = 4096
_MODES = ("plain", "match", "ingress")
_MAX_BAND = 16  # a prio qdisc has at most 16 bands (TCQ_PRIO_BANDS)
#: The fields of a record: (name, type, smallest, largest) for the numbers.
_INTS = (("ifindex", 1, 2**31 - 1), ("parent", 0, 2**32 - 1), ("handle", 0, 2**32 - 1),
         ("pid", 1, 2**22), ("start", 0, 2**63 - 1))


class _Bad(Exception):
    """Why a file is not a record."""


def _read(path: str) -> Optional[bytes]:
    """The bytes of the record file PATH (None: empty, being written). Raises _Bad."""
    try:
        # O_NONBLOCK: a FIFO in its place must not hang status; O_NOFOLLOW: nor a link.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _Bad("cannot be read: %s" % (e.strerror or e)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _Bad("a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise _Bad("not a regular file")
        try:
            data = os.read(fd, _MAX_RECORD + 1)
        except OSError as e:
            raise _Bad("cannot be read: %s" % (e.strerror or e)) from None
    finally:
        os.close(fd)
    if len(data) > _MAX_RECORD:
        raise _Bad("larger than a record (%d bytes at most)" % _MAX_RECORD)
    return data or None


def _parse(path: str, data: bytes, netns: str) -> Record:
    """The record in DATA; raises _Bad saying what is wrong."""
    try:
        d = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Bad("not text (binary data)") from None
    except RecursionError:
        raise _Bad("JSON nested too deeply") from None
    except ValueError:
        raise _Bad("not JSON") from None
    if not isinstance(d, dict):
        raise _Bad("JSON, but not an object")
    for key in ("netns", "device", "mode"):
        if not isinstance(d.get(key), str):
            raise _Bad("%s: missing, or not a string" % key)
    if d["mode"] not in _MODES:
        raise _Bad("mode: %r is none of %s" % (d["mode"], ", ".join(_MODES)))
    if d["netns"] != netns:
        raise _Bad("netns: %r, but its name says %r" % (d["netns"], netns))
    for key, low, high in _INTS:
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad("%s: missing, or not an integer (%s)" % (key, type(v).__name__))
        if not low <= v <= high:
            raise _Bad("%s: %d is out of range (%d to %d)" % (key, v, low, high))
    state = d.get("state", "made")
    if state not in ("attaching", "made"):
        raise _Bad("state: %r is neither attaching nor made" % (state,))
    # Added with several holds per device; a record of the older format has none of them.
    band = d.get("band", 0)
    if isinstance(band, bool) or not isinstance(band, int) or not 0 <= band <= _MAX_BAND:
        raise _Bad("band: %r is not a band (0 to %d)" % (band, _MAX_BAND))
    for key in ("ifb", "match"):
        if not isinstance(d.get(key, ""), str):
            raise _Bad("%s: not a string" % key)
    return Record(path, d["netns"], d["ifindex"], d["device"], d["mode"], d["parent"],
                  d["handle"], d["pid"], d["start"], state, band, d.get("ifb", ""),
                  d.get("match", ""))


def records(netns: str, skipped: Optional[List[Skipped]] = None) -> List[Record]:
    """The records of the namespace NETNS (a netns_id). A file that is not a record (corrupt,
    unreadable, a directory, ...) is left out, and added to SKIPPED if given; an empty one
    (being written) is left out silently. Never raises for a bad file."""
    try:
        names = os.listdir(RUN_DIR)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if not name.startswith("ns%s-" % netns):
            continue
        path = os.path.join(RUN_DIR, name)
        try:
            data = _read(path)
            if data is None:
                continue
            out.append(_parse(path, data, netns))
        except _Bad as e:
            if skipped is not None:
                skipped.append(Skipped(path, str(e)))
    return out
