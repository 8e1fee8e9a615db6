"""aiosmtpd handler: protocol in :mod:`mailveil.smtp.protocol`, policy here and in
:mod:`mailveil.smtp.gate`.

Store calls block (SQLAlchemy), so they run in worker threads and one slow commit never
stalls the other sessions. A message is answered ``250`` only once its row is committed.
A session does at most one store call at a time, and a dictionary attack is cut off after
``MAX_REFUSED_RCPTS`` lookups, so a flood of recipients costs little and holds no threads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Protocol
from weakref import WeakKeyDictionary

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailveil.authn.authenticity import Authenticity, Verdict
from mailveil.domain.verdicts import SenderCheck
from mailveil.metrics import (
    ACCEPTED,
    DEFERRED,
    DNS_SECONDS,
    ERRORS,
    RCPT_REFUSED,
    SCAN_SECONDS,
)
from mailveil.scan.clamd import ScannerUnavailable
from mailveil.smtp import replies
from mailveil.smtp.anvil import Anvil
from mailveil.smtp.commit import Accepted, GroupCommit
from mailveil.smtp.gate import Lookup, rcpt_reply
from mailveil.smtp.limits import Limits
from mailveil.smtp.protocol import client_of
from mailveil.smtp.tls import negotiated
from mailveil.smtp.vouched import Vouched

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100
# Refused recipients a session may try before it is closed: a dictionary attack on relay
# addresses, not a typo (Postfix's smtpd_hard_error_limit is 20 too).
MAX_REFUSED_RCPTS = 20


class Backend(Protocol):
    def lookup(self, address: str) -> Lookup: ...

    def accept(self, messages: Sequence[Accepted]) -> list[int]: ...


class Scanner(Protocol):
    async def verdict(self, raw: bytes) -> str:
        """"clean", "not scanned" or "infected: <names>"; raises when unavailable."""
        ...


class Authenticator(Protocol):
    async def __call__(self, raw: bytes, *, client_ip: str, helo: str, mail_from: str,
                       upstream: bool) -> Authenticity:
        """SPF, DKIM and DMARC of a message (see :mod:`mailveil.authn.authenticity`), or
        what the trusted peer that forwarded it (``upstream``) found
        (:mod:`mailveil.authn.upstream`)."""
        ...


def envelope_sender(envelope: Envelope) -> str:
    """The reverse-path, with the null sender (``MAIL FROM:<>``) as the empty string."""
    sender = envelope.mail_from or ""
    return "" if sender == "<>" else sender


def unexpected(stage: str) -> str:
    """The answer to an exception nobody expected while handling a command: try again.

    A 5xx would make the sender's server bounce the message for a bug of ours. The trace
    id is in the reply and in the log line, so a sender's complaint finds the traceback."""
    trace = secrets.token_hex(6)
    log.exception("unexpected error at %s", stage.upper(), extra={"trace": trace})
    ERRORS.labels(stage=stage).inc()
    return replies.S451_INTERNAL.format(trace=trace)


