"""The processing runner: takes a batch of accepted messages from the store, applies the
rules, and writes the batch's archive entries and outbox rows in one transaction.

A batch is three steps: claim (one short transaction that also reads the batch's bookings;
the threading ids its replies refer to are read next, when there are replies), decide and
compose (no database: rules, rewriting, DKIM, reading bounces), record (one short
transaction, a statement per table). Per-message transactions cost more than the messages'
own work did.

Then the senders of copies that did not arrive are told, in the same three steps: delivery
and bounces only mark a copy undeliverable or returned (see :mod:`mailveil.domain.states`),
and the notice is composed and signed here, between two short transactions.

A message whose processing raises is marked ``failed`` with the error and an archive entry,
and waits for a human (``mailveil`` never drops what it answered 250 for). If writing a
batch fails for a reason other than the database being away, its messages are written one
by one, so that one bad message cannot hold back the others.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailveil.budget import CPU_SECONDS, TooExpensive, cpu_budget
from mailveil.delivery.transport import Status
from mailveil.domain import review
from mailveil.domain.addresses import AddressBook, Kind, Role, new_bounce_token
from mailveil.domain.review import ReviewAction, ReviewPolicy
from mailveil.domain.states import OWES_NOTICE, OutboxKind, OutboxState
from mailveil.domain.threading import IdPair
from mailveil.domain.verdicts import Outcome, SenderCheck
from mailveil.mail.bounces import BounceReport, parse_report
from mailveil.mail.inspect import MessageFacts, facts
from mailveil.mail.mime import header_block
from mailveil.mail.notices import UndeliverableCause
from mailveil.mail.reading import seen_text
from mailveil.metrics import DECIDED, ERRORS, LIMIT_REFUSED
from mailveil.pipeline import compose
from mailveil.pipeline.rules import Context, Recipient, decide, may_notify
from mailveil.smtp.limits import Limits, Rate
from mailveil.store import care, webhooks
from mailveil.store import limits as limits_store
from mailveil.store import repository as repo
from mailveil.store.batch import write_batch

log = logging.getLogger(__name__)

Signer = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Pipeline:
    """What processing needs from the settings, passed in explicitly."""

    book: AddressBook
    voice: compose.Voice
    sign: Signer
    batch: int = 50
    lease: timedelta = timedelta(minutes=5)
    holder: str | None = None  # the worker leases name (store/workers.py)
    cpu_budget: float = CPU_SECONDS  # per message, see mailveil/budget.py
    notice_rate: Rate = Limits().notices  # per party of a conversation: a loop guard
    review: ReviewPolicy = field(default_factory=ReviewPolicy)  # review requests: flag or hold
    webhooks: bool = False  # whether events for the marketplace are queued


@dataclass
class NoticeBudget:
    """The notices one party of a conversation may still get in the guard's window: those
    in the outbox when the batch started, and the batch's own as it makes them."""

    rate: Rate
    sent: Counter[tuple[int, str]] = field(default_factory=Counter)

    def take(self, recipient: Recipient) -> bool:
        party = (recipient.booking_id, recipient.role.other)
        if self.sent[party] >= self.rate.count:
            log.warning("notice withheld: loop guard", extra={
                "booking_id": recipient.booking_id, "party": recipient.role.other.value,
                "rate": str(self.rate)})
            LIMIT_REFUSED.labels(limit="notices").inc()
            return False
        self.sent[party] += 1
        return True


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
    # VERP tokens, matched when written, with what the bounce says (None: not a bounce)
    bounces: list[tuple[str, BounceReport | None]] = field(default_factory=list)
    # Review requests for care, with their booking's reference for the webhook event.
    flags: list[tuple[care.NewFlag, str]] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def failed(cls, message: repo.Claimed, exc: BaseException,
               booking_ids: Iterable[int | None] = ()) -> Result:
        """Parked, with the error in the archive of each booking it was for (so care sees
        it there), or in one entry of no booking."""
        error = repr(exc)[:2000]
        return cls(message, archive=[repo.ArchiveEntry(message.id, booking_id, None, "",
                                                       Outcome.FAILED, error)
                                     for booking_id in dict.fromkeys(booking_ids) or [None]],
                   error=error)


@dataclass
class Explained:
    """How the sender of a copy that did not arrive is told, written with its batch."""

    owed: repo.Owed
    to: OutboxState  # where the copy goes once this is written
    why: str  # the cause, or the error that parked it
    archive: list[repo.ArchiveEntry] = field(default_factory=list)
    notice: repo.NewOutbound | None = None


