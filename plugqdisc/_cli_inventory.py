"""What the command line's status, release and cleanup see and do (the qdiscs of a namespace).

One dump of the namespace's qdiscs and links (``_plugqdisc.list_qdiscs``) tells
every plug qdisc apart: *plain* (anywhere on a device), *match* (a selective
hold's plug, in band k = 2..16 of the prio ``fffe:`` that the device's selective
holds share at its root) or *ingress* (an ingress hold's plug, at the root of its
own ifb ``pqifbN-n``, N the held device's ifindex; ``pqifbN`` before several holds
per device). The records (``_cli_records``) say which hold is whose. Releasing goes
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
#: The bands of the shared prio fffe: that selective holds' plugs are in (fffe:1 passes).
FIRST_BAND, LAST_BAND = 2, 16


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
    """A plug qdisc (one hold's, or a plain one), as status shows it."""

    device: str  #: the device whose packets it holds
    mode: str  #: "plain", "match" or "ingress"
    on: str  #: the device the plug qdisc is on (pqifbN-n for an ingress hold)
    parent: str  #: its parent there, as tc writes it ("root", "fffe:2")
    handle: str
    band: int  #: a selective hold's band k (parent fffe:k); an ingress hold's ifb n; else 0
    ifb: str  #: an ingress hold's ifb device ("" otherwise)
    match: str  #: what it selects, as its record says ("" for a plain plug, or no record)
    qlen: int
    backlog: int
    drops: int
    packets: int
    bytes: int
    holder: Optional[int]  #: pid of the process that made it (its record), or None
    alive: Optional[bool]  #: whether that process still runs (None: no record)
    recorded: bool  #: whether the records say who made it
    #: the living processes that hold it, as their records say (several for a plain plug
    #: that one process made and others adopted); empty when none is known to
    users: List[int]


def ifb_name(name: str) -> Optional[Tuple[int, int]]:
    """(ifindex of the held device, n) if NAME is the name of an ingress hold's ifb:
    pqifb<ifindex>-<n>, or pqifb<ifindex> (n 0: made before several holds per device)."""
    if not name.startswith(IFB_PREFIX):
        return None
    held, sep, n = name[len(IFB_PREFIX):].partition("-")
    if not held.isdigit() or (sep and not n.isdigit()):
        return None
    return int(held), int(n) if sep else 0


def in_band(parent: int) -> int:
    """The band k of a selective hold's plug whose parent is PARENT (class fffe:k), or 0."""
    k = parent & 0xFFFF
    return k if parent & 0xFFFF0000 == TREE_HANDLE and FIRST_BAND <= k <= LAST_BAND else 0


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

    def ifbs_of(self, ifindex: int) -> List[int]:
        """The ifindexes of the ingress holds' ifbs of device IFINDEX."""
        return [i for i, name in self.names.items() if self.kinds.get(i) == "ifb"
                and (ifb_name(name) or (0, 0))[0] == ifindex]

    def held_device(self, q: Qdisc) -> Tuple[int, str, int]:
        """(ifindex of the device whose packets plug Q holds, its mode, its band or ifb
        number)."""
        ifb = ifb_name(self.names.get(q.ifindex, ""))
        if ifb is not None and self.kinds.get(q.ifindex) == "ifb" and q.parent == ROOT:
            return ifb[0], "ingress", ifb[1]
        band = in_band(q.parent)
        if band and self.find(q.ifindex, "prio", parent=ROOT, handle=TREE_HANDLE):
            return q.ifindex, "match", band
        return q.ifindex, "plain", 0

    def records_of(self, ifindex: int, mode: str, on: str, parent: int, handle: int
                   ) -> List[Record]:
        """The records that name the plug with HANDLE at PARENT of ON (holding the packets
        of IFINDEX in MODE): one for a hold; for a plain plug, one per process that
        recorded it. The made ones first."""
        out = []
        for r in self.records:
            if (r.ifindex, r.mode, r.handle) != (ifindex, mode, handle):
                continue
            if mode == "plain" and r.parent != parent:
                continue
            if mode == "match" and r.parent not in (0, parent):
                continue  # a record without its band yet (attaching) may name it
            if mode == "ingress" and r.ifb not in ("", on):
                continue
            out.append(r)
        return sorted(out, key=lambda r: r.state != "made")

    def record_of(self, ifindex: int, mode: str, parent: int, handle: int
                  ) -> Optional[Record]:
        found = self.records_of(ifindex, mode, "", parent, handle)
        return found[0] if found else None

    def plugs(self, device: Optional[str] = None, handle: Optional[int] = None
              ) -> List[Plug]:
        """Every plug qdisc (those holding DEVICE's packets, and with HANDLE, if given)."""
        out = []
        for q in self.qdiscs:
            if q.kind != "plug" or handle not in (None, q.handle):
                continue
            ifindex, mode, band = self.held_device(q)
            held = self.names.get(ifindex, "if%d" % ifindex)
            if device is not None and held != device:
                continue
            on = self.names.get(q.ifindex, "")
            recs = self.records_of(ifindex, mode, on, q.parent, q.handle)
            rec = recs[0] if recs else None
            users = sorted({r.pid for r in recs if r.alive})
            out.append(Plug(held, mode, on, handle_text(q.parent), handle_text(q.handle),
                            band, on if mode == "ingress" else "",
                            rec.match if rec else "", q.qlen, q.backlog, q.drops,
                            q.packets, q.bytes, rec.pid if rec else None,
                            rec.alive if rec else None, rec is not None, users))
        return out

    def unrecorded(self, device: Optional[str] = None) -> List[str]:
        """Selective holds, match trees and ingress ifbs that look like plugqdisc's but
        have no record (so nobody can tell whether their holder lives): cleanup leaves
        them."""
        out = []
        for q in self.qdiscs:
            name = self.names.get(q.ifindex, "")
            if device not in (None, name):
                continue
            if q.kind == "plug" and self.held_device(q)[1] == "match":
                if not self.records_of(q.ifindex, "match", name, q.parent, q.handle):
                    out.append("the selective hold in band %s (plug %s) on %s" % (
                        handle_text(q.parent), handle_text(q.handle), name))
            elif (q.kind == "prio" and q.handle == TREE_HANDLE and q.parent == ROOT
                  and not any(in_band(p.parent) for p in self.qdiscs
                              if p.ifindex == q.ifindex and p.kind == "plug")
                  and not any(r.ifindex == q.ifindex and r.mode == "match"
                              for r in self.records)):
                out.append("the match tree (prio %s) on %s" % (handle_text(TREE_HANDLE), name))
        for i, name in self.names.items():
            ifb = ifb_name(name)
            if ifb is None or self.kinds.get(i) != "ifb":
                continue
            if device not in (None, self.names.get(ifb[0])):
                continue
            plug = self.find(i, "plug", parent=ROOT)
            if not any(r.ifindex == ifb[0] and r.mode == "ingress" and (
                    r.ifb == name or (not r.ifb and plug is not None
                                      and r.handle == plug.handle))
                       for r in self.records):
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


def others_holding(rec: Record, inv: Inventory) -> List[int]:
    """The living processes, REC's holder aside, whose records name the plain plug REC
    names: they hold it too (one made it, the others adopted it)."""
    if rec.mode != "plain":
        return []
    return sorted({r.pid for r in inv.records_of(rec.ifindex, "plain", "", rec.parent,
                                                  rec.handle)
                   if r.alive and r.path != rec.path})


def _the_plug(rec: Record, inv: Inventory) -> Optional[Qdisc]:
    """The plug qdisc of the selective hold REC names, if it is still there."""
    for q in inv.qdiscs:
        if (q.ifindex == rec.ifindex and q.kind == "plug" and q.handle == rec.handle
                and in_band(q.parent) and rec.parent in (0, q.parent)):
            return q
    return None


def _ingress_place(rec: Record, inv: Inventory) -> Tuple[Optional[int], Optional[Qdisc]]:
    """(ifindex of the ifb of the ingress hold REC names, its plug), if still there."""
    for i in inv.ifbs_of(rec.ifindex):
        if rec.ifb not in ("", inv.names[i]):
            continue
        plug = inv.find(i, "plug", parent=ROOT, handle=rec.handle)
        if plug is not None or rec.ifb:
            return i, plug
    return None, None


#: What remove() did: the hold is gone; nothing of it was left; a plain plug that other
#: living processes hold with stays (they share it: the last one out removes it).
REMOVED, NOTHING, SHARED = "removed", "nothing", "shared"


def remove(rec: Record, inv: Inventory) -> str:
    """Release, drain and remove the hold that REC names (its holder is dead), with the
    plan a detach runs, rebuilt by the C core from what the kernel shows: that hold
    only; the other holds on the device, and what they share, stay (the prio fffe: and
    the ingress qdisc go with the last hold). REMOVED, NOTHING or SHARED."""
    device = inv.names.get(rec.ifindex)
    if device is None:
        return NOTHING
    if rec.mode == "plain":
        there = inv.find(rec.ifindex, "plug", parent=rec.parent, handle=rec.handle)
    elif rec.mode == "match":
        # Its plug gone, what the holds shared may be left with none in it: the C core's
        # plan for the hold removes that (and never what another hold uses).
        there = _the_plug(rec, inv) or (None if _tree_plugs(inv, rec.ifindex) else inv.find(
            rec.ifindex, "prio", parent=ROOT, handle=TREE_HANDLE))
    else:
        ifb, there = _ingress_place(rec, inv)
        last = not [i for i in inv.ifbs_of(rec.ifindex) if i != ifb]
        # What the guardian (or a detach) leaves when the egress held and the hold was
        # the last at ingress: the ingress qdisc alone, its filters flushed and the ifb
        # gone. The record says it is ours.
        bare = None if ifb or not last else inv.find(rec.ifindex, "ingress", parent=INGRESS,
                                                     handle=INGRESS_HANDLE)
        # Removing the ingress qdisc (with the last ingress hold) makes the kernel purge
        # the device's egress queues: while they hold, leave the whole hold (released)
        # for a later cleanup.
        if last and (there or bare) is not None and _held_at_egress(inv, rec.ifindex):
            if ifb and there is not None:
                _release_only(inv.names[ifb], rec.handle, inv.netns)
            raise EgressBusy(device, _held_at_egress(inv, rec.ifindex))
        there = there or bare
    if there is None:
        return NOTHING
    parent = rec.parent if rec.mode != "match" else there.parent
    fd, own = open_netns(inv.netns)
    try:
        _plugqdisc.remove_hold(fd, rec.ifindex, _MODES[rec.mode], parent, rec.handle,
                               int(DRAIN_TIMEOUT * 1000))
    except OSError as e:
        if e.errno == errno.EBUSY and getattr(e, "step", "") == "undo":
            raise EgressBusy(device, int(getattr(e, "held", 0))) from None
        raise translate(e, "cleanup", "the %s hold on %r" % (rec.mode, device),
                        parent=handle_text(parent), handle=handle_text(rec.handle),
                        ifindex=rec.ifindex, ingress=rec.mode == "ingress") from None
    finally:
        if own:
            os.close(fd)
    if rec.mode == "plain" and Inventory(inv.netns).find(
            rec.ifindex, "plug", parent=rec.parent, handle=rec.handle) is not None:
        return SHARED  # the C core found a living user of it: nothing was undone
    return REMOVED


def _tree_plugs(inv: Inventory, ifindex: int) -> List[Qdisc]:
    """The plugs of the selective holds on device IFINDEX (in the bands of fffe:)."""
    return [q for q in inv.qdiscs
            if q.ifindex == ifindex and q.kind == "plug" and in_band(q.parent)]


def _held_at_egress(inv: Inventory, ifindex: int) -> int:
    """How many packets the qdiscs at device IFINDEX's egress hold now (the root's qlen
    counts its children's: a prio's is the sum of its bands')."""
    root = inv.root_of(ifindex)
    return root.qlen if root is not None else 0


def _release_only(on: str, handle: int, netns: Netns) -> None:
    """Release the plug at the root of ON with HANDLE (it stays, passing)."""
    q = _adopt(on, "root", handle_text(handle), netns)
    try:
        q.release()
    finally:
        q.close()
