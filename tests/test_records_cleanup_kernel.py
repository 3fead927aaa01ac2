"""The records are true (issue 14, item 4), in the lab: a file among the records that is
not one is skipped with one line, never a traceback; the ingress qdisc a guardian rightly
left (the device's egress held) is removed by cleanup once the egress holds nothing, and
kept, saying why, while it holds; a place taken at ingress is named as ingress."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Iterator, List

import pytest

from nettools import fork_child, recv_all, report, sh, udp_pair
from plugqdisc import Match, PlugQdisc, PlugQdiscError, _cli_records, _plugqdisc

pytestmark = pytest.mark.plugqdisc

CLI = [sys.executable, "-m", "plugqdisc"]


def cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def here() -> str:
    return _cli_records.netns_id(None)


@pytest.fixture
def bad_records() -> Iterator[List[str]]:
    """Files named as records of this namespace that are not records, in the real
    RUN_DIR (the command runs in a process of its own); removed afterwards."""
    os.makedirs(_cli_records.RUN_DIR, exist_ok=True)
    good = {"netns": here(), "ifindex": 1, "device": "lo", "mode": "plain",
            "parent": 0xFFFFFFFF, "handle": 0x70000, "pid": 1, "start": 0}

    def path(n: int) -> str:
        return os.path.join(_cli_records.RUN_DIR, _cli_records.place_name(
            here(), 1, "plain", 0xFFFFFFFF, 0x70000 + n))

    made = []
    bodies = [
        json.dumps(good).replace('"pid": 1', '"pid": Infinity').encode(),
        b"[" * 2000 + b"]" * 2000,  # deeper than json parses (1000), small as a record
        json.dumps(dict(good, pid="1")).encode(),
        json.dumps(dict(good, ifindex=True)).encode(),
        json.dumps(dict(good, pid=2**40)).encode(),
        json.dumps(dict(good, mode="sideways")).encode(),
        bytes(range(256)),
        b"\"just a string\"",
        b"{}" + b" " * 5000,  # larger than any record
    ]
    for i, body in enumerate(bodies):
        with open(path(i), "wb") as f:
            f.write(body)
        made.append(path(i))
    os.mkdir(path(len(bodies)))
    made.append(path(len(bodies)))
    os.mkfifo(path(len(bodies) + 1))  # opening it for reading must not hang
    made.append(path(len(bodies) + 1))
    try:
        yield made
    finally:
        for p in made:
            if os.path.isdir(p):
                os.rmdir(p)
            else:
                os.unlink(p)


def test_status_and_cleanup_skip_a_corrupt_record_with_one_line_each(
        bad_records: List[str]) -> None:
    q = PlugQdisc("lo").attach()  # a true record, alongside
    try:
        for command in ("status", "cleanup"):
            p = cli(command)
            assert p.returncode == 0, p.stderr
            assert "Traceback" not in p.stderr
            lines = p.stderr.splitlines()
            assert len(lines) == len(bad_records), p.stderr
            for path, line in zip(bad_records, lines):
                assert line.startswith("plugqdisc: skipped %s: " % path), line
                assert line.endswith("it is not a record plugqdisc wrote (remove it)")
        assert "Infinity" not in p.stderr  # the reasons are facts about the fields
        p = cli("status")
        holder = re.split(r"\s{2,}", p.stdout.splitlines()[1])[-2]
        assert holder == str(os.getpid())  # still known
    finally:
        q.detach()
        q.close()


def test_records_never_raises_for_a_bad_file(bad_records: List[str]) -> None:
    skipped: List[_cli_records.Skipped] = []
    assert _cli_records.records(here(), skipped) == []
    whys = {s.path: s.why for s in skipped}
    assert sorted(whys) == sorted(bad_records)
    assert whys[bad_records[0]] == "pid: missing, or not an integer (float)"
    assert whys[bad_records[1]] == "JSON nested too deeply"
    assert whys[bad_records[2]] == "pid: missing, or not an integer (str)"
    assert whys[bad_records[3]] == "ifindex: missing, or not an integer (bool)"
    assert whys[bad_records[4]].startswith("pid: 1099511627776 is out of range")
    assert whys[bad_records[6]] == "not text (binary data)"
    assert whys[bad_records[7]] == "JSON, but not an object"
    assert whys[bad_records[8]] == "larger than a record (4096 bytes at most)"
    assert whys[bad_records[-2]] == "a directory, not a file"
    assert whys[bad_records[-1]] == "not a regular file"


def test_an_unreadable_record_is_skipped_too(bad_records: List[str]) -> None:
    os.chmod(bad_records[2], 0o600)
    os.chmod(_cli_records.RUN_DIR, 0o755)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # as nobody: root reads any file
        try:
            os.setgid(65534)
            os.setuid(65534)
            skipped: List[_cli_records.Skipped] = []
            _cli_records.records(here(), skipped)
            os.write(w, json.dumps([list(s) for s in skipped]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        seen = dict(json.loads(f.read() or "[]"))
    os.waitpid(pid, 0)
    assert seen[bad_records[2]] == "cannot be read: Permission denied"


# ---- the ingress qdisc a guardian left ---------------------------------------------------

def ingress_left_by_a_guardian(egress: PlugQdisc) -> None:
    """A child holds at ingress (guarded) and is killed while EGRESS holds a packet: its
    guardian releases, removes the ifb and leaves the ingress qdisc (deleting it would
    purge what the egress holds). Its record stays."""
    def child(w: int) -> None:
        q = PlugQdisc("lo", direction="ingress", match=Match(proto="tcp")).attach()
        report(w, ready=q.attached, handle=q.handle)  # kept: one garbage-collected would
        # detach
        time.sleep(60)

    pid, r = fork_child(child)
    said = json.loads(r.readline())
    assert said["ready"] is True
    r.close()
    egress._ingress_handle = said["handle"]  # type: ignore[attr-defined]
    egress.buffer()
    rx, tx, addr = udp_pair()
    tx.sendto(b"held at egress", addr)
    assert egress.wait_buffered(1, timeout=5).qlen == 1
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 5
    while any(name.startswith("pqifb") for _, name, _ in _plugqdisc.list_qdiscs(-1)[1]):
        assert time.monotonic() < deadline, "the guardian did not remove the ifb"
        time.sleep(0.01)
    assert "qdisc ingress ffff:" in sh("tc", "qdisc", "show", "dev", "lo")
    assert [r for r in _cli_records.records(here()) if r.mode == "ingress"]
    egress._rx = rx  # type: ignore[attr-defined]  # kept open: the datagram is checked later
    tx.close()


def test_cleanup_removes_the_ingress_qdisc_a_guardian_left_once_the_egress_is_empty() -> None:
    egress = PlugQdisc("lo", match=Match(proto="udp")).attach()
    try:
        ingress_left_by_a_guardian(egress)
        # While the egress holds: kept, saying why; the record stays.
        p = cli("cleanup")
        assert p.returncode == 1
        assert ("plugqdisc: the ingress hold on lo (plug %s, matching proto='tcp') stays: "
                "lo's egress holds 1 packets now" % egress._ingress_handle  # type: ignore
                in p.stderr), p.stderr
        assert "qdisc ingress ffff:" in sh("tc", "qdisc", "show", "dev", "lo")
        assert [r for r in _cli_records.records(here()) if r.mode == "ingress"]
        egress.release()
        assert recv_all(egress._rx, 1) == [b"held at egress"]  # type: ignore[attr-defined]
        p = cli("cleanup")
        assert p.returncode == 0, p.stderr
        assert "removed the ingress hold on lo" in p.stdout, p.stdout
        assert "ingress" not in sh("tc", "qdisc", "show", "dev", "lo")
        assert not [r for r in _cli_records.records(here()) if r.mode == "ingress"]
        with PlugQdisc("lo", direction="ingress"):  # the place is free again
            pass
    finally:
        egress.detach()
        egress.close()


def test_an_ingress_place_taken_says_at_ingress() -> None:
    sh("tc", "qdisc", "add", "dev", "lo", "ingress")
    q = PlugQdisc("lo", direction="ingress")
    with pytest.raises(PlugQdiscError) as e:
        q.attach()
    q.close()
    assert e.value.errno == errno.EEXIST
    text = str(e.value)
    assert "while looking at ingress: an ingress qdisc (handle ffff:) is already at " \
           "ingress of 'lo': pass replace=True to replace it (it is deleted, with what it " \
           "holds)" in text, text
    assert "at root" not in text and "parent/handle" not in text
    sh("tc", "qdisc", "del", "dev", "lo", "ingress")
