"""Queries the rest of mailveil uses; each takes an open ``Session`` and leaves the commit
to the caller, so one unit of work (archive entry + outbox row) is one transaction."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from mailveil.domain.addresses import Role, new_token
from mailveil.domain.booking import Booking, BookingStatus, Party
from mailveil.domain.threading import IdPair
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


def pack(raw: bytes) -> tuple[bytes, str]:
    """Compress a raw message for storage and return it with the digest of the original."""
    return zlib.compress(raw, 1), hashlib.sha256(raw).hexdigest()


def unpack(stored: bytes) -> bytes:
    return zlib.decompress(stored)


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


def booking_by_token(s: Session, role: Role, token: str) -> BookingRow | None:
    column = BookingRow.customer_token if role is Role.CUSTOMER else BookingRow.supplier_token
    return s.scalar(select(BookingRow).where(column == token))


def to_domain(s: Session, row: BookingRow) -> Booking:
    supplier = s.get(SupplierRow, row.supplier_id)
    assert supplier is not None, "foreign key guarantees the supplier"
    return Booking(
        reference=row.reference,
        supplier=Party(supplier.name, supplier.email, supplier.locale),
        customer=Party(row.customer_name, row.customer_email, row.customer_locale),
        activity_start=row.activity_start, activity_end=row.activity_end,
        status=BookingStatus(row.status), cancelled_at=row.cancelled_at,
        customer_token=row.customer_token, supplier_token=row.supplier_token,
    )


# --- inbound messages ---------------------------------------------------------------------


def header_block(raw: bytes) -> bytes:
    """The header section of a message, blank line included (all of it if none ends it)."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) != -1]
    return raw[: min(ends)] if ends else raw


def store_inbound(s: Session, *, mail_from: str, rcpt_to: Sequence[str], raw: bytes,
                  scan: str, now: datetime) -> int:
    """Store an accepted message. An infected one goes to quarantine whole; the archive
    keeps only its headers, enough to explain the refusal to its sender."""
    infected = scan.startswith("infected")
    packed, digest = pack(header_block(raw) if infected else raw)
    row = InboundRow(received_at=now, mail_from=mail_from, rcpt_to=list(rcpt_to), raw=packed,
                     sha256=digest, size=len(raw), state="received", scan=scan)
    s.add(row)
    s.flush()
    if infected:
        whole, whole_digest = pack(raw)
        s.add(QuarantineRow(inbound_id=row.id, raw=whole, sha256=whole_digest, findings=scan,
                            created_at=now))
    return row.id


def claim_inbound(s: Session, *, limit: int, now: datetime, lease: timedelta) -> list[int]:
    """Take received messages for processing, by id (each is read again, locked, when it is
    processed); a crashed worker's lease runs out and another worker picks it up again."""
    ids = select(InboundRow.id).where(
        InboundRow.state == "received",
        or_(InboundRow.lease_until.is_(None), InboundRow.lease_until < now),
    ).order_by(InboundRow.id).limit(limit).with_for_update(skip_locked=True)
    claimed = list(s.scalars(ids))
    if not claimed:
        return []
    s.execute(update(InboundRow).where(InboundRow.id.in_(claimed)).values(lease_until=now + lease))
    return claimed


def add_archive_entry(s: Session, *, inbound_id: int, booking_id: int | None,
                      sender_role: Role | None, subject: str, outcome: str, detail: str,
                      now: datetime) -> None:
    # A decoded Subject may hold any character, NUL included, which PostgreSQL refuses.
    printable = "".join(ch if ch.isprintable() else " " for ch in subject)[:1000]
    s.add(ArchiveEntryRow(inbound_id=inbound_id, booking_id=booking_id,
                          sender_role=sender_role.value if sender_role else None,
                          subject=printable, outcome=outcome, detail=detail, created_at=now))


# --- outbox -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewOutbound:
    kind: str  # relay | notice
    inbound_id: int | None
    booking_id: int | None
    recipient_role: Role | None
    bounce_token: str
    mail_from: str
    rcpt_to: str
    message_id: str
    raw: bytes


def queue_outbound(s: Session, msg: NewOutbound, now: datetime) -> int:
    packed, digest = pack(msg.raw)
    row = OutboundRow(
        inbound_id=msg.inbound_id, booking_id=msg.booking_id, kind=msg.kind,
        recipient_role=msg.recipient_role.value if msg.recipient_role else None,
        bounce_token=msg.bounce_token, mail_from=msg.mail_from, rcpt_to=msg.rcpt_to,
        message_id=msg.message_id, raw=packed, sha256=digest, state="queued", attempts=0,
        next_attempt_at=now, created_at=now,
    )
    s.add(row)
    s.flush()
    return row.id


def claim_outbound(s: Session, *, limit: int, now: datetime,
                   lease: timedelta) -> list[OutboundRow]:
    """Lease due messages to this worker. ``SKIP LOCKED`` keeps two workers on PostgreSQL
    from taking the same rows; the lease keeps them apart once the transaction ends."""
    ids = select(OutboundRow.id).where(
        OutboundRow.state == "queued",
        OutboundRow.next_attempt_at <= now,
        or_(OutboundRow.lease_until.is_(None), OutboundRow.lease_until < now),
    ).order_by(OutboundRow.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    claimed = list(s.scalars(ids))
    if not claimed:
        return []
    s.execute(update(OutboundRow).where(OutboundRow.id.in_(claimed))
              .values(lease_until=now + lease))
    return list(s.scalars(select(OutboundRow).where(OutboundRow.id.in_(claimed))))


def record_attempt(s: Session, *, outbound_id: int, code: int | None, response: str,
                   outcome: str, now: datetime) -> None:
    s.add(AttemptRow(outbound_id=outbound_id, attempted_at=now, code=code,
                     response=response[:2000], outcome=outcome))


def outbound_by_bounce_token(s: Session, token: str) -> OutboundRow | None:
    return s.scalar(select(OutboundRow).where(OutboundRow.bounce_token == token))


# --- threading ----------------------------------------------------------------------------


def id_pairs(s: Session, booking_id: int, ids: Sequence[str]) -> list[IdPair]:
    """The pairs of the booking that ``ids`` (a message's references) name either way."""
    if not ids:
        return []
    rows = s.scalars(select(MessageIdRow).where(
        MessageIdRow.booking_id == booking_id,
        or_(MessageIdRow.relayed_id.in_(ids), MessageIdRow.original_id.in_(ids))))
    return [IdPair(Role(r.sender_role), r.original_id, r.relayed_id) for r in rows]


def add_id_pair(s: Session, booking_id: int, pair: IdPair) -> None:
    s.add(MessageIdRow(booking_id=booking_id, sender_role=pair.sender_role.value,
                       original_id=pair.original_id, relayed_id=pair.relayed_id))
