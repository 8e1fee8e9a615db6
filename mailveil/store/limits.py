"""The counters every listener process shares for the limits (mailveil/smtp/anvil.py).

Listeners write their counts here in batches, once a second, and read back the sums; no
statement here runs per SMTP command. Keys are client addresses (or their /64) and hashes
of sender and conversation, never a mail address in clear.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailveil.domain.states import OutboxKind
from mailveil.store.models import LimitCooldownRow, LimitCountRow, LimitSessionRow, OutboundRow


def _insert(s: Session, table: type[object]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can say ON CONFLICT, in the dialect of the session's database."""
    bind = s.get_bind()
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def add(s: Session, kind: str, counts: Mapping[tuple[str, int], int]) -> None:
    """Add ``counts`` {(key, bucket): events} to what the other listeners counted."""
    if not counts:
        return
    stmt = _insert(s, LimitCountRow)
    s.execute(stmt.on_conflict_do_update(
        index_elements=["kind", "key", "bucket"],
        set_={"count": LimitCountRow.count + stmt.excluded.count}),
        [{"kind": kind, "key": key, "bucket": bucket, "count": n}
         for (key, bucket), n in sorted(counts.items())])  # one lock order for all writers


def totals(s: Session, kind: str, first_bucket: int) -> dict[str, tuple[int, int]]:
    """Per key, the events from ``first_bucket`` on and the first bucket holding any."""
    rows = s.execute(
        select(LimitCountRow.key, func.sum(LimitCountRow.count), func.min(LimitCountRow.bucket))
        .where(LimitCountRow.kind == kind, LimitCountRow.bucket >= first_bucket)
        .group_by(LimitCountRow.key))
    return {key: (int(total), int(oldest)) for key, total, oldest in rows}


def forget(s: Session, kind: str, before_bucket: int) -> None:
    """Drop the buckets no window reaches any more."""
    s.execute(delete(LimitCountRow).where(LimitCountRow.kind == kind,
                                          LimitCountRow.bucket < before_bucket))


def publish_sessions(s: Session, listener: str, active: Mapping[str, int] | None,
                     now: datetime) -> None:
    """Say this listener is alive, with its open sessions per client when they changed
    (``None``: unchanged)."""
    if active is None:
        s.execute(update(LimitSessionRow).where(LimitSessionRow.listener == listener)
                  .values(seen_at=now))
        return
    s.execute(delete(LimitSessionRow).where(LimitSessionRow.listener == listener))
    if active:
        s.execute(_insert(s, LimitSessionRow), [
            {"listener": listener, "key": key, "active": n, "seen_at": now}
            for key, n in sorted(active.items())])


def other_sessions(s: Session, listener: str, alive_since: datetime) -> dict[str, int]:
    """Sessions per client that the other live listeners hold."""
    rows = s.execute(
        select(LimitSessionRow.key, func.sum(LimitSessionRow.active))
        .where(LimitSessionRow.listener != listener, LimitSessionRow.seen_at >= alive_since)
        .group_by(LimitSessionRow.key))
    return {key: int(n) for key, n in rows}


def forget_listeners(s: Session, alive_since: datetime) -> None:
    """Drop the rows of listeners that stopped saying they are alive (killed, crashed)."""
    s.execute(delete(LimitSessionRow).where(LimitSessionRow.seen_at < alive_since))


def notices_since(s: Session, booking_ids: Collection[int], since: datetime
                  ) -> Counter[tuple[int, str]]:
    """Notices queued since ``since`` per booking and recipient role (the notice loop guard
    counts the outbox itself: nothing to keep in step)."""
    if not booking_ids:
        return Counter()
    rows = s.execute(
        select(OutboundRow.booking_id, OutboundRow.recipient_role, func.count())
        .where(OutboundRow.kind == OutboxKind.NOTICE, OutboundRow.created_at >= since,
               OutboundRow.booking_id.in_(sorted(booking_ids)))
        .group_by(OutboundRow.booking_id, OutboundRow.recipient_role))
    return Counter({(booking, role): n for booking, role, n in rows
                    if booking is not None and role is not None})


def cool_down(s: Session, until: Mapping[str, datetime]) -> None:
    """Refuse these clients until the given times (a later time already set is kept)."""
    if not until:
        return
    stmt = _insert(s, LimitCooldownRow)
    later = func.greatest if s.get_bind().dialect.name == "postgresql" else func.max
    s.execute(stmt.on_conflict_do_update(
        index_elements=["key"], set_={"until": later(LimitCooldownRow.until,
                                                     stmt.excluded.until)}),
        [{"key": key, "until": when} for key, when in sorted(until.items())])


def cooldowns(s: Session, now: datetime) -> dict[str, datetime]:
    """The clients refused now, and until when; expired cool-downs are deleted."""
    s.execute(delete(LimitCooldownRow).where(LimitCooldownRow.until <= now))
    rows = s.execute(select(LimitCooldownRow.key, LimitCooldownRow.until))
    return {key: until for key, until in rows}
