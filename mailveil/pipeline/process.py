"""The processing runner: takes accepted messages from the store, applies the rules, and
writes the archive entries and outbox rows of each message in one transaction.

A message whose processing raises is marked ``failed`` with the error and an archive entry,
and waits for a human (``mailveil`` never drops what it answered 250 for).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailveil.domain.addresses import AddressBook, Kind, Role, new_bounce_token
from mailveil.domain.verdicts import Outcome
from mailveil.mail.bounces import parse_report
from mailveil.mail.inspect import MessageFacts, facts
from mailveil.mail.notices import Reason, UndeliverableCause
from mailveil.metrics import DECIDED
from mailveil.pipeline import compose
from mailveil.pipeline.rules import Context, Recipient, decide, may_notify
from mailveil.store import repository as repo
from mailveil.store.db import DATABASE_UNAVAILABLE
from mailveil.store.models import BookingRow, InboundRow, OutboundRow

log = logging.getLogger(__name__)

Signer = Callable[[bytes], bytes]

REASON_OF: dict[Outcome, Reason] = {
    Outcome.REFUSED_VIRUS: Reason.VIRUS,
    Outcome.REFUSED_SEVERAL_CUSTOMERS: Reason.SEVERAL_CUSTOMERS,
    Outcome.REFUSED_TOO_LARGE: Reason.TOO_LARGE,
    Outcome.REFUSED_EXPIRED: Reason.EXPIRED,
    Outcome.REFUSED_UNDELIVERABLE: Reason.UNDELIVERABLE,
}


@dataclass(frozen=True)
class Pipeline:
    """What processing needs from the settings, passed in explicitly."""

    book: AddressBook
    voice: compose.Voice
    sign: Signer
    batch: int = 50
    lease: timedelta = timedelta(minutes=5)


class Processor:
    def __init__(self, sessions: Callable[[], Session], pipeline: Pipeline) -> None:
        self._sessions = sessions
        self._p = pipeline

    def run_once(self, now: datetime) -> int:
        """Process one batch; returns how many messages were taken."""
        with self._sessions() as s, s.begin():
            claimed = repo.claim_inbound(s, limit=self._p.batch, now=now, lease=self._p.lease)
        for inbound_id in claimed:
            try:
                with self._sessions() as s, s.begin():
                    row = s.get(InboundRow, inbound_id, with_for_update=True)
                    assert row is not None
                    if row.state != "received":
                        continue  # our lease ran out and another worker did it meanwhile
                    self._process(s, row, now)
            except DATABASE_UNAVAILABLE:
                raise  # not the message's fault: it stays leased and is taken again
            except Exception as exc:
                log.exception("processing failed", extra={"inbound_id": inbound_id})
                with self._sessions() as s, s.begin():
                    row = s.get(InboundRow, inbound_id)
                    assert row is not None
                    row.state, row.error, row.processed_at = "failed", repr(exc)[:2000], now
                    repo.add_archive_entry(s, inbound_id=inbound_id, booking_id=None,
                                           sender_role=None, subject="",
                                           outcome=Outcome.FAILED, detail=repr(exc)[:2000],
                                           now=now)
        return len(claimed)

    def _process(self, s: Session, row: InboundRow, now: datetime) -> None:
        raw = repo.unpack(row.raw)
        info = facts(raw)
        recipients: list[Recipient] = []
        for address in row.rcpt_to:
            parsed = self._p.book.parse(address)
            if parsed is None:
                continue
            if parsed.kind is Kind.BOUNCE:
                self._record_bounce(s, row, raw, parsed.token, now)
                continue
            assert parsed.role is not None
            booking_row = repo.booking_by_token(s, parsed.role, parsed.token)
            if booking_row is not None:
                recipients.append(Recipient(address, booking_row.id,
                                            repo.to_domain(s, booking_row), parsed.role))
        ctx = Context(
            to_cc=tuple(info.to_cc), attachment_bytes=info.attachment_bytes, scan=row.scan,
            now=now, grace=self._p.voice.grace, book=self._p.book,
        )
        told: set[Outcome] = set()
        for d in decide(ctx, recipients):
            r = d.recipient
            repo.add_archive_entry(s, inbound_id=row.id, booking_id=r.booking_id,
                                   sender_role=r.role.other, subject=info.subject,
                                   outcome=d.outcome, detail=d.rule, now=now)
            DECIDED.labels(outcome=d.outcome.value).inc()
            if d.outcome is Outcome.RELAYED:
                self._queue_relay(s, row, raw, info, r, now)
            elif d.outcome not in told and self._may_notify(row, info):
                told.add(d.outcome)
                self.queue_notice(s, inbound=row, raw=raw, info=info, recipient=r,
                                  reason=REASON_OF[d.outcome], cause=None, now=now)
        row.state, row.processed_at = "processed", now

    def _queue_relay(self, s: Session, row: InboundRow, raw: bytes, info: MessageFacts,
                     r: Recipient, now: datetime) -> None:
        pairs = repo.id_pairs(s, r.booking_id, [*info.in_reply_to, *info.references])
        relayed = compose.relay_copy(raw, info, r.booking, r.role, pairs, self._p.book,
                                     self._p.voice)
        if relayed.pair is not None:
            repo.add_id_pair(s, r.booking_id, relayed.pair)
        token = new_bounce_token()
        repo.queue_outbound(s, repo.NewOutbound(
            kind="relay", inbound_id=row.id, booking_id=r.booking_id, recipient_role=r.role,
            bounce_token=token, mail_from=self._p.book.bounce_address(token),
            rcpt_to=r.booking.party(r.role).email, message_id=relayed.message_id,
            raw=self._p.sign(relayed.raw),
        ), now)

    def queue_notice(self, s: Session, *, inbound: InboundRow, raw: bytes, info: MessageFacts,
                     recipient: Recipient, reason: Reason, cause: UndeliverableCause | None,
                     now: datetime) -> None:
        """Tell the sender of ``inbound`` why it did not reach ``recipient``.

        Sent from the null envelope sender (RFC 3464), so nothing can bounce back to it.
        """
        sender_role = recipient.role.other
        notice_raw, message_id = compose.notice(
            reason=reason, cause=cause, booking=recipient.booking, sender_role=sender_role,
            original=raw, facts=info, book=self._p.book, voice=self._p.voice, now=now)
        repo.queue_outbound(s, repo.NewOutbound(
            kind="notice", inbound_id=inbound.id, booking_id=recipient.booking_id,
            recipient_role=sender_role, bounce_token=new_bounce_token(), mail_from="",
            rcpt_to=recipient.booking.party(sender_role).email, message_id=message_id,
            raw=self._p.sign(notice_raw),
        ), now)

    def _may_notify(self, inbound: InboundRow, info: MessageFacts) -> bool:
        return may_notify(inbound.mail_from, info.auto_submitted, info.is_delivery_report,
                          self._p.book)

    def _record_bounce(self, s: Session, row: InboundRow, raw: bytes, token: str,
                       now: datetime) -> None:
        outbound = repo.outbound_by_bounce_token(s, token)
        report = parse_report(raw)
        if outbound is None:
            return
        detail = "unparseable bounce" if report is None else (
            f"{'permanent' if report.permanent else 'temporary'}: {report.cause}")
        repo.add_archive_entry(s, inbound_id=row.id, booking_id=outbound.booking_id,
                               sender_role=None, subject="", outcome=Outcome.BOUNCE_RECORDED,
                               detail=detail, now=now)
        if report is None or not report.permanent or outbound.state == "bounced":
            return
        repo.record_attempt(s, outbound_id=outbound.id, code=None,
                            response=f"bounce received: {report.cause}", outcome="permanent",
                            now=now)
        self.give_up(s, outbound, report.cause, now, state="bounced")

    def give_up(self, s: Session, outbound: OutboundRow, cause: UndeliverableCause,
                now: datetime, *, state: str = "failed") -> None:
        """Mark an outgoing copy undeliverable and, for a relayed copy, tell its sender."""
        outbound.state, outbound.finished_at, outbound.lease_until = state, now, None
        if outbound.kind != "relay" or outbound.inbound_id is None:
            return
        assert outbound.booking_id is not None and outbound.recipient_role is not None
        inbound = s.get(InboundRow, outbound.inbound_id)
        booking_row = s.get(BookingRow, outbound.booking_id)
        assert inbound is not None and booking_row is not None
        raw = repo.unpack(inbound.raw)
        info = facts(raw)
        recipient = Recipient(outbound.rcpt_to, booking_row.id, repo.to_domain(s, booking_row),
                              Role(outbound.recipient_role))
        repo.add_archive_entry(s, inbound_id=inbound.id, booking_id=booking_row.id,
                               sender_role=recipient.role.other, subject=info.subject,
                               outcome=Outcome.REFUSED_UNDELIVERABLE, detail=str(cause),
                               now=now)
        if self._may_notify(inbound, info):
            self.queue_notice(s, inbound=inbound, raw=raw, info=info, recipient=recipient,
                              reason=Reason.UNDELIVERABLE, cause=cause, now=now)