def notice_copy(p: Pipeline, inbound_id: int, raw: bytes, info: MessageFacts,
                recipient: Recipient, reason: Outcome, cause: UndeliverableCause | None,
                now: datetime) -> repo.NewOutbound:
    """Tell the sender of ``raw`` why it did not reach ``recipient``.

    Sent from the null envelope sender (RFC 3464), so nothing can bounce back to it.
    """
    sender_role = recipient.role.other
    notice_raw, message_id = compose.notice(
        reason=reason, cause=cause, booking=recipient.booking, sender_role=sender_role,
        original=raw, facts=info, book=p.book, voice=p.voice, now=now)
    return repo.NewOutbound(
        kind=OutboxKind.NOTICE, inbound_id=inbound_id, booking_id=recipient.booking_id,
        recipient_role=sender_role, bounce_token=new_bounce_token(), mail_from="",
        rcpt_to=recipient.booking.party(sender_role).email, message_id=message_id,
        raw=p.sign(notice_raw),
    )


class Processor:
    def __init__(self, sessions: Callable[[], Session], pipeline: Pipeline) -> None:
        self._sessions = sessions
        self._p = pipeline
        self._notices = NoticeBudget(pipeline.notice_rate)  # the current batch's

    def run_once(self, now: datetime) -> int:
        """Process one batch of accepted messages, then tell the senders of one batch of
        copies that did not arrive; returns how many of either were taken."""
        return self._process_batch(now) + self._explain_batch(now)

    def _process_batch(self, now: datetime) -> int:
        with self._sessions() as s, s.begin():
            claimed = repo.claim_inbound(s, limit=self._p.batch, now=now, lease=self._p.lease,
                                         holder=self._p.holder)
            bookings = repo.bookings_by_tokens(s, self._tokens(claimed))
            self._notices = self._notice_budget(s, {b.id for b in bookings.values()}, now)
        results: list[Result] = []
        read: list[tuple[repo.Claimed, MessageFacts]] = []
        for message in claimed:
            try:
                with cpu_budget(self._p.cpu_budget):
                    read.append((message, facts(message.raw)))
            except TooExpensive as exc:
                info = facts(header_block(message.raw))
                results.append(self._too_expensive(message, info, bookings, now, exc))
            except Exception as exc:
                results.append(self._failed(message, exc, bookings))
        known = Known(bookings, self._pairs(bookings, read))
        results += [self._process(message, info, known, now) for message, info in read]
        if not results:
            return 0
        write_batch(self._sessions, results, lambda s, done: self._record(s, done, now),
                    lambda r, exc: Result.failed(r.message, exc,
                                                 (e.booking_id for e in r.archive)),
                    "processing")
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
            with cpu_budget(self._p.cpu_budget):
                if info.oversized_header is not None:
                    raise TooExpensive(f"{info.oversized_header} is too long to rewrite")
                return self._decide(message, info, known, now)
        except TooExpensive as exc:
            return self._too_expensive(message, info, known.bookings, now, exc)
        except Exception as exc:
            return self._failed(message, exc, known.bookings)

    def _too_expensive(self, message: repo.Claimed, info: MessageFacts,
                       bookings: dict[tuple[Role, str], repo.StoredBooking], now: datetime,
                       exc: TooExpensive) -> Result:
        """Parked like a failure, but the sender is told: the cost is the message's doing,
        and retrying it would only cost as much again."""
        log.warning("processing too expensive; the message is parked",
                    extra={"inbound_id": message.id, "why": str(exc)})
        result = Result.failed(message, exc)
        recipients = [Recipient(address, b.id, b.booking, role)
                      for address in message.rcpt_to
                      if (p := self._p.book.parse(address)) is not None
                      and (role := p.role) is not None
                      and (b := bookings.get((role, p.token))) is not None]
        result.archive += [repo.ArchiveEntry(message.id, r.booking_id, r.role.other, info.subject,
                                             Outcome.REFUSED_TOO_COMPLEX, str(exc))
                           for r in recipients]
        if recipients and self._may_notify(message.mail_from, info, recipients[0]):
            # One notice: the sender wrote one message.
            result.outbound.append(notice_copy(
                self._p, message.id, message.raw, info, recipients[0],
                Outcome.REFUSED_TOO_COMPLEX, None, now))
        return result

    def _failed(self, message: repo.Claimed, exc: Exception,
                bookings: dict[tuple[Role, str], repo.StoredBooking]) -> Result:
        log.exception("processing failed; the message is parked",
                      extra={"inbound_id": message.id})
        ERRORS.labels(stage="processing").inc()
        return Result.failed(message, exc, (
            bookings[key].id for key in self._tokens([message]) if key in bookings))

    def _decide(self, message: repo.Claimed, info: MessageFacts, known: Known,
                now: datetime) -> Result:
        result = Result(message)
        recipients: list[Recipient] = []
        for address in message.rcpt_to:
            parsed = self._p.book.parse(address)
            if parsed is None:
                continue
            if parsed.kind is Kind.BOUNCE:
                result.bounces.append((parsed.token, parse_report(message.raw)))
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
        flagged = _Reviewer(message.raw, self._p.review)
        for d in decide(ctx, recipients):
            r = d.recipient
            flag = flagged(r) if d.outcome is Outcome.RELAYED else None
            result.archive.append(repo.ArchiveEntry(
                message.id, r.booking_id, r.role.other, info.subject, d.outcome,
                d.rule if flag is None else _flag_detail(flag)))
            if d.outcome is Outcome.RELAYED:
                self._relay(result, info, r, known, held=flag is not None and flag.held)
                if flag is not None:
                    result.flags.append((care.NewFlag(message.id, r.booking_id, flag.held,
                                                      flag.found), r.booking.reference))
            elif d.outcome not in told and self._may_notify(message.mail_from, info, r):
                told.add(d.outcome)
                result.outbound.append(notice_copy(self._p, message.id, message.raw, info, r,
                                                   d.outcome, None, now))
        return result

    def _relay(self, result: Result, info: MessageFacts, r: Recipient, known: Known,
               held: bool = False) -> None:
        relayed = compose.relay_copy(
            result.message.raw, info, r.booking, r.role, known.pairs[r.booking_id],
            self._p.book, self._p.voice,
            unverified=result.message.sender_check == SenderCheck.UNVERIFIED, sign=self._p.sign)
        if relayed.pair is not None:
            # Later messages of the batch may already refer to this one.
            known.pairs[r.booking_id].append(relayed.pair)
            result.pairs.append((r.booking_id, relayed.pair))
        token = new_bounce_token()
        result.outbound.append(repo.NewOutbound(
            kind=OutboxKind.RELAY, inbound_id=result.message.id, booking_id=r.booking_id,
            recipient_role=r.role, bounce_token=token,
            mail_from=self._p.book.bounce_address(token),
            rcpt_to=r.booking.party(r.role).email, message_id=relayed.message_id,
            raw=relayed.raw, steps=relayed.steps,
            state=OutboxState.HELD if held else OutboxState.QUEUED,
        ))

    def _may_notify(self, mail_from: str, info: MessageFacts, recipient: Recipient) -> bool:
        """Whether the sender may be told; counts the notice towards the loop guard."""
        return may_notify(mail_from, info.auto_submitted, info.is_delivery_report,
                          self._p.book) and self._notices.take(recipient)

    def _notice_budget(self, s: Session, booking_ids: set[int], now: datetime
                       ) -> NoticeBudget:
        since = now - timedelta(seconds=self._p.notice_rate.seconds)
        return NoticeBudget(self._p.notice_rate,
                            limits_store.notices_since(s, booking_ids, since))

    def _record(self, s: Session, results: Sequence[Result], now: datetime) -> None:
        mine = repo.mark_processed(s, [r.message.id for r in results if r.error is None], now)
        mine |= {r.message.id for r in results if r.error is not None
                 and repo.mark_failed(s, r.message.id, r.error, now)}
        # The others: our lease ran out and another worker did them meanwhile.
        results = [r for r in results if r.message.id in mine]
        for result in results:
            for token, report in result.bounces:
                _record_bounce(s, result.message, token, report, now)
        repo.add_archive_entries(s, [e for r in results for e in r.archive], now)
        repo.add_id_pairs(s, [p for r in results for p in r.pairs])
        repo.queue_outbounds(s, [o for r in results for o in r.outbound], now)
        flags = [f for r in results for f in r.flags]
        care.add_flags(s, [flag for flag, _ in flags], now)
        for flag, reference in flags if self._p.webhooks else ():
            webhooks.emit(s, "review.flagged", {
                "booking_reference": reference, "message": flag.inbound_id,
                "action": (ReviewAction.HOLD if flag.held else ReviewAction.FLAG).value,
                "found": list(flag.found)}, now)
        for entry in (e for r in results for e in r.archive):
            DECIDED.labels(outcome=entry.outcome).inc()

    # --- telling senders about copies that did not arrive --------------------------------

    def _explain_batch(self, now: datetime) -> int:
        with self._sessions() as s, s.begin():
            owed = repo.claim_owed(s, limit=self._p.batch, now=now, lease=self._p.lease,
                                   holder=self._p.holder)
            originals = repo.inbound_by_ids(s, {o.inbound_id for o in owed
                                                if o.inbound_id is not None})
            bookings = repo.bookings_by_ids(s, {o.booking_id for o in owed
                                                if o.booking_id is not None})
            self._notices = self._notice_budget(s, set(bookings), now)
        if not owed:
            return 0
        explained = [self._explained(o, originals, bookings, now) for o in owed]
        write_batch(self._sessions, explained,
                    lambda s, done: _record_explained(s, done, now), _parked, "notice")
        return len(owed)

    def _explained(self, owed: repo.Owed, originals: dict[int, repo.Claimed],
                   bookings: dict[int, repo.StoredBooking], now: datetime) -> Explained:
        try:
            return self._explain(owed, originals, bookings, now)
        except Exception as exc:
            log.exception("composing a notice failed; the copy is parked",
                          extra={"outbound_id": owed.id})
            ERRORS.labels(stage="notice").inc()
            return _parked(Explained(owed, OutboxState.FAILED, ""), exc)

    def _explain(self, owed: repo.Owed, originals: dict[int, repo.Claimed],
                 bookings: dict[int, repo.StoredBooking], now: datetime) -> Explained:
        done = Explained(owed, OWES_NOTICE[owed.state], owed.cause)
        original = originals.get(owed.inbound_id) if owed.inbound_id is not None else None
        stored = bookings.get(owed.booking_id) if owed.booking_id is not None else None
        if owed.kind != OutboxKind.RELAY or original is None or stored is None:
            return done  # a notice that did not arrive is not explained by another one
        assert owed.recipient_role is not None
        info = facts(original.raw)
        recipient = Recipient(owed.rcpt_to, stored.id, stored.booking, owed.recipient_role)
        # Refused by care (a held review request), or undeliverable for a known cause.
        outcome, cause = ((Outcome.REFUSED_REVIEW, None) if owed.state is OutboxState.REFUSED
                          else (Outcome.REFUSED_UNDELIVERABLE, UndeliverableCause(owed.cause)))
        done.archive.append(repo.ArchiveEntry(original.id, stored.id, recipient.role.other,
                                              info.subject, outcome, cause or owed.cause))
        if self._may_notify(original.mail_from, info, recipient):
            done.notice = notice_copy(self._p, original.id, original.raw, info, recipient,
                                      outcome, cause, now)
        return done


