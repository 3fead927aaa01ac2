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

import contextlib
import errno as _errno
import os
import threading
import time
from typing import Callable, Iterator, List, NamedTuple, NoReturn, Optional, Union

from . import _plugqdisc

__all__ = [
    "PlugQdisc",
    "Stats",
    "plugged",
    "attach",
    "plug_buffer",
    "release_indefinite_buffer",
    "PlugQdiscError",
    "KernelSupportError",
    "DeviceNotFoundError",
    "PlugQdiscPermissionError",
]

Netns = Union[str, "os.PathLike[str]", int, None]

#: How long detach() waits for released packets to leave before deleting, by default.
DETACH_TIMEOUT = 5.0
_LAB_HINT = "python -m plugqdisc.lab -- CMD (a User-Mode Linux kernel with sch_plug)"


class PlugQdiscError(OSError):
    """A kernel or netlink error from the plug qdisc; ``errno`` is set."""


class KernelSupportError(PlugQdiscError):
    """The running kernel has no plug qdisc (``sch_plug``)."""


class DeviceNotFoundError(PlugQdiscError):
    """No network device of that name or index (or it vanished)."""


class PlugQdiscPermissionError(PlugQdiscError, PermissionError):
    """The caller lacks ``CAP_NET_ADMIN`` in the device's network namespace."""


class Stats(NamedTuple):
    """The qdisc's counters, from one ``RTM_GETQDISC``."""

    packets: int  #: packets sent on by the qdisc
    bytes: int  #: bytes sent on
    qlen: int  #: packets held now
    backlog: int  #: bytes held now
    drops: int  #: packets dropped because the backlog would exceed the limit
    overlimits: int
    requeues: int


def _raise(e: OSError, action: str, where: str) -> NoReturn:
    """Turn the glue's OSError(errno, "strerror (originated from CALL): kernel text")
    into the exception a user can act on."""
    code = e.errno or _errno.EIO
    detail = e.strerror or os.strerror(code)
    cls: type = PlugQdiscError
    if code in (_errno.EPERM, _errno.EACCES):
        cls = PlugQdiscPermissionError
        msg = ("%s on %s needs CAP_NET_ADMIN in that network namespace: run as root, inside "
               "`unshare -rn`, or in the lab (%s) [%s]" % (action, where, _LAB_HINT, detail))
    elif code == _errno.ENODEV:
        cls = DeviceNotFoundError
        msg = ("%s: no network device %s in this network namespace (or it vanished); "
               "`ip link` lists them [%s]" % (action, where, detail))
    elif code == _errno.ENOENT and action == "attach" and "kind" in detail:
        cls = KernelSupportError
        msg = ("this kernel has no plug qdisc (sch_plug): load it with `modprobe sch_plug`, "
               "build the kernel with CONFIG_NET_SCH_PLUG=m, or run under the lab: %s [%s]"
               % (_LAB_HINT, detail))
    elif code == _errno.ENOENT:
        msg = ("%s: the plug qdisc %s is gone (deleted behind our back?); attach() again "
               "[%s]" % (action, where, detail))
    elif code == _errno.EEXIST:
        msg = "%s: another qdisc is in the way at %s [%s]" % (action, where, detail)
    elif code == _errno.ETIMEDOUT:
        msg = ("%s: the released packets of %s did not drain in time; the qdisc is left in "
               "place, passing traffic [%s]" % (action, where, detail))
    elif code == _errno.EINVAL and action == "open":
        msg = "%s: the netns given for %s is not a network namespace [%s]" % (action, where, detail)
    else:
        msg = "%s on %s failed: %s" % (action, where, detail)
    raise cls(code, msg) from None


def _check_limit(limit: Optional[int], name: str = "limit") -> int:
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
            raise ValueError("an ifindex must be a positive int, not %d" % device)
        return
    raw = device.encode("utf-8", "surrogateescape")
    if (not raw or len(raw) > 15 or device in (".", "..")
            or any(c in device for c in "/:\0") or any(c.isspace() for c in device)):
        raise ValueError("%r is not a valid interface name: 1 to 15 bytes, no '/', ':' or "
                         "white space (see `ip link`)" % device)


