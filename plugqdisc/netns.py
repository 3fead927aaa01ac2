"""Network namespaces for tests, benchmarks and reproduction scripts.

A plug qdisc holds *everything* leaving a device, so a test that plugs ``lo``
on a developer's machine freezes every local connection of that machine. A
fresh network namespace has its own ``lo`` (and nothing else): plug it, and no
other program notices. This module makes one for the calling thread::

    from plugqdisc.netns import NetNamespace
    from plugqdisc import plugged

    with NetNamespace():              # this thread now has its own lo, up
        with plugged("lo") as q:      # holds only this namespace's packets
            ...
    # the thread is back in the namespace it came from

Creating a namespace needs ``CAP_SYS_ADMIN`` (root, or inside ``unshare -rn``);
inside the lab (``python -m plugqdisc.lab``) commands run as root.

Namespaces belong to threads: :class:`NetNamespace` moves only the thread that
enters it; threads and processes (``subprocess``) that it starts while inside
are born in it, and sockets keep the namespace they were made in. Standard
library only; importing this module opens nothing.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import functools
import os
import select
import socket
import struct
import time
from typing import Callable, Dict, Optional, Type

__all__ = ["NetNamespace", "CLONE_NEWNET", "UDP_OVERHEAD", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE",
           "TCP_HOLD_SYSCTLS", "unshare", "setns", "link_up", "sysctl", "tcp_for_holding",
           "UdpStream"]

#: The ``unshare(2)`` / ``setns(2)`` flag for a network namespace (``<sched.h>``).
CLONE_NEWNET = 0x40000000

#: Bytes a UDP/IPv4 datagram takes on ``lo`` beyond its payload, as ``sch_plug``
#: counts them in ``backlog`` and against ``limit``: 14 (Ethernet header) + 20
#: (IPv4) + 8 (UDP).
UDP_OVERHEAD = 42

#: ``setsockopt(SOL_SOCKET, ...)`` options that set a socket's send / receive buffer
#: past ``net.core.wmem_max`` / ``rmem_max`` (``CAP_NET_ADMIN``); the :mod:`socket`
#: module lacks them. Held packets stay charged to their sender's send buffer.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

#: The namespace's TCP sysctls that otherwise keep a connection from putting much into
#: a qdisc that holds (the held segments are not freed, nor acked): autocorking merges
#: writes, TCP small queues (limit_output_bytes) throttle the socket, and a sender idle
#: longer than its retransmission timeout has its window cut (RFC 2861) unless
#: slow_start_after_idle is 0.
TCP_HOLD_SYSCTLS = {
    "net.ipv4.tcp_autocorking": 0,
    "net.ipv4.tcp_limit_output_bytes": 256 << 20,
    "net.ipv4.tcp_slow_start_after_idle": 0,
}

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ_FLAGS = "16sH22x"  # struct ifreq: the name, then ifr_flags; 40 bytes in all
_THREAD_NS = "/proc/thread-self/ns/net"


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _raise(call: str) -> None:
    err = ctypes.get_errno()
    text = "%s: %s" % (call, os.strerror(err))
    if err == _errno.EPERM:
        text += ("; a network namespace needs CAP_SYS_ADMIN: run as root, inside "
                 "`unshare -rn`, or in the lab (python -m plugqdisc.lab -- CMD)")
    raise OSError(err, text)


def unshare(flags: int) -> None:
    """``unshare(2)``: give the calling thread new namespaces of the kinds in
    ``flags`` (``CLONE_NEWNET``: a new, empty network namespace). Raises
    :class:`OSError` with the errno (``PermissionError`` without the capability)."""
    if _libc().unshare(ctypes.c_int(flags)) != 0:
        _raise("unshare(0x%x)" % flags)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """``setns(2)``: move the calling thread into the namespace open as ``fd``
    (``nstype`` 0 accepts any kind)."""
    if _libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        _raise("setns(%d, 0x%x)" % (fd, nstype))


def link_up(name: str) -> None:
    """``ip link set NAME up`` in the calling thread's namespace, by ioctl: no
    process is started (starting one costs about a second and a half in the lab)."""
    raw = name.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            reply = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ_FLAGS, raw, 0))
            flags = struct.unpack(_IFREQ_FLAGS, reply)[1]
            if not flags & _IFF_UP:
                fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ_FLAGS, raw, flags | _IFF_UP))
        except OSError as e:
            raise OSError(e.errno, "cannot bring %s up: %s" % (name, e.strerror), name) from None


def sysctl(name: str, value: object, *, missing_ok: bool = False) -> bool:
    """Write ``value`` to the sysctl ``name`` (``"net.ipv4.tcp_autocorking"``, or a
    path below ``/proc/sys`` with slashes when a part holds a dot). ``net.*``
    sysctls belong to the network namespace: this sets it for the calling thread's.
    Returns True. A sysctl this kernel lacks raises :class:`FileNotFoundError`, or
    returns False with ``missing_ok``."""
    path = os.path.join("/proc/sys", name if "/" in name else name.replace(".", "/"))
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except FileNotFoundError:
        if missing_ok:
            return False
        raise FileNotFoundError(_errno.ENOENT, "this kernel has no sysctl %s" % name,
                                path) from None
    return True


def tcp_for_holding(*, missing_ok: bool = False) -> Dict[str, bool]:
    """Set :data:`TCP_HOLD_SYSCTLS` in the calling thread's namespace (a fresh one: they
    change every TCP connection in it). Returns ``{name: whether it was set}``; a sysctl
    this kernel lacks raises :class:`FileNotFoundError`, or is False with ``missing_ok``."""
    return {name: sysctl(name, value, missing_ok=missing_ok)
            for name, value in TCP_HOLD_SYSCTLS.items()}


class NetNamespace:
    """A new network namespace with ``lo`` up, entered by the calling thread.

    ``with NetNamespace() as ns:`` moves the thread into a new namespace;
    leaving the block moves it back to the one it was in, whatever way the block
    ends. While inside, ``ns.fd`` is an open file descriptor of the namespace:
    pass it as ``PlugQdisc(..., netns=ns.fd)`` from another thread, or come back
    into it with :meth:`enter` after visiting another one. The namespace lives
    on while anything uses it (a socket, a process started inside); once nothing
    does, the kernel removes it with all its devices and qdiscs.

    Enter and leave from the same thread. Entering needs ``CAP_SYS_ADMIN``
    (:class:`PermissionError` otherwise, naming the fix).
    """

    def __init__(self) -> None:
        self._fd: Optional[int] = None
        self._saved: Optional[int] = None

    @property
    def fd(self) -> int:
        """A file descriptor of the namespace, open while inside the ``with`` block."""
        if self._fd is None:
            raise ValueError("the namespace is not entered: use `with NetNamespace() as ns`")
        return self._fd

    def enter(self) -> None:
        """Move the calling thread (back) into this namespace."""
        setns(self.fd, CLONE_NEWNET)

    def __enter__(self) -> "NetNamespace":
        if self._saved is not None:
            raise RuntimeError("this NetNamespace is already entered; make a new one")
        saved = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            unshare(CLONE_NEWNET)
        except BaseException:
            os.close(saved)
            raise
        self._saved = saved
        try:
            self._fd = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
            link_up("lo")
        except BaseException:
            self._leave()
            raise
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: object) -> None:
        self._leave()

    def _leave(self) -> None:
        saved, fd = self._saved, self._fd
        self._saved = self._fd = None
        try:
            if saved is not None:
                setns(saved, CLONE_NEWNET)
        finally:
            for f in (saved, fd):
                if f is not None:
                    os.close(f)


class UdpStream:
    """A steady stream of UDP datagrams over ``lo`` (127.0.0.1), counted at both ends:
    what a change of the device's qdiscs loses of traffic that nothing holds.

    ``with UdpStream(rate=1000) as s:`` starts a forked sender, numbering its datagrams
    and paced at ``rate`` a second, and a forked receiver that counts them; leaving the
    block (or :meth:`stop`) stops the sender, lets what is in flight arrive, and fills
    :attr:`sent`, :attr:`received` and :attr:`lost`. Both sockets are made in the calling
    thread's namespace. Both children run at ``nice`` (0: as the caller); at 19, a child
    that wakes does not preempt the caller, and runs when the caller sleeps or its time
    slice ends. Uses ``fork()``: call it from a process whose other threads hold no locks
    the children need (plain Python's do not).
    """

    def __init__(self, rate: float = 1000.0, *, nice: int = 0, payload: int = 64) -> None:
        if not rate > 0 or payload < 4:
            raise ValueError("UdpStream needs a rate above 0 and a payload of 4 bytes or more")
        self.rate, self.nice, self.payload = rate, nice, payload
        self.sent = self.received = 0
        self._pids: Dict[str, int] = {}
        self._stop: Dict[str, int] = {}
        self._out: Dict[str, int] = {}

    @property
    def lost(self) -> int:
        """Datagrams sent and never received (after :meth:`stop`)."""
        return self.sent - self.received

    def start(self) -> "UdpStream":
        """Start the receiver, then the sender. Returns self."""
        if self._pids:
            raise RuntimeError("this UdpStream is already started")
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.bind(("127.0.0.1", 0))
            try:  # past rmem_max: a receiver that is not scheduled for a while loses nothing
                rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            except PermissionError:
                pass
            addr = rx.getsockname()
            self._fork("receiver", lambda stop: self._receive(rx, stop))
            self._fork("sender", lambda stop: self._send(tx, addr, stop))
        except BaseException:
            self.stop()
            raise
        finally:
            rx.close()
            tx.close()
        return self

    def stop(self) -> None:
        """Stop the sender, then the receiver once nothing has arrived for 0.2 s; fill
        :attr:`sent` and :attr:`received`. Does nothing the second time."""
        counts = {}
        for who in ("sender", "receiver"):
            if who not in self._pids:
                continue
            os.close(self._stop.pop(who))      # end of file: stop
            with os.fdopen(self._out.pop(who)) as f:
                text = f.read()
            os.waitpid(self._pids.pop(who), 0)
            counts[who] = int(text) if text.strip() else 0
        if counts:
            self.sent, self.received = counts.get("sender", 0), counts.get("receiver", 0)

    def __enter__(self) -> "UdpStream":
        return self.start()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: object) -> None:
        self.stop()

    def _fork(self, who: str, body: Callable[[int], int]) -> None:
        stop_r, stop_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into the caller
            code = 0
            try:
                os.close(stop_w)
                os.close(out_r)
                if self.nice:
                    os.nice(self.nice)
                os.write(out_w, str(body(stop_r)).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(stop_r)
        os.close(out_w)
        self._pids[who], self._stop[who], self._out[who] = pid, stop_w, out_r

    def _send(self, tx: socket.socket, addr: "tuple[str, int]", stop: int) -> int:
        pad = b"\0" * (self.payload - 4)
        n = 0
        t0 = time.monotonic()
        while True:
            tx.sendto(struct.pack("!I", n) + pad, addr)
            n += 1
            wait = t0 + n / self.rate - time.monotonic()
            if select.select([stop], [], [], max(wait, 0.0))[0]:
                return n

    def _receive(self, rx: socket.socket, stop: int) -> int:
        n = 0
        stopping = False
        while True:
            ready = select.select([rx.fileno()] + ([] if stopping else [stop]), [], [],
                                  0.2 if stopping else None)[0]
            if not ready:
                return n                       # stopped, and nothing for 0.2 s
            if stop in ready:
                stopping = True
            if rx.fileno() in ready:
                rx.recv(65536)
                n += 1
