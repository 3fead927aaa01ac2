"""A hold that lets go by itself: :meth:`PlugQdisc.release_when_holding` and
:meth:`PlugQdisc.release_after`.

Some races block the test's own thread while the hold holds: a client that sends its
request and waits for the answer in one call (``urllib.request.urlopen``, a driver's
``query()``) cannot release the server's reset it is waiting behind. So the library
releases for it, from one daemon thread of its own per hold, which polls the hold's
counters (the C calls release the GIL) or sleeps, then calls ``release()``.

The thread never outlives the hold: ``release()``, ``detach()``, ``close()`` and every
way out of a ``with`` block cancel it and wait for it first. It holds the hold only by
a weak reference, so a forgotten object is not kept alive by it. It prints nothing: what
goes wrong in it (the hold never reached N packets in time, a failed call) is kept and
raised by the hold's next ``release()``, ``detach()``, ``close()``, automatic release,
or by the end of its ``with`` block; a timeout releases all the same.
"""

from __future__ import annotations

import errno as _errno
import threading
import time
import weakref
from typing import Any, Callable, Optional

from ._util import add_note, seconds

#: Where a hold keeps its automatic release (in the object's own __dict__).
_ATTR = "_auto_release"
#: The thread's name, as threading.enumerate() and ps show it.
THREAD_NAME = "plugqdisc-auto-release"


class _Pending:
    """One automatic release: its thread, the event that cancels it, what went wrong."""

    def __init__(self, q: Any, what: str, body: Callable[["_Pending"], None]) -> None:
        self.ref = weakref.ref(q)
        self.what = what
        self.cancelled = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(body,), name=THREAD_NAME,
                                       daemon=True)

    def _run(self, body: Callable[["_Pending"], None]) -> None:
        try:
            body(self)
        except BaseException as e:  # kept for the holder's next call, never printed
            self.keep(e)
            self.release()

    def keep(self, e: BaseException) -> None:
        if self.error is None:
            add_note(e, "plugqdisc: raised in the automatic release %s (thread %s)"
                     % (self.what, THREAD_NAME))
            self.error = e

    def hold(self) -> Any:
        """The hold, if it still holds and this release is not cancelled; else None."""
        q = self.ref()
        if (q is None or self.cancelled.is_set() or q.closed or not q.attached
                or not q.is_buffering):
            return None  # cancelled, or the hold ended another way (max_hold, ...)
        return q

    def release(self) -> None:
        q = self.ref()
        if q is None or self.cancelled.is_set() or q.closed or not q.attached:
            return
        try:
            q.release()
        except BaseException as e:
            self.keep(e)


def _when_holding(packets: int, timeout: Optional[float]) -> Callable[[_Pending], None]:
    deadline = None if timeout is None else time.monotonic() + timeout

    def body(p: _Pending) -> None:
        pause = 0.0005
        while True:
            q = p.hold()
            if q is None:
                return
            st = q.stats()
            if st.qlen >= packets:
                break
            if deadline is not None and time.monotonic() >= deadline:
                p.keep(TimeoutError(
                    _errno.ETIMEDOUT, "%d of %d packets held on %s after %s s: released "
                    "then" % (st.qlen, packets, q._where, timeout)))
                break
            del q  # hold it only while using it: a forgotten hold can be collected
            p.cancelled.wait(pause)
            pause = min(pause * 2, 0.02)
        del q
        p.release()
    return body


def _after(delay: float) -> Callable[[_Pending], None]:
    def body(p: _Pending) -> None:
        if not p.cancelled.wait(delay):
            p.release()
    return body


def _start(q: Any, what: str, body: Callable[[_Pending], None]) -> None:
    p = q.__dict__.get(_ATTR)
    if p is not None and p.thread.is_alive():
        raise RuntimeError("%s: the automatic release %s is still pending on %s; one at a "
                           "time: release() (or detach()) cancels it" % (what, p.what,
                                                                         q._where))
    raise_kept(q)
    if q.closed:
        raise ValueError("%s: the hold is closed" % what)
    if not q.attached or not q.is_buffering:
        raise RuntimeError("%s: %s is not holding: attach() and buffer() first (plugged() "
                           "holds from entry)" % (what, q._where))
    p = _Pending(q, what, body)
    q.__dict__[_ATTR] = p
    p.thread.start()


def release_when_holding(q: Any, packets: int, timeout: Optional[float]) -> None:
    if isinstance(packets, bool) or not isinstance(packets, int):
        raise TypeError("packets must be an int, not %s" % type(packets).__name__)
    if packets < 1:
        raise ValueError("packets must be >= 1, not %d" % packets)
    limit = seconds(timeout, "timeout")
    what = "release_when_holding(%d%s)" % (packets, "" if timeout is None
                                           else ", timeout=%r" % (timeout,))
    _start(q, what, _when_holding(packets, limit))


def release_after(q: Any, delay: float) -> None:
    limit = seconds(delay, "seconds")
    if limit is None:
        raise ValueError("release_after(%r): a delay needs a finite number of seconds "
                         "(to hold until released by hand, call nothing)" % (delay,))
    _start(q, "release_after(%r)" % (delay,), _after(limit))


def stop(q: Any) -> None:
    """Cancel Q's automatic release, if one is pending, and wait for its thread to end.
    What it kept stays kept (for :func:`raise_kept`). From the thread itself (its own
    ``release()``): nothing."""
    p = q.__dict__.get(_ATTR)
    if p is None or p.thread.ident == threading.get_ident():
        return
    p.cancelled.set()
    p.thread.join()


def raise_kept(q: Any) -> None:
    """Raise what Q's ended automatic release kept (once), and forget it."""
    p = q.__dict__.get(_ATTR)
    if p is None or p.thread.is_alive():
        return  # none, or still running (this is its own release)
    if q.__dict__.pop(_ATTR, None) is p and p.error is not None:
        error, p.error = p.error, None
        raise error


def pending(q: Any) -> bool:
    """Whether an automatic release is pending on Q."""
    p = q.__dict__.get(_ATTR)
    return p is not None and p.thread.is_alive()
