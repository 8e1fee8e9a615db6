"""Queries the rest of mailveil uses; each takes an open ``Session`` and leaves the commit
to the caller, so one unit of work (archive entry + outbox row) is one transaction.

The hot paths (claiming, recording a batch's outcomes) work on whole batches with one
statement each: per-message statements were most of a worker's time (docs/performance.md).
Their statements are built once, with bind parameters: building one costs SQLAlchemy more
than SQLite takes to run it, and a lightly loaded worker runs a round per message or two.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from mailveil.domain.addresses import Role, new_token
from mailveil.domain.booking import Booking, BookingStatus, Party
from mailveil.domain.states import (
    INBOUND_MOVES,
    OUTBOX_MOVES,
    OUTBOX_STARTS,
    OWES_NOTICE,
    InboundState,
    OutboxKind,
    OutboxState,
    sources,
)
from mailveil.domain.threading import IdPair
from mailveil.domain.verdicts import Outcome, SenderCheck
from mailveil.mail.mime import header_block
from mailveil.store.buffers import note_received
from mailveil.store.models import (
    ArchiveEntryRow,
    AttemptRow,
    BookingRow,
    InboundRow,
    MessageIdRow,
    OutboundRow,
    QuarantineRow,
    SupplierRow,
)


def sha256_of(raw: bytes) -> str:
    """What ``mailveil archive verify`` checks a stored message against."""
    return hashlib.sha256(raw).hexdigest()


# --- suppliers and bookings ---------------------------------------------------------------


def upsert_supplier(s: Session, *, id: str, name: str, email: str, locale: str,
                    now: datetime) -> SupplierRow:
    row = s.get(SupplierRow, id)
    if row is None:
        row = SupplierRow(id=id, name=name, email=email, locale=locale,
                          created_at=now, updated_at=now)
        s.add(row)
    else:
        row.name, row.email, row.locale, row.updated_at = name, email, locale, now
    s.flush()
    return row


def get_supplier(s: Session, supplier_id: str) -> SupplierRow | None:
    return s.get(SupplierRow, supplier_id)


def _unused_token(s: Session, column: InstrumentedAttribute[str]) -> str:
    # 48 random bits make a clash vanishingly rare; the unique index is the real guard.
    while True:
        token = new_token()
        if s.scalar(select(BookingRow.id).where(column == token)) is None:
            return token


def create_booking(s: Session, *, reference: str, supplier_id: str, customer: Party,
                   activity_start: datetime, activity_end: datetime,
                   now: datetime) -> BookingRow:
    row = BookingRow(
        reference=reference, supplier_id=supplier_id,
        customer_name=customer.name, customer_email=customer.email,
        customer_locale=customer.locale,
        activity_start=activity_start, activity_end=activity_end,
        status=BookingStatus.CONFIRMED.value, cancelled_at=None,
        customer_token=_unused_token(s, BookingRow.customer_token),
        supplier_token=_unused_token(s, BookingRow.supplier_token),
        created_at=now, updated_at=now,
    )
    s.add(row)
    s.flush()
    return row


def booking_by_reference(s: Session, reference: str) -> BookingRow | None:
    return s.scalar(select(BookingRow).where(BookingRow.reference == reference))


@dataclass(frozen=True)
class StoredBooking:
    id: int
    booking: Booking


_BOOKING = (BookingRow.id, BookingRow.reference, SupplierRow.name, SupplierRow.email,
            SupplierRow.locale, BookingRow.customer_name, BookingRow.customer_email,
            BookingRow.customer_locale, BookingRow.activity_start, BookingRow.activity_end,
            BookingRow.status, BookingRow.cancelled_at, BookingRow.customer_token,
            BookingRow.supplier_token)
_BOOKINGS = select(*_BOOKING).join(SupplierRow, SupplierRow.id == BookingRow.supplier_id)
_BY_TOKEN = {
    Role.CUSTOMER: _BOOKINGS.where(BookingRow.customer_token == bindparam("token")),
    Role.SUPPLIER: _BOOKINGS.where(BookingRow.supplier_token == bindparam("token")),
}
_BY_TOKENS = _BOOKINGS.where(or_(
    BookingRow.customer_token.in_(bindparam("customer", expanding=True)),
    BookingRow.supplier_token.in_(bindparam("supplier", expanding=True))))


def _stored_booking(row: Sequence[Any]) -> StoredBooking:
    (booking_id, reference, supplier_name, supplier_email, supplier_locale, customer_name,
     customer_email, customer_locale, start, end, status, cancelled_at, customer_token,
     supplier_token) = row
    return StoredBooking(booking_id, Booking(
        reference=reference,
        supplier=Party(supplier_name, supplier_email, supplier_locale),
        customer=Party(customer_name, customer_email, customer_locale),
        activity_start=start, activity_end=end, status=BookingStatus(status),
        cancelled_at=cancelled_at, customer_token=customer_token,
        supplier_token=supplier_token))


def bookings_by_ids(s: Session, ids: Collection[int]) -> dict[int, StoredBooking]:
    if not ids:
        return {}
    rows = s.execute(_BOOKINGS.where(BookingRow.id.in_(ids)))
    return {stored.id: stored for stored in map(_stored_booking, rows)}


def booking_by_token(s: Session, role: Role, token: str) -> StoredBooking | None:
    row = s.execute(_BY_TOKEN[role], {"token": token}).first()
    return None if row is None else _stored_booking(row)


def bookings_by_tokens(s: Session, wanted: Iterable[tuple[Role, str]]
                       ) -> dict[tuple[Role, str], StoredBooking]:
    """The bookings behind relay addresses, with their suppliers, in one query."""
    tokens: dict[Role, set[str]] = {Role.CUSTOMER: set(), Role.SUPPLIER: set()}
    for role, token in wanted:
        tokens[role].add(token)
    if not any(tokens.values()):
        return {}
    rows = s.execute(_BY_TOKENS, {"customer": list(tokens[Role.CUSTOMER]),
                                  "supplier": list(tokens[Role.SUPPLIER])})
    found: dict[tuple[Role, str], StoredBooking] = {}
    for row in rows:
        stored = _stored_booking(row)
        for role in Role:
            if stored.booking.token(role) in tokens[role]:
                found[(role, stored.booking.token(role))] = stored
    return found


def to_domain(s: Session, row: BookingRow) -> Booking:
    supplier = s.get(SupplierRow, row.supplier_id)
    assert supplier is not None, "foreign key guarantees the supplier"
    values = [getattr(row if column.class_ is BookingRow else supplier, column.key)
              for column in _BOOKING]
    return _stored_booking(values).booking


# --- inbound messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class NewInbound:
    mail_from: str
    rcpt_to: Sequence[str]
    raw: bytes
    scan: str  # "clean", "not scanned" or "infected: <names>"
    sender_check: SenderCheck = SenderCheck.NOT_CHECKED
    tls_version: str | None = None  # of the session it came in; None: in clear
    client_address: str | None = None  # what a trusted peer forwarded, else the TCP peer
    client_helo: str | None = None  # the same client's HELO name; None: it gave none


_INSERT_INBOUND = insert(InboundRow).returning(InboundRow.id, sort_by_parameter_order=True)
_INSERT_QUARANTINE = insert(QuarantineRow)


def store_inbounds(s: Session, messages: Sequence[NewInbound], now: datetime) -> list[int]:
    """Store accepted messages, one statement for all; their ids in the same order. An
    infected one goes to quarantine whole; the archive keeps only its headers, enough to
    explain the refusal to its sender."""
    if not messages:
        return []
    kept = [header_block(m.raw) if _infected(m) else m.raw for m in messages]
    db = s.connection()
    ids = list(db.scalars(_INSERT_INBOUND, [
        {"received_at": now, "mail_from": m.mail_from, "rcpt_to": list(m.rcpt_to), "raw": raw,
         "sha256": sha256_of(raw), "size": len(m.raw), "state": InboundState.RECEIVED,
         "scan": m.scan, "sender_check": m.sender_check, "tls_version": m.tls_version,
         "client_address": m.client_address, "client_helo": m.client_helo}
        for m, raw in zip(messages, kept, strict=True)]))
    infected = [{"inbound_id": inbound_id, "raw": m.raw, "sha256": sha256_of(m.raw),
                 "findings": m.scan, "created_at": now}
                for m, inbound_id in zip(messages, ids, strict=True) if _infected(m)]
    if infected:
        db.execute(_INSERT_QUARANTINE, infected)
    return ids


def store_inbound(s: Session, *, mail_from: str, rcpt_to: Sequence[str], raw: bytes,
                  scan: str, now: datetime) -> int:
    [inbound_id] = store_inbounds(s, [NewInbound(mail_from, rcpt_to, raw, scan)], now)
    return inbound_id


def _infected(message: NewInbound) -> bool:
    return message.scan.startswith("infected")


@dataclass(frozen=True)
class Claimed:
    """An inbound message leased for processing, with what processing reads of it."""

    id: int
    mail_from: str
    rcpt_to: list[str]
    raw: bytes
    scan: str
    sender_check: str = SenderCheck.NOT_CHECKED  # a SenderCheck value


_DUE_INBOUND = select(InboundRow.id, InboundRow.size).where(
    InboundRow.state == InboundState.RECEIVED,
    or_(InboundRow.lease_until.is_(None), InboundRow.lease_until < bindparam("now")),
).order_by(InboundRow.id).limit(bindparam("limit")).with_for_update(skip_locked=True)
_LEASE_INBOUND = (update(InboundRow).where(InboundRow.id.in_(bindparam("ids", expanding=True)))
                  .values(lease_until=bindparam("until"), lease_holder=bindparam("holder"))
                  .returning(InboundRow.id, InboundRow.mail_from, InboundRow.rcpt_to,
                             InboundRow.raw, InboundRow.scan, InboundRow.sender_check))


def claim_inbound(s: Session, *, limit: int, now: datetime, lease: timedelta,
                  holder: str | None = None) -> list[Claimed]:
    """Take received messages for processing, at most ``limit`` and about
    :data:`BATCH_BYTES`, leased to ``holder`` (a worker of store/workers.py); a crashed
    worker's leases are released when it is found dead, or else run out, and another worker
    picks them up again (``SKIP LOCKED`` keeps live workers apart on PostgreSQL)."""
    db = s.connection()
    ids = _within_budget(db.execute(_DUE_INBOUND, {"now": now, "limit": limit}).all())
    if not ids:
        return []
    leased = db.execute(_LEASE_INBOUND, {"ids": ids, "until": now + lease,
                                         "holder": holder}).all()
    claimed = sorted((Claimed(*row) for row in leased), key=lambda c: c.id)
    note_received(s, (c.raw for c in claimed))
    return claimed


def inbound_by_ids(s: Session, ids: Collection[int]) -> dict[int, Claimed]:
    """Stored messages whose senders are owed a notice: what processing reads of them."""
    if not ids:
        return {}
    rows = s.execute(select(InboundRow.id, InboundRow.mail_from, InboundRow.rcpt_to,
                            InboundRow.raw, InboundRow.scan, InboundRow.sender_check)
                     .where(InboundRow.id.in_(ids)))
    found = {row.id: Claimed(*row) for row in rows}
    note_received(s, (c.raw for c in found.values()))
    return found


BATCH_BYTES = 2 * 1024 * 1024
"""A batch holds its messages and their outgoing copies in memory. Batching pays for small
messages (a statement per batch instead of per message); past a few hundred kilobytes the
messages' own work dominates, and 50 of them at the size limit would be gigabytes."""


