"""How a message spells what the user wrote: as Python (``dport=(5, 10)``,
``replace=True``) or on the command line (``--dport 5-10``, ``--replace``).

The checks of :class:`~plugqdisc.Match` and the advice of the error funnel are
written once; they take one of these two spellings, so that each message speaks
the language its reader typed, and never advises what that interface cannot do.
"""

from __future__ import annotations

from typing import Optional


class Python:
    """Keyword arguments, tuples, reprs."""

    #: how to hold what either of two matches selects (None: this interface cannot)
    either: Optional[str] = "match=[Match(mark=...), Match(...)]"
    #: how to replace the qdisc in the way
    replace = "pass replace=True"
    #: the other way out of a taken place (None: this interface has no such option)
    elsewhere: Optional[str] = "use another parent/handle"
    #: what the fields of a match are called, together
    fields = "fields"
    #: what to do when the qdisc was deleted behind the holder's back
    again = "attach() again"
    #: what to do when released packets did not drain in time (the qdisc stays, passing)
    drain = "call detach() again, with a longer timeout"
    #: how to hold only what one needs, beside other selective holds
    select = "a Match"
    #: how to hold with a plain plug that another holder has made
    share = "share it (a plain hold with the same handle)"
    #: how to hold what two holds would select, in one (None: this interface cannot)
    combine: Optional[str] = "combine what two holds select into one hold (a list of Match)"

    def name(self, field: str) -> str:
        return field

    def setting(self, field: str, value: object) -> str:
        return "%s=%r" % (field, value)

    def flag(self, field: str) -> str:
        return "%s=True" % field

    def value(self, value: object) -> str:
        return repr(value)

    def ports(self, low: int, high: int) -> str:
        return "(%d, %d)" % (low, high)

    def mark(self, value: int, mask: int) -> str:
        return "(%#x, %#x)" % (value, mask)


class CommandLine(Python):
    """Options as ``plugqdisc hold`` takes them."""

    either = None  # one hold, one match: the command line has no list of matches
    replace = "pass --replace"
    elsewhere = None  # no --parent or --handle: a hold is always at the root
    fields = "options"
    again = "run the command again"
    drain = "`plugqdisc cleanup` removes it once it has drained"
    select = "match options (--proto, --dport, ...)"
    share = "share it (`plugqdisc hold DEV` without match options)"
    combine = None

    def name(self, field: str) -> str:
        return "--" + field.replace("_", "-")

    def setting(self, field: str, value: object) -> str:
        return "--%s %s" % (field.replace("_", "-"), value)

    def flag(self, field: str) -> str:
        return self.name(field)

    def value(self, value: object) -> str:
        return str(value)

    def ports(self, low: int, high: int) -> str:
        return "%d-%d" % (low, high)

    def mark(self, value: int, mask: int) -> str:
        return "%#x/%#x" % (value, mask)


PYTHON = Python()
COMMAND_LINE = CommandLine()
