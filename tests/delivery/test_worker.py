"""The deliverer on SQLite and PostgreSQL: a batch's verdicts recorded together.

The receiving server here is an in-process stand-in that answers per recipient, so each
verdict can be chosen; tests/e2e send through a real SMTP server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailveil.delivery.transport import Result, Status
from mailveil.delivery.worker import Deliverer, Policy
from mailveil.domain.states import OutboxKind, OutboxState
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
        return repo.queue_outbounds(s, [repo.NewOutbound(
            kind=OutboxKind.NOTICE, inbound_id=None, booking_id=None, recipient_role=None,
            bounce_token=f"{i:020x}", mail_from="", rcpt_to=rcpt, message_id=f"<{i}@x>",
            raw=b"Subject: s\r\n\r\nbody\r\n") for i, rcpt in enumerate(rcpts)], NOW)


def test_each_verdict_is_recorded(sessions: sessionmaker[Session]) -> None:
    ok, full, gone, ok2 = queue(sessions, [*VERDICTS, "ok@example.org"])
    transport = AnswersByRecipient()
    deliverer = Deliverer(sessions, [transport, AnswersByRecipient()], POLICY)
    assert asyncio.run(deliverer.run_once(lambda: NOW)) == 4
    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(OutboundRow))}
        attempts = s.scalars(select(AttemptRow.outbound_id)).all()
    assert sorted(attempts) == [ok, full, gone, ok2]
    for delivered in (ok, ok2):
        assert rows[delivered].state == OutboxState.DELIVERED and rows[delivered].attempts == 1
        assert rows[delivered].finished_at == NOW and rows[delivered].lease_until is None
    assert rows[full].state == OutboxState.QUEUED and rows[full].attempts == 1
    assert rows[full].next_attempt_at == NOW + timedelta(minutes=1)
    assert rows[full].last_error == "4.2.2 mailbox full" and rows[full].lease_until is None
    # Delivery only reports it: processing tells the sender (tests/pipeline/test_process.py).
    assert rows[gone].state == OutboxState.UNDELIVERABLE and rows[gone].attempts == 1
    assert rows[gone].last_error == UndeliverableCause.ADDRESS_INVALID
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
                row.state, row.attempts = OutboxState.DELIVERED, 1
            return await super().send(mail_from, rcpt_to, raw)

    deliverer = Deliverer(sessions, [FinishedMeanwhile()], POLICY)
    asyncio.run(deliverer.run_once(lambda: NOW))
    with sessions() as s:
        row = s.get(OutboundRow, outbound_id)
        assert row is not None and row.attempts == 1  # not counted twice
        assert len(s.scalars(select(AttemptRow)).all()) == 1  # but the attempt is history


def test_a_send_that_raises_parks_only_its_copy(sessions: sessionmaker[Session]) -> None:
    """A bug while sending one copy: that copy is set aside with its error, the rest of the
    batch is delivered and recorded (issue 12)."""

    class Breaks(AnswersByRecipient):
        async def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> Result:
            if b"poison" in raw:
                raise RuntimeError("the transport broke on this one")
            return await super().send(mail_from, rcpt_to, raw)

    ok, bad, ok2 = queue(sessions, ["ok@example.org"] * 3)
    with sessions() as s, s.begin():
        row = s.get(OutboundRow, bad)
        assert row is not None
        row.raw = b"Subject: poison\r\n\r\nbody\r\n"
    deliverer = Deliverer(sessions, [Breaks()], POLICY)
    assert asyncio.run(deliverer.run_once(lambda: NOW)) == 3
    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(OutboundRow))}
    assert {i: rows[i].state for i in rows} == {ok: OutboxState.DELIVERED,
                                                bad: OutboxState.FAILED,
                                                ok2: OutboxState.DELIVERED}
    assert "the transport broke on this one" in (rows[bad].last_error or "")
    assert rows[bad].lease_until is None and rows[bad].attempts == 0
    assert asyncio.run(deliverer.run_once(lambda: NOW + timedelta(days=1))) == 0


def test_a_verdict_that_cannot_be_recorded_parks_only_its_copy(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's transaction fails; its verdicts are then written one by one."""
    ok, gone, ok2 = queue(sessions, ["ok@example.org", "gone@example.org", "ok@example.org"])
    real = repo.move_outbound

    def move_outbound(s: Session, outbound_id: int, to: OutboxState, *args: Any,
                      **kw: Any) -> Any:
        if outbound_id == gone and to is OutboxState.UNDELIVERABLE:
            raise RuntimeError("recording broke")
        return real(s, outbound_id, to, *args, **kw)

    monkeypatch.setattr(repo, "move_outbound", move_outbound)
    deliverer = Deliverer(sessions, [AnswersByRecipient()], POLICY)
    assert asyncio.run(deliverer.run_once(lambda: NOW)) == 3
    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(OutboundRow))}
    assert {i: r.state for i, r in rows.items()} == {ok: OutboxState.DELIVERED,
                                                     gone: OutboxState.FAILED,
                                                     ok2: OutboxState.DELIVERED}
    assert "recording broke" in (rows[gone].last_error or "")
