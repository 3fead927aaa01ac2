"""The remote end of a hold: ``plugqdisc hold DEV [match options] --control``.

A controller on another machine (:mod:`plugqdisc.remote`, or any program) starts this
over a transport it trusts (``ssh -T host``, ``kubectl exec -i pod --``, ``docker exec
-i ctr``, ``ip netns exec ns``) and talks to it on its standard input and output, one
JSON object per line each way (docs/remote.rst has the protocol):

* the first line out says the protocol version, plugqdisc's version, and what is held
  (device, direction, match, handle), or the error that stopped the hold being made;
* then each command in gets exactly one answer out, in order: ``{"ok": true, ...}``, or
  ``{"ok": false, "error": {"type", "errno", "message", ...}}`` so that the controller
  raises the same exception class, errno and message as a local call. A bad command
  (not JSON, unknown, a wrong argument) is answered that way and changes nothing.

The hold lasts as long as its standard input: at end of input (the controller died, the
connection dropped), on SIGTERM, SIGHUP or SIGINT, it is released and removed, nothing
lost, within the time a detach takes (milliseconds). The guardian covers this process's
own death, and ``--max-hold`` bounds each hold whatever happens.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from . import Match, PlugQdisc, Stats, __version__
from ._util import netns_path, seconds

#: The protocol's version: the first line says it; a controller refuses one it lacks.
PROTOCOL = 1
#: The commands, and the arguments each takes (with their defaults).
COMMANDS: Dict[str, Dict[str, Any]] = {
    "buffer": {}, "release": {}, "release_one": {}, "stats": {},
    "wait": {"packets": 1, "timeout": None},
    "wait_drained": {"timeout": 5.0},
    "let_new_packets_pass": {},
    "set_limit": {"bytes": None},
    "detach": {"timeout": 5.0},
}
#: The longest command line taken; a longer one is refused (and skipped to its end).
MAX_LINE = 1 << 16
_STATS_FIELDS = Stats._fields


class _Stop(Exception):
    """A signal that ends the hold arrived (SIGTERM, SIGHUP, SIGINT)."""


class _Ended(Exception):
    """End of standard input: the controller is gone."""


def _on_signal(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def error_fields(e: BaseException) -> Dict[str, Any]:
    """What the controller needs to raise E again: its class's name, errno, message and,
    for a PlugQdiscError, the failed step, the kernel's text and the device."""
    message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return {"type": type(e).__name__, "errno": getattr(e, "errno", None),
            "message": message, "step": getattr(e, "step", ""),
            "kernel_message": getattr(e, "kernel_message", ""),
            "device": getattr(e, "device", "")}


def stats_fields(st: Stats) -> Dict[str, int]:
    return dict(st._asdict())


# ---- the transport's own device -------------------------------------------------------

def _same_netns(netns: Optional[str]) -> bool:
    """Whether the hold is in this process's own network namespace."""
    if netns is None:
        return True
    try:
        there = os.stat(netns_path(netns))
        here = os.stat("/proc/self/ns/net")
    except OSError:
        return False  # attach will say what is wrong with it
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


def _ip_words(*args: str) -> List[str]:
    """The words `ip -o ARGS` prints (empty if it fails)."""
    p = subprocess.run(["ip", "-o", *args], capture_output=True, text=True, timeout=10)
    return p.stdout.split() if p.returncode == 0 else []


def ssh_session(env: Dict[str, str]) -> Optional[Tuple[str, int, str, int]]:
    """(client address, client port, our address, our port) of the ssh session this
    process runs in, from SSH_CONNECTION; None outside ssh."""
    words = env.get("SSH_CONNECTION", "").split()
    if len(words) != 4:
        return None
    try:
        ipaddress.ip_address(words[0].split("%")[0])
        ipaddress.ip_address(words[2].split("%")[0])
        return words[0], int(words[1]), words[2], int(words[3])
    except ValueError:
        return None


def session_devices(session: Tuple[str, int, str, int]) -> Set[str]:
    """The devices that carry the session's packets: the one our address is on and the
    one the route back to the client leaves by (`ip addr`, `ip route get`). Raises
    FileNotFoundError if there is no `ip` to ask."""
    client, _, ours, _ = session
    found: Set[str] = set()
    for args in (("addr", "show", "to", ours), ("route", "get", client, "from", ours)):
        words = _ip_words(*args)
        if args[0] == "addr" and len(words) > 1:
            found.add(words[1])  # "2: eth0    inet 10.0.0.2/24 ..."
        elif "dev" in words:
            found.add(words[words.index("dev") + 1])
    return {d.split("@")[0].rstrip(":") for d in found}


def _selects(m: Match, proto: int, src: str, dst: str, sport: int, dport: int) -> bool:
    """Whether M selects an established TCP segment (no SYN, FIN or RST) with these
    fields; a mark is taken to select it (what netfilter marks is unknown here)."""
    if m.mark is not None:
        return True
    if m.syn or m.fin or m.rst or m.proto not in (None, "tcp", proto):
        return False
    for net, addr in ((m.src, src), (m.dst, dst)):
        if net is not None and ipaddress.ip_address(addr.split("%")[0]) not in net:
            return False
    for ports, port in ((m.sport, sport), (m.dport, dport)):
        if ports is not None and not ports[0] <= port <= ports[1]:
            return False
    return True


