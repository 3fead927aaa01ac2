"""What the command line's status, release and cleanup see and do (the qdiscs of a namespace).

One dump of the namespace's qdiscs and links (``_plugqdisc.list_qdiscs``) tells
every plug qdisc apart: *plain* (anywhere on a device), *match* (the plug in
band 2 of the match tree, prio ``fffe:`` at the root) or *ingress* (the plug at
the root of ``pqifbN``, the ifb of the device with ifindex N). Releasing goes
through :class:`~plugqdisc.PlugQdisc`: a plug found here is adopted
(``guard=False``, so no guardian takes it over) and released. A dead holder's
hold is removed by the C core (``_plugqdisc.remove_hold``), which rebuilds the
hold's undo plan from its place and runs it, as a detach runs its own. Nothing
here prints: the command line owns the words.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

from . import PlugQdisc, _cli_records, _plugqdisc
from ._errors import translate
from ._cli_records import Record, Skipped
from ._plugqdisc import IFB_PREFIX, TREE_HANDLE
from ._util import ROOT, Netns, handle_text, open_netns

#: How long a released hold may take to drain before cleanup gives up on it.
DRAIN_TIMEOUT = 5.0
#: Where an ingress qdisc hangs (TC_H_INGRESS), and the handle it always has (ffff:).
INGRESS, INGRESS_HANDLE = 0xFFFFFFF1, 0xFFFF0000


class Qdisc(NamedTuple):
    ifindex: int
    kind: str
    handle: int
    parent: int
    packets: int
    bytes: int
    qlen: int
    backlog: int
    drops: int


class Plug(NamedTuple):
    """A plug qdisc, as status shows it."""

    device: str  #: the device whose packets it holds
    mode: str  #: "plain", "match" or "ingress"
    on: str  #: the device the plug qdisc is on (pqifbN for an ingress hold)
    parent: str  #: its parent there, as tc writes it ("root", "fffe:2")
    handle: str
    qlen: int
    backlog: int
    drops: int
    packets: int
    bytes: int
    holder: Optional[int]  #: pid of the living process that made it (registry), or None
    recorded: bool  #: whether the registry knows who made it


class Inventory:
    """The qdiscs and links of one namespace, as one dump found them."""

    def __init__(self, netns: Netns = None) -> None:
        self.netns = netns
        fd, own = open_netns(netns)
        try:
            qdiscs, links = _plugqdisc.list_qdiscs(fd)
        finally:
            if own:
                os.close(fd)
        self.qdiscs = [Qdisc(*q) for q in qdiscs]
        self.names: Dict[int, str] = {i: name for i, name, _ in links}
        self.index: Dict[str, int] = {name: i for i, name, _ in links}
        self.kinds: Dict[int, str] = {i: kind for i, _, kind in links}
        self.netns_id = _cli_records.netns_id(netns)
        #: Files among the records that are not records (the command line warns of each).
        self.skipped: List[Skipped] = []
        self.records = _cli_records.records(self.netns_id, self.skipped)

    def find(self, ifindex: int, kind: str, *, parent: Optional[int] = None,
             handle: Optional[int] = None) -> Optional[Qdisc]:
        for q in self.qdiscs:
            if (q.ifindex == ifindex and q.kind == kind and parent in (None, q.parent)
                    and handle in (None, q.handle)):
                return q
        return None

    def root_of(self, ifindex: int) -> Optional[Qdisc]:
        """The qdisc at the root of device IFINDEX (its egress)."""
        for q in self.qdiscs:
            if q.ifindex == ifindex and q.parent == ROOT:
                return q
        return None

    def ifb_of(self, ifindex: int) -> Optional[int]:
        """The ifindex of the ingress hold's ifb for device IFINDEX, if there is one."""
        prefix = "%s%d-" % (IFB_PREFIX, ifindex)
        for name, i in sorted(self.index.items()):
            if name.startswith(prefix) and self.kinds.get(i) == "ifb":
                return i
        return None

    def held_device(self, q: Qdisc) -> Tuple[int, str]:
        """(ifindex of the device whose packets plug Q holds, its mode)."""
        name = self.names.get(q.ifindex, "")
        dev = name[len(IFB_PREFIX):].split("-")[0]
        if (name.startswith(IFB_PREFIX) and dev.isdigit()
                and self.kinds.get(q.ifindex) == "ifb" and q.parent == ROOT):
            return int(dev), "ingress"
        if q.parent >> 16 == TREE_HANDLE >> 16 and self.find(q.ifindex, "prio", parent=ROOT,
                                                             handle=TREE_HANDLE):
            return q.ifindex, "match"
        return q.ifindex, "plain"

    def record_of(self, ifindex: int, mode: str, parent: int, handle: int
                  ) -> Optional[Record]:
        for r in self.records:
            if (r.ifindex, r.mode, r.handle) == (ifindex, mode, handle) and (
                    mode != "plain" or r.parent == parent):
                return r
        return None

    def plugs(self, device: Optional[str] = None) -> List[Plug]:
        """Every plug qdisc (those holding DEVICE's packets, if given)."""
        out = []
        for q in self.qdiscs:
            if q.kind != "plug":
                continue
            ifindex, mode = self.held_device(q)
            held = self.names.get(ifindex, "if%d" % ifindex)
            if device is not None and held != device:
                continue
            rec = self.record_of(ifindex, mode, q.parent, q.handle)
            out.append(Plug(held, mode, self.names.get(q.ifindex, ""), handle_text(q.parent),
                            handle_text(q.handle), q.qlen, q.backlog, q.drops, q.packets,
                            q.bytes, rec.pid if rec and rec.alive else None, rec is not None))
        return out

    def unrecorded(self, device: Optional[str] = None) -> List[str]:
        """Match trees and ingress ifbs that look like plugqdisc's but have no record (so
        nobody can tell whether their holder lives): cleanup leaves them."""
        out = []
        for q in self.qdiscs:
            name = self.names.get(q.ifindex, "")
            if device not in (None, name):
                continue
            if (q.kind == "prio" and q.handle == TREE_HANDLE and q.parent == ROOT
                    and not any(r.ifindex == q.ifindex and r.mode == "match"
                                for r in self.records)):
                out.append("the match tree (prio %s) on %s" % (handle_text(TREE_HANDLE), name))
        for i, name in self.names.items():
            if not (name.startswith(IFB_PREFIX) and self.kinds.get(i) == "ifb"):
                continue
            held = name[len(IFB_PREFIX):]
            if not held.isdigit() or device not in (None, self.names.get(int(held))):
                continue
            if not any(r.ifindex == int(held) and r.mode == "ingress" for r in self.records):
                out.append("the ingress ifb %s" % name)
        return out