def _parse_parent(text: str) -> int:
    value = _parse(text, "parent")
    if value == 0:
        raise ValueError("parent: 'none' is no place for a qdisc; use 'root' or a class "
                         "'MAJ:MIN'")
    return value


def _parse(text: str, what: str) -> int:
    try:
        return int(_plugqdisc.parse_handle(text))
    except TypeError:
        raise TypeError("%s must be a str like %s, not %s"
                        % (what, "'root' or '1:2'" if what == "parent" else "'1:'",
                           type(text).__name__)) from None
    except ValueError as e:
        raise ValueError("%s: %s" % (what, e)) from None


def _parse_qdisc_handle(text: str) -> int:
    value = _parse(text, "handle")
    if text.strip() in ("root", "none") or value & 0xFFFF or value == 0:
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
        if netns < 0:
            raise ValueError("netns file descriptor must be >= 0, not %d" % netns)
    elif not os.fspath(netns) or "\0" in os.fspath(netns):
        raise ValueError("netns name or path must be non-empty and free of NUL bytes")


def _netns_path(netns: Union[str, "os.PathLike[str]"]) -> str:
    path = os.fspath(netns)
    # A name as `ip netns` knows it; anything with a '/' is a path, never joined.
    return path if "/" in path else os.path.join("/run/netns", path)


