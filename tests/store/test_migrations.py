"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select, text

from mailveil.store.db import alembic_config, make_engine, migrate
from mailveil.store.models import Base, InboundRow
from mailveil.store.repository import sha256_of


def test_migrations_match_models(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)  # idempotent
    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_compressed_rows_of_before_0002_are_decompressed(database_url: str) -> None:
    raw = b"Subject: kept\r\n\r\nbody\r\n" * 50
    command.upgrade(alembic_config(database_url), "0001")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(InboundRow), {
            "received_at": datetime.now(UTC), "mail_from": "a@x", "rcpt_to": ["b@y"],
            "raw": zlib.compress(raw, 1), "sha256": sha256_of(raw), "size": len(raw),
            "state": "processed", "scan": "clean"})
    migrate(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(InboundRow.raw)) == raw
    command.downgrade(alembic_config(database_url), "0001")
    with engine.connect() as conn:
        assert zlib.decompress(conn.scalar(select(InboundRow.raw)) or b"") == raw
    engine.dispose()


def test_raw_columns_are_not_compressed_by_postgresql(database_url: str) -> None:
    migrate(database_url)
    if not database_url.startswith("postgresql"):
        return  # SQLite stores blobs as given
    engine = make_engine(database_url)
    with engine.connect() as conn:
        storage = conn.execute(text(
            "SELECT c.relname, a.attstorage FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid WHERE a.attname = 'raw' "
            "AND c.relname IN ('inbound_messages', 'outbound_messages', 'quarantine')")).all()
    engine.dispose()
    assert sorted(storage) == [("inbound_messages", "e"), ("outbound_messages", "e"),
                               ("quarantine", "e")]