def _adopt(on: str, parent: str, handle: str, netns: Netns) -> PlugQdisc:
    """The plug qdisc already at PARENT of ON with HANDLE, adopted (nothing changed)."""
    return PlugQdisc(on, parent=parent, handle=handle, netns=netns, guard=False).attach()


def release(plug: Plug, netns: Netns) -> None:
    """Release what PLUG holds (it stays, passing)."""
    q = _adopt(plug.on, plug.parent, plug.handle, netns)
    try:
        q.release()
    finally:
        q.close()


class EgressBusy(Exception):
    """An ingress hold cannot be removed now: the device's egress holds packets, which
    removing its ingress qdisc would make the kernel drop."""

    def __init__(self, device: str, held: int) -> None:
        super().__init__(device, held)
        self.device, self.held = device, held


#: The C core's code for each mode of hold.
_MODES = {"plain": _plugqdisc.MODE_PLAIN, "match": _plugqdisc.MODE_MATCH,
          "ingress": _plugqdisc.MODE_INGRESS}


def remove(rec: Record, inv: Inventory) -> bool:
    """Release, drain and remove the hold that REC names (its holder is dead), with the
    plan a detach runs, rebuilt by the C core from what the kernel shows. False if nothing
    of it is left to remove."""
    device = inv.names.get(rec.ifindex)
    if device is None:
        return False
    if rec.mode == "plain":
        there = inv.find(rec.ifindex, "plug", parent=rec.parent, handle=rec.handle)
    elif rec.mode == "match":
        there = inv.find(rec.ifindex, "prio", parent=ROOT, handle=TREE_HANDLE)
    else:
        ifb = inv.ifb_of(rec.ifindex)
        there = inv.find(ifb, "plug", parent=ROOT, handle=rec.handle) if ifb else None
        # What the guardian (or a detach) leaves when the egress held: the ingress qdisc
        # alone, its filters flushed and the ifb gone. The record says it is ours.
        bare = None if ifb else inv.find(rec.ifindex, "ingress", parent=INGRESS,
                                         handle=INGRESS_HANDLE)
        # Removing the ingress qdisc makes the kernel purge the device's egress queues:
        # while they hold, leave the whole hold (released) for a later cleanup.
        egress = inv.root_of(rec.ifindex)
        if (there or bare) is not None and egress is not None and egress.qlen:
            if ifb:
                _release_only(inv.names[ifb], rec.handle, inv.netns)
            raise EgressBusy(device, egress.qlen)
        there = there or bare
    if there is None:
        return False
    fd, own = open_netns(inv.netns)
    try:
        _plugqdisc.remove_hold(fd, rec.ifindex, _MODES[rec.mode], rec.parent, rec.handle,
                               int(DRAIN_TIMEOUT * 1000))
    except OSError as e:
        if e.errno == errno.EBUSY and getattr(e, "step", "") == "undo":
            raise EgressBusy(device, int(getattr(e, "held", 0))) from None
        raise translate(e, "cleanup", "the %s hold on %r" % (rec.mode, device),
                        parent=handle_text(rec.parent), handle=handle_text(rec.handle),
                        ifindex=rec.ifindex, ingress=rec.mode == "ingress") from None
    finally:
        if own:
            os.close(fd)
    return True


def _release_only(on: str, handle: int, netns: Netns) -> None:
    """Release the plug at the root of ON with HANDLE (it stays, passing)."""
    q = _adopt(on, "root", handle_text(handle), netns)
    try:
        q.release()
    finally:
        q.close()
