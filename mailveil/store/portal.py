"""Queries of the supplier portal: one-time links, a supplier's bookings, a booking's thread,
cancellation requests. Like :mod:`mailveil.store.repository`, nothing here commits.

Tokens are stored as their SHA-256 only: a copy of the database signs nobody in and answers
no cancellation. Using a token is one conditional ``UPDATE``, so two requests racing with
the same link cannot both win.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from mailveil.domain.booking import BookingStatus
from mailveil.store.models import (
    ArchiveEntryRow,
    BookingRow,
    CancellationRow,
    ContactTicketRow,
    InboundRow,
    OutboundRow,
    PortalLinkRow,
    SupplierRow,
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- sign-in links ------------------------------------------------------------------------


def add_link(s: Session, *, supplier_id: str, token: str, now: datetime,
             expires_at: datetime) -> None:
    s.add(PortalLinkRow(token_hash=token_hash(token), supplier_id=supplier_id, created_at=now,
                        expires_at=expires_at))
    s.flush()


def use_link(s: Session, token: str, now: datetime) -> str | None:
    """The supplier a link signs in, once: ``None`` when unknown, used or expired."""
    h = token_hash(token)
    used = s.execute(update(PortalLinkRow)
                     .where(PortalLinkRow.token_hash == h, PortalLinkRow.used_at.is_(None),
                            PortalLinkRow.expires_at > now)
                     .values(used_at=now))
    if used.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return s.scalar(select(PortalLinkRow.supplier_id).where(PortalLinkRow.token_hash == h))


def link_usable(s: Session, token: str, now: datetime) -> bool:
    return s.scalar(select(PortalLinkRow.id).where(
        PortalLinkRow.token_hash == token_hash(token), PortalLinkRow.used_at.is_(None),
        PortalLinkRow.expires_at > now)) is not None


def links_since(s: Session, supplier_id: str, since: datetime) -> int:
    return s.scalar(select(func.count()).select_from(PortalLinkRow).where(
        PortalLinkRow.supplier_id == supplier_id, PortalLinkRow.created_at > since)) or 0


def suppliers_by_email(s: Session, email: str) -> list[SupplierRow]:
    return list(s.scalars(select(SupplierRow)
                          .where(func.lower(SupplierRow.email) == email.strip().lower())))


# --- bookings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BookingLine:
    row: BookingRow
    messages: int


PageKey = tuple[datetime, int]
"""(activity_start, id) of the last booking of a page: the next page starts after it."""


def bookings_page(s: Session, supplier_id: str, *, search: str, after: PageKey | None,
                  limit: int) -> list[BookingLine]:
    """A supplier's bookings, latest activity first, ``limit`` after ``after`` (keyset: the
    cost of a page does not grow with its depth). ``search`` is a reference prefix."""
    q = select(BookingRow).where(BookingRow.supplier_id == supplier_id)
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(BookingRow.reference.like(escaped + "%", escape="\\"))
    if after is not None:
        start, last_id = after
        q = q.where(or_(BookingRow.activity_start < start,
                        and_(BookingRow.activity_start == start, BookingRow.id < last_id)))
    rows = s.scalars(q.order_by(BookingRow.activity_start.desc(), BookingRow.id.desc())
                     .limit(limit)).all()
    counts = dict(s.execute(
        select(ArchiveEntryRow.booking_id, func.count())
        .where(ArchiveEntryRow.booking_id.in_([r.id for r in rows]),
               ArchiveEntryRow.sender_role.is_not(None))
        .group_by(ArchiveEntryRow.booking_id)).tuples().all())
    return [BookingLine(r, counts.get(r.id, 0)) for r in rows]


def supplier_booking(s: Session, supplier_id: str, reference: str) -> BookingRow | None:
    """The booking only if it is this supplier's: another's is as unknown as a missing one."""
    return s.scalar(select(BookingRow).where(BookingRow.reference == reference,
                                             BookingRow.supplier_id == supplier_id))


@dataclass(frozen=True)
class ThreadEntry:
    entry: ArchiveEntryRow
    inbound: InboundRow
    copy: OutboundRow | None  # what the other party received; None when refused


def thread(s: Session, booking_id: int) -> list[ThreadEntry]:
    """The messages of the parties (bounces are shown as their copy's state), oldest first."""
    pairs = s.execute(
        select(ArchiveEntryRow, InboundRow)
        .join(InboundRow, InboundRow.id == ArchiveEntryRow.inbound_id)
        .where(ArchiveEntryRow.booking_id == booking_id, ArchiveEntryRow.sender_role.is_not(None))
        .order_by(ArchiveEntryRow.id)).tuples().all()
    copies = s.scalars(select(OutboundRow).where(OutboundRow.booking_id == booking_id,
                                                 OutboundRow.kind == "relay",
                                                 OutboundRow.inbound_id.is_not(None))).all()
    by_inbound = {c.inbound_id: c for c in copies}
    return [ThreadEntry(e, i, by_inbound.get(i.id)) for e, i in pairs]


# --- cancellation requests ----------------------------------------------------------------


class CancellationState(StrEnum):
    REQUESTED = "requested"
    CONFIRMED = "confirmed"
    DECLINED = "declined"
    UNANSWERED = "unanswered"  # the answer time ran out: recorded for care


def latest_cancellation(s: Session, booking_id: int) -> CancellationRow | None:
    return s.scalar(select(CancellationRow).where(CancellationRow.booking_id == booking_id)
                    .order_by(CancellationRow.id.desc()).limit(1))


def add_cancellation(s: Session, *, booking_id: int, reason: str, token: str, now: datetime,
                     answer_by: datetime) -> CancellationRow:
    row = CancellationRow(booking_id=booking_id, reason=reason, token_hash=token_hash(token),
                          state=CancellationState.REQUESTED.value, created_at=now,
                          answer_by=answer_by)
    s.add(row)
    s.flush()
    return row


def cancellation_by_token(s: Session, token: str) -> tuple[CancellationRow, BookingRow] | None:
    found = s.execute(select(CancellationRow, BookingRow)
                      .join(BookingRow, BookingRow.id == CancellationRow.booking_id)
                      .where(CancellationRow.token_hash == token_hash(token))).tuples().first()
    return None if found is None else (found[0], found[1])


def answer_cancellation(s: Session, token: str, state: CancellationState,
                        now: datetime) -> bool:
    """Record the customer's answer once, before ``answer_by``; a confirmation cancels the
    booking in the same transaction."""
    answered = s.execute(update(CancellationRow)
                         .where(CancellationRow.token_hash == token_hash(token),
                                CancellationRow.state == CancellationState.REQUESTED,
                                CancellationRow.answer_by > now)
                         .values(state=state.value, answered_at=now))
    if answered.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if state is CancellationState.CONFIRMED:
        booking_id = s.scalar(select(CancellationRow.booking_id)
                              .where(CancellationRow.token_hash == token_hash(token)))
        s.execute(update(BookingRow)
                  .where(BookingRow.id == booking_id,
                         BookingRow.status != BookingStatus.CANCELLED)
                  .values(status=BookingStatus.CANCELLED.value, cancelled_at=now,
                          updated_at=now))
    return True



# --- contact form -------------------------------------------------------------------------


def booking_by_reference(s: Session, reference: str) -> BookingRow | None:
    return s.scalar(select(BookingRow).where(BookingRow.reference == reference))


def add_ticket(s: Session, *, booking_id: int, role: str, message: str,
               now: datetime) -> ContactTicketRow:
    row = ContactTicketRow(booking_id=booking_id, role=role, message=message, created_at=now)
    s.add(row)
    s.flush()
    return row