class PlugQdisc:
    """A plug qdisc on one device, at one place (``parent``, ``handle``).

    Constructing validates the arguments and touches nothing in the kernel.
    :meth:`attach` creates the qdisc (or adopts the plug qdisc already there)
    and lets traffic pass; :meth:`buffer` holds; :meth:`release` lets go.
    ``with PlugQdisc(...) as q:`` attaches on entry; on exit it releases,
    detaches if it created the qdisc, and closes. Safe to use from several
    threads; after ``fork`` the child gets a socket of its own.
    """

    def __init__(
        self,
        device: Union[str, int],
        *,
        parent: str = "root",
        handle: str = "1:",
        limit: Optional[int] = None,
        netns: Netns = None,
    ) -> None:
        _check_device(device)
        self._parent_id = _parse_parent(parent)
        self._handle_id = _parse_qdisc_handle(handle)
        self._limit = _check_limit(limit)
        _check_netns(netns)
        self._device = device
        self._parent = parent
        self._handle = handle
        self._netns = netns
        self._q: Optional[_plugqdisc.Qdisc] = None
        self._closed = False
        # Guards the swaps of _q (never held across a netlink call, so a fork() cannot
        # inherit it held for long).
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = ("closed" if self._closed else "detached" if self._q is None
                 else "buffering" if self.is_buffering else "passing")
        return "<PlugQdisc %s parent=%s handle=%s %s>" % (self._device, self._parent,
                                                           self._handle, state)

    @property
    def _where(self) -> str:
        ns = "" if self._netns is None else " in netns %s" % (self._netns,)
        return "%r (parent %s, handle %s%s)" % (self._device, self._parent, self._handle, ns)

    def _open(self) -> _plugqdisc.Qdisc:
        """The C handle, opened on first attach (socket in the netns, device looked up)."""
        if self._closed:
            raise ValueError("I/O operation on a closed PlugQdisc")
        q = self._q
        if q is not None:
            return q
        fd = -1
        own_fd = False
        if isinstance(self._netns, int):
            fd = self._netns
        elif self._netns is not None:
            path = _netns_path(self._netns)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as e:
                raise FileNotFoundError(
                    e.errno, "no network namespace at %s: create it with `ip netns add NAME` "
                    "or pass a path or an open fd" % path, path) from None
            own_fd = True
        try:
            q = _plugqdisc.Qdisc(self._device, self._parent_id, self._handle_id, self._limit, fd)
        except OSError as e:
            _raise(e, "open", self._where)
        finally:
            if own_fd:
                os.close(fd)
        with self._lock:
            if self._closed or self._q is not None:  # closed, or opened by another thread
                q.close()
                return self._live()
            self._q = q
        return q

    def _live(self) -> _plugqdisc.Qdisc:
        q = self._q
        if q is None:
            if self._closed:
                raise ValueError("I/O operation on a closed PlugQdisc")
            raise PlugQdiscError(_errno.ENOTCONN, "%s is not attached: call attach() or use "
                                 "`with`" % self._where)
        return q

    def attach(self, *, replace: bool = False) -> "PlugQdisc":
        """Create the plug qdisc (or adopt the plug qdisc with our handle already
        there) and let traffic pass. A qdisc of another kind at that place raises
        PlugQdiscError (EEXIST) unless ``replace=True``. Returns self."""
        q = self._open()
        try:
            q.attach(bool(replace))
        except OSError as e:
            _raise(e, "attach", self._where)
        return self

    def buffer(self) -> None:
        """Hold every packet from now on; starts a new epoch (TCQ_PLUG_BUFFER)."""
        try:
            self._live().buffer()
        except OSError as e:
            _raise(e, "buffer", self._where)

    def release_one(self) -> None:
        """Release the packets of the epoch before the latest :meth:`buffer`, keep
        holding the current one (TCQ_PLUG_RELEASE_ONE)."""
        try:
            self._live().release_one()
        except OSError as e:
            _raise(e, "release_one", self._where)

    def release(self) -> None:
        """Release everything held, in order, and let traffic pass until the next
        :meth:`buffer` (TCQ_PLUG_RELEASE_INDEFINITE)."""
        try:
            self._live().release_indefinite()
        except OSError as e:
            _raise(e, "release", self._where)

    release_indefinite = release

    def set_limit(self, nbytes: int) -> None:
        """Set the backlog limit in bytes (TCQ_PLUG_LIMIT)."""
        value = _check_limit(nbytes, "nbytes")
        try:
            self._live().set_limit(value)
        except OSError as e:
            _raise(e, "set_limit", self._where)

    def stats(self) -> Stats:
        """The qdisc's counters now."""
        try:
            return Stats(*self._live().stats())
        except OSError as e:
            _raise(e, "stats", self._where)

    def wait_buffered(self, packets: int = 1, *, timeout: Optional[float] = None) -> Stats:
        """Wait until at least ``packets`` packets are held (``qlen``), and return
        the stats. Raises TimeoutError after ``timeout`` seconds (None: forever).
        Sleeps between polls with the GIL released, so other threads run."""
        if isinstance(packets, bool) or not isinstance(packets, int):
            raise TypeError("packets must be an int, not %s" % type(packets).__name__)
        if packets < 0:
            raise ValueError("packets must be >= 0, not %d" % packets)
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 seconds or None, not %r" % (timeout,))
        deadline = None if timeout is None else time.monotonic() + timeout
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

    def detach(self, *, timeout: float = DETACH_TIMEOUT) -> None:
        """Release, wait (up to ``timeout`` s) for the backlog to drain, then delete
        the qdisc. Nothing held is lost: if it does not drain, the qdisc is left in
        place passing traffic and PlugQdiscError (ETIMEDOUT) is raised."""
        if timeout < 0:
            raise ValueError("timeout must be >= 0 seconds, not %r" % (timeout,))
        try:
            self._live().detach(int(timeout * 1000))
        except OSError as e:
            _raise(e, "detach", self._where)

    def close(self) -> None:
        """Free the socket. The qdisc stays as it is. Idempotent."""
        with self._lock:
            q, self._q = self._q, None
            self._closed = True
        if q is not None:
            q.close()

    def __enter__(self) -> "PlugQdisc":
        try:
            return self.attach()
        except BaseException:
            self.close()  # __exit__ will not run: do not keep the socket open
            raise

    def __exit__(self, *exc: object) -> None:
        self._finish()

    def _finish(self) -> None:
        """Release; detach if we created the qdisc; close. Every step runs even if
        an earlier one fails; the first error is raised."""
        errors: List[BaseException] = []
        q = self._q
        if q is not None and q.attached:
            steps = [self.release] + ([self.detach] if q.created else [])
            for step in steps:  # detach releases again, waits for the backlog, deletes
                try:
                    step()
                except BaseException as e:
                    errors.append(e)
        self.close()
        if errors:
            raise errors[0]

    @property
    def device(self) -> Union[str, int]:
        """The device's name (the kernel's, once attached; else as given)."""
        q = self._q
        return q.device if q is not None else self._device

    @property
    def ifindex(self) -> Optional[int]:
        """The device's index, once attached (None before)."""
        q = self._q
        return q.ifindex if q is not None else None

    @property
    def parent(self) -> str:
        return self._parent

    @property
    def handle(self) -> str:
        return self._handle

    @property
    def limit(self) -> Optional[int]:
        """The limit in bytes we gave the kernel (once attached; the default resolved)."""
        q = self._q
        if q is not None:
            return q.limit
        return self._limit or None

    @property
    def netns(self) -> Netns:
        return self._netns

    @property
    def is_buffering(self) -> bool:
        """Whether we last told the qdisc to hold (the kernel does not report it)."""
        q = self._q
        return q.is_buffering if q is not None else False

    @property
    def created(self) -> bool:
        """Whether our attach created the qdisc (False if it adopted one)."""
        q = self._q
        return q.created if q is not None else False

    @property
    def closed(self) -> bool:
        return self._closed


