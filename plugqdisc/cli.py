"""The command line: ``plugqdisc hold | release | status | cleanup | lab``.

Nothing here the API cannot do: ``hold`` is :func:`plugqdisc.plugged` around a
command or a wait; ``status``, ``release`` and ``cleanup`` read one dump of the
namespace's qdiscs (``plugqdisc._cli_inventory``) and act through
:class:`plugqdisc.PlugQdisc`; ``lab`` is ``python -m plugqdisc.lab``.
Kernel and system errors: one line on stderr naming the problem and the fix,
exit status 1. Usage errors: exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import Match, PlugQdisc, PlugQdiscError, Stats, __version__, _plugqdisc, lab
from . import _cli_inventory as _inventory, _cli_records as _registry, _control
from ._errors import translate
from ._match import from_options
from ._util import ROOT, handle_text
from ._words import COMMAND_LINE

PROG = "plugqdisc"
#: Exit statuses, as a shell has them.
ERROR, USAGE, NOT_EXECUTABLE, NOT_FOUND = 1, 2, 126, 127

HOLD_EPILOG = """\
examples:
  plugqdisc hold lo --dport 80 --syn -- systemctl reload haproxy
      hold new connections to port 80 while haproxy reloads; exit with its status
  plugqdisc hold eth0 --ingress --src 10.0.0.7
      hold what 10.0.0.7 sends to eth0 until Enter, Ctrl-C or SIGTERM

Without CMD the hold lasts until Enter, SIGINT or SIGTERM (an empty or closed
standard input, as in `plugqdisc hold lo &`, waits for a signal). With CMD it
lasts until CMD ends, however it ends: Ctrl-C reaches CMD, SIGTERM is passed on
to it; the exit status is CMD's (128+N if signal N killed it). The guardian
releases the hold if plugqdisc itself is killed."""

RELEASE_EPILOG = """\
examples:
  plugqdisc release lo
      let go of everything held on lo: plain plug qdiscs, the plug of each selective
      hold, and the ifb plug of each ingress hold; they stay, passing traffic
  plugqdisc release lo --handle 3:
      let go of one hold only: the one whose plug has handle 3: (`plugqdisc status
      lo` shows each hold's handle; add --ingress for an ingress hold's)"""

STATUS_EPILOG = """\
example:
  plugqdisc status --json | jq '.[] | select(.qlen > 0)'

One line per hold. mode: plain (a plug qdisc anywhere, tc's included), match (a
selective hold's plug, in band k of the prio fffe: that a device's selective holds
share at its root: parent fffe:k), ingress (an ingress hold's plug, on its own
ifb pqifbN-n). holder: the pid of the process that made it, and "gone" if it is
no longer running ("?": no record says); several pids: the processes that share
a plain plug. match: what the hold selects; where two holds select a packet, the
one attached first holds it."""

CLEANUP_EPILOG = """\
example:
  plugqdisc cleanup lo

