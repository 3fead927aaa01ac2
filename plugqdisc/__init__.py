"""plugqdisc: hold a network device's packets and release them on cue.

The Linux plug queueing discipline (``sch_plug``) holds every packet leaving a
device until it is told to let them go. This package drives it::

    from plugqdisc import plugged
    with plugged("lo") as q:          # packets on lo are held from here ...
        q.wait_buffered(1, timeout=5) # ... until one is provably in the queue
        reload_the_server()
    # ... and released here, in order, nothing lost

Semantics worth knowing (from the kernel's ``net/sched/sch_plug.c``):

* a new plug qdisc holds everything; :meth:`PlugQdisc.attach` releases it, so
  after attach traffic passes until :meth:`PlugQdisc.buffer`;
* ``limit`` is in bytes of backlog; a packet over it is dropped (``drops``);
  ``None`` means the kernel's default for the device, ``tx_queue_len * (mtu +
  link header)`` (1000 * 65550 on ``lo``); libnl would otherwise create the
  qdisc with limit 0, which drops every packet;
* :meth:`PlugQdisc.buffer` starts a new epoch, :meth:`PlugQdisc.release_one`
  lets the previous epoch go, :meth:`PlugQdisc.release` lets everything go;
* deleting a plug qdisc drops what it holds: :meth:`PlugQdisc.detach` releases
  and waits for the backlog to drain first.

This module holds the policy (defaults, validation, messages, context
managers); ``plugqdisc._plugqdisc`` is the C glue over libnl.
"""

from __future__ import annotations

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (setuptools attr)

import errno as _errno
import os
import time
from typing import Any, List, NamedTuple, Optional, Sequence, Union

try:
    from . import _plugqdisc
except ImportError as e:  # a source tree without it: the lab runs, the C core says what to do
    from ._extension import unbuilt
    _plugqdisc = unbuilt(e)
from . import _auto, _cli_records, _guard, _signals
from ._match import Address, Match, Ports, terms_of
from ._words import PYTHON, Python
from ._errors import (DeviceNotFoundError, KernelSupportError, ParentNotFoundError,
                      PlugQdiscError, PlugQdiscPermissionError, not_attached_default,
                      translate)
from ._util import Netns, add_note, handle_text, open_netns, seconds

__all__ = [
    "Match",
    "PlugQdisc",
    "Stats",
    "plugged",
    "release_in_order",
    "MAX_HOLDS",
    "attach",
    "plug_buffer",
    "release_indefinite_buffer",
    "PlugQdiscError",
    "KernelSupportError",
    "DeviceNotFoundError",
    "ParentNotFoundError",
    "PlugQdiscPermissionError",
]

MatchArg = Union[Match, Sequence[Match], None]

#: How long detach() waits for released packets to leave before deleting, by default.
DETACH_TIMEOUT = 5.0


def __getattr__(name: str) -> int:
    """``MAX_HOLDS``: the selective holds one device can have at once, and the ingress
    holds (the prio qdisc's 16 bands, one of which passes what no hold selects). The C
    core's number, read when first asked for (a source tree without the extension still
    imports)."""
    if name == "MAX_HOLDS":
        return int(_plugqdisc.MAX_HOLDS)
    raise AttributeError("module 'plugqdisc' has no attribute %r" % (name,))
#: The longest wait the C core takes in one go (2**31-1 ms, about 24.8 days).
_MAX_WAIT_MS = 2**31 - 1


class Stats(NamedTuple):
    """The qdisc's counters, from one ``RTM_GETQDISC``."""

    packets: int  #: packets sent on by the qdisc
    bytes: int  #: bytes sent on
    qlen: int  #: packets held now
    backlog: int  #: bytes held now
    drops: int  #: packets dropped because the backlog would exceed the limit
    overlimits: int
    requeues: int


# ---- argument checks: each argument is checked here, once, before anything is sent ----

def _check_limit(limit: Optional[int], name: str = "limit") -> int:
    """Bytes as the C core takes them (0: the device's default)."""
    if limit is None:
        return 0
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError("%s must be an int number of bytes or None, not %s"
                        % (name, type(limit).__name__))
    if not 0 <= limit < 2**32:
        raise ValueError("%s must be from 0 to 2**32-1 bytes (0 or None: the device's "
                         "default), not %d" % (name, limit))
    return limit


