"""The exceptions, and the one place where a failure's facts become words.

The C core reports facts: the errno, the step it was at (``create``,
``find_device``, ...), the kernel's extended-ack text verbatim, and what it found
in the way. :func:`translate` picks the exception class from (errno, step) and
writes a message that names the device, the step in the user's words, the
kernel's text, and what to do. Nothing here matches on message text.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Dict, Optional, Tuple, Type

from ._util import handle_text
from ._words import PYTHON, Python

LAB_HINT = "python -m plugqdisc.lab -- CMD (a User-Mode Linux kernel with sch_plug)"


class PlugQdiscError(OSError):
    """A kernel or netlink error from the plug qdisc; ``errno`` is set.

    ``step`` names what the library was doing (``"create"``, ``"find_device"``,
    ...), ``kernel_message`` is the kernel's own text ("" if it gave none), and
    ``device`` the device's name.
    """

    __module__ = "plugqdisc"  # as users import it, in tracebacks and pickles

    step: str = ""
    kernel_message: str = ""
    device: str = ""


class KernelSupportError(PlugQdiscError):
    """The running kernel lacks a module the hold needs: the plug qdisc (``sch_plug``),
    or for a selective or ingress hold ``sch_prio``, ``cls_flower``, ``cls_fw``,
    ``cls_matchall``, ``ifb``, ``sch_ingress`` or ``act_mirred``. The message names the
    module, how to load it, and the lab."""

    __module__ = "plugqdisc"  # as users import it, in tracebacks and pickles


class DeviceNotFoundError(PlugQdiscError):
    """No network device of that name or index (or it vanished)."""

    __module__ = "plugqdisc"  # as users import it, in tracebacks and pickles


class ParentNotFoundError(PlugQdiscError):
    """The parent the qdisc was to hang from (a class like ``1:1``) is not there."""

    __module__ = "plugqdisc"  # as users import it, in tracebacks and pickles


class PlugQdiscPermissionError(PlugQdiscError, PermissionError):
    """The caller lacks a capability: ``CAP_NET_ADMIN`` in the device's network
    namespace, or ``CAP_SYS_ADMIN`` to enter another namespace."""

    __module__ = "plugqdisc"  # as users import it, in tracebacks and pickles


# What each step of the C core (_plugqdisc.STEPS) is, in the user's words; "" for the
# steps whose message needs none (tests/test_api.py lists them, with the reason).
_STEP_WORDS: Dict[str, str] = {
    "none": "",
    "check_arguments": "checking the arguments",
    "not_attached": "",
    "enter_netns": "entering the network namespace",
    "open_socket": "opening a netlink socket",
    "find_device": "looking up the device",
    "inspect": "reading which qdisc is at {parent}",
    "occupied": "looking at {place}",
    "find_parent": "finding the parent {parent}",
    "create": "creating the plug qdisc",
    "adopt": "setting the limit of the plug qdisc already there",
    "remove_other": "removing the {found} qdisc in the way (replace=True)",
    "change": "telling the plug qdisc to {action}",
    "read_stats": "reading the plug qdisc's counters",
    "drain": "waiting for the released packets to leave",
    "delete": "deleting the plug qdisc",
    "make_tree": "creating the prio qdisc that sorts what to hold",
    "make_ifb": "creating the ifb device that holds what arrives",
    "make_ingress": "creating the ingress qdisc",
    "add_filter": "adding the {found} filter that selects what to hold",
    "undo": "removing what the hold added",
    "guard": "handing the hold to its guardian (the process that releases it if this one dies)",
    "dump": "listing the qdiscs and links",
    "lock": "taking the device's lock (holds on one device take turns)",
    "full": "finding a free place for the hold",
    "in_use": "looking at {place}",
    "handle_taken": "choosing the plug's handle",
    "share": "joining the other users of the plug qdisc",
}

#: The kinds of qdisc that sit at a device's ingress, and nowhere else.
_INGRESS_KINDS = ("ingress", "clsact")

# A kind of qdisc, classifier or device that a hold needs, and the module that brings it.
_MODULES = {"prio": "sch_prio", "ingress": "sch_ingress", "flower": "cls_flower",
            "fw": "cls_fw", "matchall": "cls_matchall", "ifb": "ifb"}


def _taken_handle(e: OSError, ctx: Dict[str, str], w: Python, netns: Any) -> Optional[str]:
    """Advice when the kernel refused to create the plug because its handle is another
    qdisc's on the device ("Cannot move an existing qdisc to a different parent"), naming
    a free handle; None if the handle is not taken (one dump of the device's qdiscs)."""
    from . import _plugqdisc
    from ._cli_inventory import Inventory
    handle = _plugqdisc.parse_handle(ctx["handle"])
    parent = _plugqdisc.parse_handle(ctx["parent"])
    try:
        inv = Inventory(netns)
    except OSError:
        return None
    ifindex = inv.index.get(ctx["name"])
    if ifindex is None or handle is None:
        return None
    mine = [q for q in inv.qdiscs if q.ifindex == ifindex]
    owner = next((q for q in mine if q.handle == handle), None)
    if owner is None:
        return None
    # the tree's prio and the ingress qdisc (ffff:) take theirs when a hold is made
    used = {q.handle >> 16 for q in mine} | {_plugqdisc.TREE_HANDLE >> 16, 0xFFFF}
    free = next(m for m in range(1, 0x10000) if m not in used)
    if parent is not None and parent >> 16 == handle >> 16 and parent & 0xFFFF:
        whose = "the %s qdisc that class %s belongs to" % (owner.kind, ctx["parent"])
    else:
        whose = "a %s qdisc at %s" % (owner.kind, handle_text(owner.parent))
    return ("handle %s is taken on %s by %s, and a handle names one qdisc on a device: give "
            "the plug a free one, such as %s" % (ctx["handle"], ctx["device"], whose,
                                                 w.setting("handle", "%x:" % free)))


def _max_holds() -> int:
    from . import _plugqdisc
    return int(_plugqdisc.MAX_HOLDS)


def _ours(e: OSError) -> bool:
    """Whether the qdisc found in the way is a hold of plugqdisc's: the selective holds'
    prio, or a plug qdisc."""
    from . import _plugqdisc
    kind = str(getattr(e, "found_kind", "") or "")
    handle = int(getattr(e, "found_handle", 0) or 0)
    return (kind == "prio" and handle == _plugqdisc.TREE_HANDLE) or kind == "plug"


def _what_is_there(e: OSError, ctx: Dict[str, str]) -> str:
    """The qdisc in the way, as a hold: "the selective holds' prio qdisc (fffe:) at the
    root of 'lo'", "a plug qdisc (handle 1:) at root of 'lo'"."""
    from . import _plugqdisc
    kind = ctx["found"] or "?"
    handle = int(getattr(e, "found_handle", 0) or 0)
    if kind == "prio" and handle == _plugqdisc.TREE_HANDLE:
        return "%s has selective holds (their prio qdisc %s is at its root)" % (
            ctx["device"], handle_text(handle))
    return "%s %s qdisc (handle %s) is at %s of %s" % (
        "an" if kind[:1] in "aeiou" and kind[:1] else "a", kind, handle_text(handle),
        ctx["place"], ctx["device"])


def _holders(ctx: Dict[str, str], netns: Any) -> str:
    """", held by pid 12 (Match(...)), pid 13" from the records of the device's holds
    that plugqdisc made; "" if there are none (best effort)."""
    try:
        from . import _cli_records
        recs = [r for r in _cli_records.records(_cli_records.netns_id(netns))
                if r.device == ctx["name"] and r.alive]
    except Exception:  # the words must never fail the error they explain
        return ""
    if not recs:
        return ""
    return ", held by " + ", ".join(sorted({"pid %d" % r.pid for r in recs}))


def _class_and_advice(code: int, step: str, e: OSError, ctx: Dict[str, str],
                      w: Python = PYTHON, netns: Any = None
                      ) -> Tuple[Type[PlugQdiscError], str]:
    """(exception class, what happened and what to do) for errno CODE at STEP; the
    advice names options as W spells them (Python or the command line)."""
    if code in (_errno.EPERM, _errno.EACCES):
        if step == "enter_netns":
            return PlugQdiscPermissionError, (
                "entering another network namespace needs CAP_SYS_ADMIN (and CAP_NET_ADMIN "
                "there): run as root, or in the lab (%s)" % LAB_HINT)
        return PlugQdiscPermissionError, (
            "changing qdiscs needs CAP_NET_ADMIN in the device's network namespace: run as "
            "root, inside `unshare -rn`, or in the lab (%s)" % LAB_HINT)
    if code == _errno.ENODEV:
        return DeviceNotFoundError, (
            "there is no network device %s in this network namespace (or it vanished); "
            "`ip link` lists them" % ctx["device"])
    if code == _errno.ENOENT and step == "create":
        return KernelSupportError, (
            "this kernel has no plug qdisc (sch_plug): load it with `modprobe sch_plug`, "
            "build the kernel with CONFIG_NET_SCH_PLUG=m, or run under the lab: %s" % LAB_HINT)
    if code in (_errno.ENOENT, _errno.EOPNOTSUPP) and step in (
            "make_tree", "make_ifb", "make_ingress", "add_filter"):
        module = _MODULES.get(ctx["found"], ctx["found"])
        extra = (" (and act_mirred, which redirects to the ifb)"
                 if step == "add_filter" and ctx["ingress"] else "")
        return KernelSupportError, (
            "this kernel lacks %s%s, which this hold needs: load it (`modprobe %s`), or run "
            "under the lab: %s" % (module, extra, module, LAB_HINT))
    if code == _errno.EBUSY and step == "make_ingress":
        return PlugQdiscError, (
            "%s's egress holds %d packets now (another hold): adding the ingress qdisc an "
            "ingress hold needs would make the kernel drop them (it resets the device's "
            "egress qdiscs); release that hold first" % (ctx["device"], getattr(e, "held", 0)))
    if code == _errno.EBUSY and step == "undo":
        return PlugQdiscError, (
            "the hold is released and its ifb removed, but the empty ingress qdisc stays on "
            "%s: removing it now would make the kernel drop the %d packets its egress holds; "
            "once they are released: `tc qdisc del dev %s ingress`"
            % (ctx["device"], getattr(e, "held", 0), ctx["name"]))
    if code == _errno.EEXIST and step == "make_ifb":
        return PlugQdiscError, (
            "an ifb device of ours is already there for %s (left by a holder that died?): "
            "%s to take it over, or delete it (`ip link del pqifbN`)"
            % (ctx["device"], w.replace))
    if step == "find_parent":
        return ParentNotFoundError, (
            "the parent %s does not exist on %s: create its qdisc and class first "
            "(`tc qdisc show dev %s`, `tc class show dev %s` list them), or use "
            "parent='root'" % (ctx["parent"], ctx["device"], ctx["name"], ctx["name"]))
    if code == _errno.EBUSY and step == "lock":
        return PlugQdiscError, (
            "another process kept %s's lock (an abstract unix socket, "
            "@plugqdisc/lock/IFINDEX in hex, which holds on one device take turns with) for "
            "5 s: a plugqdisc attach or removal there is stuck (a stopped process?); `ss "
            "-xlp | grep plugqdisc/lock` names it: let it go on, or end it" % ctx["device"])
    if code == _errno.ENOSPC and step == "full":
        return PlugQdiscError, (
            "%s already has %d %s holds, the most one device can have (plugqdisc.MAX_HOLDS: "
            "the prio qdisc's 16 bands, one for what passes): nothing was changed; %s"
            % (ctx["device"], _max_holds(), "ingress" if ctx["ingress"] else "selective",
               "%s, or end one first" % w.combine if w.combine else "end one first"))
    if code == _errno.EEXIST and step == "handle_taken":
        return PlugQdiscError, (
            "handle %s is another qdisc's on %s, and a handle names one qdisc on a device: "
            "leave the handle out (plugqdisc then chooses a free one), or give another"
            % (ctx["handle"], ctx["device"]))
    if code == _errno.EUSERS and step == "share":
        return PlugQdiscError, (
            "the plug qdisc %s on %s already has 16 users (holders sharing it): end one "
            "first" % (ctx["handle"], ctx["device"]))
    if code == _errno.EBUSY and step == "in_use":
        return PlugQdiscError, (
            "%s; a living hold uses it%s, and %s never deletes a hold that someone holds "
            "with: nothing was changed; wait until it ends, or, for a selective hold, hold "
            "beside it (with %s)"
            % (_what_is_there(e, ctx), _holders(ctx, netns), w.flag("replace"), w.select))
    if code == _errno.EEXIST and step == "occupied" and _ours(e):
        # Another hold of ours is there: never advise replacing it.
        return PlugQdiscError, (
            "%s%s: a %s hold cannot go beside it; %s"
            % (_what_is_there(e, ctx), _holders(ctx, netns),
               "plain (whole-device)" if ctx["found"] == "prio" else "selective",
               "hold what you need with %s beside the selective holds, or wait until "
               "they end" % w.select if ctx["found"] == "prio" else
               "that plain hold already holds everything %s sends; %s or wait until it "
               "ends" % (ctx["device"], w.share)))
    if code == _errno.EEXIST and step == "occupied":
        found = ctx["found"] or "?"
        # At ingress there is no other place to choose: the ingress hold's is fixed.
        elsewhere = w.elsewhere if ctx["place"] != "ingress" else ""
        return PlugQdiscError, (
            "%s %s qdisc (handle %s) is already at %s of %s: %s to replace it (it is deleted, "
            "with what it holds)%s"
            % ("an" if found[:1] in "aeiou" and found[:1] else "a", found,
               handle_text(getattr(e, "found_handle", 0)), ctx["place"], ctx["device"],
               w.replace, ", or %s" % elsewhere if elsewhere else ""))
    if code == _errno.EINVAL and step == "create":
        taken = _taken_handle(e, ctx, w, netns)
        if taken is not None:
            return PlugQdiscError, taken
    if code == _errno.ENOENT and step in ("read_stats", "change", "adopt", "delete"):
        if not ctx["found"]:
            found = "nothing is there now"
        elif getattr(e, "found_handle", 0) == 0:
            found = "the device's default qdisc, %s, is there now" % ctx["found"]
        else:
            found = "a %s qdisc (handle %s) is there now" % (
                ctx["found"], handle_text(getattr(e, "found_handle", 0)))
        return PlugQdiscError, (
            "the plug qdisc %s at %s of %s is gone (deleted by someone else? %s): %s"
            % (ctx["handle"], ctx["parent"], ctx["device"], found, w.again))
    if code == _errno.ETIMEDOUT and step == "drain":
        return PlugQdiscError, (
            "%d released packets were still queued after %d ms; nothing was dropped: the "
            "qdisc is left in place, passing traffic; %s"
            % (getattr(e, "held", 0), getattr(e, "waited_ms", 0), w.drain))
    if code == _errno.ENOTCONN and step == "not_attached":
        return PlugQdiscError, "it is not attached: call attach() first, or use `with`"
    if code == _errno.EINVAL and step == "enter_netns":
        return PlugQdiscError, ("the netns given is not a network namespace: pass a name "
                                "from `ip netns list`, a path such as /proc/PID/ns/net, or "
                                "an open fd of one")
    if code == _errno.EMFILE or code == _errno.ENFILE:
        return PlugQdiscError, "no file descriptor is free: close some, or raise `ulimit -n`"
    return PlugQdiscError, "%s (errno %s)" % (os.strerror(code), _errno.errorcode.get(code, code))


def translate(e: OSError, action: str, where: str, *, parent: str = "root",
              handle: str = "1:", ifindex: int = 0, ingress: bool = False,
              netns: Any = None, spelling: Python = PYTHON) -> PlugQdiscError:
    """The exception a user can act on, for the glue's OSError E raised by ACTION
    (``"attach"``, ``"buffer"``, ...) on WHERE (the device and place, in words), in the
    namespace NETNS; the advice names options as SPELLING spells them."""
    code = e.errno or _errno.EIO
    step = str(getattr(e, "step", "") or "")
    attach_errno = int(getattr(e, "attach_errno", 0) or 0)
    replay = code == _errno.ENOTCONN and step == "not_attached" and attach_errno != 0
    if replay:
        # The last attach failed: what the user can act on is why, not "not attached".
        code, step = attach_errno, str(getattr(e, "attach_step", ""))
    device = str(getattr(e, "device", "") or "")
    ctx = {"device": repr(device) if device else "with index %d" % ifindex,
           "ingress": "ingress" if ingress else "",
           "name": device or "DEV", "parent": parent, "handle": handle,
           "found": str(getattr(e, "found_kind", "") or ""), "action": action}
    # Where the qdisc in the way is: an ingress or clsact qdisc is only ever at the
    # device's ingress (TC_H_INGRESS), whatever the plug's own parent is.
    ctx["place"] = "ingress" if ctx["found"] in _INGRESS_KINDS else parent
    cls, advice = _class_and_advice(code, step, e, ctx, spelling, netns)
    words = _STEP_WORDS.get(step, step).format(**ctx)
    kernel = str(getattr(e, "kernel_message", "") or "")
    if replay:
        what = ": it is not attached, because attach() failed while %s" % words
    else:
        what = " while " + words if words else ""
    msg = "%s on %s failed%s: %s%s" % (action, where, what, advice,
                                       " [kernel: %s]" % kernel if kernel else "")
    err = cls(code, msg)
    err.step = step
    err.kernel_message = kernel
    err.device = device
    return err


def not_attached_default() -> PlugQdiscError:
    """The HAProxy-style functions called before plugqdisc.attach()."""
    err = PlugQdiscError(_errno.ENOTCONN, "no default plug qdisc: call plugqdisc.attach() "
                         "first")
    err.step = "not_attached"
    return err
