"""The lab: run a command under a real Linux kernel that has sch_plug.

Many kernels (CI containers, this project's own machines) are built without
``CONFIG_NET_SCH_PLUG``. Debian's ``user-mode-linux`` package ships a 6.1 kernel
that runs as an ordinary process and has ``sch_plug.ko``. The lab boots it with
the host's filesystem as its root (so the caller's interpreter, virtualenv and
build run unchanged), loads the modules (and lets ``modprobe`` load any other the
kernel ships), brings ``lo`` up, runs CMD as root in
the caller's working directory with the caller's environment, streams its
output and hands back its exit status.

Command line::

    python -m plugqdisc.lab [--kernel PATH] [--mem SIZE] [--timeout SECONDS]
                            [--modules LIST] [--] CMD [ARGS...]

From Python: :func:`run` returns a :class:`subprocess.CompletedProcess`.

How it works, and why:

* CMD's stdout and stderr travel over two UML serial lines (``ssl0``, ``ssl1``)
  put in raw mode, each wired to a host pipe. The kernel's own console goes to
  a log file, so kernel messages never mix with CMD's output and no ``\\r`` is
  added.
* UML does not hand back the guest's exit status: the guest writes it to a
  file in a host folder (the host filesystem is its root) before powering off.
* Arguments and environment are written into the guest's init script, each
  one single-quoted, so nothing is interpolated by a shell.
* UML forks helper processes: it runs in a session of its own and the whole
  process group is killed on every way out (normal, timeout, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import (IO, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    Union)

__all__ = ["run", "find_kernel", "LabError", "DEFAULT_KERNEL", "MODULES", "TIMEOUT_STATUS",
           "parse_modules"]

DEFAULT_KERNEL = "/usr/bin/linux.uml"
MODULE_ROOT = "/usr/lib/uml/modules"
#: Modules loaded at boot when the kernel has them, by name (as ``modprobe`` knows them).
MODULES = (
    "sch_plug", "sch_prio", "sch_ingress", "cls_u32", "cls_fw", "cls_matchall", "cls_flower",
    "act_mirred", "ifb", "veth", "dummy",
    "ipv6",  # a module in UML 6.1: without it there is no ::1
)
TIMEOUT_STATUS = 124  # like timeout(1)
NOT_FOUND_STATUS = 127  # like a shell
NOT_EXECUTABLE_STATUS = 126
LAB_FAILURE_STATUS = 125  # the lab itself failed (like timeout(1) and env(1))
# Exit codes of the init script, for failures before CMD runs.
_SETUP_FAILED = 200

_INSTALL_HINT = ("install it with `apt-get install user-mode-linux` (Debian/Ubuntu) or pass "
                 "{option} PATH")


class LabError(RuntimeError):
    """The lab could not run the command (not an error of the command itself)."""


def _guest_script(
    cmd: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    workdir: str,
    modules: List[str],
) -> str:
    q = shlex.quote
    status = q(os.path.join(workdir, "status"))
    lines = [
        "#!/bin/sh",
        "# PID 1 of a plugqdisc lab; generated, removed when the lab ends.",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH",
        "fail() { echo \"plugqdisc.lab: $*\" >/dev/ttyS1; echo %d >%s; sync; poweroff -f; }"
        % (_SETUP_FAILED, status),
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        # devtmpfs is mounted by the kernel itself (CONFIG_DEVTMPFS_MOUNT); ours only if not.
        "[ -c /dev/ttyS1 ] || mount -t devtmpfs devtmpfs /dev",
        "stty -F /dev/ttyS0 raw -echo && stty -F /dev/ttyS1 raw -echo || fail 'no serial lines'",
        "mount -t tmpfs tmpfs /run && mkdir -p /run/netns || fail 'cannot mount /run'",
        "mount -t tmpfs tmpfs /var/run 2>/dev/null",
        "mods=%s/$(uname -r)" % q(MODULE_ROOT),
        "[ -d \"$mods\" ] || [ -z %s ] || fail \"the module tree $mods for this kernel is "
        "missing: %s (it ships the modules beside the kernel)\""
        % (q(" ".join(modules)), _INSTALL_HINT.format(option="--kernel").replace("`", "")),
        # modprobe, and the kernel's own requests (tc qdisc add ... netem loads sch_netem),
        # look in /lib/modules/$(uname -r), which the host (another kernel) lacks: the UML
        # tree goes there, on an overlay of the nearest folder (/lib/modules, else /lib)
        # kept in /run, so the host's filesystem is not changed.
        "if [ -d \"$mods\" ] && [ ! -e /lib/modules/$(uname -r) ]; then",
        "  lower=/lib/modules; [ -d $lower ] || lower=/lib",
        "  grep -qw overlay /proc/filesystems || insmod \"$mods\"/kernel/fs/overlayfs/overlay.ko",
        "  mkdir -p /run/plugqdisc-lab/upper /run/plugqdisc-lab/work &&",
        "  mount -t overlay plugqdisc-lab -o lowerdir=$lower,upperdir=/run/plugqdisc-lab/upper,"
        "workdir=/run/plugqdisc-lab/work $lower &&",
        "  mkdir -p /lib/modules && ln -s \"$mods\" /lib/modules/$(uname -r) ||"
        " fail \"cannot make $mods the guest's /lib/modules/$(uname -r)\"",
        "fi",
        # The defaults when the kernel has them (a kernel of your own may build them in).
        "modprobe -q -a %s" % " ".join(q(m) for m in MODULES),
    ]
    if modules:
        lines.append("modprobe -a %s 2>/dev/ttyS1 || fail 'could not load the modules asked "
                     "for: %s'" % (" ".join(q(m) for m in modules), " ".join(modules)))
    lines += [
        "ip link set lo up || fail 'cannot bring lo up'",
        "cd -- %s || fail 'cannot enter the working directory %s'" % (q(cwd), q(cwd).replace("'", "")),
        # CMD is not PID 1: it gets ordinary signal handling, and we collect its status.
        # Its stdout and stderr are pipes (as under subprocess on the host, not a tty),
        # each copied by cat to its serial line: stdout through fd 5, stderr through fd 1.
        "( ( env -i %s %s </dev/null 2>&1 1>&5 5>&-; echo $? >%s ) | cat >/dev/ttyS1 5>&- ) "
        "5>&1 | cat >/dev/ttyS0"
        % (" ".join(q("%s=%s" % kv) for kv in env.items()), " ".join(q(a) for a in cmd),
           status),
        # stty waits (TCSADRAIN) until all output has left for the host before we power off.
        "stty -F /dev/ttyS0 raw; stty -F /dev/ttyS1 raw",
        "sync",
        "poweroff -f",
        "echo o >/proc/sysrq-trigger",
    ]
    return "\n".join(lines) + "\n"


def _set_pdeathsig() -> None:  # runs in the forked child, before exec
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(proc: "subprocess.Popen[bytes]") -> None:
    """Kill UML and every helper it forked (they share its process group), and wait
    until the group is empty, so that no process outlives the lab."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