Releases, drains and removes each hold that plugqdisc made (it keeps a record
of each in /run/plugqdisc) and whose process is gone: plain plug qdiscs, a
selective hold's band, an ingress hold's ifb; the prio and the ingress qdisc
that holds on a device share go with the last of them. The holds of living
processes on the same device stay, and keep holding; so does a plain plug that
a living process shares. A qdisc with no such record (a user's own, one made by
tc) is never touched; `plugqdisc release` lets go of what those hold."""


class _Formatter(argparse.HelpFormatter):
    """Wraps the description; keeps the epilog (the examples) as written."""

    def add_text(self, text: Optional[str]) -> None:
        if text and "\n" in text:
            self._add_item(lambda t: t + "\n", [text])
        else:
            super().add_text(text)


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: Any) -> None:
    raise _Stop(signum)


# ---- argument types -------------------------------------------------------------------

def _port(text: str) -> Union[int, Tuple[int, int]]:
    lo, sep, hi = text.partition("-")
    try:
        ports = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is not a port: write PORT or LOW-HIGH, for example 80 or 1000-2000" % text)
    return ports if sep else ports[0]


def _mark(text: str) -> Union[int, Tuple[int, int]]:
    value, sep, mask = text.partition("/")
    try:
        return (int(value, 0), int(mask, 0)) if sep else int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is not a mark: write VALUE or VALUE/MASK, for example 0x42 or 0x40/0xf0"
            % text)


def _number(kind: type, what: str, example: str, most: Optional[int] = None) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError("%r is not %s > 0 (for example %s)"
                                             % (text, what, example))
        if most is not None and value > most:
            raise argparse.ArgumentTypeError("%s is more than the kernel takes: at most %d"
                                             % (text, most))
        return value
    return parse


def _netns(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("an empty name: give a name from `ip netns list` "
                                         "or a path such as /proc/PID/ns/net")
    return text


def _handle(text: str) -> int:
    value = _plugqdisc.parse_handle(text if text.endswith(":") else text + ":")
    if value is None or value & 0xFFFF or not value or text in ("root", "none"):
        raise argparse.ArgumentTypeError(
            "%r is not a qdisc handle: write MAJ: in hex, as status shows it (for example "
            "3:)" % text)
    return int(value)


def _plural(n: int, word: str) -> str:
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def _parser() -> Tuple[argparse.ArgumentParser, Dict[str, argparse.ArgumentParser]]:
    raw = _Formatter
    p = argparse.ArgumentParser(
        prog=PROG, description="Hold a network device's packets with the kernel's plug "
        "qdisc (sch_plug), and let them go.", epilog="`%s COMMAND --help` for each "
        "command, with an example." % PROG)
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    netns = argparse.ArgumentParser(add_help=False)
    netns.add_argument("--netns", metavar="NS", type=_netns, help="a network namespace: a "
                       "name as `ip netns` knows it, or a path such as /proc/PID/ns/net")

    h = sub.add_parser("hold", parents=[netns], formatter_class=raw, epilog=HOLD_EPILOG,
                       usage="%(prog)s DEV [options] [-- CMD [ARGS...]]",
                       help="hold DEV's packets while CMD runs, or until Enter",
                       description="Hold the packets DEV sends (--ingress: receives), all "
                       "of them or those the match options select (all must hold), and "
                       "release them when CMD ends, or on Enter, SIGINT or SIGTERM.")
    h.add_argument("dev", metavar="DEV", help="the network device, for example lo")
    h.add_argument("--proto", metavar="P", help="tcp, udp, icmp or a protocol number")
    h.add_argument("--src", metavar="A", help="source address or network (10.0.0.0/8, ::1)")
    h.add_argument("--dst", metavar="A", help="destination address or network")
    h.add_argument("--sport", metavar="P", type=_port, help="source port or range LOW-HIGH")
    h.add_argument("--dport", metavar="P", type=_port, help="destination port or range")
    h.add_argument("--syn", action="store_true",
                   help="TCP connection attempts only (SYN set, ACK clear)")
    h.add_argument("--fin", action="store_true", help="TCP segments with FIN set (a side closing)")
    h.add_argument("--rst", action="store_true", help="TCP segments with RST set (a reset)")
    h.add_argument("--mark", metavar="M", type=_mark,
                   help="packets with this fwmark: VALUE or VALUE/MASK (0x42, 0x40/0xf0)")
    h.add_argument("--ingress", action="store_true",
                   help="hold what DEV receives rather than what it sends")
    h.add_argument("--limit", metavar="BYTES",
                   type=_number(int, "a number of bytes", "1000000", 2**32 - 1),
                   help="drop what would make the backlog exceed BYTES (default: the "
                   "device's own queue size)")
    h.add_argument("--max-hold", metavar="S", type=_number(float, "a number of seconds", "2.5"),
                   help="release after S seconds at the latest, whatever happens")
    h.add_argument("--replace", action="store_true",
                   help="replace the qdisc at DEV's root (or ingress) if it is not ours; it "
                   "is deleted, with what it holds")
    h.add_argument("--control", action="store_true",
                   help="be the remote end of a hold (plugqdisc.remote): attach passing, then "
                   "take commands as JSON lines on stdin and answer on stdout; end of stdin "
                   "releases and removes the hold (docs/remote.rst)")
    h.add_argument("--allow-transport-device", action="store_true",
                   help="with --control: hold on the device carrying this ssh session even "
                   "if the hold selects its packets")

    r = sub.add_parser("release", parents=[netns], formatter_class=raw, epilog=RELEASE_EPILOG,
                       help="release every plug qdisc on DEV (or one hold)",
                       description="Release everything the plug qdiscs on DEV hold (left "
                       "holding by a process that died, or by tc), or what one of them "
                       "holds (--handle).")
    r.add_argument("dev", metavar="DEV", help="the network device, for example lo")
    r.add_argument("--handle", metavar="H", type=_handle,
                   help="only the plug qdisc with this handle, as status shows it (3:)")
    r.add_argument("--ingress", action="store_true",
                   help="only the ingress holds (their plugs, on their ifbs, have handles "
                   "of their own: --handle then names one of them)")

    s = sub.add_parser("status", parents=[netns], formatter_class=raw, epilog=STATUS_EPILOG,
                       help="list the plug qdiscs and what they hold",
                       description="Every plug qdisc (on DEV, if given): device, mode, "
                       "parent, handle, packets and bytes held now (qlen, backlog), drops, "
                       "packets and bytes passed.")
    s.add_argument("dev", metavar="DEV", nargs="?",
                   help="only the plug qdiscs holding this device's packets")
    s.add_argument("--json", action="store_true", help="a JSON list, for programs")

    c = sub.add_parser("cleanup", parents=[netns], formatter_class=raw, epilog=CLEANUP_EPILOG,
                       help="remove the holds plugqdisc made whose holder is gone",
                       description="Release and remove what plugqdisc set up and no living "
                       "holder owns (on DEV, if given).")
    c.add_argument("dev", metavar="DEV", nargs="?",
                   help="only the holds on this device (default: every device)")

    sub.add_parser("lab", add_help=False, help="run CMD in the lab (User-Mode Linux with "
                   "sch_plug): plugqdisc lab [--kernel PATH] [--mem SIZE] [--timeout S] -- "
                   "CMD; see plugqdisc lab --help")
    return p, {"hold": h, "release": r, "status": s, "cleanup": c}


# ---- the commands ---------------------------------------------------------------------

def _say(text: str) -> None:
    print("%s: %s" % (PROG, text), file=sys.stderr, flush=True)


def _match(args: argparse.Namespace) -> Optional[Match]:
    """The match the options select (None: all); a refusal names the options."""
    fields = {k: getattr(args, k) for k in ("proto", "src", "dst", "sport", "dport", "mark")
              if getattr(args, k) is not None}
    for flag in ("syn", "fin", "rst"):
        if getattr(args, flag):
            fields[flag] = True
    if fields.get("proto", "").isdigit():
        fields["proto"] = int(fields["proto"])
    return from_options(**fields) if fields else None


class _Hold(PlugQdisc):
    """The command line's hold: its errors name options (``--replace``), not keywords."""

    _words = COMMAND_LINE