@contextlib.contextmanager
def plugged(
    device: Union[str, int] = "lo",
    *,
    parent: str = "root",
    handle: str = "1:",
    limit: Optional[int] = None,
    netns: Netns = None,
    replace: bool = False,
) -> Iterator[PlugQdisc]:
    """Hold every packet leaving ``device`` for the duration of the block.

    Yields the attached :class:`PlugQdisc`, holding from entry. On every way out
    (normal, exception, KeyboardInterrupt) it releases everything in order, and
    deletes the qdisc if it created it.
    """
    q = PlugQdisc(device, parent=parent, handle=handle, limit=limit, netns=netns)
    try:
        q.attach(replace=replace)
        q.buffer()
        yield q
    finally:
        q._finish()


# ---- the HAProxy helper's API, on one process-wide default qdisc ----

def attach(device: str, parent: str = "root", id: str = "1:", limit: int = 0) -> None:
    """``plug_qdisc_attach()``: create (or adopt) the process-wide default plug
    qdisc and let traffic pass. ``limit`` 0 means the device's default."""
    _check_device(device)
    if not isinstance(device, str):
        raise TypeError("device must be an interface name (str)")
    _parse_parent(parent)
    _parse_qdisc_handle(id)
    _check_limit(limit)
    try:
        _plugqdisc.plug_qdisc_attach(device, parent, id, limit)
    except OSError as e:
        _raise(e, "attach", "%r (parent %s, handle %s)" % (device, parent, id))


def _on_default(call: Callable[[], None], action: str) -> None:
    try:
        call()
    except OSError as e:
        if e.errno == _errno.ENOTCONN:
            raise PlugQdiscError(e.errno, "no default plug qdisc: call plugqdisc.attach() "
                                 "first") from None
        _raise(e, action, "the default plug qdisc")


def plug_buffer() -> None:
    """``plug_qdisc_plug_buffer()``: the default qdisc holds from now on."""
    _on_default(_plugqdisc.plug_qdisc_plug_buffer, "plug_buffer")


def release_indefinite_buffer() -> None:
    """``plug_qdisc_release_indefinite_buffer()``: release all and pass traffic."""
    _on_default(_plugqdisc.plug_qdisc_release_indefinite_buffer, "release_indefinite_buffer")
