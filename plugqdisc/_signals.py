"""Signals deferred while a hold is undone: a cleanup that a signal handler cuts short
leaves the device held, or its tree in place, for as long as the process lives.

A Python signal handler runs in the main thread, between two bytecodes, wherever that
thread happens to be; if it raises (``KeyboardInterrupt``, a SIGTERM handler that
raises) the exception appears there. :func:`defer` stands a recorder in for every
Python-level handler while a cleanup runs, and :func:`resume` puts the handlers back
and then runs each one for what it recorded, so its exception (if it raises one)
propagates after the cleanup, not in the middle of it.

Why handlers are swapped rather than signals blocked (``pthread_sigmask``): a signal
sent to the process is delivered to any thread that does not block it, and CPython then
runs the Python handler in the main thread all the same; a mask on the main thread alone
defers nothing in a program with threads. Only the main thread can set handlers, and only
it runs them: in other threads nothing needs deferring.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Tuple

Handler = Callable[[int, Optional[FrameType]], Any]


class Deferral:
    """What one :func:`defer` changed, and what arrived meanwhile."""

    def __init__(self) -> None:
        self.saved: Dict[int, Handler] = {}  #: signal -> the handler the recorder stands in for
        self.caught: List[Tuple[int, Optional[FrameType]]] = []  #: signals that arrived
        self.raised: List[BaseException] = []  #: raised by a handler before the recorder was in

    def record(self, signum: int, frame: Optional[FrameType]) -> None:
        self.caught.append((signum, frame))


_active: Optional[Deferral] = None  # the outermost deferral in force (main thread only)


def defer(d: Deferral) -> bool:
    """Put D's recorder in place of each Python signal handler. True if this call did (the
    caller then calls :func:`resume`); False in another thread or inside another deferral.
    An exception that a handler raises before its recorder is in is kept in D.raised, and
    the step retried: past its first line this never raises."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        return False
    for sig in signal.valid_signals():
        for _ in range(3):  # a handler's exception, then again: a few signals at most
            try:
                now = signal.getsignal(sig)
                if callable(now) and now != d.record:
                    d.saved.setdefault(sig, now)
                    signal.signal(sig, d.record)  # may first run a pending handler
                break
            except (ValueError, OSError):
                break  # a signal Python may not handle (SIGKILL, a real-time one in use)
            except BaseException as e:
                d.raised.append(e)
    _active = d
    return True


def resume(d: Deferral) -> None:
    """Put back the handlers D stood in for, then run each for the signals that arrived
    (in order); the first exception a handler raises, or one raised before D was in place,
    propagates. The handlers are back before any of them runs."""
    global _active
    _active = None
    for sig, handler in d.saved.items():
        for _ in range(3):
            try:
                signal.signal(sig, handler)  # a pending signal runs the recorder: no raise
                break
            except (ValueError, OSError):
                break
            except BaseException as e:  # pragma: no cover - another handler, set meanwhile
                d.raised.append(e)
    first = d.raised[0] if d.raised else None
    for signum, frame in d.caught:
        saved = d.saved.get(signum)
        if saved is None:
            continue
        try:
            saved(signum, frame)
        except BaseException as e:
            if first is None:
                first = e
    if first is not None:
        raise first