def _run(cmd: List[str]) -> int:
    """Run CMD to its end; its exit status, as a shell gives it."""
    try:
        child = subprocess.Popen(cmd)
    except FileNotFoundError:
        _say("%s: command not found (give a path, or check PATH)" % cmd[0])
        return NOT_FOUND
    except PermissionError:
        _say("%s: not executable (chmod +x it, or run it through its interpreter)" % cmd[0])
        return NOT_EXECUTABLE
    while True:
        try:
            rc = child.wait()
            break
        except KeyboardInterrupt:
            pass  # Ctrl-C reached CMD too (same process group): hold until it ends
        except _Stop as e:
            child.send_signal(e.signum)
    return 128 - rc if rc < 0 else rc


def _wait(q: PlugQdisc) -> None:
    """Until Enter (SIGINT and SIGTERM raise), or until max-hold released the hold."""
    watch = [sys.stdin.fileno()] if sys.stdin is not None and not sys.stdin.closed else []
    tick = 0.2 if q.max_hold is not None else None
    while not q.expired:
        if not watch:
            time.sleep(tick or 3600)
            continue
        if select.select(watch, [], [], tick)[0]:
            if os.read(watch[0], 4096):
                return  # Enter
            watch = []  # end of input: wait for a signal


def _hold(p: argparse.ArgumentParser, args: argparse.Namespace, cmd: List[str]) -> int:
    if args.control:
        if cmd:
            p.error("--control takes its commands on stdin: no CMD after --")
        try:
            match = _match(args)
        except (ValueError, TypeError) as e:
            p.error(str(e))
        return _control.serve(args.dev, match=match, ingress=args.ingress,
                              limit=args.limit, netns=args.netns, max_hold=args.max_hold,
                              replace=args.replace,
                              allow_transport_device=args.allow_transport_device)
    try:
        match = _match(args)
        q = _Hold(args.dev, limit=args.limit, netns=args.netns, match=match,
                  direction="ingress" if args.ingress else "egress", max_hold=args.max_hold)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    dev = args.dev + (" in netns %s" % args.netns if args.netns else "")
    what = "what %s %s" % (dev, "receives" if args.ingress else "sends")
    if match is not None:
        what += " matching %s" % repr(match)[len("Match("):-1]
    # As plugged(replace=--replace), with the command line's words in every error.
    try:
        q.attach(replace=args.replace)
    except BaseException:
        q.close()
        raise
    if match is not None or args.ingress:
        # Several holds may share the device: the handle their plugs got tells them apart
        # (status shows it; release --handle takes it).
        what += " (plug %s%s)" % (q.handle, " on %s" % q.ifb if q.ifb else "")
    code = 0
    try:
        q.buffer()
        start = q.stats()
        _say("holding %s %s" % (what, "while %s runs" % cmd[0] if cmd
                                  else "until Enter, Ctrl-C or SIGTERM"))
        try:
            if cmd:
                code = _run(cmd)
            else:
                _wait(q)
        except (KeyboardInterrupt, _Stop):
            pass  # the documented ways to end a hold without CMD
        end = q.stats()
        expired = q.expired
    except BaseException as exc:
        q.__exit__(type(exc), exc, exc.__traceback__)
        raise
    q.__exit__(None, None, None)
    _say("released %s: %s" % (dev, _counts(start, end, expired)))
    return code


