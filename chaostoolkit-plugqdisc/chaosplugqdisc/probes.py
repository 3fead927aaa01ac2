"""Chaos Toolkit probes: what a hold holds on each target, and a wait until it holds."""

from typing import Any, Dict, List, Union

from . import _state

__all__ = ["hold_status", "wait_buffered", "holds"]


def hold_status(name: str = "hold") -> List[Dict[str, Any]]:
    """The hold NAME on each target: whether it holds, and its counters (qlen and
    backlog: packets and bytes held now; drops; packets and bytes let through)."""
    g = _state.get(name)
    stats = g.stats()
    return [dict(_state.entry(h), expired=h.expired, **st._asdict()) for h, st in zip(g, stats)]


def wait_buffered(name: str = "hold", packets: int = 1,
                  timeout: Union[float, None] = 10) -> List[Dict[str, Any]]:
    """Wait until the hold NAME holds at least PACKETS packets on every target; the
    activity fails (TimeoutError) if that takes more than TIMEOUT seconds. Returns each
    target's counters."""
    g = _state.get(name)
    stats = g.wait_buffered(packets, timeout=timeout)
    return [dict(target=h.name, **st._asdict()) for h, st in zip(g, stats)]


def holds() -> int:
    """How many holds are on now (a steady-state probe: tolerance 0, nothing held; the
    log names them)."""
    names = _state.names()
    if names:
        _state.logger.info("plugqdisc: holds on: %s" % ", ".join(names))
    return len(names)
