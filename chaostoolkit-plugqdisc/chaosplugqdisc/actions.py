"""Chaos Toolkit actions: hold packets on one or several machines, release them."""

import shlex
from typing import Any, Dict, List, Union

from plugqdisc import Match
from plugqdisc.remote import Group, RemoteHold

from . import _state

__all__ = ["hold", "release", "release_all"]


def _prefixes(targets: Any) -> List[List[str]]:
    """Argv prefixes from TARGETS: None (this machine), a string (one target, split as a
    shell would), or a list of targets, each a string or a list of words."""
    if targets is None:
        return [[]]
    if isinstance(targets, str):
        return [shlex.split(targets)]
    if not isinstance(targets, (list, tuple)) or not targets:
        raise TypeError("targets must be None (this machine), a command prefix such as "
                        "'ssh -T db2', or a non-empty list of them, not %r" % (targets,))
    out = []
    for t in targets:
        if isinstance(t, str):
            out.append(shlex.split(t))
        elif isinstance(t, (list, tuple)) and all(isinstance(w, str) for w in t):
            out.append(list(t))
        else:
            raise TypeError("each target is a command prefix, a string ('ssh -T db2') or a "
                            "list of words (['ssh', '-T', 'db2']), not %r" % (t,))
    return out


def _pair(value: Any) -> Any:
    """JSON has no tuples: a [low, high] port range or [value, mask] mark is a list."""
    return tuple(value) if isinstance(value, list) else value


def hold(device: str, targets: Any = None, name: str = "hold", direction: str = "egress",
         proto: Union[str, int, None] = None, src: Union[str, None] = None,
         dst: Union[str, None] = None, sport: Any = None, dport: Any = None,
         syn: bool = False, mark: Any = None, limit: Union[int, None] = None,
         max_hold: Union[float, None] = None, netns: Union[str, None] = None,
         command: Any = None, allow_transport_device: bool = False, fin: bool = False,
         rst: bool = False) -> List[Dict[str, Any]]:
    """Hold the packets DEVICE sends (direction "ingress": receives) on every target at
    once, all of them or those the match fields select (proto, src, dst, sport, dport,
    syn, mark, fin, rst: as plugqdisc.Match; a port range or a mark with its mask is a [low, high]
    / [value, mask] list). targets: None (this machine), a command prefix ("ssh -T db2",
    "kubectl exec -i pod --") or a list of them; command: the plugqdisc to run there
    (default "plugqdisc"). The hold is kept under NAME until release(NAME), release_all,
    or the experiment's end. Returns one entry per target (target, device, host, pid,
    match, handle, buffering). If one target fails, none holds."""
    fields = {"proto": proto, "src": src, "dst": dst, "sport": _pair(sport),
              "dport": _pair(dport), "mark": _pair(mark)}
    given = {k: v for k, v in fields.items() if v is not None}
    for flag, on in (("syn", syn), ("fin", fin), ("rst", rst)):
        if on:
            given[flag] = True
    match = Match(**given) if given else None
    cmd = shlex.split(command) if isinstance(command, str) else command
    holds = [RemoteHold(device, via=via, command=cmd, match=match, direction=direction,
                        limit=limit, max_hold=max_hold, netns=netns,
                        allow_transport_device=allow_transport_device)
             for via in _prefixes(targets)]
    g = Group(holds)
    _state.add(name, g)  # before anything starts: release_all then finds it, whatever happens
    try:
        g.attach()
        g.buffer()
    except BaseException:
        _state.discard(name)  # every session ends: nothing stays held
        raise
    return [_state.entry(h) for h in g]


def release(name: str = "hold") -> List[Dict[str, Any]]:
    """Release the hold NAME on every target, in order, and remove it. Returns each
    target's counters: held (packets held when released), held_bytes, released (packets
    the plug let through in all), dropped."""
    return _state.finish(name)


def release_all() -> Dict[str, List[Dict[str, Any]]]:
    """Release every hold of this experiment (as release); a rollback for every end:
    use it with "runtime": {"rollbacks": {"strategy": "always"}}. Returns, by name, each
    target's counters."""
    return _state.finish_all()
