"""The stale keep-alive race, on cue: a client reuses an idle connection that the server
is closing, and gets http.client.RemoteDisconnected.

A server closes a keep-alive connection that has been idle too long. A careful client
(as urllib3 and requests do) checks that an idle connection is still open before it
reuses it. The race: the server's FIN is still on its way when the client checks, so the
client sends its next request on a connection the server has already closed; the server
answers with a reset, and the client reads the end of the connection where it expected a
response. In production it happens now and then; here it happens every time, by holding
the server's side of that one connection (its FIN) while the client checks and sends.
The server's idle timeout fires on cue (``Server.expire``) rather than after a delay, so
that nothing depends on timing.

Run it under a kernel with sch_plug, as root (or in the lab)::

    python -m plugqdisc.lab -- python examples/keepalive_race.py

It prints how each of the 20 tries ended, without and with the hold, and exits 0 when
every try without the hold is served and every try with it ends in RemoteDisconnected.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import select
import sys
import threading
from typing import Any, Callable, Dict, Optional

from plugqdisc import Match, plugged

TRIES = 20


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def handle(self) -> None:
        self.handle_one_request()
        # Idle: the server's keep-alive timeout for this connection runs. It fires on cue
        # here (Server.expire), so that the race is reproduced exactly, not by timing;
        # then the connection is closed, as a real server closes it.
        self.server.idle_timer(self.client_address[1]).wait()  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self._lock = threading.Lock()
        self._timers: Dict[int, threading.Event] = {}
        self._closed: Dict[int, threading.Event] = {}

    def _event(self, events: Dict[int, threading.Event], port: int) -> threading.Event:
        with self._lock:
            return events.setdefault(port, threading.Event())

    def idle_timer(self, port: int) -> threading.Event:
        """Set when the idle timeout of the connection from PORT fires."""
        return self._event(self._timers, port)

    def expire(self, port: Optional[int] = None) -> None:
        """The idle timeout fires for the connection from PORT (None: for all)."""
        for p in [port] if port is not None else list(self._timers):
            self.idle_timer(p).set()

    def wait_closed(self, port: int) -> None:
        self._event(self._closed, port).wait(10)

    def shutdown_request(self, request: Any) -> None:
        try:
            port = request.getpeername()[1]
        except OSError:
            port = None
        super().shutdown_request(request)  # shutdown(SHUT_WR) and close: the FIN leaves
        if port is not None:
            self._event(self._closed, port).set()


def still_open(conn: http.client.HTTPConnection) -> bool:
    """What a connection pool checks before reusing an idle connection (urllib3's
    is_connection_dropped): an idle socket that is readable has seen the server's FIN."""
    return conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]


def one_try(server: Server, hold: bool) -> str:
    """One keep-alive connection: a request, the server closes it while idle, a second
    request. How the second ended: "served" or the exception's name."""
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        client_port = conn.sock.getsockname()[1]
        # The server's side of this one connection: its FIN and its reset, nothing else.
        match = Match(proto="tcp", sport=port, dport=client_port)
        with plugged("lo", match=match) if hold else contextlib.nullcontext() as q:
            server.expire(client_port)  # the idle timeout fires: the server closes
            server.wait_closed(client_port)  # its FIN has left (and is held, or arrived)
            if not still_open(conn):
                conn.close()  # a careful client reconnects (the request below does)
            conn.request("GET", "/")  # on the closed connection, if the FIN is held
            if q is not None:
                q.wait_buffered(2, timeout=5)  # the FIN, and the reset the request got
        # released: the FIN, then the reset, reach the client
        try:
            conn.getresponse().read()
            return "served"
        except (http.client.HTTPException, OSError) as e:
            return type(e).__name__
    finally:
        conn.close()
        server.expire()  # a reconnection's idle timeout fires too: nothing is left open


def main() -> int:
    server = Server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    outcomes: Dict[bool, Dict[str, int]] = {}
    try:
        for hold in (False, True):
            counts: Dict[str, int] = {}
            for _ in range(TRIES):
                outcome = one_try(server, hold)
                counts[outcome] = counts.get(outcome, 0) + 1
            outcomes[hold] = counts
            print("%s: %s" % ("with the server's FIN held" if hold else "without a hold",
                              ", ".join("%d %s" % (n, what) for what, n in
                                        sorted(counts.items()))))
    finally:
        server.shutdown()
        server.server_close()
    ok = outcomes[False] == {"served": TRIES} and outcomes[True] == {
        "RemoteDisconnected": TRIES}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
