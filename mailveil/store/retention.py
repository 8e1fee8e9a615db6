"""Personal data is not kept forever: raw messages go first, metadata later.

Bodies (the raw bytes of what came in and went out, and quarantined files) are removed
after ``body_days``, and with them the address and HELO name of the client a message came
from: the body's own ``Received`` headers held them too, and abuse they help trace is
looked into within days; the archive entries, digests, sizes and delivery attempts that let care
settle a dispute stay until ``metadata_days``, then the whole record goes. Messages still
waiting in the outbox are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, CursorResult, delete, select, update
from sqlalchemy.orm import Session

from mailveil.domain.states import OUTBOX_AT_WORK, InboundState
from mailveil.store.models import (
    ArchiveEntryRow,
    AttemptRow,
    InboundRow,
    OutboundRow,
    QuarantineRow,
    ReviewFlagRow,
)
from mailveil.store.repository import sha256_of


@dataclass(frozen=True)
class Retention:
    body: timedelta
    metadata: timedelta


@dataclass(frozen=True)
class Purged:
    bodies: int
    records: int


def purge(s: Session, policy: Retention, now: datetime) -> Purged:
    body_cut, meta_cut = now - policy.body, now - policy.metadata
    bodies = 0
    for table, stamp, finished, personal in (
        (InboundRow, InboundRow.received_at, InboundRow.state != InboundState.RECEIVED,
         {"client_address": None, "client_helo": None}),
        (OutboundRow, OutboundRow.created_at, OutboundRow.state.not_in(OUTBOX_AT_WORK), {}),
    ):
        result: CursorResult[object] = s.execute(  # type: ignore[assignment]
            update(table).where(stamp < body_cut, finished, table.purged_at.is_(None))
            .values(raw=b"", purged_at=now, **personal))
        bodies += result.rowcount
    s.execute(delete(QuarantineRow).where(QuarantineRow.created_at < body_cut))

    # An inbound message whose copies are still at work stays until they are done.
    still_queued = select(OutboundRow.inbound_id).where(OutboundRow.state.in_(OUTBOX_AT_WORK),
                                                        OutboundRow.inbound_id.is_not(None))
    old_inbound = select(InboundRow.id).where(InboundRow.received_at < meta_cut,
                                              InboundRow.state != InboundState.RECEIVED,
                                              InboundRow.id.not_in(still_queued))
    old_outbound = select(OutboundRow.id).where(
        OutboundRow.inbound_id.in_(old_inbound) | (OutboundRow.inbound_id.is_(None)
                                                   & (OutboundRow.created_at < meta_cut)),
        OutboundRow.state.not_in(OUTBOX_AT_WORK))
    s.execute(delete(AttemptRow).where(AttemptRow.outbound_id.in_(old_outbound)))
    records = _deleted(s, OutboundRow, OutboundRow.id.in_(old_outbound))
    s.execute(delete(ArchiveEntryRow).where(ArchiveEntryRow.inbound_id.in_(old_inbound)))
    s.execute(delete(QuarantineRow).where(QuarantineRow.inbound_id.in_(old_inbound)))
    s.execute(delete(ReviewFlagRow).where(ReviewFlagRow.inbound_id.in_(old_inbound)))
    records += _deleted(s, InboundRow, InboundRow.id.in_(old_inbound))
    return Purged(bodies, records)


def _deleted(s: Session, table: type[InboundRow] | type[OutboundRow],
             where: ColumnElement[bool]) -> int:
    result: CursorResult[object] = s.execute(delete(table).where(where))  # type: ignore[assignment]
    return result.rowcount


@dataclass(frozen=True)
class Mismatch:
    table: str
    id: int


def verify(s: Session, batch: int = 500) -> Iterator[Mismatch]:
    """Yield every stored raw message whose bytes no longer match the recorded SHA-256."""
    for table in (InboundRow, OutboundRow, QuarantineRow):
        query = select(table.id, table.raw, table.sha256)
        if table is not QuarantineRow:
            query = query.where(table.purged_at.is_(None))  # type: ignore[union-attr]
        for row_id, raw, digest in s.execute(query.execution_options(yield_per=batch)):
            if sha256_of(raw) != digest:
                yield Mismatch(table.__tablename__, row_id)