def _within_budget(due: Sequence[tuple[int, int]]) -> list[int]:
    """The ids of the longest prefix of (id, size) that fits :data:`BATCH_BYTES`, at least one."""
    ids: list[int] = []
    total = 0
    for row_id, size in due:
        total += size
        if ids and total > BATCH_BYTES:
            break
        ids.append(row_id)
    return ids


_PROCESSED = (update(InboundRow).where(
    InboundRow.id.in_(bindparam("ids", expanding=True)),
    InboundRow.state.in_(sources(INBOUND_MOVES, InboundState.PROCESSED)))
              .values(state=InboundState.PROCESSED, processed_at=bindparam("now"), lease_until=None,
                      lease_holder=None)
              .returning(InboundRow.id))
_FAILED = (update(InboundRow).where(
    InboundRow.id == bindparam("inbound_id"),
    InboundRow.state.in_(sources(INBOUND_MOVES, InboundState.FAILED)))
           .values(state=InboundState.FAILED, error=bindparam("why"), processed_at=bindparam("now"),
                   lease_until=None, lease_holder=None)
           .returning(InboundRow.id))


def mark_processed(s: Session, ids: Collection[int], now: datetime) -> set[int]:
    """Finish those of ``ids`` nobody finished meanwhile (a lease can run out), and return
    them: only their outcomes may be recorded."""
    if not ids:
        return set()
    return set(s.connection().scalars(_PROCESSED, {"ids": list(ids), "now": now}))