def transport_conflict(device: str, netns: Optional[str], match: Optional[Match],
                       ingress: bool, env: Dict[str, str]) -> Optional[str]:
    """Why holding would freeze the ssh session this process is controlled over (the
    hold's device carries it, and the hold selects its packets), or None."""
    session = ssh_session(env)
    if session is None or not _same_netns(netns):
        return None
    client, cport, ours, oport = session
    try:
        devices = session_devices(session)
    except FileNotFoundError:
        return ("the ssh session it is controlled over (SSH_CONNECTION %s) may run over %s, "
                "and there is no `ip` command here to tell" % (env["SSH_CONNECTION"], device))
    if device not in devices:
        return None
    if match is not None:
        tcp = socket.IPPROTO_TCP
        packet = ((client, ours, cport, oport) if ingress else (ours, client, oport, cport))
        if not _selects(match, tcp, *packet):
            return None
        what = "its match selects the session's packets"
    else:
        what = "it has no match"
    return ("%s carries the ssh session this hold is controlled over (SSH_CONNECTION %s), "
            "and %s: holding them would cut the controller off" % (device,
                                                                   env["SSH_CONNECTION"], what))


# ---- the session ----------------------------------------------------------------------

def send(fd: int, obj: Dict[str, Any]) -> None:
    """Write OBJ as one JSON line on FD; a reader that is gone ends the session."""
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    while data:
        try:
            n = os.write(fd, data)
        except BrokenPipeError:
            raise _Ended() from None
        data = data[n:]