def _check_device(device: Union[str, int]) -> None:
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise TypeError("device must be an interface name (str) or an ifindex (int), not %s"
                        % type(device).__name__)
    if isinstance(device, int):
        if not 0 < device < 2**31:
            raise ValueError("an ifindex must be a positive int below 2**31, not %d" % device)
        return
    raw = device.encode("utf-8", "surrogateescape")
    if (not raw or len(raw) > 15 or device in (".", "..")
            or any(c in device for c in "/:\0") or any(c.isspace() for c in device)):
        raise ValueError("%r is not a valid interface name: 1 to 15 bytes, no '/', ':' or "
                         "white space (see `ip link`)" % device)


def _parse(text: str, what: str, example: str) -> int:
    if not isinstance(text, str):
        raise TypeError("%s must be a str like %s, not %s" % (what, example,
                                                             type(text).__name__))
    value = _plugqdisc.parse_handle(text)
    if value is None:
        raise ValueError("%s: %r is not a tc handle: use 'root' or 'MAJ:' / 'MAJ:MIN' in "
                         "hex, each part at most ffff (for example %s)" % (what, text, example))
    return int(value)


def _parse_parent(text: str) -> int:
    value = _parse(text, "parent", "'root' or '1:2'")
    if value == 0:
        raise ValueError("parent: 'none' is no place for a qdisc; use 'root' or a class "
                         "'MAJ:MIN'")
    return value


def _parse_qdisc_handle(text: str) -> int:
    value = _parse(text, "handle", "'1:'")
    if text in ("root", "none") or value & 0xFFFF or value == 0:
        raise ValueError("handle: a qdisc handle is 'MAJ:' with MAJ from 1 to ffff (for "
                         "example '1:'), not %r" % text)
    return value


def _check_netns(netns: Netns) -> None:
    if netns is None:
        return
    if isinstance(netns, bool) or not isinstance(netns, (str, int, os.PathLike)):
        raise TypeError("netns must be a name (as `ip netns` knows it), a path or an open "
                        "file descriptor, not %s" % type(netns).__name__)
    if isinstance(netns, int):
        if not 0 <= netns < 2**31:
            raise ValueError("a netns file descriptor must be from 0 to 2**31-1, not %d"
                             % netns)
    elif not os.fspath(netns) or "\0" in os.fspath(netns):
        raise ValueError("netns name or path must be non-empty and free of NUL bytes")


def _check_mode(direction: str, match: MatchArg, parent: str, handle: int) -> bool:
    """Whether the hold is at ingress; refuses what a selective or ingress hold cannot do.
    HANDLE is the plug's, parsed: compared by value, as the C core compares it."""
    if direction not in ("egress", "ingress"):
        raise ValueError("direction must be 'egress' (what the device sends) or 'ingress' "
                         "(what it receives), not %r" % (direction,))
    if (match is not None or direction == "ingress") and parent != "root":
        raise ValueError("parent=%r: a selective or ingress hold builds its own tree at the "
                         "device's root (or ingress); leave parent='root'" % (parent,))
    if match is not None and handle == _plugqdisc.TREE_HANDLE:
        raise ValueError("handle %s is the selective holds' own prio qdisc: choose another "
                         "handle for the plug, or leave it out" % handle_text(
                             _plugqdisc.TREE_HANDLE))
    return direction == "ingress"


def _handle_id(handle: Optional[str], match: MatchArg, direction: str) -> int:
    """The plug's handle as a number: None is 1: for a plain hold, and 0 (attach chooses a
    free one) for a selective or ingress hold."""
    if handle is None:
        return 0 if (match is not None or direction == "ingress") else 0x10000
    return _parse_qdisc_handle(handle)