def mark_failed(s: Session, inbound_id: int, error: str, now: datetime) -> bool:
    """Park a message for a human (``mailveil`` never drops what it answered 250 for);
    False when another worker finished it meanwhile."""
    return s.connection().scalar(
        _FAILED, {"inbound_id": inbound_id, "why": error[:2000], "now": now}) is not None


@dataclass(frozen=True)
class ArchiveEntry:
    inbound_id: int
    booking_id: int | None
    sender_role: Role | None
    subject: str
    outcome: str
    detail: str


_INSERT_ARCHIVE = insert(ArchiveEntryRow)
_INSERT_OUTBOUND = insert(OutboundRow).returning(OutboundRow.id, sort_by_parameter_order=True)
_INSERT_ATTEMPT = insert(AttemptRow)
_INSERT_ID_PAIR = insert(MessageIdRow)


def add_archive_entries(s: Session, entries: Sequence[ArchiveEntry], now: datetime) -> None:
    if entries:
        s.connection().execute(_INSERT_ARCHIVE, [_archive_values(e, now) for e in entries])


def add_archive_entry(s: Session, entry: ArchiveEntry, now: datetime) -> None:
    add_archive_entries(s, [entry], now)


def _archive_values(entry: ArchiveEntry, now: datetime) -> dict[str, Any]:
    # A decoded Subject may hold any character, NUL included, which PostgreSQL refuses.
    printable = "".join(ch if ch.isprintable() else " " for ch in entry.subject)[:1000]
    return {"inbound_id": entry.inbound_id, "booking_id": entry.booking_id,
            "sender_role": entry.sender_role.value if entry.sender_role else None,
            "subject": printable, "outcome": entry.outcome, "detail": entry.detail,
            "created_at": now}