class RelayHandler:
    def __init__(self, backend: Backend, scanner: Scanner, authenticate: Authenticator,
                 on_accept: Callable[[], None] = lambda: None, anvil: Anvil | None = None,
                 vouched: Vouched | None = None) -> None:
        self._backend = backend
        self._vouched = Vouched() if vouched is None else vouched  # empty is falsy
        self._anvil = anvil or Anvil(Limits())
        self._scanner = scanner
        self._authenticate = authenticate
        self._on_accept = on_accept
        self._commit = GroupCommit(backend.accept)
        self._refused: WeakKeyDictionary[Session, int] = WeakKeyDictionary()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Offer PIPELINING (RFC 2920): aiosmtpd answers strictly in order, and the
        protocol refuses data sent before 354."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        try:
            return await self._rcpt(session, envelope, address)
        except Exception:
            return unexpected("rcpt")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            return await self._data(session, envelope)
        except Exception:
            return unexpected("data")

    async def _rcpt(self, session: Session, envelope: Envelope, address: str) -> str:
        if address.lower() in (known.lower() for known in envelope.rcpt_tos):
            return replies.S250_RCPT_OK  # once is enough: a repeat must not add a copy
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return replies.S452_TOO_MANY_RCPTS
        refused = self._refused.get(session, 0)
        if refused >= MAX_REFUSED_RCPTS:
            log.warning("too many refused recipients", extra={"peer": str(session.peer)})
            return replies.S421_TOO_MANY_REFUSED
        origin = client_of(session, envelope)
        client = origin.address
        cooled = self._anvil.cooled(client)
        if cooled is not None:
            return cooled
        sender = envelope_sender(envelope)
        # A trusted peer's relay of what the policy service just accepted: asked already.
        lookup = self._vouched.get(sender, address) if origin.forwarded else None
        if lookup is None:
            try:
                lookup = await asyncio.to_thread(self._backend.lookup, address)
            except Exception:
                log.exception("recipient lookup failed")
                return replies.S451_STORE_DOWN
        refusal = rcpt_reply(sender, lookup)
        if refusal is not None:
            self._refused[session] = refused + 1
            RCPT_REFUSED.labels(code=refusal[:9]).inc()
            if refusal == replies.S550_UNKNOWN:
                self._anvil.unknown_recipient(client)
            return refusal
        envelope.rcpt_tos.append(address)
        return replies.S250_RCPT_OK

    async def _data(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        sender = envelope_sender(envelope)
        sender_check = SenderCheck.NOT_CHECKED
        if sender:  # a bounce proves itself with its VERP token, which only receivers know
            refusal = self._anvil.sender_reply(sender, envelope.rcpt_tos)
            if refusal is None:
                refusal, sender_check = await self._check_sender(raw, session, envelope, sender)
            if refusal is not None:
                return refusal
        try:
            with SCAN_SECONDS.time():
                scan = await self._scanner.verdict(raw)
        except ScannerUnavailable:
            log.warning("scanner unavailable; message deferred")
            DEFERRED.labels(reason="scanner").inc()
            return replies.S451_SCANNER_DOWN
        try:
            client = client_of(session, envelope)
            inbound_id = await self._commit(Accepted(
                sender, tuple(envelope.rcpt_tos), raw, scan, sender_check,
                negotiated(session.ssl), client.address, client.helo or None))
        except Exception:
            log.exception("could not store message")
            DEFERRED.labels(reason="store").inc()
            return replies.S451_STORE_DOWN
        ACCEPTED.inc()
        if sender:
            self._anvil.sent(sender, envelope.rcpt_tos)
        self._on_accept()
        log.info("accepted", extra={"inbound_id": inbound_id, "size": len(raw),
                                    "rcpts": len(envelope.rcpt_tos)})
        return replies.S250_QUEUED.format(id=inbound_id)

    async def _check_sender(self, raw: bytes, session: Session, envelope: Envelope, sender: str
                            ) -> tuple[str | None, SenderCheck]:
        """The refusal for mail whose sender's domain says it did not send it (or ``None``),
        and what the check proved of the sender.

        The RCPT gate trusted MAIL FROM; SPF, DKIM and DMARC decide whether to."""
        with DNS_SECONDS.time():
            client = client_of(session, envelope)
            result = await self._authenticate(raw, client_ip=client.address, helo=client.helo,
                                              mail_from=sender, upstream=client.forwarded)
        if result.refusal is None:
            return None, SenderCheck.VERIFIED if result.verified else SenderCheck.UNVERIFIED
        log.info("authenticity", extra={"verdict": result.verdict.value, "spf": result.spf,
                                        "dmarc": result.dmarc, "reason": result.refusal.value,
                                        "from_shape": result.from_shape.value})
        if result.verdict is Verdict.TEMPFAIL:
            DEFERRED.labels(reason="dns").inc()
        return replies.sender_refused(result.refusal, result.from_shape), SenderCheck.NOT_CHECKED
