"""Signal handlers deferred while a hold is undone (plugqdisc._signals), on the host: the
handler runs after, its exception propagates, and nothing changes outside the main
thread or inside another deferral."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import List, Optional

import pytest

from plugqdisc import _signals


class Stop(Exception):
    pass


def test_a_handler_runs_after_the_deferral_and_its_exception_propagates() -> None:
    ran: List[str] = []

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        ran.append("handler")
        raise Stop(signum)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        d = _signals.Deferral()
        assert _signals.defer(d)
        os.kill(os.getpid(), signal.SIGUSR1)
        ran.append("cleanup")  # not cut short: the recorder ran instead
        assert signal.getsignal(signal.SIGUSR1) != handler
        with pytest.raises(Stop):
            _signals.resume(d)
        assert ran == ["cleanup", "handler"]
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_nothing_to_defer_in_another_thread_or_inside_a_deferral() -> None:
    outer = _signals.Deferral()
    assert _signals.defer(outer)
    try:
        assert not _signals.defer(_signals.Deferral())
    finally:
        _signals.resume(outer)
    result: List[bool] = []
    t = threading.Thread(target=lambda: result.append(_signals.defer(_signals.Deferral())))
    t.start()
    t.join()
    assert result == [False]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