class _Sink:
    """Where one of CMD's streams goes: a binary file, a text file, and/or a buffer."""

    def __init__(self, dest: Optional[IO[Any]], capture: bool) -> None:
        self.parts: Optional[List[bytes]] = [] if capture else None
        self.dest = dest
        self.binary = getattr(dest, "buffer", None) if dest is not None else None
        if dest is not None and self.binary is None and "b" in getattr(dest, "mode", ""):
            self.binary = dest

    def write(self, data: bytes) -> None:
        if self.parts is not None:
            self.parts.append(data)
        if self.dest is None:
            return
        if self.binary is not None:
            self.binary.write(data)
            self.binary.flush()
        else:
            self.dest.write(data.decode(errors="replace"))
            self.dest.flush()

    def value(self) -> Optional[bytes]:
        return None if self.parts is None else b"".join(self.parts)


def find_kernel(kernel: Optional[str] = None, *, option: str = "--kernel") -> str:
    """The path of the UML kernel to boot (``kernel``, or :data:`DEFAULT_KERNEL`);
    :class:`LabError` naming the fix when it is missing or not executable (``option``:
    how the caller's user passes another kernel)."""
    path = kernel or DEFAULT_KERNEL
    if not os.path.isfile(path):
        if kernel:
            raise LabError("the lab kernel %r does not exist: pass the path of a UML kernel "
                           "(linux.uml) to %s" % (kernel, option))
        raise LabError("the lab needs the User-Mode Linux kernel %s, which is missing: %s"
                       % (DEFAULT_KERNEL, _INSTALL_HINT.format(option=option)))
    if not os.access(path, os.X_OK):
        raise LabError("the lab kernel %s is not executable: chmod +x it or pass %s"
                       % (path, option))
    return path


def parse_modules(modules: Union[str, Iterable[str]]) -> List[str]:
    """Module names from a list, each of which may hold several separated by commas
    (``["sch_netem,sch_tbf", "sch_htb"]``); :class:`ValueError` for a name that cannot
    be one (modprobe would take it for an option or a path)."""
    names: List[str] = []
    for part in [modules] if isinstance(modules, str) else modules:
        for name in part.split(","):
            name = name.strip()
            if not name:
                continue
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
                raise ValueError("%r is not a module name: give names as modprobe knows them, "
                                 "such as sch_netem (comma-separated)" % name)
            if name not in names:
                names.append(name)
    return names


