"""The holds of this process, by name: an action makes them, a probe, a rollback or the
control reaches them later (Chaos Toolkit runs all of those in one process).

Every way out releases: :func:`finish` (the release action), :func:`finish_all` (the
release_all action and rollback, the control at the experiment's end and at its cleanup),
and an ``atexit`` hook for an interpreter that exits with holds left. If the process is
killed outright (SIGKILL), each target's remote end sees its input end and releases
and removes the hold itself (plugqdisc's stdin lease).
"""

import atexit
import logging
import threading
from typing import Any, Dict, List

from plugqdisc.remote import Group

logger = logging.getLogger("chaostoolkit")

_holds: Dict[str, Group] = {}
_lock = threading.RLock()
_hooked = False


def add(name: str, g: Group) -> None:
    global _hooked
    with _lock:
        if name in _holds:
            raise ValueError("a hold named %r is already on: release it first "
                             "(chaosplugqdisc.actions.release), or give another name" % name)
        _holds[name] = g
        if not _hooked:
            atexit.register(finish_all)
            _hooked = True


def get(name: str) -> Group:
    with _lock:
        try:
            return _holds[name]
        except KeyError:
            raise ValueError("no hold named %r is on (holds on: %s)" % (
                name, ", ".join(sorted(_holds)) or "none")) from None


def names() -> List[str]:
    with _lock:
        return sorted(_holds)


def entry(h: Any) -> Dict[str, Any]:
    """What the journal shows of one target."""
    info = h.info
    return {"target": h.name, "device": h.device, "host": info.get("host"),
            "pid": info.get("pid"), "direction": h.direction, "match": info.get("match"),
            "handle": info.get("handle"), "buffering": h.is_buffering}


def finish(name: str) -> List[Dict[str, Any]]:
    """Release the hold NAME on every target, in order, remove it, end the sessions;
    each target's counters: packets held when released, packets the plug let through in
    all (released), dropped."""
    with _lock:
        g = get(name)
        del _holds[name]
    try:
        held = g.stats()
        g.release()
        final = g.detach()
    except BaseException:
        g.close()  # every session ends: each remote end releases and removes its hold
        raise
    out = []
    for h, before, after in zip(g, held, final):
        out.append(dict(entry(h), buffering=False, held=before.qlen, held_bytes=before.backlog,
                        released=after.packets, dropped=after.drops))
    logger.info("plugqdisc: released %r: %s" % (name, ", ".join(
        "%s held %d, dropped %d" % (e["target"], e["held"], e["dropped"]) for e in out)))
    return out


def finish_all() -> Dict[str, List[Dict[str, Any]]]:
    """Release every hold (each as :func:`finish`); every one is tried, then the first
    failure is raised."""
    results: Dict[str, List[Dict[str, Any]]] = {}
    errors: List[BaseException] = []
    for name in names():
        try:
            results[name] = finish(name)
        except Exception as e:
            logger.error("plugqdisc: releasing %r failed: %s" % (name, e))
            errors.append(e)
    if errors:
        raise errors[0]
    return results


def discard(name: str) -> None:
    """Forget the hold NAME and end its sessions (each remote end releases and removes
    its hold): for a hold that failed to start."""
    with _lock:
        g = _holds.pop(name, None)
    if g is not None:
        g.close()
