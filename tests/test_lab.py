"""The lab itself (host tests: each boots User-Mode Linux, about 3 s)."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from typing import List

import pytest

from plugqdisc import lab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    bool(os.environ.get("PLUGQDISC_INNER")) or not os.path.exists(lab.DEFAULT_KERNEL),
    reason="UML cannot run inside the lab; outside it needs /usr/bin/linux.uml "
    "(apt-get install user-mode-linux)",
)


# Every lab these tests start keeps its files (and so its uml_dir=, on UML's command line)
# under this folder: a lab that someone else runs at the same time is not ours to count.
# World-writable and sticky like /tmp, since one test runs the lab as user nobody.
LAB_TMP = tempfile.mkdtemp(prefix="plugqdisc-labtests-")
os.chmod(LAB_TMP, 0o1777)


@pytest.fixture(autouse=True)
def _labs_under_lab_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", LAB_TMP)  # for the labs started as processes
    monkeypatch.setattr(tempfile, "tempdir", LAB_TMP)  # and for lab.run() in this one


def uml_processes() -> List[int]:
    """UML processes of the labs these tests started that are still alive."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
            with open("/proc/%s/stat" % pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (b"uml_dir=" + LAB_TMP.encode()) in cmd and state != "Z":
            pids.append(int(pid))
    return pids


@pytest.fixture(autouse=True)
def no_leftovers():  # type: ignore[no-untyped-def]
    yield
    assert uml_processes() == []


def cli(*args: str, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def, type-arg]
    return subprocess.run([sys.executable, "-m", "plugqdisc.lab", *args],
                          capture_output=True, cwd=ROOT, **kw)


@pytest.mark.parametrize("status", [0, 1, 7])
def test_exit_status_comes_back(status: int) -> None:
    p = cli("--", "sh", "-c", "exit %d" % status)
    assert p.returncode == status, p.stderr


def test_a_command_killed_by_a_signal() -> None:
    done = lab.run(["sh", "-c", "kill -TERM $$"], capture_output=True)
    assert done.returncode == 128 + signal.SIGTERM


def test_output_is_streamed_apart_and_free_of_kernel_messages() -> None:
    p = cli("--", "sh", "-c", "echo out; echo err >&2; [ -t 1 ] || echo not-a-tty; "
            "head -c 300000 /dev/zero | tr '\\0' a; printf '\\001\\377\\n'")
    assert p.returncode == 0
    assert p.stdout == b"out\nnot-a-tty\n" + b"a" * 300000 + b"\x01\xff\n"
    assert p.stderr == b"err\n"


def test_arguments_pass_exactly() -> None:
    args = ["a b", "'single'", '"double"', "$HOME", "`id`", "a;b", "x\ny", "é ü 漢", "", "-n",
            "*", "\\"]
    done = lab.run(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))",
                    *args], capture_output=True)
    assert done.returncode == 0, done.stderr
    import json
    assert json.loads(done.stdout) == args


def test_environment_and_working_directory_pass_through() -> None:
    with tempfile.TemporaryDirectory(prefix="dir with space $x ") as d:
        env = {"PATH": os.environ["PATH"], "ODD": "a b'c\"d$e\nf", "EMPTY": "",
               "UNICODE": "ƒøø"}
        done = lab.run(["env", "-0"], env=env, cwd=d, capture_output=True)
        assert done.returncode == 0
        got = dict(kv.split("=", 1) for kv in done.stdout.decode().split("\0") if kv)
        assert got == env
        done = lab.run(["pwd"], cwd=d, capture_output=True)
        assert done.stdout.decode().rstrip("\n") == d