class PlugQdisc(_plugqdisc.Qdisc):
    """A plug qdisc on one device, at one place (``parent``, ``handle``).

    Constructing validates the arguments and touches nothing in the kernel.
    :meth:`attach` creates the qdisc (or adopts the plug qdisc already there)
    and lets traffic pass; :meth:`buffer` holds; :meth:`release` lets go.
    ``with PlugQdisc(...) as q:`` attaches on entry; on exit it releases,
    detaches if it created the qdisc, and closes. Safe to use from several
    threads; after ``fork`` the child gets a socket of its own.

    The state (device, limit, whether it holds) lives in the C handle that this
    class extends; this layer adds the checks, the words and the context manager.
    """

    _words: Python = PYTHON  # how its errors name options (the command line's: --replace)

    def __init__(
        self,
        device: Union[str, int],
        *,
        parent: str = "root",
        handle: Optional[str] = None,
        limit: Optional[int] = None,
        netns: Netns = None,
        match: MatchArg = None,
        direction: str = "egress",
        guard: bool = True,
        max_hold: Optional[float] = None,
    ) -> None:
        _check_device(device)
        parent_id = _parse_parent(parent)
        handle_id = _handle_id(handle, match, direction)
        nbytes = _check_limit(limit)
        _check_netns(netns)
        terms = terms_of(match)
        ingress = _check_mode(direction, match, parent, handle_id)
        hold_ms = _guard.max_hold_ms(max_hold, guard)
        self._parent = parent
        self._handle = handle  # None: 1: for a plain hold, chosen at attach for the others
        self._chosen = ""  # the handle attach chose, kept after close
        self._netns = netns
        self._match = match
        self._direction = direction
        self._max_hold = max_hold
        self._record: Optional[str] = None  # _cli_records' record of what we created
        super().__init__(device, parent_id, handle_id, nbytes)
        try:
            if terms or ingress:
                self._set_hold(ingress, terms)
            self._set_guard(guard, hold_ms)
        except OSError as e:  # the C core's own checks: the same words as every call
            raise self._failed(e, "PlugQdisc()") from None

    def __repr__(self) -> str:
        state = ("closed" if self.closed else "detached" if not self.attached
                 else "buffering" if self.is_buffering else "passing")
        mode = "" if self._direction == "egress" else " ingress"
        if self._match is not None:
            mode += " match=%r" % (self._match,)
        return "<PlugQdisc %s parent=%s handle=%s%s %s>" % (
            self.device, self._parent, self.handle or "(chosen at attach)", mode, state)

    @property
    def _where(self) -> str:
        ns = "" if self._netns is None else " in netns %s" % (self._netns,)
        mode = "" if self._direction == "egress" else ", ingress"
        if self._match is not None:
            mode += ", selective"
        return "%r (parent %s, handle %s%s%s)" % (
            self.device, self._parent, self.handle or "chosen at attach", mode, ns)

    def _failed(self, e: OSError, action: str) -> PlugQdiscError:
        dev = self.device
        return translate(e, action, self._where, parent=self._parent,
                         handle=self.handle or "(chosen at attach)",
                         ifindex=dev if isinstance(dev, int) else 0,
                         ingress=self._direction == "ingress", netns=self._netns,
                         spelling=self._words)

    def _netns_fd(self) -> "tuple[int, bool]":
        """(fd of the namespace to work in or -1, whether we opened it), for the first
        attach only."""
        if self.connected or self.closed:
            return -1, False
        return open_netns(self._netns)

    def attach(self, *, replace: bool = False) -> "PlugQdisc":
        """Create the plug qdisc (or adopt the plug qdisc with our handle already
        there) and let traffic pass. A qdisc of another kind at that place raises
        PlugQdiscError (EEXIST) unless ``replace=True``. Returns self."""
        fd, own = self._netns_fd()
        fresh = None
        try:
            try:
                self._connect(fd)
            finally:
                if own:
                    os.close(fd)
            if not self.attached and self._record is None:
                # The record comes before anything is created, and the C core's plan
                # unlinks it when the hold is undone (detach, the guardian, cleanup).
                fresh = self._record = _cli_records.record(self)
                self._set_record(fresh)
            self._attach(bool(replace), -1)
        except OSError as e:
            if fresh is not None:
                _cli_records.forget(fresh)
                self._record = None
            raise self._failed(e, "attach") from None
        self._chosen = handle_text(self.handle_id)
        if fresh is not None and not self.created:
            _cli_records.forget(fresh)  # adopted: not ours to record
            self._record = None
        elif fresh is not None:
            _cli_records.made(fresh, self)
        _guard.track(self)
        return self

    def buffer(self) -> None:
        """Hold every packet from now on; starts a new epoch (TCQ_PLUG_BUFFER)."""
        try:
            self._buffer()
        except OSError as e:
            raise self._failed(e, "buffer") from None

    def release_one(self) -> None:
        """Release the packets of the epoch before the latest :meth:`buffer`, keep
        holding the current one (TCQ_PLUG_RELEASE_ONE)."""
        try:
            self._release_one()
        except OSError as e:
            raise self._failed(e, "release_one") from None

    def release(self) -> None:
        """Release everything held, in order, and let traffic pass until the next
        :meth:`buffer` (TCQ_PLUG_RELEASE_INDEFINITE)."""
        _auto.stop(self)  # a pending automatic release is cancelled; what it kept is raised
        try:
            self._release_indefinite()
        except OSError as e:
            raise self._failed(e, "release") from None
        _auto.raise_kept(self)

    release_indefinite = release

    def set_limit(self, nbytes: int) -> None:
        """Set the backlog limit in bytes (TCQ_PLUG_LIMIT); 0 or None: the device's
        default."""
        value = _check_limit(nbytes, "nbytes")
        try:
            self._set_limit(value)
        except OSError as e:
            raise self._failed(e, "set_limit") from None

    def stats(self) -> Stats:
        """The qdisc's counters now."""
        try:
            return Stats(*self._stats())
        except OSError as e:
            raise self._failed(e, "stats") from None

    def wait_buffered(self, packets: int = 1, *, timeout: Optional[float] = None) -> Stats:
        """Wait until at least ``packets`` packets are held (``qlen``), and return
        the stats. Raises TimeoutError after ``timeout`` seconds (None or inf:
        forever). Sleeps between polls with the GIL released, so other threads run."""
        if isinstance(packets, bool) or not isinstance(packets, int):
            raise TypeError("packets must be an int, not %s" % type(packets).__name__)
        if packets < 0:
            raise ValueError("packets must be >= 0, not %d" % packets)
        limit = seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.0005
        while True:
            st = self.stats()
            if st.qlen >= packets:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(_errno.ETIMEDOUT, "%d of %d packets held on %s after %s s"
                                   % (st.qlen, packets, self._where, timeout))
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def wait_drained(self, timeout: Optional[float] = DETACH_TIMEOUT) -> Stats:
        """Wait until this hold holds nothing (after :meth:`release`: everything it held
        has left it, in order), and return the stats. Raises TimeoutError after
        ``timeout`` seconds (None or inf: forever). See :func:`release_in_order`."""
        limit = seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.0005
        while True:
            st = self.stats()
            if st.qlen == 0:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(_errno.ETIMEDOUT, "%d packets still held on %s after %s s"
                                   " (is it released?)" % (st.qlen, self._where, timeout))
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def let_new_packets_pass(self) -> None:
        """A selective or ingress hold stops selecting: packets sent from now on pass as
        if there were no hold, while what it holds stays held until :meth:`release` or
        :meth:`detach`. Later packets of a held flow then overtake the held ones: a
        deterministic reorder (see the recipes). A plain hold has nothing to stop
        selecting: ValueError."""
        if self._match is None and self._direction == "egress":
            raise ValueError("let_new_packets_pass() needs a selective or ingress hold "
                             "(match=... or direction='ingress'): a plain hold selects "
                             "every packet of the device")
        try:
            self._stop_selecting()
        except OSError as e:
            raise self._failed(e, "let_new_packets_pass") from None

    def detach(self, *, timeout: Optional[float] = DETACH_TIMEOUT) -> None:
        """Release, wait (up to ``timeout`` s; None or inf: as long as it takes)
        for the backlog to drain, then delete the qdisc. Nothing held is lost: if it
        does not drain, the qdisc is left in place passing traffic and
        PlugQdiscError (ETIMEDOUT) is raised. A plain plug qdisc that other living
        holders use (the same handle, adopted) is left to them as it is: the last one
        out releases and removes it."""
        limit = seconds(timeout, "timeout")
        ms = _MAX_WAIT_MS if limit is None else min(int(limit * 1000), _MAX_WAIT_MS)
        _auto.stop(self)
        try:
            self._detach(ms)
        except OSError as e:
            raise self._failed(e, "detach") from None
        self._record = None  # the hold's plan unlinked it
        _auto.raise_kept(self)

    def close(self) -> None:
        """Free the socket (the qdisc stays as it is). Idempotent."""
        _auto.stop(self)
        _guard.untrack(self)
        super().close()
        _auto.raise_kept(self)

    def __del__(self) -> None:
        if _guard.leaked(self):
            _guard.finish_leaked(self, "when garbage-collected")

    def __enter__(self) -> "PlugQdisc":
        try:
            return self.attach()
        except BaseException:
            self.close()  # __exit__ will not run: do not keep the socket open
            raise

    def __exit__(self, typ: object, exc: Optional[BaseException], tb: object) -> None:
        try:
            _finish_after(self, exc)
        except BaseException as cut:
            if self.closed:
                raise
            # A signal handler raised before the cleanup could defer it: clean up now,
            # with its exception as the block's, then let that propagate.
            _finish_after(self, cut)
            raise

    def _finish(self) -> None:
        """Detach (which releases first, and leaves a plain plug that other living
        holders use to them); close. Every step runs even if an earlier one fails; the
        first error is raised. Signal handlers wait until it is done (see _signals): a
        handler's exception arriving between two steps would otherwise skip the rest,
        and close() would still run, leaving the tree in place."""
        d = _signals.Deferral()
        own = _signals.defer(d)
        errors: List[BaseException] = []
        try:
            if self.attached:
                try:  # releases, waits for the backlog, deletes (if the last one out)
                    self.detach()
                except Exception as e:
                    errors.append(e)
            self.close()
        finally:
            if own:
                _signals.resume(d)
        if errors:
            raise errors[0]

    @property
    def parent(self) -> str:
        return self._parent

    @property
    def handle(self) -> str:
        """The plug's handle ("1:"); a selective or ingress hold's, left out, is the one
        attach chose ("" before)."""
        if self._handle is not None:
            return self._handle
        if not self._chosen and not self.closed and self.handle_id:
            return handle_text(self.handle_id)
        return self._chosen if self._match is not None or self._direction == "ingress" \
            else "1:"

    @property
    def netns(self) -> Netns:
        return self._netns

    @property
    def max_hold(self) -> Optional[float]:
        """Seconds after which the guardian releases a hold (None: no limit)."""
        return self._max_hold

    @property
    def match(self) -> MatchArg:
        """What a selective hold holds (None: everything)."""
        return self._match

    @property
    def direction(self) -> str:
        """'egress' (what the device sends) or 'ingress' (what it receives)."""
        return self._direction

    # ---- automatic release (plugqdisc/_auto.py) ----

    def release_when_holding(self, packets: int, *, timeout: Optional[float] = None) -> None:
        """Release by itself once this hold holds ``packets`` packets (``qlen``), from a
        daemon thread of the library's: for a test whose own thread blocks behind what
        is held (a client waiting for the answer to a held request). Returns at once.

        After ``timeout`` seconds (None or inf: no limit) it releases all the same, and
        keeps a TimeoutError. :meth:`release`, :meth:`detach`, :meth:`close` and the end
        of a ``with`` block cancel it and wait for its thread; what went wrong in it is
        raised by the next of those calls (or by the next automatic release), never
        printed. One at a time per hold; the hold must be holding (:meth:`buffer`)."""
        _auto.release_when_holding(self, packets, timeout)

    def release_after(self, seconds: float) -> None:
        """Release by itself ``seconds`` from now, from a daemon thread of the
        library's; returns at once. Cancelled, and its errors raised, as for
        :meth:`release_when_holding`."""
        _auto.release_after(self, seconds)


