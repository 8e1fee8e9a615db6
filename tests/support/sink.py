"""A real receiving SMTP server (aiosmtpd) standing for the recipient's mail provider.

It keeps every message it accepted, and can be told to answer RCPT or DATA with a failure
to act as a full mailbox (452/552), an unknown user (550) or a server in trouble (421).
Given a TLS context it offers STARTTLS, or speaks TLS from the first byte (``implicit``,
as on port 465), and notes the TLS version each message came over.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.net import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    tls: str | None = None  # the TLS version the message came over; None: in clear


@dataclass
class Sink:
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    rcpt_reply: dict[str, str] = field(default_factory=dict)  # address -> failure reply
    data_reply: str | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self.rcpt_reply.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        assert isinstance(envelope.original_content, bytes)
        with self._cond:
            sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
            ssl_object = server.transport and server.transport.get_extra_info("ssl_object")
            self.messages.append(Received(sender, tuple(envelope.rcpt_tos),
                                          envelope.original_content,
                                          tuple(envelope.mail_options),
                                          ssl_object.version() if ssl_object else None))
            self._cond.notify_all()
        return "250 2.0.0 OK stored"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"sink got {len(self.messages)} of {count} messages")
                self._cond.wait(left)
            return list(self.messages)

    def to(self, address: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if address.lower() in
                    (r.lower() for r in m.rcpt_tos)]

    @classmethod
    @contextmanager
    def running(cls, *, smtputf8: bool = False, tls: ssl.SSLContext | None = None,
                implicit: bool = False) -> Iterator[Sink]:
        sink = cls(port=free_port())
        controller = Controller(sink, hostname="127.0.0.1", port=sink.port,
                                data_size_limit=64 * 1024 * 1024, enable_SMTPUTF8=smtputf8,
                                ssl_context=tls if implicit else None,
                                tls_context=None if implicit else tls)
        controller.start()
        try:
            yield sink
        finally:
            controller.stop()
