"""The processing runner: takes a batch of accepted messages from the store, applies the
rules, and writes the batch's archive entries and outbox rows in one transaction.

A batch is three steps: claim (one short transaction that also reads the batch's bookings;
the threading ids its replies refer to are read next, when there are replies), decide and
compose (no database: rules, rewriting, DKIM), record (one short transaction, a statement
per table). Per-message transactions cost more than the messages' own work did.

A message whose processing raises is marked ``failed`` with the error and an archive entry,
and waits for a human (``mailveil`` never drops what it answered 250 for). If writing a
batch fails for a reason other than the database being away, its messages are written one
by one, so that one bad message cannot hold back the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailveil.domain.addresses import AddressBook, Kind, Role, new_bounce_token
from mailveil.domain.threading import IdPair
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
    holder: str | None = None  # the worker leases name (store/workers.py)


@dataclass
class Known:
    """What the store knows that a batch needs, read once for the whole batch."""

    bookings: dict[tuple[Role, str], repo.StoredBooking]
    pairs: defaultdict[int, list[IdPair]]


@dataclass
class Result:
    """What processing one message decided, written with the rest of its batch."""

    message: repo.Claimed
    archive: list[repo.ArchiveEntry] = field(default_factory=list)
    outbound: list[repo.NewOutbound] = field(default_factory=list)
    pairs: list[tuple[int, IdPair]] = field(default_factory=list)
    bounces: list[str] = field(default_factory=list)  # VERP tokens, matched when written
    error: str | None = None

    @classmethod
    def failed(cls, message: repo.Claimed, exc: BaseException) -> Result:
        error = repr(exc)[:2000]
        return cls(message, archive=[repo.ArchiveEntry(message.id, None, None, "",
                                                       Outcome.FAILED, error)], error=error)


class Processor:
    def __init__(self, sessions: Callable[[], Session], pipeline: Pipeline) -> None:
        self._sessions = sessions
        self._p = pipeline

    def run_once(self, now: datetime) -> int:
        """Process one batch; returns how many messages were taken."""
        with self._sessions() as s, s.begin():
            claimed = repo.claim_inbound(s, limit=self._p.batch, now=now, lease=self._p.lease,
                                         holder=self._p.holder)
            bookings = repo.bookings_by_tokens(s, self._tokens(claimed))
        results: list[Result] = []
        read: list[tuple[repo.Claimed, MessageFacts]] = []
        for message in claimed:
            try:
                read.append((message, facts(message.raw)))
            except Exception as exc:
                results.append(self._failed(message, exc))
        known = Known(bookings, self._pairs(bookings, read))
        results += [self._process(message, info, known, now) for message, info in read]
        if not results:
            return 0
        try:
            with self._sessions() as s, s.begin():
                self._record(s, results, now)
        except DATABASE_UNAVAILABLE:
            raise  # not the messages' fault: they stay leased and are taken again
        except Exception:
            log.exception("recording a batch failed; recording its messages one by one")
            for result in results:
                self._record_alone(result, now)
        return len(claimed)

    def _tokens(self, claimed: list[repo.Claimed]) -> list[tuple[Role, str]]:
        """The relay addresses the batch was sent to; bounce addresses have no booking."""
        return [(parsed.role, parsed.token) for message in claimed
                for address in message.rcpt_to
                if (parsed := self._p.book.parse(address)) is not None
                and parsed.role is not None]

    def _pairs(self, bookings: dict[tuple[Role, str], repo.StoredBooking],
               read: list[tuple[repo.Claimed, MessageFacts]]) -> defaultdict[int, list[IdPair]]:
        """The threading ids the batch's replies refer to; no query for a batch of none."""
        references = {one for _, info in read for one in (*info.in_reply_to, *info.references)}
        if not references or not bookings:
            return defaultdict(list)
        with self._sessions() as s, s.begin():
            return repo.id_pairs(s, {b.id for b in bookings.values()}, references)

    def _process(self, message: repo.Claimed, info: MessageFacts, known: Known,
                 now: datetime) -> Result:
        try:
            return self._decide(message, info, known, now)
        except Exception as exc:
            return self._failed(message, exc)

    @staticmethod
    def _failed(message: repo.Claimed, exc: Exception) -> Result:
        log.exception("processing failed", extra={"inbound_id": message.id})
        return Result.failed(message, exc)

    def _decide(self, message: repo.Claimed, info: MessageFacts, known: Known,
                now: datetime) -> Result:
        result = Result(message)
        recipients: list[Recipient] = []
        for address in message.rcpt_to:
            parsed = self._p.book.parse(address)
            if parsed is None:
                continue
            if parsed.kind is Kind.BOUNCE:
                result.bounces.append(parsed.token)
                continue
            assert parsed.role is not None
            stored = known.bookings.get((parsed.role, parsed.token))
            if stored is not None:
                recipients.append(Recipient(address, stored.id, stored.booking, parsed.role))
        ctx = Context(
            to_cc=tuple(info.to_cc), attachment_bytes=info.attachment_bytes, scan=message.scan,
            now=now, grace=self._p.voice.grace, book=self._p.book,
        )
        told: set[Outcome] = set()
        for d in decide(ctx, recipients):
            r = d.recipient
            result.archive.append(repo.ArchiveEntry(message.id, r.booking_id, r.role.other,
                                                    info.subject, d.outcome, d.rule))
            if d.outcome is Outcome.RELAYED:
                self._relay(result, info, r, known)
            elif d.outcome not in told and self._may_notify(message.mail_from, info):
                told.add(d.outcome)
                result.outbound.append(self._notice(message.id, message.raw, info, r,
                                                    REASON_OF[d.outcome], None, now))
        return result

    def _relay(self, result: Result, info: MessageFacts, r: Recipient, known: Known) -> None:
        relayed = compose.relay_copy(result.message.raw, info, r.booking, r.role,
                                     known.pairs[r.booking_id], self._p.book, self._p.voice)
        if relayed.pair is not None:
            # Later messages of the batch may already refer to this one.
            known.pairs[r.booking_id].append(relayed.pair)
            result.pairs.append((r.booking_id, relayed.pair))
        token = new_bounce_token()
        result.outbound.append(repo.NewOutbound(
            kind="relay", inbound_id=result.message.id, booking_id=r.booking_id,
            recipient_role=r.role, bounce_token=token,
            mail_from=self._p.book.bounce_address(token),
            rcpt_to=r.booking.party(r.role).email, message_id=relayed.message_id,
            raw=self._p.sign(relayed.raw),
        ))

    def _notice(self, inbound_id: int, raw: bytes, info: MessageFacts, recipient: Recipient,
                reason: Reason, cause: UndeliverableCause | None,
                now: datetime) -> repo.NewOutbound:
        """Tell the sender of ``raw`` why it did not reach ``recipient``.

        Sent from the null envelope sender (RFC 3464), so nothing can bounce back to it.
        """
        sender_role = recipient.role.other
        notice_raw, message_id = compose.notice(
            reason=reason, cause=cause, booking=recipient.booking, sender_role=sender_role,
            original=raw, facts=info, book=self._p.book, voice=self._p.voice, now=now)
        return repo.NewOutbound(
            kind="notice", inbound_id=inbound_id, booking_id=recipient.booking_id,
            recipient_role=sender_role, bounce_token=new_bounce_token(), mail_from="",
            rcpt_to=recipient.booking.party(sender_role).email, message_id=message_id,
            raw=self._p.sign(notice_raw),
        )

    def _may_notify(self, mail_from: str, info: MessageFacts) -> bool:
        return may_notify(mail_from, info.auto_submitted, info.is_delivery_report,
                          self._p.book)

    def _record(self, s: Session, results: list[Result], now: datetime) -> None:
        mine = repo.mark_processed(s, [r.message.id for r in results if r.error is None], now)
        mine |= {r.message.id for r in results if r.error is not None
                 and repo.mark_failed(s, r.message.id, r.error, now)}
        # The others: our lease ran out and another worker did them meanwhile.
        results = [r for r in results if r.message.id in mine]
        for result in results:
            for token in result.bounces:
                self._record_bounce(s, result.message, token, now)
        repo.add_archive_entries(s, [e for r in results for e in r.archive], now)
        repo.add_id_pairs(s, [p for r in results for p in r.pairs])
        repo.queue_outbounds(s, [o for r in results for o in r.outbound], now)
        for entry in (e for r in results for e in r.archive):
            DECIDED.labels(outcome=entry.outcome).inc()

    def _record_alone(self, result: Result, now: datetime) -> None:
        try:
            with self._sessions() as s, s.begin():
                self._record(s, [result], now)
        except DATABASE_UNAVAILABLE:
            raise
        except Exception as exc:
            log.exception("recording failed", extra={"inbound_id": result.message.id})
            with self._sessions() as s, s.begin():
                self._record(s, [Result.failed(result.message, exc)], now)

    def _record_bounce(self, s: Session, message: repo.Claimed, token: str,
                       now: datetime) -> None:
        outbound = repo.outbound_by_bounce_token(s, token)
        if outbound is None:
            return
        report = parse_report(message.raw)
        detail = "unparseable bounce" if report is None else (
            f"{'permanent' if report.permanent else 'temporary'}: {report.cause}")
        repo.add_archive_entry(s, repo.ArchiveEntry(message.id, outbound.booking_id, None, "",
                                                    Outcome.BOUNCE_RECORDED, detail), now)
        if report is None or not report.permanent or outbound.state == "bounced":
            return
        repo.record_attempts(s, [repo.Attempt(outbound.id, None,
                                              f"bounce received: {report.cause}",
                                              "permanent")], now)
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
        info = facts(inbound.raw)
        recipient = Recipient(outbound.rcpt_to, booking_row.id, repo.to_domain(s, booking_row),
                              Role(outbound.recipient_role))
        repo.add_archive_entry(s, repo.ArchiveEntry(
            inbound.id, booking_row.id, recipient.role.other, info.subject,
            Outcome.REFUSED_UNDELIVERABLE, str(cause)), now)
        if self._may_notify(inbound.mail_from, info):
            repo.queue_outbound(s, self._notice(inbound.id, inbound.raw, info, recipient,
                                                Reason.UNDELIVERABLE, cause, now), now)

