"""Engines and migrations. SQLite runs in WAL mode with a busy timeout; PostgreSQL as is."""

from __future__ import annotations

import logging
import select
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailveil.store.buffers import close_after_large

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)

# The database is unreachable, restarting or too busy: worth retrying later, unlike an
# error about the data itself (integrity, types), which would fail the same way again.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)

MIGRATION_LOCK = 0x6D61696C76656C  # any constant shared by all mailveil processes


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the writer; synchronous=FULL keeps a 250 durable.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock up front so two writers queue instead of deadlocking.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        close_after_large(engine)
        return engine
    engine = create_engine(url, **kwargs)
    event.listen(engine, "checkout", _closed_by_the_server)
    close_after_large(engine)
    return engine


def _closed_by_the_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection the server closed (a restart, an idle timeout, a terminated
    backend) is replaced before it is used, so that costs no transaction.

    Not ``pool_pre_ping``: its ``SELECT 1`` is a round trip before every transaction
    (0.15 ms of CPU and a wait each; docs/perf-round2-steps.md). A server that closes a
    connection sends its FATAL notice or its end, which makes the idle socket readable:
    one ``poll`` sees that without asking. Raising ``DisconnectionError`` here makes the
    pool open another connection (SQLAlchemy's documented checkout hook).
    """
    if dbapi_conn.closed:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(dbapi_conn.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the database server closed the connection")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent). A schema a newer version
    already migrated is left as it is: migrations only expand (docs/operations.md,
    "Upgrades"), so this version runs on it, as it must when it restarts during a rolling
    upgrade or comes back in a rollback."""
    if url.startswith("sqlite"):
        _upgrade(url)
        return
    # Every role migrates on start: processes started together on an empty database would
    # race to create the same tables, so the first takes this lock and the others then
    # find the schema done.
    engine = make_engine(url)
    try:
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                _upgrade(url)
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()


def _upgrade(url: str) -> None:
    config = alembic_config(url)
    engine = make_engine(url)  # on SQLite, creates the directory of the file
    try:
        with engine.connect() as c:
            current = MigrationContext.configure(c).get_current_revision()
    finally:
        engine.dispose()
    try:
        if current is not None:
            ScriptDirectory.from_config(config).get_revision(current)
    except CommandError:
        log.warning("the database schema is at revision %s, newer than this version knows: "
                    "running on it without migrating", current)
        return
    command.upgrade(config, "head")
