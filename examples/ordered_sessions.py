"""A lost update, on cue and in the order chosen: two clients update one record on a server,
each by reading it and writing it back (read-modify-write over TCP, no lock, no version).

When both read before either writes, the second write overwrites the first: one update is
lost. In production that takes two requests arriving within microseconds of each other;
here it happens every time, and the test chooses whose update is lost. One hold per
client connection (several holds on one device), and three steps:

1. both clients send their read; each is held;
2. both reads are let go together (``release_one``: what each client sends next, its
   write, is held in a new epoch): both read the same value;
3. the writes are released one after the other (``release_in_order``), each reaching
   the server before the next leaves its hold: the second one wins.

Run it under a kernel with sch_plug, as root (or in the lab)::

    python -m plugqdisc.lab -- python examples/ordered_sessions.py

It prints how many of 20 tries lost an update, without holds and with each order, and
exits 0 when every try with the holds lost the update of the client released first.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading
from typing import Dict, Tuple

from plugqdisc import Match, plugged, release_in_order

TRIES = 20
START = 100
ADD = {"A": 10, "B": 20}  # what each client adds to the record


class RecordServer:
    """One record, served by one thread with an event loop (as most servers are):
    ``GET`` answers the value, ``SET n`` stores n and answers ``OK``."""

    def __init__(self) -> None:
        self.value = START
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj == self._stop_r:
                    return
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                line = conn.recv(100).decode()
                if not line:
                    sel.unregister(conn)
                    conn.close()
                elif line.startswith("GET"):
                    conn.sendall(b"%d\n" % self.value)
                else:  # SET n
                    self.value = int(line.split()[1])
                    conn.sendall(b"OK\n")

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self.listener.close()


class Client(threading.Thread):
    """Adds ADD[name] to the record: reads it, then writes back the sum."""

    def __init__(self, server: RecordServer, name: str) -> None:
        super().__init__(daemon=True)
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.requests = Match(proto="tcp", sport=self.sock.getsockname()[1],
                              dport=server.port)  # what it sends the server
        self.wrote = threading.Event()

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\n")
        if line.startswith(b"SET"):
            self.wrote.set()
        return self.sock.recv(100)

    def run(self) -> None:
        value = int(self.ask(b"GET"))
        self.ask(b"SET %d" % (value + ADD[self.name]))

    def close(self) -> None:
        self.sock.close()


def lost_update(server: RecordServer) -> str:
    """Whose update the record lacks: "A", "B", or "" (none lost)."""
    got = server.value - START
    return {ADD["A"] + ADD["B"]: "", ADD["A"]: "B", ADD["B"]: "A"}.get(got, "?")


def one_try(server: RecordServer, order: Tuple[str, str] = ("", "")) -> str:
    """Both clients update the record at once; with ORDER ("A", "B"): with the holds,
    A's write released first. Returns whose update was lost ("" for none)."""
    server.value = START
    clients = {name: Client(server, name) for name in "AB"}
    if not order[0]:
        for c in clients.values():
            c.start()
    else:
        with plugged("lo", match=clients["A"].requests) as a, \
                plugged("lo", match=clients["B"].requests) as b:
            holds = {"A": a, "B": b}
            for c in clients.values():
                c.start()  # 1. both read ...
            for q in holds.values():
                q.wait_buffered(1, timeout=5)  # ... and the reads are held
                q.buffer()  # what comes next (the write) goes into a new epoch
            for q in holds.values():
                q.release_one()  # 2. both reads go: both get the same value
            for c in clients.values():
                c.wrote.wait(5)  # both writes are held, computed from that value
            release_in_order(holds[order[0]], holds[order[1]])  # 3. one after the other
    for c in clients.values():
        c.join(10)
        c.close()
    return lost_update(server)


def main() -> int:
    server = RecordServer()
    results: Dict[Tuple[str, str], int] = {}
    try:
        for order in (("", ""), ("A", "B"), ("B", "A")):
            lost = [one_try(server, order) for _ in range(TRIES)]
            if not order[0]:
                print("without holds: %d of %d tries lost an update"
                      % (sum(1 for x in lost if x), TRIES))
            else:
                results[order] = lost.count(order[0])
                print("with %s's write released first: %d of %d tries lost %s's update"
                      % (order[0], results[order], TRIES, order[0]))
    finally:
        server.close()
    return 0 if all(n == TRIES for n in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
