"""Hold only new connections to a server's port across its restart.

A control connection to the server (established before the restart) keeps
exchanging messages every 10 ms the whole time, while new connections are
attempted every 10 ms. ``plugged("lo", match=Match(dport=PORT, syn=True))``
holds only the connection attempts (TCP SYN to PORT): they wait in the plug
qdisc while the old listener is gone and reach the new one; everything else on
``lo``, the control connection included, flows untouched. Run it with::

    python -m plugqdisc.lab -- python examples/selective_reload.py

Exit status 0 when no attempt was refused and the control connection never
stalled for longer than the restart.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Dict, List

from plugqdisc import Match, plugged

RESTART_GAP = 0.3  # seconds without a listener
EVERY = 0.01


def listener(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


def serve(ls: socket.socket) -> None:
    """Greet every new connection, until the listener is shut down."""
    while True:
        try:
            c, _ = ls.accept()
        except OSError:
            return
        with c:
            c.sendall(b"hello\n")


def echo(conn: socket.socket) -> None:
    """The old server process's established connection: it keeps answering."""
    with conn:
        while True:
            data = conn.recv(64)
            if not data:
                return
            conn.sendall(data)


def control(conn: socket.socket, stop: threading.Event, gaps: List[float]) -> None:
    """Talk on the established connection every 10 ms; record each round trip."""
    conn.settimeout(5)
    while not stop.is_set():
        t = time.monotonic()
        conn.sendall(b"ping")
        if conn.recv(64) != b"ping":
            gaps.append(float("inf"))
            return
        gaps.append(time.monotonic() - t)
        time.sleep(EVERY)


def connector(port: int, stop: threading.Event, results: Dict[str, int]) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.settimeout(5)
                results["served" if c.recv(16) == b"hello\n" else "broken"] += 1
        except ConnectionRefusedError:
            results["refused"] += 1
        except OSError:
            results["broken"] += 1
        time.sleep(EVERY)


def main() -> int:
    ls = listener()
    port = ls.getsockname()[1]
    ctl = socket.create_connection(("127.0.0.1", port))  # the established connection
    srv_side, _ = ls.accept()
    threading.Thread(target=echo, args=(srv_side,), daemon=True).start()
    threading.Thread(target=serve, args=(ls,), daemon=True).start()

    stop = threading.Event()
    gaps: List[float] = []
    results = {"served": 0, "refused": 0, "broken": 0}
    workers = [threading.Thread(target=control, args=(ctl, stop, gaps), daemon=True),
               threading.Thread(target=connector, args=(port, stop, results), daemon=True)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    with plugged("lo", match=Match(dport=port, syn=True)) as q:
        ls.shutdown(socket.SHUT_RDWR)  # the listener goes away ...
        ls.close()
        time.sleep(RESTART_GAP)  # ... the new server starts ...
        ls = listener(port)  # ... and listens again on the same port
        threading.Thread(target=serve, args=(ls,), daemon=True).start()
        held = q.stats().qlen
    time.sleep(0.3)
    stop.set()
    for w in workers:
        w.join(10)
    ls.close()
    ctl.close()

    slowest = max(gaps) if gaps else float("inf")
    print("A server restarts (%d ms without a listener); new connections every %d ms; an "
          "established connection talks every %d ms." % (RESTART_GAP * 1000, EVERY * 1000,
                                                          EVERY * 1000))
    print("  new connections: %(served)d served, %(refused)d refused, %(broken)d broken"
          % results)
    print("  %d connection attempt%s held during the restart, then released"
          % (held, "" if held == 1 else "s"))
    print("  control connection: %d round trips, the slowest %.0f ms"
          % (len(gaps), slowest * 1000))
    if results["refused"] or results["broken"] or slowest > RESTART_GAP:
        print("FAILED")
        return 1
    print("Only the connection attempts waited; the established connection never did.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
