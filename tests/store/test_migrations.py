"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mailveil.store.db import make_engine, migrate
from mailveil.store.models import Base


def test_migrations_match_models(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)  # idempotent
    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
