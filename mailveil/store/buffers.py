"""A database connection that carried a large message is closed, not pooled.

libpq grows a connection's send and receive buffers to the largest statement or result it
carried and never shrinks them: each pooled connection that stored three 13 MiB messages
kept 39 MiB resident, and one that read a message (a ``bytea`` comes as hex text) 26 MiB;
twenty such messages left the pool holding over 300 MiB. SQLite's prepared statements,
cached per connection, keep a copy of the blobs last bound to them: 117 MiB over the pool
(docs/operations.md, "Memory"). Reconnecting costs a few milliseconds, once per
transaction that moved a large message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from psycopg import Binary
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

LARGE = 1024 * 1024  # bytes of messages sent or received
_DROP = "mailveil.drop_on_checkin"


def _sent(parameters: object) -> int:
    """The bytes of the binary values among a statement's parameters (one row's, or many;
    SQLAlchemy hands them to psycopg wrapped in its ``Binary``)."""
    if isinstance(parameters, Binary):
        parameters = parameters.obj
    if isinstance(parameters, (bytes, bytearray, memoryview)):
        return len(parameters)
    values: Iterable[object]
    if isinstance(parameters, Mapping):
        values = parameters.values()
    elif isinstance(parameters, (list, tuple)):
        values = parameters
    else:
        return 0
    return sum(_sent(value) for value in values)


def note_received(s: Session, raws: Iterable[bytes]) -> None:
    """Close the session's connection when it goes back to the pool if the messages it
    just read, ``raws``, are large: psycopg tells a result's size only by copying it."""
    if sum(map(len, raws)) > LARGE:
        s.connection().info[_DROP] = True


def close_after_large(engine: Engine) -> None:
    """Close ``engine``'s connections when returned to the pool after a statement that
    sent more than :data:`LARGE` bytes of binary values, or after :func:`note_received`."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, parameters: object, context: Any,
                executemany: bool) -> None:
        if _sent(parameters) > LARGE:
            conn.info[_DROP] = True

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if record.info.pop(_DROP, False):
            record.invalidate()
