"""aiosmtpd handler: protocol in aiosmtpd, policy in :mod:`mailveil.smtp.gate`.

Store calls block (SQLAlchemy), so they run in worker threads and one slow commit never
stalls the other sessions. A message is answered ``250`` only once its row is committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailveil.scan.clamd import ScannerUnavailable
from mailveil.smtp import replies
from mailveil.smtp.gate import Lookup, rcpt_reply

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100


class Backend(Protocol):
    def lookup(self, address: str) -> Lookup: ...

    def accept(self, mail_from: str, rcpt_to: list[str], raw: bytes, scan: str) -> int: ...


class Scanner(Protocol):
    async def verdict(self, raw: bytes) -> str:
        """"clean", "not scanned" or "infected: <names>"; raises when unavailable."""
        ...


def envelope_sender(envelope: Envelope) -> str:
    """The reverse-path, with the null sender (``MAIL FROM:<>``) as the empty string."""
    sender = envelope.mail_from or ""
    return "" if sender == "<>" else sender


class RelayHandler:
    def __init__(self, backend: Backend, scanner: Scanner,
                 on_accept: Callable[[], None] = lambda: None) -> None:
        self._backend = backend
        self._scanner = scanner
        self._on_accept = on_accept

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return replies.S452_TOO_MANY_RCPTS
        try:
            lookup = await asyncio.to_thread(self._backend.lookup, address)
        except Exception:
            log.exception("recipient lookup failed")
            return replies.S451_STORE_DOWN
        refusal = rcpt_reply(envelope_sender(envelope), lookup)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return replies.S250_RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        try:
            scan = await self._scanner.verdict(raw)
        except ScannerUnavailable:
            log.warning("scanner unavailable; message deferred")
            return replies.S451_SCANNER_DOWN
        try:
            inbound_id = await asyncio.to_thread(
                self._backend.accept, envelope_sender(envelope), list(envelope.rcpt_tos), raw,
                scan)
        except Exception:
            log.exception("could not store message")
            return replies.S451_STORE_DOWN
        self._on_accept()
        log.info("accepted", extra={"inbound_id": inbound_id, "size": len(raw),
                                    "rcpts": len(envelope.rcpt_tos)})
        return replies.S250_QUEUED.format(id=inbound_id)


def smtp_factory(handler: RelayHandler, *, hostname: str, data_size_limit: int,
                 timeout: float = 300.0) -> SMTP:
    kwargs: dict[str, Any] = {
        "hostname": hostname,
        "ident": "mailveil",
        "data_size_limit": data_size_limit,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "timeout": timeout,
    }
    return SMTP(handler, **kwargs)
