"""The guardian's Python side: what a hold must not outlive.

The C core forks one guardian per holding process (csrc/guard.c); it releases every
hold of a process that dies, however it dies. Here: the ``guard``/``max_hold``
arguments, and the two ways out that are Python's own, garbage collection and
interpreter exit, where an object still holding releases (and removes what it
created) and says so with a ``ResourceWarning``, as an unclosed file does.
"""

from __future__ import annotations

import atexit
import math
import os
import warnings
import weakref
from typing import Any, Optional

from ._util import seconds

#: Attached objects of this process (not of a parent we were forked from).
_live: "weakref.WeakSet[Any]" = weakref.WeakSet()


def max_hold_ms(max_hold: Optional[float], guard: bool) -> int:
    """Milliseconds for the C core (0: no limit), or a clear error."""
    if not isinstance(guard, bool):
        raise TypeError("guard must be True or False, not %s" % type(guard).__name__)
    if max_hold is None:
        return 0
    limit = seconds(max_hold, "max_hold", zero=False)
    if not guard:
        raise ValueError("max_hold needs the guardian: leave guard=True")
    if limit is None or limit * 1000 >= 2**32:
        return 0  # about 50 days or more: no limit
    return max(1, math.ceil(limit * 1000))


def track(q: Any) -> None:
    _live.add(q)


def untrack(q: Any) -> None:
    _live.discard(q)


def leaked(q: Any) -> bool:
    """Whether Q, going away, still holds or leaves on the device what it created."""
    try:
        return bool(q.attached and (q.is_buffering or q.created))
    except Exception:
        return False


def finish_leaked(q: Any, why: str) -> None:
    """Release Q (and detach what it created), with a ResourceWarning naming it."""
    warnings.warn("%r was still attached %s: released and detached now; detach() it, or "
                  "use `with`" % (q, why), ResourceWarning, source=q, stacklevel=2)
    try:
        q._finish()
    except Exception:
        pass  # the guardian is still there for what could not be undone here


@atexit.register
def _at_exit() -> None:
    for q in list(_live):
        if leaked(q):
            finish_leaked(q, "at interpreter exit")


def _forget_inherited() -> None:
    # A forked child's exit must not undo its parent's holds.
    _live.clear()


os.register_at_fork(after_in_child=_forget_inherited)