def test_runs_as_root_with_lo_up_stdin_empty_and_plug_available() -> None:
    done = lab.run(["sh", "-c", "id -u; cat; ip -o link show lo | grep -c UP; "
                    "tc qdisc add dev lo root plug limit 10000 && echo plug-ok"],
                   capture_output=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"0\n1\nplug-ok\n"


def test_the_host_kernel_has_no_plug_but_the_lab_does() -> None:
    """The issue's "done when": the same tc command fails outside and works inside."""
    if os.geteuid() != 0:
        pytest.skip("needs root on the host to make a private network namespace for tc")
    host = subprocess.run(["unshare", "-n", "tc", "qdisc", "add", "dev", "lo", "root", "plug",
                           "limit", "10000"], capture_output=True, text=True)
    if host.returncode == 0:
        pytest.skip("this host's kernel has sch_plug; nothing to contrast")
    assert "unknown" in host.stderr
    p = cli("--", "tc", "qdisc", "add", "dev", "lo", "root", "plug", "limit", "10000")
    assert p.returncode == 0, p.stderr


def test_timeout_stops_the_lab_with_status_124() -> None:
    t = time.monotonic()
    p = cli("--timeout", "4", "--", "sleep", "60")
    assert p.returncode == 124
    assert b"did not finish within 4" in p.stderr
    assert time.monotonic() - t < 30


def test_command_not_found_is_127_without_booting() -> None:
    p = cli("--", "no-such-command-xyz")
    assert p.returncode == 127
    assert b"no-such-command-xyz" in p.stderr and b"not found" in p.stderr
    p = cli("--", "./pyproject.toml")
    assert p.returncode == 126


def test_missing_kernel_names_the_fix() -> None:
    p = cli("--kernel", "/nonexistent/linux", "--", "true")
    assert p.returncode == 125
    assert b"--kernel" in p.stderr
    with pytest.raises(lab.LabError, match="apt-get install user-mode-linux"):
        saved = lab.DEFAULT_KERNEL
        lab.DEFAULT_KERNEL = "/nonexistent/linux.uml"
        try:
            lab.run(["true"])
        finally:
            lab.DEFAULT_KERNEL = saved


def test_missing_module_tree_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "MODULE_ROOT", "/nonexistent/modules")
    with pytest.raises(lab.LabError, match="module tree.*user-mode-linux"):
        lab.run(["true"])


