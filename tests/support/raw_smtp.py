"""An SMTP client for hostile-input tests: it sends exactly the bytes it is given (each
``send`` its own TCP segment) and reads whole replies, so tests can speak SMTP wrongly."""

from __future__ import annotations

import socket
import ssl
from contextlib import suppress


class RawSmtp:
    def __init__(self, port: int, *, timeout: float = 15.0, source: str = "127.0.0.1") -> None:
        """``source``: the client's address, another of 127.0.0.0/8 to be another client."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """The next reply with all its lines; ``b""`` once the server has hung up."""
        out = b""
        with suppress(ConnectionResetError):
            while piece := self.file.readline():
                out += piece
                if piece[3:4] != b"-":
                    break
        return out

    def starttls(self, context: ssl.SSLContext, server_hostname: str,
                 pipelined: bytes = b"") -> bytes:
        """Send STARTTLS with ``pipelined`` right behind it in the same segment, and
        handshake if the reply is 220; returns that reply.

        The reply is read straight from the socket: a byte the server sent after it in
        clear would then break the handshake instead of hiding in a read-ahead buffer."""
        self.send(b"STARTTLS\r\n" + pipelined)
        reply = self.sock.recv(4096)
        if reply.startswith(b"220 "):
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
            self.file = self.sock.makefile("rb")
        return reply

    def replies(self, count: int) -> list[bytes]:
        return [self.reply() for _ in range(count)]

    def close(self) -> None:
        self.file.close()
        self.sock.close()