def _check_command(cmd: Sequence[str], env: Mapping[str, str], cwd: str) -> Optional[Tuple[int, str]]:
    """The guest sees the host's filesystem, so CMD can be looked up here, before booting."""
    name = cmd[0]
    if "/" in name:
        path = name if os.path.isabs(name) else os.path.join(cwd, name)
        if not os.path.exists(path):
            return NOT_FOUND_STATUS, "%s: command not found in the lab (no such file)" % name
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return NOT_EXECUTABLE_STATUS, "%s: not an executable file" % name
        return None
    if shutil.which(name, path=env.get("PATH", os.defpath)) is None:
        return NOT_FOUND_STATUS, ("%s: command not found in the lab's PATH (%s)"
                                  % (name, env.get("PATH", "")))
    return None


def run(
    cmd: Sequence[str],
    *,
    kernel: Optional[str] = None,
    mem: str = "1G",
    timeout: Optional[float] = None,
    capture_output: bool = False,
    stdout: Optional[IO[Any]] = None,
    stderr: Optional[IO[Any]] = None,
    env: Optional[Mapping[str, str]] = None,
    cwd: Union[str, "os.PathLike[str]", None] = None,
    modules: Iterable[str] = (),
    stop: Optional[Callable[[], bool]] = None,
) -> "subprocess.CompletedProcess[bytes]":
    """Run CMD as root inside a User-Mode Linux kernel that has sch_plug.

    Returns a CompletedProcess: ``returncode`` is CMD's exit status (128+N when a
    signal N killed it, 124 on timeout, 127 when CMD does not exist, 126 when it
    cannot be run); ``stdout`` / ``stderr`` hold the bytes when ``capture_output``.
    ``modules``: kernel modules to load before CMD runs, besides :data:`MODULES`, by
    name as ``modprobe`` knows them (``["sch_netem", "sch_tbf"]``); their dependencies
    come along, and CMD can ``modprobe`` any other module the lab's kernel ships.
    ``stop``: called about five times a second while the lab runs (on this thread);
    when it returns true the lab is stopped as on a timeout (status 124).
    Unless captured, CMD's output is streamed to ``stdout`` / ``stderr`` (default:
    this process's). Standard input inside is ``/dev/null``. ``env`` and ``cwd``
    default to the caller's. Raises :class:`LabError` when the lab itself fails
    (kernel or module tree missing, a module in ``modules`` that would not load, guest
    died without reporting a status).
    """
    cmd = [os.fsdecode(a) for a in cmd]
    if not cmd:
        raise ValueError("no command given: run([...]) needs the command to run inside the lab")
    if "=" in cmd[0] and "/" not in cmd[0]:
        # env(1) would take NAME=VALUE for an assignment: name the program by its path.
        cmd[0] = shutil.which(cmd[0], path=(env or os.environ).get("PATH")) or cmd[0]
    if any("\0" in a for a in cmd):
        raise ValueError("an argument contains a NUL byte, which no command line can carry")
    env = dict(os.environ if env is None else env)
    cwd = os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())
    kernel_path = find_kernel(kernel)
    modules = parse_modules(modules)
    if not os.path.isdir(MODULE_ROOT) and kernel is None:
        raise LabError("the lab's module tree %s is missing: %s"
                       % (MODULE_ROOT, _INSTALL_HINT.format(option="--kernel")))
    if not capture_output:
        stdout = sys.stdout if stdout is None else stdout
        stderr = sys.stderr if stderr is None else stderr
    out, err = _Sink(stdout, capture_output), _Sink(stderr, capture_output)

    bad = _check_command(cmd, env, cwd)
    if bad is not None:
        err.write(("plugqdisc.lab: %s\n" % bad[1]).encode())
        return subprocess.CompletedProcess(cmd, bad[0], out.value(), err.value())

    workdir = tempfile.mkdtemp(prefix="plugqdisc-lab-")
    try:
        return _boot(cmd, env, cwd, kernel_path, mem, timeout, modules, workdir, out, err,
                     stop)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _boot(cmd: List[str], env: Dict[str, str], cwd: str, kernel_path: str, mem: str,
          timeout: Optional[float], modules: List[str], workdir: str, out: _Sink,
          err: _Sink, stop: Optional[Callable[[], bool]]
          ) -> "subprocess.CompletedProcess[bytes]":
    init = os.path.join(workdir, "init")
    with open(init, "w") as f:
        f.write(_guest_script(cmd, env, cwd, workdir, modules))
    os.chmod(init, 0o755)
    console = os.path.join(workdir, "console.log")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    argv = [
        kernel_path, "mem=%s" % mem, "rootfstype=hostfs", "rootflags=/", "rw",
        "init=%s" % init, "quiet", "uml_dir=%s" % workdir, "umid=lab",
        "con=null", "con0=null,fd:1", "ssl=null",
        "ssl0=null,fd:%d" % out_w, "ssl1=null,fd:%d" % err_w,
    ]
    # UML keeps its memory file in TMPDIR: keep it in our folder (on disk, removed after).
    uml_env = {"PATH": os.defpath, "TMPDIR": workdir, "HOME": workdir}
    deadline = None if timeout is None else time.monotonic() + timeout
    with open(console, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=uml_env,
            pass_fds=(out_w, err_w), start_new_session=True, preexec_fn=_set_pdeathsig,
        )
    os.close(out_w)
    os.close(err_w)
    timed_out = stopped = False
    try:
        sel = selectors.DefaultSelector()
        sel.register(out_r, selectors.EVENT_READ, out)
        sel.register(err_r, selectors.EVENT_READ, err)
        open_fds = 2
        while open_fds:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait == 0.0:
                timed_out = True
                break
            if stop is not None and stop():
                stopped = True
                break
            for key, _ in sel.select(min(wait, 0.2) if wait is not None else 0.2):
                data = os.read(key.fd, 65536)
                if data:
                    key.data.write(data)
                else:
                    sel.unregister(key.fd)
                    open_fds -= 1
            # The pipes close when UML and all its helpers have gone; if UML itself ended
            # and a helper lingers, do not wait for it.
            if proc.poll() is not None and open_fds:
                for key in list(sel.get_map().values()):
                    _drain(key.fd, key.data)
                break
        sel.close()
    finally:
        _kill_group(proc)
        os.close(out_r)
        os.close(err_r)
    if stopped:
        err.write(("plugqdisc.lab: the lab was stopped before %s finished\n" % cmd[0]).encode())
        return subprocess.CompletedProcess(cmd, TIMEOUT_STATUS, out.value(), err.value())
    if timed_out:
        err.write(("plugqdisc.lab: %s did not finish within %s s; the lab was stopped\n"
                   % (cmd[0], timeout)).encode())
        return subprocess.CompletedProcess(cmd, TIMEOUT_STATUS, out.value(), err.value())
    try:
        with open(os.path.join(workdir, "status")) as f:
            status = int(f.read().strip())
    except (OSError, ValueError):
        with open(console, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace").replace("\r\n", "\n")
        raise LabError("the lab kernel ended (status %s) without reporting %s's exit status: "
                       "the guest crashed or was killed. Its console said:\n%s"
                       % (proc.returncode, cmd[0], tail)) from None
    if status == _SETUP_FAILED:
        raise LabError("the lab could not be set up (see the message above); CMD did not run")
    return subprocess.CompletedProcess(cmd, status, out.value(), err.value())


def _drain(fd: int, sink: _Sink) -> None:
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            return
        sink.write(data)


class _Terminated(BaseException):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


class _KeepLines(argparse.HelpFormatter):
    """Wraps a paragraph; keeps a text of several lines (the example) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return text if "\n" in text else super()._fill_text(text, width, indent)


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m plugqdisc.lab") -> int:
    """The command line; PROG is how it was called (``plugqdisc lab`` from the CLI)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=_KeepLines,
        epilog="example:\n  %s -- python -m pytest -q tests/\n      run the tests in a "
        "kernel that has sch_plug, as root, in this directory" % prog,
        description="Run CMD as root inside a User-Mode Linux kernel that has sch_plug, with "
        "the host's filesystem as root, the caller's working directory and environment, and "
        "lo up. CMD's stdout and stderr are streamed; its standard input is /dev/null. "
        "Exits with CMD's status (128+N if signal N killed it), 124 on timeout, 127 if CMD "
        "is not found, 125 if the lab itself failed.",
    )
    parser.add_argument("--kernel", metavar="PATH", help="UML kernel (default %s)" % DEFAULT_KERNEL)
    parser.add_argument("--mem", metavar="SIZE", default="1G", help="guest memory (default 1G)")
    parser.add_argument("--timeout", metavar="SECONDS", type=float,
                        help="stop the lab after this long; exit status 124")
    parser.add_argument("--modules", metavar="LIST", action="append", default=[],
                        help="kernel modules to load before CMD, besides the defaults, by name "
                        "and comma-separated (sch_netem,sch_tbf); CMD can also modprobe any "
                        "module the lab's kernel ships")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]",
                        help="the command to run in the lab (after --)")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no CMD given; for example: %s -- tc qdisc show" % prog)
    try:
        modules = parse_modules(args.modules)
    except ValueError as e:
        parser.error("--modules: %s" % e)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(cmd, kernel=args.kernel, mem=args.mem, timeout=args.timeout,
                   modules=modules).returncode
    except LabError as e:
        print("plugqdisc.lab: %s" % e, file=sys.stderr)
        return LAB_FAILURE_STATUS
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