class Session:
    """One hold, driven by the lines on FD_IN, answered on FD_OUT."""

    def __init__(self, q: PlugQdisc, fd_in: int = 0, fd_out: int = 1) -> None:
        self.q = q
        self.fd_in, self.fd_out = fd_in, fd_out
        self.pending = b""
        self.skipping = False  # inside a line longer than MAX_LINE
        self.eof = False

    def send(self, obj: Dict[str, Any]) -> None:
        send(self.fd_out, obj)

    def _fill(self, timeout: Optional[float]) -> bool:
        """Read what is there (waiting up to TIMEOUT s); False if nothing came."""
        if self.eof:
            raise _Ended()
        if not select.select([self.fd_in], [], [], timeout)[0]:
            return False
        chunk = os.read(self.fd_in, 65536)
        if not chunk:
            self.eof = True
            raise _Ended()
        self.pending += chunk
        return True

    def next_line(self) -> Optional[bytes]:
        """The next complete line read so far (None: none yet); too long a line comes
        back as b"\\0" (and its rest is skipped)."""
        while True:
            i = self.pending.find(b"\n")
            if i < 0:
                if len(self.pending) > MAX_LINE:
                    self.pending, self.skipping = b"", True
                    return b"\0"
                return None
            line, self.pending = self.pending[:i], self.pending[i + 1:]
            if self.skipping:
                self.skipping = False
                continue
            return line

    def state(self) -> Dict[str, Any]:
        return {"buffering": self.q.is_buffering, "expired": self.q.expired,
                "t": time.monotonic()}

    def serve(self) -> None:
        """Answer commands until end of input, or a successful detach."""
        while True:
            line = self.next_line()
            if line is None:
                self._fill(None)
                continue
            if not line.strip():
                continue
            if self.answer(line):
                return

    def answer(self, line: bytes) -> bool:
        """Run one command line and answer it; True once the hold is detached."""
        ident: Any = None
        cmd = "?"
        try:
            if line == b"\0":
                raise ValueError("a command line longer than %d bytes" % MAX_LINE)
            try:
                obj = json.loads(line)
            except ValueError:
                raise ValueError("not a JSON object: %r; send one per line, such as "
                                 '{"cmd": "buffer"}' % line[:80].decode("utf-8", "replace"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object: %r" % (obj,))
            ident = obj.pop("id", None)
            cmd = obj.pop("cmd", None)
            if cmd not in COMMANDS:
                raise ValueError("unknown command %r: the commands are %s" % (
                    cmd, ", ".join(sorted(COMMANDS))))
            unknown = sorted(set(obj) - set(COMMANDS[cmd]))
            if unknown:
                raise TypeError("%s takes %s, not %s" % (
                    cmd, ", ".join(COMMANDS[cmd]) or "no argument", ", ".join(unknown)))
            args = dict(COMMANDS[cmd], **obj)
            reply = self.run(cmd, args)
        except (_Ended, _Stop):
            raise
        except Exception as e:
            self.send({"ok": False, "id": ident, "cmd": cmd, "error": error_fields(e),
                       **self.state()})
            return False
        self.send({"ok": True, "id": ident, "cmd": cmd, **reply, **self.state()})
        return bool(cmd == "detach")

    def run(self, cmd: str, args: Dict[str, Any]) -> Dict[str, Any]:
        q = self.q
        if cmd == "buffer":
            q.buffer()
        elif cmd == "release":
            q.release()
        elif cmd == "release_one":
            q.release_one()
        elif cmd == "set_limit":
            if args["bytes"] is None:
                raise TypeError("set_limit needs bytes: the backlog limit, an int (0: the "
                                "device's default)")
            q.set_limit(args["bytes"])
        elif cmd == "stats":
            return {"stats": stats_fields(q.stats())}
        elif cmd == "wait":
            return {"stats": stats_fields(self.wait(args["packets"], args["timeout"]))}
        elif cmd == "wait_drained":
            return {"stats": stats_fields(self.wait(None, args["timeout"]))}
        elif cmd == "let_new_packets_pass":
            q.let_new_packets_pass()
        elif cmd == "detach":
            timeout = args["timeout"]
            seconds(timeout, "timeout")  # checked before anything changes
            st = q.stats()
            q.detach(timeout=timeout)
            return {"stats": stats_fields(st)}
        return {}

    def wait(self, packets: Any, timeout: Any) -> Stats:
        """q.wait_buffered(packets, timeout=timeout) (PACKETS None: q.wait_drained(timeout)),
        watching the input meanwhile: the end of it ends the wait, and the hold."""
        limit = seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.0005
        while True:
            try:
                if packets is None:
                    return self.q.wait_drained(0.0)
                return self.q.wait_buffered(packets, timeout=0.0)  # checks the arguments too
            except TimeoutError:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                st = self.q.stats()
                if packets is None:
                    raise TimeoutError(_errno.ETIMEDOUT, "%d packets still held on %s after "
                                       "%s s (is it released?)" % (st.qlen, self.q._where,
                                                                   timeout))
                raise TimeoutError(_errno.ETIMEDOUT, "%d of %d packets held on %s after %s s"
                                   % (st.qlen, packets, self.q._where, timeout))
            wait = pause if deadline is None else min(pause, deadline - now)
            if self._fill(wait):
                pass  # the next command waits its turn; the end of input ends the wait
            pause = min(pause * 2, 0.02)


def hello(q: PlugQdisc, match: Optional[Match], netns: Optional[str]) -> Dict[str, Any]:
    """The first line: the protocol and what is held."""
    return {"ok": True, "protocol": PROTOCOL, "plugqdisc": __version__, "pid": os.getpid(),
            "host": socket.gethostname(), "device": q.device, "ifindex": q.ifindex,
            "direction": q.direction, "match": repr(match) if match is not None else None,
            "parent": q.parent, "handle": q.handle, "netns": netns, "limit": q.limit,
            "max_hold": q.max_hold, "buffering": q.is_buffering, "expired": q.expired,
            "t": time.monotonic()}


def serve(dev: str, *, match: Optional[Match], ingress: bool, limit: Optional[int],
          netns: Optional[str], max_hold: Optional[float], replace: bool,
          allow_transport_device: bool) -> int:
    """`plugqdisc hold DEV --control`: attach (passing), say so, then obey standard input
    until its end; release and remove on every way out. The exit status: 0, or 1 when
    the hold could not be made (the first line then says why)."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    first = {"ok": False, "protocol": PROTOCOL, "plugqdisc": __version__, "pid": os.getpid(),
             "host": socket.gethostname()}
    try:
        q = PlugQdisc(dev, limit=limit, netns=netns, match=match,
                      direction="ingress" if ingress else "egress", max_hold=max_hold)
    except (ValueError, TypeError) as e:
        send(1, dict(first, error=error_fields(e)))
        return 1
    if not allow_transport_device:
        why = transport_conflict(dev, netns, match, ingress, dict(os.environ))
        if why is not None:
            err = OSError(_errno.EBUSY, "refusing to hold on %s: %s; give a match that "
                          "leaves the session's packets alone, or pass "
                          "allow_transport_device=True (--allow-transport-device) if the "
                          "controller reaches this machine another way" % (dev, why))
            q.close()
            send(1, dict(first, error=dict(error_fields(err), type="PlugQdiscError",
                                            step="transport")))
            return 1
    try:
        q.attach(replace=replace)
    except BaseException as e:
        # Undone as any hold is (a signal may land just after attach made it): what attach
        # made is removed; a failed attach made nothing.
        try:
            q.__exit__(type(e), e, e.__traceback__)
        except BaseException:
            pass  # noted on E, which is what the controller hears
        if isinstance(e, _Stop):
            return 0
        if isinstance(e, Exception):
            try:
                send(1, dict(first, error=error_fields(e)))
            except _Ended:
                pass
            return 1
        raise
    session = Session(q)
    try:
        session.send(hello(q, match, netns))
        session.serve()
    except (_Ended, _Stop):
        pass  # the documented ends of a hold: released and removed below
    except BaseException as exc:
        q.__exit__(type(exc), exc, exc.__traceback__)
        raise
    q.__exit__(None, None, None)
    return 0
