"""The receiving SMTP server: accepts everything and reports each arrival.

For every message it writes ``<token> <time.monotonic()>`` on standard output as soon as
the final dot arrived (before answering 250); the token is the Subject's ``mvb…`` marker,
``-`` when there is none. A bare asyncio protocol rather than aiosmtpd, so that the sink
costs as little CPU as possible on a machine shared with the system under test.

    python -m bench.sink PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from bench.messages import TOKEN_RE

EHLO = b"250-bench-sink\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250 8BITMIME\r\n"
REPLIES = {
    b"HELO": b"250 bench-sink\r\n", b"MAIL": b"250 2.1.0 Ok\r\n", b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n", b"NOOP": b"250 2.0.0 Ok\r\n", b"EHLO": EHLO,
}


def report(message: bytes | bytearray) -> None:
    end = message.find(b"\r\n\r\n")
    found = TOKEN_RE.search(message, 0, end if end >= 0 else 65536)
    tok = found[0].decode() if found else "-"
    os.write(1, f"{tok} {time.monotonic():.6f}\n".encode())


class SinkProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and (self._data() if self.in_data else self._line()):
            pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _line(self) -> bool:
        i = self.buf.find(b"\r\n")
        if i < 0:
            return False
        verb = bytes(self.buf[:4]).upper()
        del self.buf[:i + 2]
        assert self.transport is not None
        if verb == b"DATA":
            self.in_data, self.scan_from = True, 0
            self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.close()
        else:
            self.transport.write(REPLIES.get(verb, b"502 5.5.2 Not implemented\r\n"))
        return True

    def _data(self) -> bool:
        buf = self.buf
        if len(buf) < 3 and b".\r\n".startswith(buf):
            return False
        if buf.startswith(b".\r\n"):
            cut = end = 0
        else:
            i = buf.find(b"\r\n.\r\n", self.scan_from)
            if i < 0:
                self.scan_from = max(0, len(buf) - 4)
                return False
            end, cut = i + 2, i + 2
        report(bytes(buf[:min(end, 65536)]))
        del buf[:cut + 3]
        self.in_data = False
        assert self.transport is not None
        self.transport.write(b"250 2.0.0 Ok: queued\r\n")
        return True


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))  # until SIGTERM
