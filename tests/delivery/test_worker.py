"""The deliverer on SQLite and PostgreSQL: a batch's verdicts recorded together.

The receiving server here is an in-process stand-in that answers per recipient, so each
verdict can be chosen; tests/e2e send through a real SMTP server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailveil.delivery.transport import Result, Status
from mailveil.delivery.worker import Deliverer, Policy
from mailveil.mail.notices import UndeliverableCause
from mailveil.store import repository as repo
from mailveil.store.models import AttemptRow, OutboundRow

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
POLICY = Policy(retry_first=timedelta(minutes=1), retry_cap=timedelta(hours=1),
                retry_for=timedelta(days=5), connections=2)
VERDICTS = {
    "ok@example.org": Result(Status.DELIVERED, 250, "2.0.0 ok"),
    "full@example.org": Result(Status.TEMPORARY, 452, "4.2.2 mailbox full"),
    "gone@example.org": Result(Status.PERMANENT, 550, "5.1.1 no such user"),
}


class AnswersByRecipient:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result:
        self.sent.append(rcpt_to)
        return VERDICTS[rcpt_to]

    async def close(self) -> None:
        return None


def queue(sessions: sessionmaker[Session], rcpts: list[str]) -> list[int]:
    with sessions() as s, s.begin():
        return [repo.queue_outbound(s, repo.NewOutbound(
            kind="notice", inbound_id=None, booking_id=None, recipient_role=None,
            bounce_token=f"{i:020x}", mail_from="", rcpt_to=rcpt, message_id=f"<{i}@x>",
            raw=b"Subject: s\r\n\r\nbody\r\n"), NOW) for i, rcpt in enumerate(rcpts)]


def test_each_verdict_is_recorded(sessions: sessionmaker[Session]) -> None:
    given_up: list[tuple[int, UndeliverableCause]] = []

    def give_up(s: Session, row: OutboundRow, cause: UndeliverableCause, now: datetime) -> None:
        row.state, row.finished_at, row.lease_until = "failed", now, None
        given_up.append((row.id, cause))

    ok, full, gone, ok2 = queue(sessions, [*VERDICTS, "ok@example.org"])
    transport = AnswersByRecipient()
    deliverer = Deliverer(sessions, [transport, AnswersByRecipient()], POLICY, give_up)
    assert asyncio.run(deliverer.run_once(lambda: NOW)) == 4
    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(OutboundRow))}
        attempts = s.scalars(select(AttemptRow.outbound_id)).all()
    assert sorted(attempts) == [ok, full, gone, ok2]
    for delivered in (ok, ok2):
        assert rows[delivered].state == "delivered" and rows[delivered].attempts == 1
        assert rows[delivered].finished_at == NOW and rows[delivered].lease_until is None
    assert rows[full].state == "queued" and rows[full].attempts == 1
    assert rows[full].next_attempt_at == NOW + timedelta(minutes=1)
    assert rows[full].last_error == "4.2.2 mailbox full" and rows[full].lease_until is None
    assert rows[gone].state == "failed" and [i for i, _ in given_up] == [gone]
    # Nothing is due again before the retry time; the temporary failure is due after it.
    assert asyncio.run(deliverer.run_once(lambda: NOW)) == 0
    later = NOW + timedelta(minutes=2)
    assert asyncio.run(deliverer.run_once(lambda: later)) == 1


def test_a_copy_finished_elsewhere_keeps_its_state(sessions: sessionmaker[Session]) -> None:
    """Our lease ran out while we sent, and another worker delivered it meanwhile."""
    [outbound_id] = queue(sessions, ["ok@example.org"])

    class FinishedMeanwhile(AnswersByRecipient):
        async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result:
            with sessions() as s, s.begin():
                row = s.get(OutboundRow, outbound_id)
                assert row is not None
                row.state, row.attempts = "delivered", 1
            return await super().send(mail_from, rcpt_to, raw)

    deliverer = Deliverer(sessions, [FinishedMeanwhile()], POLICY, lambda *a: None)
    asyncio.run(deliverer.run_once(lambda: NOW))
    with sessions() as s:
        row = s.get(OutboundRow, outbound_id)
        assert row is not None and row.attempts == 1  # not counted twice
        assert len(s.scalars(select(AttemptRow)).all()) == 1  # but the attempt is history