def test_a_guest_that_dies_without_a_status() -> None:
    with pytest.raises(lab.LabError, match="without reporting"):
        lab.run(["true"], kernel="/bin/true")  # "boots" and ends at once


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_leave_no_uml_behind(sig: int, status: int) -> None:
    # SIGINT's default restored: a shell starts background jobs with it ignored, and the
    # lab (like any program) would then never see the Ctrl-C this test sends.
    p = subprocess.Popen([sys.executable, "-m", "plugqdisc.lab", "--", "sleep", "60"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not uml_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uml_processes(), "the lab did not start"
    time.sleep(1)
    p.send_signal(sig)
    assert p.wait(30) == status
    assert uml_processes() == []


def test_an_unprivileged_host_user_can_run_the_lab() -> None:
    """UML needs no host privileges. The lab is run as user nobody from a copy of
    plugqdisc/lab.py (stdlib only) in a folder nobody can read: our checkout and
    interpreter may sit under a home that nobody cannot enter."""
    if os.geteuid() != 0:
        prefix: List[str] = []
        python = sys.executable
    else:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user 'nobody' on this host to run as")
        prefix = ["setpriv", "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
                  "--clear-groups"]
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent",
           "TMPDIR=" + LAB_TMP]
    if prefix:
        for python in (os.path.realpath(sys.executable), "/usr/bin/python3"):
            if subprocess.run(prefix + env + [python, "-c", "pass"], cwd="/",
                              capture_output=True).returncode == 0:
                break
        else:
            pytest.skip("no Python interpreter that user nobody may run")
    with tempfile.TemporaryDirectory() as d:  # under LAB_TMP, which nobody may enter
        os.chmod(d, 0o755)
        os.mkdir(os.path.join(d, "plugqdisc"), 0o755)
        open(os.path.join(d, "plugqdisc", "__init__.py"), "w").close()
        with open(os.path.join(d, "plugqdisc", "lab.py"), "w") as f, open(lab.__file__) as src:
            f.write(src.read())
        run_as_nobody(prefix + env, python, d)


def run_as_nobody(prefix: List[str], python: str, cwd: str) -> None:
    p = subprocess.run(prefix + [python, "-m", "plugqdisc.lab", "--", "sh", "-c",
                                 "id -u; tc qdisc add dev lo root plug limit 10000 && echo ok"],
                       cwd=cwd, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"0\nok\n"


# ---- kernel modules ------------------------------------------------------------------

def lsmod(done: "subprocess.CompletedProcess[bytes]") -> List[str]:
    return [line.split()[0] for line in done.stdout.decode().splitlines()[1:] if line]


def test_modprobe_and_the_kernel_load_any_module_the_lab_kernel_ships() -> None:
    """modprobe finds the UML kernel's module tree (with its modules.dep), and so does
    the kernel when tc asks for a qdisc it lacks; the host's filesystem is not changed."""
    host_lib = sorted(os.listdir("/lib"))
    done = lab.run(["sh", "-c", "tc qdisc add dev lo root netem delay 1ms && "
                    "modprobe sch_tbf && modprobe nf_tables && modprobe ip_tables && lsmod"],
                   capture_output=True)
    assert done.returncode == 0, done.stderr
    loaded = lsmod(done)
    for name in ("sch_netem", "sch_tbf", "nf_tables", "nfnetlink", "ip_tables", "x_tables",
                 "sch_plug"):
        assert name in loaded, (name, loaded)
    assert sorted(os.listdir("/lib")) == host_lib  # no /lib/modules made on the host


def test_the_modules_option_preloads_and_names_a_module_that_will_not_load() -> None:
    p = cli("--modules", "sch_tbf,sch_red", "--modules", "sch_sfq", "--", "lsmod")
    assert p.returncode == 0, p.stderr
    loaded = p.stdout.decode()
    assert all(name in loaded for name in ("sch_tbf", "sch_red", "sch_sfq")), loaded
    p = cli("--modules", "sch_tbf,no_such_module", "--", "true")
    assert p.returncode == 125
    assert b"could not load the modules asked for: sch_tbf no_such_module" in p.stderr
    assert b"no_such_module not found" in p.stderr  # modprobe's own words
    p = cli("--modules=sch_tbf,-r", "--", "true")
    assert p.returncode == 2 and b"'-r' is not a module name" in p.stderr
    with pytest.raises(ValueError, match="not a module name"):
        lab.run(["true"], modules=["../sch_plug.ko"])


PLUG_UNDER_HTB_BESIDE_NETEM = r"""
import socket, subprocess
from plugqdisc import PlugQdisc

def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)

# htb at lo's root (everything in its class 1:1), a plug as that class's qdisc; netem on a
# dummy device beside it. tc loads sch_htb, sch_netem and dummy itself.
sh("tc qdisc add dev lo root handle 1: htb default 1")
sh("tc class add dev lo parent 1: classid 1:1 htb rate 1gbit")
sh("ip link add d0 type dummy && ip link set d0 up && ip addr add 10.9.0.1/24 dev d0")
sh("tc qdisc add dev d0 root netem delay 1ms")
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
rx.settimeout(5)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
with PlugQdisc("lo", parent="1:1", handle="10:") as q:
    q.buffer()
    for i in range(3):
        tx.sendto(b"held%d" % i, rx.getsockname())
    print("held", q.wait_buffered(3, timeout=5).qlen)
    tx.sendto(b"x", ("10.9.0.2", 9))  # through netem on d0, while lo holds
    rx.setblocking(False)
    try:
        rx.recv(10)
        print("leaked")
    except BlockingIOError:
        pass
    rx.setblocking(True)
    q.release()
    print("got", b" ".join(rx.recv(10) for _ in range(3)).decode())
out = subprocess.run(["tc", "-s", "qdisc", "show"], capture_output=True, text=True).stdout
print("netem on d0", any(l.startswith("qdisc netem") and "dev d0" in l for l in out.splitlines()))
print("htb on lo", any(l.startswith("qdisc htb 1: dev lo root") for l in out.splitlines()))
"""


def test_a_hold_under_htb_with_netem_beside_it_holds_and_releases_traffic() -> None:
    done = lab.run([sys.executable, "-c", PLUG_UNDER_HTB_BESIDE_NETEM], capture_output=True,
                   cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split("\n") == [
        "held 3", "got held0 held1 held2", "netem on d0 True", "htb on lo True", ""]
