"""The code of the docs runs here: the recipes of docs/recipes.rst (which shows these
functions), through the pytest plugin as a user's suite would, and the guide's first
hold (examples/first_hold.py), with the output the guide shows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from plugqdisc import PlugQdisc
from plugqdisc.pytest_plugin import PlugFactory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.plugqdisc
def test_a_connection_made_during_a_restart_reaches_the_new_server(plug: PlugFactory) -> None:
    q = plug("lo")
    old = socket.create_server(("127.0.0.1", 0))  # the server running
    port = old.getsockname()[1]
    q.buffer()                          # hold from here
    old.close()                         # the old server goes away ...
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", port))  # a SYN that would be refused now: held
    q.wait_buffered(1, timeout=5)
    new = socket.create_server(("127.0.0.1", port))  # ... the new one listens
    q.release()                         # the SYN reaches the new server
    new.settimeout(5)
    conn, _ = new.accept()
    client.setblocking(True)
    client.sendall(b"hello")
    assert conn.recv(5) == b"hello"


@pytest.mark.plugqdisc
def test_a_held_datagram_arrives_only_after_the_release(plug: PlugFactory) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    q = plug("lo")                      # attached, passing
    q.buffer()                          # holding
    tx.sendto(b"ping", rx.getsockname())
    assert q.wait_buffered(1, timeout=5).qlen == 1
    rx.settimeout(0.2)
    with pytest.raises(socket.timeout):
        rx.recv(4)                      # nothing arrives while held
    q.release()
    rx.settimeout(5)
    assert rx.recv(4) == b"ping"


@pytest.mark.plugqdisc
def test_epochs_leave_one_at_a_time() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with PlugQdisc("lo") as q:          # attached, passing
        q.buffer()                      # epoch 1 starts
        tx.sendto(b"first", rx.getsockname())
        q.buffer()                      # epoch 1 is closed, epoch 2 starts
        tx.sendto(b"second", rx.getsockname())
        q.wait_buffered(2, timeout=5)
        q.release_one()                 # epoch 1 leaves; epoch 2 is still held
        assert rx.recv(10) == b"first"
        assert q.wait_buffered(1, timeout=5).qlen == 1
        q.release()                     # everything leaves; traffic passes again
        assert rx.recv(10) == b"second"


@pytest.mark.plugqdisc
def test_the_guides_first_hold_prints_what_the_guide_shows() -> None:
    p = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "first_hold.py")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n") == [
        "Stats(packets=0, bytes=0, qlen=5, backlog=260, drops=0, overlimits=0, requeues=0)",
        "nothing arrived while held",
        "[b'datagram 0', b'datagram 1', b'datagram 2', b'datagram 3', b'datagram 4']", ""]
    with open(os.path.join(ROOT, "docs", "guide.rst")) as f:
        guide = f.read()
    assert all(line in guide for line in p.stdout.split("\n"))
