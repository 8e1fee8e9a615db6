"""The marketplace's webhook endpoint in tests: a real HTTP server on loopback that checks
nothing itself and keeps what it got, and the signature check README shows."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """The receiver's check, as README shows it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return abs(now - timestamp) <= tolerance and hmac.compare_digest(expected, fields["v1"])


class Receiver:
    """The marketplace's endpoint: refuses the first ``refuse`` requests, keeps the rest."""

    def __init__(self, refuse: int = 0) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.refused, self._refuse = 0, refuse
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer._cond:
                    if outer.refused < outer._refuse:
                        outer.refused += 1
                        self.send_response(500)
                    else:
                        outer.got.append((dict(self.headers), body))
                        outer._cond.notify_all()
                        self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.got) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.got)} of {count} events"
                self._cond.wait(left)
            return list(self.got)


@contextmanager
def receiving(refuse: int = 0) -> Iterator[Receiver]:
    r = Receiver(refuse)
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
