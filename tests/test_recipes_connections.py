"""The recipes of docs/recipes.rst that hold one connection: both directions of one TCP
connection while others flow, and the stale keep-alive race (examples/keepalive_race.py),
which must end in RemoteDisconnected every time with the hold and never without."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from plugqdisc import Match
from plugqdisc.pytest_plugin import PlugFactory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def silent(sock: socket.socket) -> bool:
    """Nothing arrives on SOCK for a moment (held)."""
    sock.settimeout(0.3)
    try:
        sock.recv(100, socket.MSG_PEEK)
    except socket.timeout:
        return True
    return False


@pytest.mark.plugqdisc
def test_one_connection_is_held_both_ways_while_the_others_flow(plug: PlugFactory) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    held = socket.create_connection(server.getsockname())
    held_peer, _ = server.accept()
    other = socket.create_connection(server.getsockname())
    other_peer, _ = server.accept()
    # One connection is its two ports: hold what goes either way between them.
    a, b = held.getsockname()[1], held_peer.getsockname()[1]
    q = plug("lo", match=[Match(proto="tcp", sport=a, dport=b),    # client -> server
                          Match(proto="tcp", sport=b, dport=a)])   # server -> client
    q.buffer()
    held.sendall(b"ping")
    held_peer.sendall(b"pong")
    assert silent(held_peer) and silent(held)  # both directions wait ...
    other.sendall(b"other")                    # ... while another connection flows
    other_peer.settimeout(5)
    assert other_peer.recv(5) == b"other"
    q.release()
    held_peer.settimeout(5)
    held.settimeout(5)
    assert held_peer.recv(4) == b"ping" and held.recv(4) == b"pong"


@pytest.mark.plugqdisc
def test_the_keepalive_race_ends_in_remote_disconnected_only_with_the_hold() -> None:
    p = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "keepalive_race.py")],
                       capture_output=True, text=True, timeout=300)
    assert p.stdout.splitlines() == ["without a hold: 20 served",
                                     "with the server's FIN held: 20 RemoteDisconnected"]
    assert p.returncode == 0, p.stderr