# --- outbox -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewOutbound:
    kind: OutboxKind
    inbound_id: int | None
    booking_id: int | None
    recipient_role: Role | None
    bounce_token: str
    mail_from: str
    rcpt_to: str
    message_id: str
    raw: bytes
    steps: tuple[str, ...] | None = None  # a relayed copy's changes (mailveil.mail.steps)
    state: OutboxState = OutboxState.QUEUED  # HELD: a review request waiting for care


def queue_outbounds(s: Session, messages: Sequence[NewOutbound], now: datetime) -> list[int]:
    """Put messages in the outbox, one statement for all; their ids in the same order."""
    if not messages:
        return []
    return list(s.connection().scalars(_INSERT_OUTBOUND,
                                       [_outbound_values(m, now) for m in messages]))


def _outbound_values(msg: NewOutbound, now: datetime) -> dict[str, Any]:
    if msg.state not in OUTBOX_STARTS:
        raise ValueError(f"an outbox row cannot start as {msg.state}")
    return {"inbound_id": msg.inbound_id, "booking_id": msg.booking_id, "kind": msg.kind,
            "recipient_role": msg.recipient_role.value if msg.recipient_role else None,
            "bounce_token": msg.bounce_token, "mail_from": msg.mail_from,
            "rcpt_to": msg.rcpt_to, "message_id": msg.message_id, "raw": msg.raw,
            "steps": None if msg.steps is None else list(msg.steps),
            "sha256": sha256_of(msg.raw), "state": msg.state, "attempts": 0,
            "next_attempt_at": now, "created_at": now}


