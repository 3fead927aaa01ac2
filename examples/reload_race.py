"""The reload race, reproduced: a server restarts while a client keeps connecting.

While the old listening socket is closed and the new one not yet open, the
kernel answers a SYN with a reset: the client sees "connection refused". This is
the race HAProxy's seamless reload works around by plugging the outgoing traffic
for the length of the restart. Run it (as root, on a kernel with sch_plug) with::

    python -m plugqdisc.lab -- python examples/reload_race.py

It runs the same restart twice, without and with ``plugged("lo")`` around it,
and prints what the client saw. Exit status 0 when the hold saved every
connection.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from contextlib import nullcontext
from typing import Any, ContextManager, Dict, List

from plugqdisc import plugged

RESTART_GAP = 0.2  # seconds between closing the old listener and opening the new one
ATTEMPT_EVERY = 0.01  # the client tries a new connection this often


def listener(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


def stop_listening(ls: socket.socket) -> None:
    """Close a listener that a thread is blocked on in accept(): close() alone would
    leave it listening until a connection arrived (none does while packets are held)."""
    ls.shutdown(socket.SHUT_RDWR)
    ls.close()


def serve(ls: socket.socket) -> None:
    """Answer every connection with one line, until the listener is closed."""
    while True:
        try:
            c, _ = ls.accept()
        except OSError:
            return
        with c:
            c.sendall(b"hello\n")


def client(port: int, stop: threading.Event, results: Dict[str, Any]) -> None:
    while not stop.is_set():
        t = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.settimeout(5)
                ok = c.recv(16) == b"hello\n"
            results["served" if ok else "broken"] += 1
        except ConnectionRefusedError:
            results["refused"] += 1
        except OSError:
            results["broken"] += 1
        results["longest"] = max(results["longest"], time.monotonic() - t)
        time.sleep(ATTEMPT_EVERY)


def restart_under_load(hold: bool) -> Dict[str, Any]:
    ls = listener()
    port = ls.getsockname()[1]
    threading.Thread(target=serve, args=(ls,), daemon=True).start()
    results: Dict[str, Any] = {"served": 0, "refused": 0, "broken": 0, "longest": 0.0,
                               "held": 0}
    stop = threading.Event()
    cl = threading.Thread(target=client, args=(port, stop, results), daemon=True)
    cl.start()
    try:
        time.sleep(0.3)  # normal service
        guard: ContextManager[Any] = plugged("lo") if hold else nullcontext()
        with guard as q:
            stop_listening(ls)  # the old server goes away ...
            time.sleep(RESTART_GAP)  # ... the new one is starting ...
            ls = listener(port)  # ... and listens on the same port
            threading.Thread(target=serve, args=(ls,), daemon=True).start()
            if q is not None:
                results["held"] = q.stats().qlen
        time.sleep(0.3)  # normal service again
    finally:
        stop.set()
        cl.join(10)
        stop_listening(ls)
    return results


def report(title: str, r: Dict[str, Any]) -> None:
    attempts = r["served"] + r["refused"] + r["broken"]
    print("%s:" % title)
    print("  %d connection attempts: %d served, %d refused, %d broken"
          % (attempts, r["served"], r["refused"], r["broken"]))
    print("  the slowest attempt took %.0f ms" % (r["longest"] * 1000))
    if r["held"]:
        print("  %d packet%s held on lo while the server was down, then released"
              % (r["held"], " was" if r["held"] == 1 else "s were"))


def main() -> int:
    print("A server restarts (a %d ms gap) while a client connects every %d ms.\n"
          % (RESTART_GAP * 1000, ATTEMPT_EVERY * 1000))
    without = restart_under_load(hold=False)
    report("Without a hold", without)
    with_hold = restart_under_load(hold=True)
    report("With plugged(\"lo\") around the restart", with_hold)
    print()
    if with_hold["refused"] or with_hold["broken"]:
        print("FAILED: connections were lost even with the hold")
        return 1
    print("With the hold, no connection was refused: the SYNs that arrived during the "
          "restart waited in the plug qdisc and reached the new server.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
