"""Pooled PostgreSQL connections the server closed are replaced before use, without
``pool_pre_ping``'s round trip before every transaction: a restart of the server and a
backend terminated while idle (an idle timeout, a pooler, an operator) cost no error."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from mailveil.store.db import make_engine
from tests.support.private_postgres import PG_CTL, PrivatePostgres


def _backend_pid(engine: Engine) -> int:
    with engine.begin() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_terminated_idle_connection_is_replaced_without_an_error(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        first = _backend_pid(engine)
        url = make_url(database_url)
        with psycopg.connect(host=url.host, port=url.port, user=url.username,
                             dbname=url.database, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            _wait_until(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity "
                                              "WHERE pid = %s", (first,)).fetchone() == (0,),
                        "the backend is gone")
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


@pytest.mark.skipif(not PG_CTL.exists(), reason=f"{PG_CTL} is missing")
def test_a_restart_of_the_server_costs_no_transaction() -> None:
    with PrivatePostgres.running() as pg:
        engine = make_engine(pg.url, pool_size=2, max_overflow=0)
        try:
            with engine.connect(), engine.connect():  # two pooled connections
                pass
            before = _backend_pid(engine)
            pg.stop()
            pg.start()
            for _ in range(3):  # each pooled connection, and a new one
                assert _backend_pid(engine) != before
        finally:
            engine.dispose()