class _Reviewer:
    """Whether a relayed copy is a review request, reading the message's text at most once
    (most messages are not from a supplier to a customer, and are never read)."""

    def __init__(self, raw: bytes, policy: ReviewPolicy) -> None:
        self._raw, self._policy = raw, policy
        self._flag: review.Flag | None = None
        self._read = False

    def __call__(self, recipient: Recipient) -> review.Flag | None:
        if not review.checked(recipient.role):
            return None
        if not self._read:
            self._flag, self._read = review.flag(seen_text(self._raw), self._policy), True
        return self._flag


def _flag_detail(flag: review.Flag) -> str:
    """What the archive says of a flagged copy: care's queue has the rest."""
    action = "held for care" if flag.held else "flagged for care"
    return f"{action}: review request ({'; '.join(flag.found)})"


def _record_bounce(s: Session, message: repo.Claimed, token: str,
                   report: BounceReport | None, now: datetime) -> None:
    """Archive a bounce for one of our copies; a permanent one returns the copy, and its
    sender is told by the next round of :meth:`Processor._explain_batch`."""
    outbound = repo.outbound_by_bounce_token(s, token)
    if outbound is None:
        return
    detail = "unparseable bounce" if report is None else (
        f"{'permanent' if report.permanent else 'temporary'}: {report.cause}")
    repo.add_archive_entry(s, repo.ArchiveEntry(message.id, outbound.booking_id, None, "",
                                                Outcome.BOUNCE_RECORDED, detail), now)
    if report is not None and report.permanent and repo.move_outbound(
            s, outbound.id, OutboxState.RETURNED, now, why=report.cause) is not None:
        repo.record_attempts(s, [repo.Attempt(outbound.id, None,
                                              f"bounce received: {report.cause}",
                                              Status.PERMANENT)], now)


def _parked(explained: Explained, exc: BaseException) -> Explained:
    """Park a copy whose notice could not be composed or written, for a human."""
    owed = explained.owed
    error = repr(exc)[:2000]
    archive = ([] if owed.inbound_id is None else [repo.ArchiveEntry(
        owed.inbound_id, owed.booking_id, None, "", Outcome.FAILED,
        f"notice for outgoing copy {owed.id}: {error}")])
    return Explained(owed, OutboxState.FAILED, error, archive)


def _record_explained(s: Session, done: Sequence[Explained], now: datetime) -> None:
    mine = [e for e in done
            if repo.move_outbound(s, e.owed.id, e.to, now, why=e.why) is not None]
    repo.add_archive_entries(s, [a for e in mine for a in e.archive], now)
    repo.queue_outbounds(s, [e.notice for e in mine if e.notice is not None], now)
    for entry in (a for e in mine for a in e.archive):
        DECIDED.labels(outcome=entry.outcome).inc()