def _finish_after(q: PlugQdisc, exc: Optional[BaseException]) -> None:
    """Clean Q up after a block that raised EXC (None: it did not). A cleanup error never
    hides the user's exception: it is attached to it as a note, and EXC goes on.

    Signal handlers are deferred from the first line (see _signals): a handler that
    raises (Ctrl-C, a SIGTERM handler) runs once the hold is undone, and its exception
    then propagates. A handler that runs before this function's first line raises from
    the call: the callers (the two __exit__) catch it and clean up then."""
    d = _signals.Deferral()
    own = False
    try:
        own = _signals.defer(d)
    except BaseException as e:  # a handler ran at the call, before defer's first line
        d.raised.append(e)
        own = _signals.defer(d)
    try:
        try:
            q._finish()
        except Exception as cleanup:
            if exc is None:
                raise
            add_note(exc, "plugqdisc: cleaning up %r after this error also failed: %s: %s"
                     % (q, type(cleanup).__name__, cleanup))
    finally:
        if own:
            _signals.resume(d)  # a deferred handler's exception propagates from here


class plugged:
    """Hold the packets leaving ``device`` (``direction="ingress"``: arriving on
    it), all of them or those ``match`` selects, for the duration of the block.

    ``with plugged(...) as q:`` gives the attached :class:`PlugQdisc`, holding from
    entry. On every way out (normal, exception, KeyboardInterrupt) it releases
    everything in order, and removes what it created: the device is left as it was
    found. A signal whose handler raises while the block ends is handled once it has.

    A class rather than a generator: contextlib's generator wrapper runs code of its
    own before the cleanup starts, where a handler's exception skips the cleanup.
    """

    def __init__(
        self,
        device: Union[str, int] = "lo",
        *,
        parent: str = "root",
        handle: Optional[str] = None,
        limit: Optional[int] = None,
        netns: Netns = None,
        replace: bool = False,
        match: MatchArg = None,
        direction: str = "egress",
        guard: bool = True,
        max_hold: Optional[float] = None,
    ) -> None:
        self._replace = replace
        self._q = PlugQdisc(device, parent=parent, handle=handle, limit=limit, netns=netns,
                            match=match, direction=direction, guard=guard,
                            max_hold=max_hold)

    def __enter__(self) -> PlugQdisc:
        q = self._q
        if q.attached or q.closed:
            raise RuntimeError("plugged(): a block can be entered once; make another "
                               "plugged() for the next block")
        try:
            q.attach(replace=self._replace)
            q.buffer()
        except BaseException as exc:
            _finish_after(q, exc)
            raise
        return q

    def __exit__(self, typ: object, exc: Optional[BaseException], tb: object) -> None:
        try:
            _finish_after(self._q, exc)
        except BaseException as cut:
            if self._q.closed:
                raise
            _finish_after(self._q, cut)  # as PlugQdisc.__exit__
            raise


