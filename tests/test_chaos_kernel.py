"""The Chaos Toolkit extension (chaostoolkit-plugqdisc), in the lab: a real `chaos run` of
the shipped example experiment against namespaces that stand in for two replicas
(tests/machines.py), and runs interrupted with SIGINT and SIGTERM.

The experiment's configuration comes from a --var-file, as a user gives theirs: the
targets (`ip netns exec NS`), the remote command, and the shell command that sends the
traffic to hold (from both machines, to the test's receivers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from machines import PY, Machines, machines, receiver  # noqa: F401 (a fixture)
from nettools import ROOT, recv_all

pytestmark = pytest.mark.plugqdisc
chaoslib = pytest.importorskip("chaoslib", reason="chaostoolkit is in the test extra: "
                               "pip install -e '.[test]' ./chaostoolkit-plugqdisc")

EXPERIMENT = os.path.join(ROOT, "chaostoolkit-plugqdisc", "examples", "experiment.json")
CHAOS = os.path.join(os.path.dirname(sys.executable), "chaos")
PER_MACHINE = 5

# Sends PER_MACHINE datagrams from each machine namespace given to 10.16.k.1:PORT.
SENDER = """import socket, sys
from plugqdisc.netns import CLONE_NEWNET, setns
port = int(sys.argv[1])
for k, ns in enumerate(sys.argv[2:], 1):
    with open("/run/netns/" + ns) as f:
        setns(f.fileno(), CLONE_NEWNET)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(%d):
        s.sendto(b"m%%d-%%d" %% (k, i), ("10.16.%%d.1" %% k, port))
    s.close()
""" % PER_MACHINE


def setup(m: Machines, tmp: Path, disruption: str = "true"
          ) -> Tuple[List[Any], Dict[str, Any], Path]:
    """Receivers on both links (one port), the --var-file, and the journal's path."""
    rx1, (_, port) = receiver(1)
    rx2, _ = receiver(2, port)
    sender = tmp / "send.py"
    sender.write_text(SENDER)
    names = " ".join(m.names[:2])
    config = {
        "plug_device": "eth0",
        "plug_targets": [" ".join(m.via(1)), " ".join(m.via(2))],
        "plug_command": " ".join(PY),
        "plug_port": port,
        "plug_min_held": PER_MACHINE,
        "traffic": "%s %s %d %s" % (sys.executable, sender, port, names),
        "disruption": disruption,
    }
    var_file = tmp / "vars.json"
    var_file.write_text(json.dumps({"configuration": config}))
    return [rx1, rx2], config, var_file


def chaos(var_file: Path, journal: Path, *options: str) -> "subprocess.Popen[str]":
    return subprocess.Popen([CHAOS, "--no-version-check", "--no-log-file", "run", *options,
                             "--var-file", str(var_file), "--journal-path", str(journal),
                             EXPERIMENT],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def delivered(rxs: List[Any]) -> None:
    for k, rx in enumerate(rxs, 1):
        assert recv_all(rx, PER_MACHINE) == [b"m%d-%d" % (k, i) for i in range(PER_MACHINE)]


def test_chaos_run_of_the_example_holds_on_both_targets_and_the_journal_has_the_counts(
        machines: Machines, tmp_path: Path) -> None:
    rxs, _, var_file = setup(machines, tmp_path)
    journal = tmp_path / "journal.json"
    p = chaos(var_file, journal)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    j = json.loads(journal.read_text())
    assert j["status"] == "completed" and not j["deviated"], out
    runs = {r["activity"]["name"]: r for r in j["run"]}
    held = runs["hold-on-every-replica"]["output"]
    assert [e["target"] for e in held] == [" ".join(machines.via(k)) for k in (1, 2)]
    assert all(e["buffering"] and e["device"] == "eth0" for e in held)
    waited = runs["requests-are-in-the-queue"]["output"]
    assert [w["qlen"] for w in waited] == [PER_MACHINE, PER_MACHINE]
    released = runs["release-in-order"]["output"]
    assert [(r["held"], r["dropped"]) for r in released] == [(PER_MACHINE, 0)] * 2, released
    assert all(r["released"] >= PER_MACHINE for r in released)
    # the rollback ran ("always") and found nothing left to release
    assert j["rollbacks"] and j["rollbacks"][0]["output"] == {}
    delivered(rxs)
    assert machines.as_found(1) and machines.as_found(2)


@pytest.mark.parametrize("sig, rollbacks, releaser", [
    (signal.SIGINT, "always", "rollback"),
    (signal.SIGTERM, "always", "rollback"),
    (signal.SIGUSR1, "always", "rollback"),
    (signal.SIGUSR2, "always", "control"),  # SIGUSR2 skips the rollbacks, whatever the strategy
    (signal.SIGINT, "never", "control"),
    (signal.SIGKILL, "always", "lease"),  # chaos runs nothing: each remote end's input ends
])
def test_an_interrupted_chaos_run_leaves_every_target_as_found(
        machines: Machines, tmp_path: Path, sig: int, rollbacks: str, releaser: str) -> None:
    """Interrupted in its disruption (a process activity): the rollback releases ("always"),
    or else the control does at the experiment's end, or, for a SIGKILL, the targets' own
    remote ends as their input ends."""
    rxs, _, var_file = setup(machines, tmp_path, disruption="sleep 120")
    journal = tmp_path / "journal.json"
    p = chaos(var_file, journal, "--rollback-strategy", rollbacks)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            plugs = [q for k in (1, 2) for q in machines.qdiscs(k) if q[0] == "plug"]
            if [qlen for _, qlen, _ in plugs] == [PER_MACHINE] * 2:
                break  # both hold the traffic: the run is in its disruption
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()[0]
        time.sleep(0.5)
        p.send_signal(sig)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        try:
            os.killpg(p.pid, signal.SIGKILL)  # what chaos started and left (sleep 120)
        except ProcessLookupError:
            pass
    if releaser == "lease":
        deadline = time.monotonic() + 1.0  # the remote ends' bound after their input ends
        while not (machines.as_found(1) and machines.as_found(2)):
            assert time.monotonic() < deadline, [machines.qdiscs(k) for k in (1, 2)]
            time.sleep(0.01)
    delivered(rxs)
    assert machines.as_found(1) and machines.as_found(2), out
    if releaser == "lease":
        assert p.returncode == -signal.SIGKILL and not journal.exists()
        return
    j = json.loads(journal.read_text())
    assert j["status"] == "interrupted", out
    if releaser == "control":
        assert not j["rollbacks"]
        assert "the experiment ended with holds still on (hold): releasing them" in out, out
        return
    rolled = j["rollbacks"][0]["output"] if j["rollbacks"] else None
    assert rolled is not None and list(rolled) == ["hold"], out
    assert [(r["held"], r["dropped"]) for r in rolled["hold"]] == [(PER_MACHINE, 0)] * 2