def _counts(start: Stats, end: Stats, expired: bool) -> str:
    """What the hold held at its end, and what had left before (see docs/cli.rst)."""
    text = "%s (%s) were held, %d dropped" % (_plural(end.qlen, "packet"),
                                              _plural(end.backlog, "byte"), end.drops)
    if end.qlen == 1:
        text = text.replace(") were held", ") was held")
    gone = end.packets - start.packets
    if expired:
        text += "; --max-hold had passed, the hold ended then"
    if gone > 0:
        text += ("; %s (%s) had left before: %s released it while it held"
                 % (_plural(gone, "packet"), _plural(end.bytes - start.bytes, "byte"),
                    "--max-hold" if expired else "something else (plugqdisc release, tc?)"))
    return text


def _where(args: argparse.Namespace) -> str:
    return " in netns %s" % args.netns if args.netns else ""


def _plug_name(plug: _inventory.Plug) -> str:
    """How the lines name a hold's plug: "plain, plug 1: at root of lo"."""
    return "%s, plug %s at %s of %s" % (plug.mode, plug.handle, plug.parent, plug.on)


def _release(inv: _inventory.Inventory, args: argparse.Namespace) -> int:
    plugs = inv.plugs(args.dev, args.handle)
    if args.handle is not None or args.ingress:
        # An ingress hold's plug is on its own ifb: its handle may be an egress plug's too.
        plugs = [p for p in plugs if (p.mode == "ingress") == args.ingress]
    for plug in plugs:
        _inventory.release(plug, args.netns)
        print("released %s (%s): %s" % (plug.device, _plug_name(plug),
                                        _plural(plug.qlen, "packet")))
    if not plugs and args.handle is not None:
        _say("no plug qdisc with handle %s holds what %s %s%s: `plugqdisc status %s` "
             "lists the holds and their handles" % (
                 handle_text(args.handle), args.dev,
                 "receives (an ingress hold)" if args.ingress else "sends", _where(args),
                 args.dev))
        return ERROR
    if not plugs:
        print("no plug qdisc holds %s's packets%s%s" % (
            args.dev, " at ingress" if args.ingress else "", _where(args)))
    return 0


COLUMNS = ("device", "mode", "on", "parent", "handle", "qlen", "backlog", "drops", "packets",
           "bytes", "holder", "match")


def _holder(p: _inventory.Plug) -> str:
    """The HOLDER cell: the pid of the process that made it ("gone" after it when it no
    longer runs), or of each living process that shares it; "?" when no record says."""
    if len(p.users) > 1:
        return ",".join(map(str, p.users))
    if p.holder is None:
        return "?"
    return str(p.holder) if p.alive else "%d gone" % p.holder


def _status(inv: _inventory.Inventory, args: argparse.Namespace) -> int:
    plugs = inv.plugs(args.dev)
    if args.json:
        print(json.dumps([p._asdict() for p in plugs], indent=2))
        return 0
    if not plugs:
        print("no plug qdisc%s%s" % (" on %s" % args.dev if args.dev else "", _where(args)))
        return 0
    rows = [[c.upper() for c in COLUMNS]]
    for p in plugs:
        match = p.match or ("-" if p.mode == "plain" or p.recorded else "?")
        rows.append([str(getattr(p, c)) for c in COLUMNS[:-2]] + [_holder(p), match])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def _hold_name(rec: _registry.Record) -> str:
    """How cleanup's lines name the hold REC records: "the match hold on lo (plug 3:,
    matching proto='udp', dport=5001)"; a plain one by its place if not the default."""
    details = []
    if rec.mode != "plain" and rec.handle:
        details.append("plug %s" % handle_text(rec.handle))
    elif rec.mode == "plain" and (rec.parent, rec.handle) != (ROOT, 0x10000):
        details.append("plug %s at %s" % (handle_text(rec.handle), handle_text(rec.parent)))
    if rec.match:
        details.append("matching %s" % rec.match)
    return "the %s hold on %s%s" % (rec.mode, rec.device,
                                    " (%s)" % ", ".join(details) if details else "")


