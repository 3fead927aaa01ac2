"""The plugqdisc command on the host: usage errors (exit 2), --help with an example for
each command, errors that name the fix (exit 1). What needs sch_plug is in
test_cli_kernel.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import argparse

import pytest

import plugqdisc
from plugqdisc import cli

COMMANDS = ("hold", "release", "status", "cleanup")


def run(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "plugqdisc", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_with_an_example(command: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: plugqdisc %s" % command)
    assert "example" in out and "  plugqdisc %s " % command in out


def test_top_level_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS + ("lab",):
        assert command in out


@pytest.mark.parametrize("args, text", [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["hold"], "DEV"),
    (["hold", "lo", "--dport", "http"], "write PORT or LOW-HIGH, for example 80 or 1000-2000"),
    (["hold", "lo", "--dport", "0"], "ports are 1 to 65535"),
    (["hold", "lo", "--sport", "2000-1000"], "--sport: the range 2000-1000 is reversed: "
     "write 1000-2000"),
    (["hold", "lo", "--dport", "10-5"], "--dport: the range 10-5 is reversed: write 5-10"),
    (["hold", "lo", "--proto", "udp", "--syn"], "--syn selects TCP connection attempts: it "
     "cannot go with --proto udp (drop --proto, or use --proto tcp)"),
    (["hold", "lo", "--proto", "icmp", "--dport", "80"], "--proto icmp has none (use --proto "
     "tcp, --proto udp, or no --proto for both)"),
    (["hold", "lo", "--mark", "0x42", "--dport", "80"], "--mark cannot be combined with other "
     "options"),
    (["hold", "lo", "--src", "nonsense"], "--src: nonsense is not an IP address"),
    (["hold", "lo", "--limit", "4294967296"], "at most 4294967295"),
    (["hold", "lo", "--netns", ""], "give a name from `ip netns list`"),
    (["hold", "lo", "--mark", "red"], "write VALUE or VALUE/MASK"),
    (["hold", "lo", "--mark", "0x41/0xf0"], "bits outside the mask 0xf0: write 0x40/0xf0"),
    (["hold", "lo", "--mark", "0x42", "--proto", "tcp"], "cannot be combined"),
    (["hold", "lo", "--proto", "gre"], "--proto gre is not known: use tcp, udp, icmp or a "
     "protocol number"),
    (["hold", "lo", "--src", "10.0.0.1", "--dst", "::1"], "different families"),
    (["hold", "lo", "--limit", "-5"], "is not a number of bytes > 0"),
    (["hold", "lo", "--max-hold", "soon"], "is not a number of seconds > 0"),
    (["hold", "a/b"], "not a valid interface name"),
    (["hold", "lo", "--"], "no CMD after --"),
    (["status", "--", "true"], "only hold runs a command"),
    (["release"], "DEV"),
    (["release", "lo", "--handle", "1:2"], "'1:2' is not a qdisc handle: write MAJ: in hex, "
     "as status shows it (for example 3:)"),
    (["release", "lo", "--handle", "root"], "is not a qdisc handle"),
    (["release", "lo", "--handle", "10000:"], "is not a qdisc handle"),
])
def test_usage_errors_exit_2_and_say_what_is_wrong(args: list, text: str,  # type: ignore[type-arg]
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: plugqdisc"), err
    assert text in err, err
    # the command line's own words: no keyword arguments, tuples or Python calls
    for python in ("=", "(1", "(5", "Match(", "replace=True", "'tcp'"):
        assert python not in err.split("error: ", 1)[1], err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == "plugqdisc %s\n" % plugqdisc.__version__
    from importlib.metadata import version
    assert plugqdisc.__version__ == version("plugqdisc")  # pyproject reads the same


def test_every_argument_has_help() -> None:
    parser, subs = cli._parser()
    for name, sub in [("plugqdisc", parser)] + sorted(subs.items()):
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, "%s %s has no help" % (name, action.dest)
    lab_help = run("lab", "--help").stdout
    assert "CMD [ARGS...]      the command" in lab_help, lab_help


@pytest.mark.parametrize("args, text", [
    (["hold", "nosuchdev0", "--", "true"], "no network device 'nosuchdev0'"),
    (["hold", "nosuchdev0", "--", "true"], "`ip link` lists them"),
    (["status", "nosuchdev0"], "no network device 'nosuchdev0': `ip link` lists them"),
    (["release", "lo", "--netns", "plugqdisc-no-such-ns"], "`ip netns list` names them"),
])
def test_errors_are_one_line_naming_the_fix_and_exit_1(args: list, text: str  # type: ignore[type-arg]
                                                       ) -> None:
    p = run(*args)
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("plugqdisc: "), p.stderr
    assert text in p.stderr, p.stderr


def test_status_runs_on_any_kernel() -> None:
    """In a namespace of its own (nothing but lo, no qdisc of anyone's), on a kernel with
    or without sch_plug: an empty JSON list, exit 0."""
    p = subprocess.run(["unshare", "-n", sys.executable, "-m", "plugqdisc", "status",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [], p.stdout


def test_lab_is_the_labs_own_command_line_named_as_called_with_an_example() -> None:
    p = run("lab", "--help")
    assert p.returncode == 0, p.stderr
    assert "--kernel PATH" in p.stdout and "CMD" in p.stdout
    assert p.stdout.startswith("usage: plugqdisc lab "), p.stdout
    assert "python -m plugqdisc.lab" not in p.stdout
    assert "example:\n  plugqdisc lab -- " in p.stdout, p.stdout
    p = run("lab")
    assert p.returncode == 2 and "for example: plugqdisc lab -- " in p.stderr, p.stderr


@pytest.mark.parametrize("start, end, expired, text", [
    ((0, 0), (0, 0, 1, 142), False, "1 packet (142 bytes) was held, 0 dropped"),
    ((0, 0), (0, 0, 2, 284), False, "2 packets (284 bytes) were held, 0 dropped"),
    ((5, 710), (7, 994, 0, 0), False, "0 packets (0 bytes) were held, 0 dropped; 2 packets "
     "(284 bytes) had left before: something else (plugqdisc release, tc?) released it"),
    ((0, 0), (1, 142, 0, 0), True, "--max-hold had passed, the hold ended then; 1 packet "
     "(142 bytes) had left before: --max-hold released it"),
])
def test_the_released_line_counts_in_words(start: tuple, end: tuple,  # type: ignore[type-arg]
                                           expired: bool, text: str) -> None:
    a = plugqdisc.Stats(start[0], start[1], 0, 0, 0, 0, 0)
    b = plugqdisc.Stats(end[0], end[1], end[2], end[3], 0, 0, 0)
    assert text in cli._counts(a, b, expired)


def test_the_console_script_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "plugqdisc")
    if not os.path.exists(script):
        pytest.skip("no plugqdisc script beside %s: the package is not installed in this "
                    "environment (pip install -e .)" % sys.executable)
    p = subprocess.run([script, "status", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "plugqdisc status" in p.stdout


def test_import_plugqdisc_does_not_load_the_command_line() -> None:
    code = "import sys, plugqdisc; print('plugqdisc.cli' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "False", p.stderr
