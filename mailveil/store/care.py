"""Queries of the care console: agents, their one-time links, the audit log, search, and a
booking's whole record. Like :mod:`mailveil.store.repository`, nothing here commits.

The audit log has an append function and a read function and nothing else; the database
refuses UPDATE and DELETE on it besides (migration 0013).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mailveil.domain.addresses import AddressBook, Kind, Role
from mailveil.store import repository as repo
from mailveil.store.models import (
    ArchiveEntryRow,
    AttemptRow,
    BookingRow,
    CancellationRow,
    CareAgentRow,
    CareAuditRow,
    CareClosureRow,
    CareLinkRow,
    ContactTicketRow,
    InboundRow,
    MessageIdRow,
    OutboundRow,
    ReviewFlagRow,
    SupplierRow,
)
from mailveil.store.portal import CancellationState, token_hash

# --- agents -------------------------------------------------------------------------------


def add_agent(s: Session, email: str, now: datetime) -> CareAgentRow:
    """The agent with this address, added (or added back) now."""
    email = email.strip().lower()
    row = s.scalar(select(CareAgentRow).where(CareAgentRow.email == email))
    if row is None:
        row = CareAgentRow(email=email, created_at=now)
        s.add(row)
    row.removed_at = None
    s.flush()
    return row


def agents(s: Session) -> list[CareAgentRow]:
    return list(s.scalars(select(CareAgentRow).where(CareAgentRow.removed_at.is_(None))
                          .order_by(CareAgentRow.email)))


def remove_agent(s: Session, email: str, now: datetime) -> bool:
    removed = s.execute(update(CareAgentRow)
                        .where(CareAgentRow.email == email.strip().lower(),
                               CareAgentRow.removed_at.is_(None))
                        .values(removed_at=now))
    return bool(removed.rowcount)  # type: ignore[attr-defined]


def active_agent(s: Session, agent_id: int) -> CareAgentRow | None:
    return s.scalar(select(CareAgentRow).where(CareAgentRow.id == agent_id,
                                               CareAgentRow.removed_at.is_(None)))


def add_link(s: Session, *, agent_id: int, token: str, now: datetime,
             expires_at: datetime) -> None:
    s.add(CareLinkRow(token_hash=token_hash(token), agent_id=agent_id, created_at=now,
                      expires_at=expires_at))
    s.flush()


def _usable(token: str, now: datetime) -> ColumnElement[bool]:
    active = select(CareAgentRow.id).where(CareAgentRow.removed_at.is_(None))
    return and_(CareLinkRow.token_hash == token_hash(token), CareLinkRow.used_at.is_(None),
                CareLinkRow.expires_at > now, CareLinkRow.agent_id.in_(active))


def link_usable(s: Session, token: str, now: datetime) -> bool:
    return s.scalar(select(CareLinkRow.id).where(_usable(token, now))) is not None


def use_link(s: Session, token: str, now: datetime) -> CareAgentRow | None:
    """The agent a link signs in, once; ``None`` when unknown, used, expired or removed."""
    used = s.execute(update(CareLinkRow).where(_usable(token, now)).values(used_at=now))
    if used.rowcount != 1:  # type: ignore[attr-defined]
        return None
    agent_id = s.scalar(select(CareLinkRow.agent_id)
                        .where(CareLinkRow.token_hash == token_hash(token)))
    return None if agent_id is None else active_agent(s, agent_id)


# --- audit log ----------------------------------------------------------------------------


def audit(s: Session, agent_id: int | None, action: str, subject: str, now: datetime) -> None:
    s.add(CareAuditRow(at=now, agent_id=agent_id, action=action, subject=subject))
    s.flush()


@dataclass(frozen=True)
class AuditLine:
    at: datetime
    agent: str
    action: str
    subject: str


def audit_log(s: Session, limit: int = 200) -> list[AuditLine]:
    rows = s.execute(select(CareAuditRow, CareAgentRow.email)
                     .outerjoin(CareAgentRow, CareAgentRow.id == CareAuditRow.agent_id)
                     .order_by(CareAuditRow.id.desc()).limit(limit)).all()
    return [AuditLine(r.at, email or "(operator)", r.action, r.subject) for r, email in rows]


# --- search -------------------------------------------------------------------------------


def search(s: Session, book: AddressBook, query: str, limit: int = 50) -> list[BookingRow]:
    """Bookings by reference, relay address, real address (customer's or supplier's) or
    Message-ID (as the sender wrote it, or as the relay gave it to the copy)."""
    q = query.strip()
    if not q:
        return []
    parsed = book.parse(q)
    if parsed is not None and parsed.kind is Kind.PARTY:
        column = (BookingRow.customer_token if parsed.role is Role.CUSTOMER
                  else BookingRow.supplier_token)
        return list(s.scalars(select(BookingRow).where(column == parsed.token)))
    lowered = q.lower().strip("<>")
    by_message_id = (
        select(MessageIdRow.booking_id)
        .where(or_(func.lower(MessageIdRow.original_id) == f"<{lowered}>",
                   func.lower(MessageIdRow.relayed_id) == f"<{lowered}>"))
        .union(select(OutboundRow.booking_id)
               .where(func.lower(OutboundRow.message_id) == f"<{lowered}>")))
    suppliers = select(SupplierRow.id).where(func.lower(SupplierRow.email) == lowered)
    return list(s.scalars(
        select(BookingRow)
        .where(or_(BookingRow.reference == q, func.lower(BookingRow.customer_email) == lowered,
                   BookingRow.supplier_id.in_(suppliers), BookingRow.id.in_(by_message_id)))
        .order_by(BookingRow.activity_start.desc()).limit(limit)))


def booking(s: Session, reference: str) -> BookingRow | None:
    return s.scalar(select(BookingRow).where(BookingRow.reference == reference))


# --- a booking's record -------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    row: OutboundRow
    attempts: list[AttemptRow]


@dataclass(frozen=True)
class Message:
    entry: ArchiveEntryRow
    inbound: InboundRow
    copies: list[Copy]  # what left for this booking because of it: relayed copies, notices


def record(s: Session, booking_id: int) -> list[Message]:
    """Every message of the booking, oldest first, with every copy and delivery attempt."""
    pairs = s.execute(select(ArchiveEntryRow, InboundRow)
                      .join(InboundRow, InboundRow.id == ArchiveEntryRow.inbound_id)
                      .where(ArchiveEntryRow.booking_id == booking_id)
                      .order_by(ArchiveEntryRow.id)).tuples().all()
    outbound = s.scalars(select(OutboundRow).where(OutboundRow.booking_id == booking_id)
                         .order_by(OutboundRow.id)).all()
    attempts = s.scalars(select(AttemptRow)
                         .where(AttemptRow.outbound_id.in_([o.id for o in outbound]))
                         .order_by(AttemptRow.id)).all()
    by_outbound: dict[int, list[AttemptRow]] = {}
    for a in attempts:
        by_outbound.setdefault(a.outbound_id, []).append(a)
    return [Message(e, i, [Copy(o, by_outbound.get(o.id, [])) for o in outbound
                           if o.inbound_id == i.id])
            for e, i in pairs]


def inbound_of(s: Session, booking_id: int, inbound_id: int) -> InboundRow | None:
    """A message received for this booking; one of another booking is as unknown."""
    return s.scalar(select(InboundRow).join(ArchiveEntryRow,
                                            ArchiveEntryRow.inbound_id == InboundRow.id)
                    .where(InboundRow.id == inbound_id, ArchiveEntryRow.booking_id == booking_id))


def outbound_of(s: Session, booking_id: int, outbound_id: int) -> OutboundRow | None:
    return s.scalar(select(OutboundRow).where(OutboundRow.id == outbound_id,
                                              OutboundRow.booking_id == booking_id))


# --- queues -------------------------------------------------------------------------------


class QueueKind(StrEnum):
    TICKET = "ticket"  # left on the contact form
    CANCELLATION = "cancellation"  # a request the customer declined or left unanswered
    REVIEW = "review"  # a supplier's message asking for a review elsewhere (domain/review.py)


class ReviewState(StrEnum):
    FLAGGED = "flagged"  # delivered; care looks and closes it with a note
    HELD = "held"  # its copies wait: care releases or refuses it


@dataclass(frozen=True)
class QueueItem:
    kind: QueueKind
    id: int
    reference: str
    at: datetime
    summary: str  # what the party wrote: a ticket's message, a request's reason, a Subject
    state: str
    found: tuple[str, ...] = ()  # a review request's matched pieces of text


def queue(s: Session, now: datetime) -> list[QueueItem]:
    """Open items, oldest first: contact tickets, and cancellation requests declined or not
    answered in time (a request past its answer time counts as unanswered)."""
    closed = {(c.kind, c.item_id) for c in s.scalars(select(CareClosureRow))}
    tickets = s.execute(select(ContactTicketRow, BookingRow.reference)
                        .join(BookingRow, BookingRow.id == ContactTicketRow.booking_id)).all()
    requests = s.execute(
        select(CancellationRow, BookingRow.reference)
        .join(BookingRow, BookingRow.id == CancellationRow.booking_id)
        .where(or_(CancellationRow.state.in_([CancellationState.DECLINED.value,
                                              CancellationState.UNANSWERED.value]),
                   and_(CancellationRow.state == CancellationState.REQUESTED.value,
                        CancellationRow.answer_by <= now)))).all()
    items = [QueueItem(QueueKind.TICKET, t.id, ref, t.created_at, t.message, t.role)
             for t, ref in tickets]
    items += [QueueItem(QueueKind.CANCELLATION, c.id, ref, c.created_at, c.reason,
                        CancellationState.UNANSWERED.value
                        if c.state == CancellationState.REQUESTED.value else c.state)
              for c, ref in requests]
    items += _reviews(s)
    return sorted((i for i in items if (i.kind.value, i.id) not in closed),
                  key=lambda i: i.at)


def _reviews(s: Session) -> list[QueueItem]:
    subject = (select(ArchiveEntryRow.subject)
               .where(ArchiveEntryRow.inbound_id == ReviewFlagRow.inbound_id,
                      ArchiveEntryRow.booking_id == ReviewFlagRow.booking_id)
               .order_by(ArchiveEntryRow.id).limit(1).correlate(ReviewFlagRow).scalar_subquery())
    flags = s.execute(select(ReviewFlagRow, BookingRow.reference, subject)
                      .join(BookingRow, BookingRow.id == ReviewFlagRow.booking_id)).all()
    return [QueueItem(QueueKind.REVIEW, f.id, ref, f.created_at, subj or "",
                      (ReviewState.HELD if f.held else ReviewState.FLAGGED).value,
                      tuple(f.found))
            for f, ref, subj in flags]


def close(s: Session, kind: QueueKind, item_id: int, agent_id: int, note: str,
          now: datetime) -> bool:
    """Close an open item once; ``False`` when it is not in the queue, or is a held review
    request (those are released or refused, :func:`decide_held`)."""
    if not any(i.kind is kind and i.id == item_id and i.state != ReviewState.HELD
               for i in queue(s, now)):
        return False
    _closed(s, kind, item_id, agent_id, note, now)
    return True


def _closed(s: Session, kind: QueueKind, item_id: int, agent_id: int, note: str,
            now: datetime) -> None:
    s.add(CareClosureRow(kind=kind.value, item_id=item_id, agent_id=agent_id, note=note,
                         closed_at=now))
    s.flush()


@dataclass(frozen=True)
class NewFlag:
    inbound_id: int
    booking_id: int
    held: bool
    found: tuple[str, ...]


def add_flags(s: Session, flags: Sequence[NewFlag], now: datetime) -> None:
    """Written by processing with the batch the flagged messages are part of."""
    if flags:
        s.connection().execute(insert(ReviewFlagRow), [
            {"inbound_id": f.inbound_id, "booking_id": f.booking_id, "held": f.held,
             "found": list(f.found), "created_at": now} for f in flags])


REFUSED_BY_CARE = "refused by care: a review request elsewhere"


def decide_held(s: Session, flag_id: int, release: bool, agent_id: int, note: str,
                now: datetime) -> ReviewFlagRow | None:
    """Release a held review request (its copies go as composed) or refuse it (its sender
    is told by the next processing round), and close it; None when it is not an open held
    item, or another agent decided first."""
    flag = s.get(ReviewFlagRow, flag_id)
    closed = s.scalar(select(CareClosureRow.id).where(
        CareClosureRow.kind == QueueKind.REVIEW.value, CareClosureRow.item_id == flag_id))
    if flag is None or not flag.held or closed is not None:
        return None
    moved = (repo.release_held(s, flag.inbound_id, flag.booking_id, now) if release else
             repo.refuse_held(s, flag.inbound_id, flag.booking_id, REFUSED_BY_CARE, now))
    if not moved:
        return None
    _closed(s, QueueKind.REVIEW, flag_id, agent_id, note, now)
    return flag
