"""A pooled connection that stored or read a large message is closed when it goes back to
the pool, one that moved small ones is kept (mailveil/store/buffers.py): libpq's buffers and
SQLite's cached statements would otherwise hold a copy of the message for the connection's
life (docs/operations.md, "Memory")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from mailveil.store import repository as repo
from mailveil.store.buffers import LARGE
from mailveil.store.db import make_engine, migrate, session_factory


def _dbapi_connection(engine: Engine) -> Any:
    """The driver's connection the pool hands out next (kept, so its id is never reused)."""
    with engine.connect() as conn:
        return conn.connection.dbapi_connection


@pytest.mark.parametrize(("size", "kept"), [(LARGE // 2, True), (2 * LARGE, False)])
def test_a_connection_is_pooled_again_unless_it_moved_a_large_message(
        database_url: str, size: int, kept: bool) -> None:
    migrate(database_url)
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    raw = b"Subject: tickets\r\n\r\n" + b"x" * size
    try:
        first = _dbapi_connection(engine)
        with sessions() as s, s.begin():
            repo.store_inbounds(s, [repo.NewInbound("a@x.example", ["b@y.example"], raw,
                                                    "clean")], now)
        stored = _dbapi_connection(engine)
        assert (stored is first) is kept
        with sessions() as s, s.begin():
            [claimed] = repo.claim_inbound(s, limit=1, now=now, lease=timedelta(minutes=1))
        assert claimed.raw == raw
        assert (_dbapi_connection(engine) is stored) is kept
    finally:
        engine.dispose()