def release_in_order(*holds: Any, timeout: Optional[float] = DETACH_TIMEOUT) -> None:
    """Release HOLDS one after another, each one's packets all gone on (its queue empty)
    before the next is released: the order a test chooses between sessions held apart.
    A hold is a :class:`PlugQdisc`, or anything with ``release()`` and
    ``wait_drained(timeout)`` (a :class:`plugqdisc.remote.RemoteHold`). Raises
    TimeoutError if one does not drain within ``timeout`` seconds (the later ones then
    stay held)."""
    for q in holds:
        if not (callable(getattr(q, "release", None)) and
                callable(getattr(q, "wait_drained", None))):
            raise TypeError("release_in_order() takes holds (PlugQdisc, RemoteHold), not %s"
                            % type(q).__name__)
    for q in holds:
        q.release()
        q.wait_drained(timeout)


# ---- the HAProxy helper's API, on one process-wide default qdisc ----

def attach(device: str, parent: str = "root", id: str = "1:",
           limit: Optional[int] = None) -> None:
    """``plug_qdisc_attach()``: create (or adopt) the process-wide default plug
    qdisc and let traffic pass. ``limit`` None or 0 means the device's default."""
    if not isinstance(device, str):
        raise TypeError("device must be an interface name (str), not %s"
                        % type(device).__name__)
    _check_device(device)
    parent_id = _parse_parent(parent)
    handle_id = _parse_qdisc_handle(id)
    nbytes = _check_limit(limit)
    try:
        _plugqdisc.plug_qdisc_attach(device, parent_id, handle_id, nbytes)
    except OSError as e:
        raise translate(e, "attach", "%r (parent %s, handle %s)" % (device, parent, id),
                        parent=parent, handle=id) from None


def _failed_default(e: OSError, action: str) -> PlugQdiscError:
    if e.errno == _errno.ENOTCONN and not getattr(e, "device", ""):
        return not_attached_default()
    return translate(e, action, "the default plug qdisc")


def plug_buffer() -> None:
    """``plug_qdisc_plug_buffer()``: the default qdisc holds from now on."""
    try:
        _plugqdisc.plug_qdisc_plug_buffer()
    except OSError as e:
        raise _failed_default(e, "plug_buffer") from None


def release_indefinite_buffer() -> None:
    """``plug_qdisc_release_indefinite_buffer()``: release all and pass traffic."""
    try:
        _plugqdisc.plug_qdisc_release_indefinite_buffer()
    except OSError as e:
        raise _failed_default(e, "release_indefinite_buffer") from None
