"""Holds on other machines, over a command transport you already trust.

::

    from plugqdisc import Match
    from plugqdisc.remote import plugged

    with plugged("eth0", via=["ssh", "-T", "db2"], match=Match(proto="tcp", dport=5432)) as q:
        q.wait_buffered(1, timeout=5)
        ...
    # released in order and removed on db2, nothing lost

``via`` is an argv prefix (``["ssh", "-T", "host"]``, ``["kubectl", "exec", "-i", "pod",
"--"]``, ``["docker", "exec", "-i", "ctr"]``, ``["ip", "netns", "exec", "ns"]``; ``[]``:
this machine, another process) and ``command`` the remote plugqdisc (default
``["plugqdisc"]``; a venv's ``bin/plugqdisc``, or ``["python3", "-m", "plugqdisc"]``).
The remote end is ``plugqdisc hold DEV --control`` (:mod:`plugqdisc._control`): its hold
lasts as long as the transport's standard input, so a controller that dies, however it
dies, or a connection that drops, ends the hold: released and removed, nothing lost.

Errors the remote end meets arrive as the exception a local call raises (class, errno,
message), the message prefixed with the target. A transport that cannot start, dies, or
does not answer raises :class:`TransportError`, and holds nothing.

Several targets at once: ``via=[[...], [...]]`` (one device on each), or
:func:`group` of :class:`RemoteHold` objects; each call cues all of them concurrently,
and a failure to hold on one releases those that held.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import select
import shlex
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Type, Union

from . import (DeviceNotFoundError, KernelSupportError, Match, ParentNotFoundError,
               PlugQdiscError, PlugQdiscPermissionError, Stats, _check_device, _check_limit,
               _check_netns, _finish_after)
from ._control import PROTOCOL
from ._match import terms_of
from ._util import add_note, seconds

__all__ = ["RemoteHold", "Group", "TransportError", "plugged", "group", "DEFAULT_COMMAND"]

#: The remote plugqdisc, by default (with ``via=[]``: this interpreter's, ``python -m
#: plugqdisc``).
DEFAULT_COMMAND = ("plugqdisc",)
#: Seconds to wait for the remote end's first line (a transport's connection, and
#: Python's start on the target, included).
START_TIMEOUT = 60.0
#: Seconds to wait for an answer, on top of the time the command itself may take.
ANSWER_TIMEOUT = 30.0
#: Seconds a transport is given to end once its standard input is closed, before it is
#: sent SIGTERM (then SIGKILL).
END_GRACE = 5.0

Via = Sequence[str]


class TransportError(PlugQdiscError):
    """The transport to a target failed: it could not start (errno ENOENT), ended
    (EPIPE), gave no answer in time (ETIMEDOUT) or answered something that is not the
    control protocol (EPROTO); or the remote command is missing there (ENOENT). Nothing
    is held on that target by this controller (a remote end that is still running
    releases when its input ends)."""

    __module__ = "plugqdisc.remote"


# The classes a remote error may come back as: plugqdisc's and the builtins a local
# call raises. Anything else becomes a PlugQdiscError naming the remote class.
_CLASSES: Dict[str, Type[Exception]] = {c.__name__: c for c in (
    PlugQdiscError, KernelSupportError, DeviceNotFoundError, ParentNotFoundError,
    PlugQdiscPermissionError, TimeoutError, ValueError, TypeError, OSError,
    FileNotFoundError, PermissionError, RuntimeError)}


def _rebuild(err: Dict[str, Any], target: str) -> BaseException:
    """The exception a local call would have raised, from an error answer."""
    name = str(err.get("type", ""))
    message = "%s: %s" % (target, err.get("message", ""))
    code = err.get("errno")
    cls = _CLASSES.get(name)
    if cls is None:
        exc: BaseException = PlugQdiscError(code or _errno.EIO, "%s (%s on the target)"
                                            % (message, name))
    elif issubclass(cls, OSError):
        exc = cls(code if code is not None else _errno.EIO, message)
    else:
        exc = cls(message)
    if isinstance(exc, PlugQdiscError):
        exc.step = str(err.get("step") or "")
        exc.kernel_message = str(err.get("kernel_message") or "")
        exc.device = str(err.get("device") or "")
    return exc


def _stats(d: Dict[str, Any]) -> Stats:
    return Stats(*(int(d[f]) for f in Stats._fields))


def _options(match: Optional[Match]) -> List[str]:
    """The command line's options for MATCH."""
    if match is None:
        return []
    out: List[str] = []
    if match.proto is not None:
        out += ["--proto", str(match.proto)]
    for name in ("src", "dst"):
        net = getattr(match, name)
        if net is not None:
            out += ["--" + name, str(net)]
    for name in ("sport", "dport"):
        ports = getattr(match, name)
        if ports is not None:
            out += ["--" + name, str(ports[0]) if ports[0] == ports[1] else "%d-%d" % ports]
    for flag in ("syn", "fin", "rst"):
        if getattr(match, flag):
            out.append("--" + flag)
    if match.mark is not None:
        out += ["--mark", "%#x/%#x" % match.mark]
    spelled = {"proto", "src", "dst", "sport", "dport", "syn", "fin", "rst", "mark"}
    unknown = sorted(k for k, v in match.__getstate__().items()
                     if k not in spelled and v not in (None, False))
    if unknown:  # a field this module does not pass on would widen the hold: refuse
        raise ValueError("a remote hold cannot pass %s to the remote command line yet"
                         % ", ".join(unknown))
    return out


