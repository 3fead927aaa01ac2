"""The records `plugqdisc cleanup` relies on, in the lab, where /run can be made read-only
or full for real: a hold always goes on; only a folder that can never be written turns
records off for the process."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from nettools import recv_all, sh, udp_pair
from plugqdisc import PlugQdisc, _cli_records

pytestmark = pytest.mark.plugqdisc


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A small tmpfs of our own in place of /run, with RUN_DIR inside it."""
    mnt = tmp_path / "run"
    mnt.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=64k,mode=755", "plugqdisc-test", str(mnt))
    monkeypatch.setattr(_cli_records, "RUN_DIR", str(mnt / "plugqdisc"))
    monkeypatch.setattr(_cli_records, "_unwritable", False)
    try:
        yield mnt
    finally:
        sh("umount", str(mnt))


def held_and_released(q: PlugQdisc) -> None:
    """Q holds a datagram, and gives it back on detach."""
    rx, tx, addr = udp_pair()
    q.buffer()
    tx.sendto(b"held", addr)
    assert q.wait_buffered(1, timeout=5).qlen == 1
    q.detach()
    assert recv_all(rx, 1) == [b"held"]
    rx.close()
    tx.close()


def my_records() -> list:  # type: ignore[type-arg]
    return _cli_records.records(_cli_records.netns_id(None))


def test_a_read_only_run_leaves_the_hold_alone_and_turns_records_off(run_dir: Path) -> None:
    sh("mount", "-o", "remount,ro", str(run_dir))
    q = PlugQdisc("lo", guard=False).attach()
    assert q.created
    held_and_released(q)
    assert os.listdir(run_dir) == []
    # EROFS says this /run is read-only: the process stops trying (no cost per attach),
    # even once it is writable again.
    sh("mount", "-o", "remount,rw", str(run_dir))
    q = PlugQdisc("lo", guard=False).attach()
    assert q.created and my_records() == [] and os.listdir(run_dir) == []
    q.detach()
    q.close()


def test_a_full_run_costs_that_record_only(run_dir: Path) -> None:
    fd = os.open(run_dir / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as e:
        while True:
            os.write(fd, bytes(4096))
    os.close(fd)
    assert e.value.errno == errno.ENOSPC
    q = PlugQdisc("lo", guard=False).attach()
    assert q.created
    assert my_records() == []  # and no half-written record left for cleanup to trip on
    assert sorted(os.listdir(run_dir)) in (["filler"], ["filler", "plugqdisc"])
    held_and_released(q)
    os.unlink(run_dir / "filler")
    # Not latched: the next attach that creates writes its record, and detach removes it.
    q = PlugQdisc("lo", guard=False).attach()
    (rec,) = my_records()
    assert (rec.device, rec.mode, rec.pid, rec.alive) == ("lo", "plain", os.getpid(), True)
    q.detach()
    assert my_records() == []
    q.close()


# ---- the record goes with the hold --------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"match": "udp"}, {"direction": "ingress"}],
                         ids=["plain", "match", "ingress"])
def test_the_record_is_made_with_the_hold_and_goes_with_it(run_dir: Path,
                                                           kw: dict) -> None:  # type: ignore[type-arg]
    """Written before attach makes anything, marked made once it has; unlinked by the
    hold's own plan: by detach, and by the guardian when the holder is SIGKILLed."""
    from plugqdisc import Match
    args = dict(kw, match=Match(proto="udp")) if "match" in kw else kw
    q = PlugQdisc("lo", **args).attach()  # type: ignore[arg-type]
    (rec,) = my_records()
    assert (rec.pid, rec.state) == (os.getpid(), "made")
    q.detach()
    q.close()
    assert my_records() == []

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a holder that holds, then dies without a word
        try:
            held = PlugQdisc("lo", **args).attach()  # type: ignore[arg-type]
            held.buffer()  # kept: an object garbage-collected would release and detach
            os.write(w, b"held")
            signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 10) == b"held"
        assert len(my_records()) == 1
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)  # also when a check failed: never left holding
        os.waitpid(pid, 0)
    deadline = time.monotonic() + 0.5
    while my_records() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert my_records() == []  # the guardian undid the hold, and the record with it
    assert "plug" not in sh("tc", "qdisc", "show")


def test_a_record_of_an_attach_that_made_nothing_is_dropped_not_acted_on(
        run_dir: Path) -> None:
    """A holder that died after writing its record but before its guardian had the plan
    made nothing: cleanup drops the record and leaves a qdisc made later at that place by
    someone else (here tc) alone."""
    q = PlugQdisc("lo")
    q._connect(-1)
    path = _cli_records.record(q)  # as attach writes it, before anything is made
    q.close()
    assert path is not None
    with open(path) as f:
        body = json.load(f)
    body["pid"], body["start"] = 2**22 - 1, 1  # a holder that is gone
    with open(path, "w") as f:
        json.dump(body, f)
    sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "plug", "limit", "10000")
    try:
        env = dict(os.environ)
        p = subprocess.run([sys.executable, "-c",
                            "import sys; from plugqdisc import _cli_records, cli; "
                            "_cli_records.RUN_DIR = sys.argv[1]; sys.exit(cli.main(['cleanup']))",
                            _cli_records.RUN_DIR], capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert "died before its attach made anything" in p.stdout, p.stdout
        assert "plug 1:" in sh("tc", "qdisc", "show", "dev", "lo")  # tc's: left alone
        assert not os.path.exists(path)
    finally:
        sh("tc", "qdisc", "del", "dev", "lo", "root")
