"""Alembic environment: the URL comes from the caller (``mailveil migrate``), never a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from mailveil.store.db import make_engine
from mailveil.store.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or ""
connectable = make_engine(url, poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