@dataclass(frozen=True)
class Due:
    """An outgoing message leased for one delivery attempt."""

    id: int
    mail_from: str
    rcpt_to: str
    raw: bytes
    attempts: int  # before this one
    created_at: datetime


_DUE_OUTBOUND = select(OutboundRow.id, func.length(OutboundRow.raw)).where(
    OutboundRow.state == OutboxState.QUEUED,
    OutboundRow.next_attempt_at <= bindparam("now"),
    or_(OutboundRow.lease_until.is_(None), OutboundRow.lease_until < bindparam("now")),
).order_by(OutboundRow.next_attempt_at).limit(bindparam("limit")).with_for_update(
    skip_locked=True)
_LEASE_OUTBOUND = (update(OutboundRow).where(OutboundRow.id.in_(bindparam("ids", expanding=True)))
                   .values(lease_until=bindparam("until"), lease_holder=bindparam("holder"))
                   .returning(OutboundRow.id, OutboundRow.mail_from, OutboundRow.rcpt_to,
                              OutboundRow.raw, OutboundRow.attempts, OutboundRow.created_at))
_DELIVERED = (update(OutboundRow).where(
    OutboundRow.id.in_(bindparam("ids", expanding=True)),
    OutboundRow.state.in_(sources(OUTBOX_MOVES, OutboxState.DELIVERED)))
              .values(state=OutboxState.DELIVERED, finished_at=bindparam("now"), lease_until=None,
                      lease_holder=None, attempts=OutboundRow.attempts + 1)
              .returning(OutboundRow.id))


def claim_outbound(s: Session, *, limit: int, now: datetime, lease: timedelta,
                   holder: str | None = None) -> list[Due]:
    """Lease due messages to ``holder`` (at most ``limit``, about :data:`BATCH_BYTES`).
    ``SKIP LOCKED`` keeps two workers on PostgreSQL from taking the same rows; the lease
    keeps them apart once the transaction ends."""
    db = s.connection()
    ids = _within_budget(db.execute(_DUE_OUTBOUND, {"now": now, "limit": limit}).all())
    if not ids:
        return []
    due = [Due(*row) for row in db.execute(_LEASE_OUTBOUND, {"ids": ids, "until": now + lease,
                                                             "holder": holder})]
    note_received(s, (d.raw for d in due))
    return due


_UNLEASE_OUTBOUND = (update(OutboundRow).where(OutboundRow.id.in_(bindparam("ids", expanding=True)))
                     .values(lease_until=None, lease_holder=None))


def unlease_outbound(s: Session, ids: Collection[int]) -> None:
    """Give back leased messages that were not tried: another worker may take them now."""
    if ids:
        s.connection().execute(_UNLEASE_OUTBOUND, {"ids": list(ids)})


_RELEASE = [update(table).where(table.lease_holder.in_(bindparam("holders", expanding=True)))
            .values(lease_until=None, lease_holder=None) for table in (InboundRow, OutboundRow)]


def release_leases(s: Session, holders: Collection[str]) -> None:
    """Make what dead workers held due again at once, instead of when their leases run
    out. A rare statement (once per dead worker), so ``lease_holder`` has no index."""
    if holders:
        for statement in _RELEASE:
            s.connection().execute(statement, {"holders": list(holders)})


def mark_delivered(s: Session, ids: Collection[int], now: datetime) -> set[int]:
    """Finish the copies still queued among ``ids``; returns those (the others were
    finished by a worker whose lease had not run out)."""
    if not ids:
        return set()
    return set(s.connection().scalars(_DELIVERED, {"ids": list(ids), "now": now}))


