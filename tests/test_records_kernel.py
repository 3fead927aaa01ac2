"""The records `plugqdisc cleanup` relies on, in the lab, where /run can be made read-only
or full for real: a hold always goes on; only a folder that can never be written turns
records off for the process."""

from __future__ import annotations

import errno
import os
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
