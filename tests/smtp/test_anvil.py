"""Two listeners' counts meeting in the database (both kinds): what one counted, the other
decides with after a sharing round, and a round that fails loses nothing."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailveil.smtp import replies
from mailveil.smtp.anvil import Anvil
from mailveil.smtp.limits import Limits, Rate

LIMITS = Limits(max_per_client=3, connect_rate=Rate(100, 60), harvest=Rate(4, 600),
                cooldown_seconds=300, sender=Rate(2, 3600), exempt=())
CLIENT = "192.0.2.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def pair(sessions: sessionmaker[Session]) -> tuple[Anvil, Anvil, Clock]:
    clock = Clock()
    return Anvil(LIMITS, sessions, clock), Anvil(LIMITS, sessions, clock), clock


def test_unknown_recipients_add_up_across_listeners(sessions: sessionmaker[Session]) -> None:
    a, b, clock = pair(sessions)

    async def run() -> None:
        for _ in range(2):
            a.unknown_recipient(CLIENT)
        await a.sync()
        await b.sync()
        b.unknown_recipient(CLIENT)
        assert b.cooled(CLIENT) is None
        b.unknown_recipient(CLIENT)  # the fourth, two of them at a
        assert b.cooled(CLIENT) == replies.S421_COOLDOWN.format(minutes=5)
        assert a.cooled(CLIENT) is None
        await b.sync()
        await a.sync()
        assert a.cooled(CLIENT) == replies.S421_COOLDOWN.format(minutes=5)
        assert a.open(CLIENT)[1] == replies.S421_COOLDOWN.format(minutes=5)
        assert a.open("192.0.2.8")[1] is None  # another client
        clock.now += 301
        await a.sync()
        assert a.cooled(CLIENT) is None

    asyncio.run(run())


def test_sessions_and_sender_counts_are_shared(sessions: sessionmaker[Session]) -> None:
    a, b, _ = pair(sessions)

    async def run() -> None:
        assert [a.open(CLIENT)[1], a.open(CLIENT)[1]] == [None, None]
        a.sent("ann@example.org", ["local-partner-x@reply.example.com"])
        await a.sync()
        await b.sync()
        key, refused = b.open(CLIENT)
        assert refused is None
        assert b.open(CLIENT)[1] == replies.S421_CLIENT_SESSIONS.format(limit=3)
        b.close(key)
        b.sent("ANN@example.org", ["local-partner-X@reply.example.com"])
        reply = b.sender_reply("ann@example.org", ["local-partner-x@reply.example.com"])
        assert reply is not None and reply.startswith("451 4.7.1 ")
        assert b.sender_reply("bob@example.org", ["local-partner-x@reply.example.com"]) is None

    asyncio.run(run())


def test_a_failed_round_keeps_the_counts(sessions: sessionmaker[Session]) -> None:
    a, b, _ = pair(sessions)

    def down() -> Session:
        raise OperationalError("SELECT 1", {}, Exception("database is down"))

    async def run() -> None:
        a._sessions = down  # the database goes away for a round
        for _ in range(2):
            a.unknown_recipient(CLIENT)
        with pytest.raises(OperationalError):
            await a.sync()
        a.unknown_recipient(CLIENT)
        a._sessions = sessions
        await a.sync()
        await b.sync()
        b.unknown_recipient(CLIENT)  # 3 from a, written late, and this one
        assert b.cooled(CLIENT) is not None

    asyncio.run(run())