_RETRY = (update(OutboundRow).where(OutboundRow.id == bindparam("outbound_id"),
                                   OutboundRow.state == OutboxState.QUEUED)
          .values(attempts=OutboundRow.attempts + 1, last_error=bindparam("why"),
                  next_attempt_at=bindparam("at"), lease_until=None, lease_holder=None)
          .returning(OutboundRow.id))
_MOVE = {target: (update(OutboundRow).where(
    OutboundRow.id == bindparam("outbound_id"),
    OutboundRow.state.in_(sources(OUTBOX_MOVES, target)))
    .values(state=target, last_error=bindparam("why"), finished_at=bindparam("now"),
            attempts=OutboundRow.attempts + bindparam("tried"), lease_until=None,
            lease_holder=None)
    .returning(OutboundRow.inbound_id, OutboundRow.booking_id))
    for target in OutboxState}


def retry_outbound(s: Session, outbound_id: int, why: str, at: datetime) -> bool:
    """Count a failed attempt of a copy still queued and make it due again ``at``; False
    when it is no longer queued (another worker finished it)."""
    return s.connection().scalar(
        _RETRY, {"outbound_id": outbound_id, "why": why[:2000], "at": at}) is not None


def move_outbound(s: Session, outbound_id: int, to: OutboxState, now: datetime, *, why: str,
                  tried: bool = False) -> tuple[int | None, int | None] | None:
    """Move a copy to ``to`` if :data:`OUTBOX_MOVES` allows it from the state it is in, with
    ``why`` (an :class:`UndeliverableCause` while a notice is owed, counting an attempt if
    ``tried``); its (inbound id, booking id), or None when the move is not allowed."""
    row = s.connection().execute(_MOVE[to], {"outbound_id": outbound_id, "why": why[:2000],
                                             "now": now, "tried": int(tried)}).first()
    return None if row is None else (row[0], row[1])


def park_outbound(s: Session, outbound_id: int, error: str, now: datetime) -> bool:
    """Set a copy aside for a human after an unexpected error, with the error in the archive
    of its message; False when it was not ours to park any more."""
    moved = move_outbound(s, outbound_id, OutboxState.FAILED, now, why=error)
    if moved is None:
        return False
    inbound_id, booking_id = moved
    if inbound_id is not None:
        add_archive_entry(s, ArchiveEntry(inbound_id, booking_id, None, "", Outcome.FAILED,
                                          f"outgoing copy {outbound_id}: {error}"), now)
    return True


_OF_MESSAGE = (OutboundRow.inbound_id == bindparam("of_inbound"),
               OutboundRow.booking_id == bindparam("of_booking"))
_RELEASE_HELD = (update(OutboundRow).where(
    *_OF_MESSAGE, OutboundRow.state.in_(sources(OUTBOX_MOVES, OutboxState.QUEUED)))
                 .values(state=OutboxState.QUEUED, next_attempt_at=bindparam("now"))
                 .returning(OutboundRow.id))
_REFUSE_HELD = (update(OutboundRow).where(
    *_OF_MESSAGE, OutboundRow.state.in_(sources(OUTBOX_MOVES, OutboxState.REFUSED)))
                .values(state=OutboxState.REFUSED, last_error=bindparam("why"),
                        finished_at=bindparam("now"))
                .returning(OutboundRow.id))


def release_held(s: Session, inbound_id: int, booking_id: int, now: datetime) -> list[int]:
    """Care lets the held copies of a message for a booking go, as they were composed; the
    ids of those it moved (none: another agent decided first)."""
    return list(s.connection().scalars(_RELEASE_HELD, {"of_inbound": inbound_id,
                                                       "of_booking": booking_id, "now": now}))


def refuse_held(s: Session, inbound_id: int, booking_id: int, why: str,
                now: datetime) -> list[int]:
    """Care refuses the held copies: processing then owes their sender a notice."""
    return list(s.connection().scalars(_REFUSE_HELD, {"of_inbound": inbound_id,
                                                      "of_booking": booking_id,
                                                      "why": why[:2000], "now": now}))