def _one_match(match: Union[Match, Sequence[Match], None]) -> Optional[Match]:
    terms_of(match)  # the local checks: a bad match is refused before anything starts
    if match is None or isinstance(match, Match):
        return match
    if len(match) == 1:
        return match[0]
    raise ValueError("a remote hold takes one Match (the command line's options), not a "
                     "list of %d: make one hold per Match, on different devices, or a "
                     "netfilter mark and Match(mark=...)" % len(match))


def _via(via: Any, what: str = "via") -> List[str]:
    if isinstance(via, (str, bytes)) or not isinstance(via, (list, tuple)):
        raise TypeError("%s must be a list of words, an argv prefix such as ['ssh', '-T', "
                        "'host'] ([] for this machine), not %s" % (what, type(via).__name__))
    if not all(isinstance(w, str) and w and "\0" not in w for w in via):
        raise ValueError("%s: every word must be a non-empty str without NUL, not %r"
                         % (what, via))
    return list(via)


class RemoteHold:
    """A hold on a device of another machine (or namespace, or container), driven over
    the transport ``via``.

    The arguments are those of :class:`plugqdisc.PlugQdisc` (``match`` one
    :class:`~plugqdisc.Match`), checked here before anything starts. :meth:`attach`
    starts ``via + command + ["hold", device, ..., "--control"]`` and returns once the
    remote end has attached its plug (passing); :meth:`buffer`, :meth:`release`,
    :meth:`release_one`, :meth:`stats`, :meth:`wait_buffered`, :meth:`set_limit` and
    :meth:`detach` act there as the local methods do here. :meth:`close` ends the session:
    the remote end releases and removes the hold. ``with RemoteHold(...) as q:`` attaches
    on entry; on exit it releases, detaches and closes.

    ``allow_transport_device``: the remote end refuses a hold that would hold its own ssh
    session's packets (see docs/remote.rst) unless this is True. ``start_timeout`` and
    ``timeout``: seconds to wait for the first line, and for each answer (beyond the
    command's own wait). ``name``: how messages name the target (default: ``via``).
    Safe to use from several threads: one command at a time.
    """

    def __init__(self, device: str, *, via: Via = (), command: Optional[Via] = None,
                 match: Union[Match, Sequence[Match], None] = None,
                 direction: str = "egress", limit: Optional[int] = None,
                 max_hold: Optional[float] = None, netns: Optional[str] = None,
                 allow_transport_device: bool = False, name: Optional[str] = None,
                 start_timeout: Optional[float] = START_TIMEOUT,
                 timeout: Optional[float] = ANSWER_TIMEOUT) -> None:
        if not isinstance(device, str):
            raise TypeError("device must be an interface name (str) for a remote hold, not "
                            "%s" % type(device).__name__)
        _check_device(device)
        self._via = _via(via)
        if command is None:
            command = DEFAULT_COMMAND if self._via else (sys.executable, "-m", "plugqdisc")
        self._command = _via(command, "command")
        if not self._command:
            raise ValueError("command is empty: give the remote plugqdisc, such as "
                             "['plugqdisc'] or ['python3', '-m', 'plugqdisc']")
        self._match = _one_match(match)
        _options(self._match)  # a field the command line cannot carry is refused now
        if direction not in ("egress", "ingress"):
            raise ValueError("direction must be 'egress' (what the device sends) or "
                             "'ingress' (what it receives), not %r" % (direction,))
        _check_limit(limit)
        seconds(max_hold, "max_hold", zero=False)
        if netns is not None and not isinstance(netns, str):
            raise TypeError("netns of a remote hold is a name or path on the target (str), "
                            "not %s" % type(netns).__name__)
        _check_netns(netns)
        self._start_timeout = seconds(start_timeout, "start_timeout")
        self._timeout = seconds(timeout, "timeout")
        self._device, self._direction = device, direction
        self._limit, self._max_hold, self._netns = limit, max_hold, netns
        self._allow = bool(allow_transport_device)
        self._name = name if name is not None else (shlex.join(self._via) if self._via
                                                    else "this machine")
        self._proc: Optional["subprocess.Popen[bytes]"] = None
        self._buf = b""
        self._err = b""
        self._info: Dict[str, Any] = {}
        self._state: Dict[str, Any] = {}
        self._closed = False
        self._detached = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = ("closed" if self._closed else "detached" if not self.attached
                 else "buffering" if self.is_buffering else "passing")
        return "<RemoteHold %s via %s %s>" % (self._device, self._name, state)

    # ---- the transport ----

    def argv(self, *, replace: bool = False) -> List[str]:
        """The command line that starts the remote end."""
        words = ["hold", self._device, *_options(self._match)]
        if self._direction == "ingress":
            words.append("--ingress")
        if self._limit is not None:
            words += ["--limit", str(self._limit)]
        if self._max_hold is not None:
            words += ["--max-hold", repr(float(self._max_hold))]
        if self._netns is not None:
            words += ["--netns", self._netns]
        if replace:
            words.append("--replace")
        if self._allow:
            words.append("--allow-transport-device")
        return [*self._via, *self._command, *words, "--control"]

    def _fail(self, code: int, text: str) -> TransportError:
        err = TransportError(code, "%s: %s" % (self._name, text))
        err.step = "transport"
        err.device = self._device
        return err

    def _spawn(self, replace: bool) -> None:
        """Start the transport (not waiting for its first line)."""
        if self._closed:
            raise ValueError("%s: this remote hold is closed; make a new one" % self._name)
        if self._proc is not None:
            raise ValueError("%s: already attached (a remote hold attaches once)" % self._name)
        argv = self.argv(replace=replace)
        try:
            # Its own session: a Ctrl-C at the terminal reaches this process only, which
            # then releases in order over a transport still alive.
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise self._fail(e.errno or _errno.ENOENT, "cannot start the transport %r: %s"
                             % (argv[0], e.strerror or e)) from None

    def _stderr_tail(self) -> str:
        text = self._err.decode("utf-8", "replace").strip()
        lines = [ln for ln in text.splitlines() if ln.strip()][-5:]
        return " | ".join(lines)

    def _ended(self, before_hello: bool) -> TransportError:
        """The error for a transport whose output ended; reaps it."""
        proc = self._proc
        assert proc is not None
        try:
            status = proc.wait(timeout=END_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        self._drain_stderr()
        tail = self._stderr_tail()
        said = " (exit status %d%s)" % (status, ": " + tail if tail else "")
        self._closed = True
        if before_hello:
            cmd = shlex.join(self._command)
            # 126/127: a shell's (ssh's) "cannot run" and "not found"; exec-style
            # transports (ip netns exec, docker, kubectl) name the program they missed.
            missing = status in (126, 127) or (self._command[0] in tail and any(
                s in tail for s in ("not found", "No such file", "no such file")))
            if missing:
                return self._fail(_errno.ENOENT, "the remote command %r was not found or "
                                  "could not run there%s: install plugqdisc on the target, "
                                  "or pass command=[...] (a venv's bin/plugqdisc, or "
                                  "['python3', '-m', 'plugqdisc'])" % (cmd, said))
            return self._fail(_errno.EPIPE, "the transport ended before %r answered%s; "
                              "check that `%s true` works from here, and that the target's "
                              "plugqdisc has `hold --control`" % (cmd, said, self._name))
        return self._fail(_errno.EPIPE, "the transport ended%s; the remote end releases and "
                          "removes the hold when its input ends, and its guardian if it "
                          "dies" % said)

    def _drain_stderr(self) -> None:
        proc = self._proc
        if proc is None or proc.stderr is None:
            return
        fd = proc.stderr.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._err = (self._err + chunk)[-8192:]

    def _line(self, deadline: Optional[float], before_hello: bool = False) -> Dict[str, Any]:
        """The next JSON line from the remote end."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.fileno(), proc.stderr.fileno()
        watch = [out, err]
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = select.select(watch, [], [], wait)[0]
            if not ready:
                self._abandon()
                raise self._fail(_errno.ETIMEDOUT, "no answer from the remote end in time; "
                                 "the transport was ended (the remote end releases and "
                                 "removes the hold when its input ends)")
            if err in ready:
                chunk = os.read(err, 65536)
                if chunk:
                    self._err = (self._err + chunk)[-8192:]
                else:
                    watch = [out]
            if out in ready:
                chunk = os.read(out, 65536)
                if not chunk:
                    raise self._ended(before_hello)
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(obj)
        except ValueError:
            self._abandon()
            raise self._fail(_errno.EPROTO, "the remote end said %r, which is not the "
                             "control protocol: is %r plugqdisc?"
                             % (line[:200].decode("utf-8", "replace"),
                                shlex.join(self._command))) from None
        return obj

    def _close_input(self) -> "Optional[subprocess.Popen[bytes]]":
        """Mark the session closed and close the transport's input (the remote end then
        releases and removes its hold); the transport, or None if it never started."""
        proc = self._proc
        self._closed = True
        if proc is not None and proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        return proc

    def _abandon(self) -> None:
        """End the transport without waiting for answers: close its input (the remote
        end releases and removes), then SIGTERM, then SIGKILL if it lingers."""
        proc = self._close_input()
        if proc is None:
            return
        for step in (None, proc.terminate, proc.kill):
            if step is not None:
                step()
            try:
                proc.wait(timeout=END_GRACE)
                break
            except subprocess.TimeoutExpired:
                continue
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()

    def _hello(self, deadline: Optional[float]) -> None:
        """Read and check the first line; raise what stopped the remote end."""
        first = self._line(deadline, before_hello=True)
        if first.get("protocol") != PROTOCOL:
            self._abandon()
            raise self._fail(_errno.EPROTO, "the remote end speaks control protocol %r, this "
                             "plugqdisc %d: install the same plugqdisc version on both sides"
                             % (first.get("protocol"), PROTOCOL))
        if not first.get("ok"):
            self._abandon()
            raise _rebuild(first.get("error") or {}, self._name)
        self._info = first
        self._state = first

    def _send(self, cmd: str, **args: Any) -> None:
        if self._closed or self._proc is None:
            raise ValueError("%s: this remote hold is %s" % (
                self._name, "closed" if self._closed else "not attached: call attach() "
                "first, or use `with`"))
        proc = self._proc
        assert proc.stdin is not None
        try:
            proc.stdin.write((json.dumps(dict(cmd=cmd, **args)) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._ended(False) from None

    def _receive(self, extra: Optional[float] = 0.0) -> Dict[str, Any]:
        """The answer to the command sent; raises the remote error. EXTRA: seconds the
        command itself may take (None: no limit)."""
        deadline = None if extra is None or self._timeout is None else (
            time.monotonic() + self._timeout + extra)
        try:
            answer = self._line(deadline)
        except TransportError:
            raise
        except BaseException:
            # Cut short (a signal handler's exception, Ctrl-C) between a command and its
            # answer: the next answer read would be this one's. End the session (the
            # remote end releases and removes) rather than lose track of the hold.
            self._abandon()
            raise
        self._state = answer
        if not answer.get("ok"):
            raise _rebuild(answer.get("error") or {}, self._name)
        return answer

    def _call(self, cmd: str, extra: Optional[float] = 0.0, **args: Any) -> Dict[str, Any]:
        with self._lock:
            self._send(cmd, **args)
            return self._receive(extra)

    # ---- the API, as PlugQdisc's ----

    def attach(self, *, replace: bool = False) -> "RemoteHold":
        """Start the remote end; returns once its plug is attached there (passing).
        ``replace``: as PlugQdisc.attach. Returns self."""
        with self._lock:
            self._spawn(replace)
            limit = self._start_timeout
            self._hello(None if limit is None else time.monotonic() + limit)
        return self

    def buffer(self) -> None:
        """Hold every packet from now on (TCQ_PLUG_BUFFER), there."""
        self._call("buffer")

    def release(self) -> None:
        """Release everything held, in order, and pass until the next buffer()."""
        self._call("release")

    release_indefinite = release

    def release_one(self) -> None:
        """Release the epoch before the latest buffer(); keep holding the current one."""
        self._call("release_one")

    def set_limit(self, nbytes: int) -> None:
        """The backlog limit in bytes (0 or None: the device's default)."""
        _check_limit(nbytes, "nbytes")
        self._call("set_limit", bytes=nbytes or 0)

    def stats(self) -> Stats:
        """The plug's counters there, now."""
        return _stats(self._call("stats")["stats"])

    def wait_buffered(self, packets: int = 1, *, timeout: Optional[float] = None) -> Stats:
        """Wait until at least ``packets`` packets are held there; TimeoutError after
        ``timeout`` seconds (None or inf: no limit)."""
        if isinstance(packets, bool) or not isinstance(packets, int):
            raise TypeError("packets must be an int, not %s" % type(packets).__name__)
        if packets < 0:
            raise ValueError("packets must be >= 0, not %d" % packets)
        limit = seconds(timeout, "timeout")
        return _stats(self._call("wait", limit, packets=packets, timeout=limit)["stats"])

    def wait_drained(self, timeout: Optional[float] = 5.0) -> Stats:
        """Wait until the hold there holds nothing (after :meth:`release`: all it held has
        left it); TimeoutError after ``timeout`` seconds. With :meth:`release` it makes
        :func:`plugqdisc.release_in_order` work across machines."""
        limit = seconds(timeout, "timeout")
        return _stats(self._call("wait_drained", limit, timeout=limit)["stats"])

    def let_new_packets_pass(self) -> None:
        """A selective or ingress hold there stops selecting: later packets pass, what it
        holds stays held until :meth:`release` (see PlugQdisc.let_new_packets_pass)."""
        self._call("let_new_packets_pass")

    def detach(self, *, timeout: Optional[float] = 5.0) -> Stats:
        """Release, wait for the backlog to drain (up to ``timeout`` s), remove the hold
        there, and end the session. Returns the counters from just before (what was held,
        dropped). Nothing held is lost: if it does not drain in time, the hold stays,
        passing, and PlugQdiscError (ETIMEDOUT) is raised; call detach() again."""
        limit = seconds(timeout, "timeout")
        with self._lock:
            answer = self._call("detach", limit, timeout=limit)
            self._detached = True
            self._finish_transport()
        return _stats(answer["stats"])

    def _finish_transport(self) -> None:
        """Close the input and reap the transport, which ends on its own."""
        proc = self._close_input()
        if proc is None:
            return
        try:
            proc.wait(timeout=END_GRACE)
        except subprocess.TimeoutExpired:
            self._abandon()
            return
        self._drain_stderr()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()

    def close(self) -> None:
        """End the session: the remote end releases and removes the hold (unlike a local
        close(), which leaves it holding). Idempotent."""
        with self._lock:
            if self._closed and (self._proc is None or self._proc.returncode is not None):
                return
            self._finish_transport()

    def _finish(self) -> None:
        """Release; detach; close. Every step runs; the first error is raised."""
        errors: List[BaseException] = []
        if self.attached:
            for step in (self.release, self.detach):
                try:
                    step()
                except Exception as e:
                    errors.append(e)
                    if isinstance(e, TransportError):
                        break
        self.close()
        if errors:
            raise errors[0]

    def __enter__(self) -> "RemoteHold":
        return self.attach()

    def __exit__(self, typ: object, exc: Optional[BaseException], tb: object) -> None:
        _finish_after(self, exc)  # type: ignore[arg-type]

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and not self._closed and proc.returncode is None:
            warnings.warn("%r was never closed: its session ends now (the remote end "
                          "releases and removes the hold)" % self, ResourceWarning, 2)
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

    # ---- what it is ----

    @property
    def device(self) -> str:
        return self._device

    @property
    def via(self) -> List[str]:
        return list(self._via)

    @property
    def command(self) -> List[str]:
        return list(self._command)

    @property
    def name(self) -> str:
        """How messages name the target."""
        return self._name

    @property
    def info(self) -> Dict[str, Any]:
        """The remote end's first line: protocol, plugqdisc version, pid, host, device,
        ifindex, direction, match, parent, handle, netns, limit, max_hold."""
        return dict(self._info)

    @property
    def handle(self) -> str:
        return str(self._info.get("handle", ""))

    @property
    def match(self) -> Optional[Match]:
        return self._match

    @property
    def direction(self) -> str:
        return self._direction

    @property
    def netns(self) -> Optional[str]:
        return self._netns

    @property
    def max_hold(self) -> Optional[float]:
        return self._max_hold

    @property
    def attached(self) -> bool:
        return bool(self._info) and not self._closed and not self._detached

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def is_buffering(self) -> bool:
        """Whether it held after the last answer (max_hold may have ended that since)."""
        return bool(self._state.get("buffering"))

    @property
    def expired(self) -> bool:
        """Whether max_hold had released it, as of the last answer."""
        return bool(self._state.get("expired"))

    @property
    def last_time(self) -> float:
        """CLOCK_MONOTONIC on the target when it sent its last answer."""
        return float(self._state.get("t", 0.0))


class Group:
    """Several remote holds cued together: each call sends the command to every target
    before reading any answer, so they act at once (not one round trip after another).

    :meth:`attach` starts them all; if one fails, the others are closed (released and
    removed) and the first failure is raised. :meth:`buffer` holds on all; if one fails,
    the others are released. Other calls act on every target and then raise the first
    failure (with the others as notes). ``stats()`` and ``wait_buffered()`` return one
    Stats a target, in order.
    """

    def __init__(self, holds: Sequence[RemoteHold]) -> None:
        holds = list(holds)
        if not holds or not all(isinstance(h, RemoteHold) for h in holds):
            raise TypeError("a group is a non-empty list of RemoteHold objects")
        if len(set(map(id, holds))) != len(holds):
            raise ValueError("a RemoteHold is in the group twice")
        self.holds = holds

    def __repr__(self) -> str:
        return "<Group of %d: %s>" % (len(self.holds), ", ".join(map(repr, self.holds)))

    def __iter__(self) -> Iterator[RemoteHold]:
        return iter(self.holds)

    def __len__(self) -> int:
        return len(self.holds)

    def __getitem__(self, i: int) -> RemoteHold:
        return self.holds[i]

    @staticmethod
    def _raise(errors: List[BaseException]) -> None:
        if errors:
            first = errors[0]
            for other in errors[1:]:
                add_note(first, "plugqdisc: another target failed too: %s: %s"
                         % (type(other).__name__, other))
            raise first

    def _all(self, cmd: str, extra: Optional[float] = 0.0, **args: Any
             ) -> List[Optional[Dict[str, Any]]]:
        """Send CMD to every target, then collect the answers (None where it failed);
        raises nothing: the errors are in self._errors."""
        self._errors: List[BaseException] = []
        sent: List[Optional[RemoteHold]] = []
        for h in self.holds:
            h._lock.acquire()
            try:
                h._send(cmd, **args)
                sent.append(h)
            except Exception as e:
                h._lock.release()
                self._errors.append(e)
                sent.append(None)
        answers: List[Optional[Dict[str, Any]]] = []
        for i, one in enumerate(sent):
            if one is None:
                answers.append(None)
                continue
            try:
                answers.append(one._receive(extra))
            except Exception as e:
                self._errors.append(e)
                answers.append(None)
            except BaseException:
                # Cut short (Ctrl-C, a signal handler's exception): the targets whose answer
                # is still to come are out of step; end their sessions (each remote end
                # releases and removes its hold), as _receive did for this one.
                for rest in sent[i + 1:]:
                    if rest is not None:
                        rest._abandon()
                        rest._lock.release()
                raise
            finally:
                one._lock.release()
        return answers

    def attach(self, *, replace: bool = False) -> "Group":
        """Start every target's remote end at once; all or none."""
        errors: List[BaseException] = []
        for h in self.holds:
            try:
                h._spawn(replace)
            except Exception as e:
                errors.append(e)
                break
        if not errors:
            for h in self.holds:
                limit = h._start_timeout
                try:
                    h._hello(None if limit is None else time.monotonic() + limit)
                except Exception as e:
                    errors.append(e)
        if errors:
            for h in self.holds:
                h.close()
            self._raise(errors)
        return self

    def buffer(self) -> None:
        """Hold on every target; if one fails, release those that held."""
        answers = self._all("buffer")
        errors = self._errors
        if errors:
            for h, a in zip(self.holds, answers):
                if a is not None:
                    try:
                        h.release()
                    except Exception as e:
                        errors.append(e)
            self._raise(errors)

    def release(self) -> None:
        self._all("release")
        self._raise(self._errors)

    release_indefinite = release

    def release_one(self) -> None:
        self._all("release_one")
        self._raise(self._errors)

    def set_limit(self, nbytes: int) -> None:
        _check_limit(nbytes, "nbytes")
        self._all("set_limit", bytes=nbytes or 0)
        self._raise(self._errors)

    def stats(self) -> List[Stats]:
        answers = self._all("stats")
        self._raise(self._errors)
        return [_stats(a["stats"]) for a in answers if a is not None]

    def wait_buffered(self, packets: int = 1, *, timeout: Optional[float] = None
                      ) -> List[Stats]:
        """Wait until every target holds at least ``packets`` packets."""
        if isinstance(packets, bool) or not isinstance(packets, int):
            raise TypeError("packets must be an int, not %s" % type(packets).__name__)
        if packets < 0:
            raise ValueError("packets must be >= 0, not %d" % packets)
        limit = seconds(timeout, "timeout")
        answers = self._all("wait", limit, packets=packets, timeout=limit)
        self._raise(self._errors)
        return [_stats(a["stats"]) for a in answers if a is not None]

    def detach(self, *, timeout: Optional[float] = 5.0) -> List[Stats]:
        """Detach every target (each ends its session); returns each one's counters."""
        limit = seconds(timeout, "timeout")
        answers = self._all("detach", limit, timeout=limit)
        for h, a in zip(self.holds, answers):
            if a is not None:
                h._detached = True
                h._finish_transport()
        self._raise(self._errors)
        return [_stats(a["stats"]) for a in answers if a is not None]

    def close(self) -> None:
        """End every session (each remote end releases and removes its hold)."""
        for h in self.holds:
            h._lock.acquire()
            try:
                if h._proc is not None and h._proc.stdin is not None:
                    try:
                        h._proc.stdin.close()  # all at once: they end together
                    except OSError:
                        pass
            finally:
                h._lock.release()
        for h in self.holds:
            h.close()

    @property
    def closed(self) -> bool:
        return all(h.closed for h in self.holds)

    @property
    def attached(self) -> bool:
        return any(h.attached for h in self.holds)

    def _finish(self) -> None:
        """Release all; detach all; close all. The first error is raised."""
        errors: List[BaseException] = []
        live = [h for h in self.holds if h.attached]
        if live:
            sub = Group(live)
            for step in (sub.release, sub.detach):
                try:
                    step()
                except Exception as e:
                    errors.append(e)
        self.close()
        if errors:
            raise errors[0]

    def __enter__(self) -> "Group":
        return self.attach()

    def __exit__(self, typ: object, exc: Optional[BaseException], tb: object) -> None:
        _finish_after(self, exc)  # type: ignore[arg-type]


Target = Union[RemoteHold, Group]


class _Plugged:
    """``with``: attach, then buffer (holding from entry); on every way out release in
    order, remove, end the sessions. A cleanup error never hides the block's own: it is
    attached to it as a note."""

    def __init__(self, target: Target, replace: bool) -> None:
        self._q = target
        self._replace = replace

    def __enter__(self) -> Any:
        q = self._q
        if q.attached or q.closed:
            raise RuntimeError("plugged(): a block can be entered once; make another "
                               "plugged() for the next block")
        try:
            q.attach(replace=self._replace)
            q.buffer()
        except BaseException as exc:
            _finish_after(q, exc)  # type: ignore[arg-type]
            raise
        return q

    def __exit__(self, typ: object, exc: Optional[BaseException], tb: object) -> None:
        _finish_after(self._q, exc)  # type: ignore[arg-type]


def plugged(device: str, *, via: Union[Via, Sequence[Via]] = (),
            command: Optional[Via] = None, match: Union[Match, Sequence[Match], None] = None,
            direction: str = "egress", limit: Optional[int] = None,
            max_hold: Optional[float] = None, netns: Optional[str] = None,
            replace: bool = False, allow_transport_device: bool = False,
            start_timeout: Optional[float] = START_TIMEOUT,
            timeout: Optional[float] = ANSWER_TIMEOUT) -> "_Plugged":
    """Hold ``device``'s packets on the machine ``via`` reaches, for the ``with`` block,
    as :func:`plugqdisc.plugged` holds them here: the block gets the attached
    :class:`RemoteHold`, holding from entry; on every way out it is released in order
    and removed. ``via`` a list of argv prefixes (``[["ssh", "a"], ["ssh", "b"]]``):
    the same hold on each, as one :class:`Group`, cued at once."""
    if isinstance(via, (list, tuple)) and via and all(isinstance(v, (list, tuple))
                                                      for v in via):
        holds = [RemoteHold(device, via=v, command=command, match=match,
                            direction=direction, limit=limit, max_hold=max_hold, netns=netns,
                            allow_transport_device=allow_transport_device,
                            start_timeout=start_timeout, timeout=timeout) for v in via]
        return _Plugged(Group(holds), replace)
    return _Plugged(RemoteHold(device, via=via, command=command, match=match,  # type: ignore[arg-type]
                               direction=direction, limit=limit, max_hold=max_hold,
                               netns=netns, allow_transport_device=allow_transport_device,
                               start_timeout=start_timeout, timeout=timeout), replace)


def group(*holds: RemoteHold, replace: bool = False) -> "_Plugged":
    """``with group(h1, h2, ...) as g:`` holds on every target from entry, cued at once
    (a :class:`Group`), and releases and removes them all on every way out."""
    return _Plugged(Group(holds), replace)