def _cleanup(inv: _inventory.Inventory, args: argparse.Namespace) -> int:
    failed = removed_any = kept = 0
    order = {"plain": 0, "match": 1, "ingress": 2}  # the egress first: see EgressBusy
    for rec in sorted(inv.records, key=lambda r: order.get(r.mode, 3)):
        if args.dev is not None and rec.ifindex != inv.index.get(args.dev):
            continue
        name = _hold_name(rec)
        if rec.alive:
            print("kept %s: its holder, pid %d, is alive" % (name, rec.pid))
            kept += 1
            continue
        if rec.state == "attaching":
            # Its holder died before its guardian had the hold's plan: before attach made
            # anything. Whatever is at that place now is someone else's.
            _registry.forget(rec.path)
            removed_any += 1
            print("dropped the record of %s: its holder, pid %d, died before its attach "
                  "made anything" % (name, rec.pid))
            continue
        sharing = _inventory.others_holding(rec, inv)
        if sharing:
            # Another living process holds with the same plug: it stays. The record too,
            # for a later cleanup, if the others leave the plug behind.
            kept += 1
            print("kept %s: its holder, pid %d, is gone, but pid %s holds with its plug; a "
                  "cleanup removes it once none does" % (name, rec.pid, ", ".join(
                      map(str, sharing))))
            continue
        try:
            fresh = _inventory.Inventory(args.netns) if rec.mode != "plain" else inv
            removed = _inventory.remove(rec, fresh)
        except _inventory.EgressBusy as e:
            _say("%s stays: %s's egress holds %d packets now, which removing its ingress "
                 "qdisc would make the kernel drop; release them (`plugqdisc release %s`) "
                 "and run cleanup again" % (name, e.device, e.held, e.device))
            failed += 1
            continue
        except PlugQdiscError as e:
            _say("%s: %s" % (name, e))
            failed += 1
            continue
        if removed == _inventory.SHARED:
            kept += 1
            print("kept %s: its holder, pid %d, is gone, but another living process holds "
                  "with its plug; a cleanup removes it once none does" % (name, rec.pid))
            continue
        _registry.forget(rec.path)
        if removed == _inventory.REMOVED:
            removed_any += 1
            print("removed %s: its holder, pid %d, is gone; nothing held was lost"
                  % (name, rec.pid))
    unrecorded = inv.unrecorded(args.dev)
    for what in unrecorded:
        print("left %s: no record says which process made it (it may still be in use)"
              % what)
    if not (removed_any or failed or kept or unrecorded):
        where = (" on %s" % args.dev if args.dev else "") + _where(args)
        print("nothing to clean up%s: no hold of plugqdisc's is left by a holder that is "
              "gone (`plugqdisc status` lists the plug qdiscs)" % where)
    return ERROR if failed else 0


def _failure(e: OSError, command: str, netns: Optional[str]) -> str:
    """One line for an error: the C core's facts put in words, or the error's own."""
    if not isinstance(e, PlugQdiscError) and hasattr(e, "step"):
        e = translate(e, command, "netns %s" % netns if netns else "this namespace",
                      netns=netns, spelling=COMMAND_LINE)
    return e.strerror or str(e)


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["lab"]:
        return lab.main(words[1:], prog="%s lab" % PROG)
    cmd: List[str] = []
    dashdash = "--" in words
    if dashdash:
        i = words.index("--")
        words, cmd = words[:i], words[i + 1:]
    p, subs = _parser()
    args = p.parse_args(words)
    if dashdash and args.command != "hold":
        subs[args.command].error("only hold runs a command (after --)")
    if dashdash and not cmd:
        subs["hold"].error("no CMD after --: give one, or leave out -- to hold until Enter")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        if args.command == "hold":
            return _hold(subs["hold"], args, cmd)
        inv = _inventory.Inventory(args.netns)
        for bad in inv.skipped:
            _say("skipped %s: %s; it is not a record plugqdisc wrote (remove it)"
                 % (bad.path, bad.why))
        if args.dev is not None and args.dev not in inv.index:
            _say("there is no network device %r%s: `ip link` lists them"
                 % (args.dev, " in netns %s" % args.netns if args.netns else ""))
            return ERROR
        run = {"release": _release, "status": _status, "cleanup": _cleanup}[args.command]
        return run(inv, args)
    except OSError as e:
        _say(_failure(e, args.command, args.netns))
        return ERROR
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Stop as e:
        return 128 + e.signum


if __name__ == "__main__":
    sys.exit(main())