@dataclass(frozen=True)
class Owed:
    """A copy that did not arrive, whose sender is owed a notice."""

    id: int
    state: OutboxState
    kind: OutboxKind
    cause: str  # an UndeliverableCause value
    inbound_id: int | None
    booking_id: int | None
    recipient_role: Role | None
    rcpt_to: str


_DUE_OWED = select(OutboundRow.id).where(
    OutboundRow.state.in_(tuple(OWES_NOTICE)),
    or_(OutboundRow.lease_until.is_(None), OutboundRow.lease_until < bindparam("now")),
).order_by(OutboundRow.id).limit(bindparam("limit")).with_for_update(skip_locked=True)
_LEASE_OWED = (update(OutboundRow).where(OutboundRow.id.in_(bindparam("ids", expanding=True)))
               .values(lease_until=bindparam("until"), lease_holder=bindparam("holder"))
               .returning(OutboundRow.id, OutboundRow.state, OutboundRow.kind,
                          OutboundRow.last_error, OutboundRow.inbound_id,
                          OutboundRow.booking_id, OutboundRow.recipient_role,
                          OutboundRow.rcpt_to))


def claim_owed(s: Session, *, limit: int, now: datetime, lease: timedelta,
               holder: str | None = None) -> list[Owed]:
    """Lease copies whose senders are owed a notice, as :func:`claim_outbound` does."""
    db = s.connection()
    ids = list(db.scalars(_DUE_OWED, {"now": now, "limit": limit}))
    if not ids:
        return []
    rows = db.execute(_LEASE_OWED, {"ids": ids, "until": now + lease, "holder": holder})
    return sorted((Owed(row.id, OutboxState(row.state), OutboxKind(row.kind), row.last_error or "",
                        row.inbound_id, row.booking_id,
                        None if row.recipient_role is None else Role(row.recipient_role),
                        row.rcpt_to) for row in rows), key=lambda o: o.id)


@dataclass(frozen=True)
class Attempt:
    outbound_id: int
    code: int | None
    response: str
    outcome: str  # a delivery.transport.Status
    tls_version: str | None = None  # of the attempt's connection; None: in clear


def record_attempts(s: Session, attempts: Sequence[Attempt], now: datetime) -> None:
    if attempts:
        s.connection().execute(_INSERT_ATTEMPT, [
            {"outbound_id": a.outbound_id, "attempted_at": now, "code": a.code,
             "response": a.response[:2000], "outcome": a.outcome,
             "tls_version": a.tls_version} for a in attempts])


@dataclass(frozen=True)
class Sent:
    """An outgoing copy, as a bounce to its VERP address names it."""

    id: int
    booking_id: int | None


_BY_BOUNCE_TOKEN = select(OutboundRow.id, OutboundRow.booking_id).where(
    OutboundRow.bounce_token == bindparam("token"))


def outbound_by_bounce_token(s: Session, token: str) -> Sent | None:
    """Without its raw bytes: a bounce needs only which copy it is about."""
    row = s.execute(_BY_BOUNCE_TOKEN, {"token": token}).first()
    return None if row is None else Sent(*row)


# --- threading ----------------------------------------------------------------------------


def id_pairs(s: Session, booking_ids: Collection[int], ids: Collection[str]
             ) -> defaultdict[int, list[IdPair]]:
    """Per booking, the pairs that ``ids`` (messages' references) name either way."""
    found: defaultdict[int, list[IdPair]] = defaultdict(list)
    if not booking_ids or not ids:
        return found
    rows = s.scalars(select(MessageIdRow).where(
        MessageIdRow.booking_id.in_(booking_ids),
        or_(MessageIdRow.relayed_id.in_(ids), MessageIdRow.original_id.in_(ids))))
    for r in rows:
        found[r.booking_id].append(IdPair(Role(r.sender_role), r.original_id, r.relayed_id))
    return found


def add_id_pairs(s: Session, pairs: Sequence[tuple[int, IdPair]]) -> None:
    if pairs:
        s.connection().execute(_INSERT_ID_PAIR, [
            {"booking_id": booking_id, "sender_role": p.sender_role.value,
             "original_id": p.original_id, "relayed_id": p.relayed_id}
            for booking_id, p in pairs])
