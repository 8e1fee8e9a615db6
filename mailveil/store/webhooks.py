"""The webhook outbox: events written in the transaction of the change they report, leased
to one sender at a time, retried with growing waits until the marketplace takes them.

Nothing here commits (see :mod:`mailveil.store.repository`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailveil.store.models import BookingRow, CancellationRow, WebhookEventRow
from mailveil.store.portal import CancellationState


def emit(s: Session, event: str, data: dict[str, Any], now: datetime) -> None:
    """Queue an event; its id lets the receiver drop the duplicates at-least-once brings."""
    body = json.dumps({"id": str(uuid.uuid4()), "type": event, "created_at": now.isoformat(),
                       "data": data}, ensure_ascii=False, sort_keys=True)
    s.add(WebhookEventRow(event=event, body=body, created_at=now, attempts=0,
                          next_attempt_at=now))
    s.flush()


@dataclass(frozen=True)
class Due:
    id: int
    body: str
    attempts: int


def claim(s: Session, *, limit: int, now: datetime, lease: timedelta) -> list[Due]:
    """Due events, each pushed ``lease`` into the future so no other sender takes it while
    this one tries (a sender that dies leaves it due again after the lease)."""
    rows = s.scalars(select(WebhookEventRow)
                     .where(WebhookEventRow.next_attempt_at <= now)
                     .order_by(WebhookEventRow.id).limit(limit)
                     .with_for_update(skip_locked=True)).all()
    for row in rows:
        row.next_attempt_at = now + lease
    s.flush()
    return [Due(r.id, r.body, r.attempts) for r in rows]


def delivered(s: Session, event_id: int, now: datetime) -> None:
    s.execute(update(WebhookEventRow).where(WebhookEventRow.id == event_id)
              .values(next_attempt_at=None, delivered_at=now,
                      attempts=WebhookEventRow.attempts + 1, last_error=None))


def retry(s: Session, event_id: int, error: str, at: datetime) -> None:
    s.execute(update(WebhookEventRow).where(WebhookEventRow.id == event_id)
              .values(next_attempt_at=at, attempts=WebhookEventRow.attempts + 1,
                      last_error=error[:2000]))


def unanswered(s: Session, now: datetime) -> list[tuple[CancellationRow, BookingRow]]:
    """Cancellation requests whose answer time ran out, now marked so (once each)."""
    rows = s.execute(select(CancellationRow, BookingRow)
                     .join(BookingRow, BookingRow.id == CancellationRow.booking_id)
                     .where(CancellationRow.state == CancellationState.REQUESTED,
                            CancellationRow.answer_by <= now)
                     .with_for_update(skip_locked=True, of=CancellationRow)).tuples().all()
    for request, _ in rows:
        request.state = CancellationState.UNANSWERED.value
    s.flush()
    return [(request, booking) for request, booking in rows]
