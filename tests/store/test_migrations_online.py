"""Migrations are online: each one only expands the schema, so that the previous version keeps
running on it during a rolling upgrade (docs/operations.md, "Upgrades"), unless the
migration says it is a contract step (a module-level ``contract = "why"``) and is released
after every version that used what it removes has gone.

Each migration is run on a real PostgreSQL, one revision at a time, and the statements it
sends are read for what would break the previous version's reads and writes.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Engine, event, text

from mailveil.store.db import alembic_config, make_engine, migrate

CONTRACT = [
    (re.compile(r"\bDROP (TABLE|COLUMN|VIEW|FUNCTION|TRIGGER|TYPE)\b"),
     "drops what the previous version uses"),
    (re.compile(r"\bRENAME\b"), "renames what the previous version uses"),
    (re.compile(r"\bSET NOT NULL\b"), "the previous version may write NULL there"),
    (re.compile(r"\bDROP DEFAULT\b"), "the previous version's inserts rely on the default"),
    (re.compile(r"\bALTER COLUMN \S+ (SET DATA )?TYPE\b"),
     "changes a type the previous version reads and writes"),
    (re.compile(r"\bADD COLUMN\b(?!.*\bDEFAULT\b).*\bNOT NULL\b"),
     "a NOT NULL column without a server default: the previous version's inserts fail"),
]
TIGHTEN = re.compile(r"\bALTER TABLE (\w+) ADD CONSTRAINT\b|\bCREATE UNIQUE INDEX \S+ ON (\w+)")
CREATED = re.compile(r"\bCREATE TABLE (\w+)")


def contract_steps(statements: list[str]) -> list[str]:
    """The statements of one migration that the previous version could not run beside,
    each with the reason."""
    flat = [" ".join(s.split()).upper().replace('"', "") for s in statements
            if "ALEMBIC_VERSION" not in s.upper()]
    created = {m.group(1) for s in flat for m in CREATED.finditer(s)}
    found = [f"{s}: {why}" for s in flat for pattern, why in CONTRACT if pattern.search(s)]
    for s in flat:
        m = TIGHTEN.search(s)
        if m and (m.group(1) or m.group(2)) not in created:
            found.append(f"{s}: a new constraint on an existing table refuses rows the "
                         "previous version may write")
    return found


def revisions() -> list[Script]:
    """Oldest first."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return list(reversed(list(scripts.walk_revisions())))


def marked_contract(script: Script) -> str | None:
    spec = importlib.util.spec_from_file_location(f"migration_{script.revision}", script.path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reason = getattr(module, "contract", None)
    assert reason is None or (isinstance(reason, str) and reason.strip()), \
        f"{script.path}: contract must say why"
    return reason


@pytest.fixture
def statements_per_revision(database_url: str) -> Iterator[dict[str, list[str]]]:
    """Every migration applied in order to a fresh database; the SQL each one sent."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        out = {}
        for script in revisions():
            sent.clear()
            command.upgrade(alembic_config(database_url), script.revision)
            out[script.revision] = list(sent)
        yield out
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_each_migration_expands_unless_it_is_marked_a_contract_step(
        statements_per_revision: dict[str, list[str]]) -> None:
    assert len(statements_per_revision) == len(revisions())
    for script in revisions():
        statements = statements_per_revision[script.revision]
        assert statements, f"{script.revision} sent nothing: the recording missed it"
        steps = contract_steps(statements)
        assert marked_contract(script) or not steps, (
            f"migration {script.revision} ({script.path}) would break the previous version "
            f"during a rolling upgrade: {steps}. Split it: expand now (add, backfill), "
            "contract in a later release, marked contract = \"why\" (docs/operations.md)")


@pytest.mark.parametrize("sql", [
    "ALTER TABLE bookings DROP COLUMN note",
    "DROP TABLE limit_counts",
    "ALTER TABLE bookings RENAME COLUMN note TO remark",
    "ALTER TABLE bookings RENAME TO reservations",
    "ALTER TABLE bookings ALTER COLUMN note SET NOT NULL",
    "ALTER TABLE bookings ALTER COLUMN note DROP DEFAULT",
    "ALTER TABLE bookings ALTER COLUMN note TYPE TEXT",
    "ALTER TABLE bookings ADD COLUMN note VARCHAR(16) NOT NULL",
    'ALTER TABLE "bookings" ADD CONSTRAINT uq_ref UNIQUE (reference)',
    "CREATE UNIQUE INDEX ix_ref ON bookings (reference)",
])
def test_the_check_finds_a_contract_step(sql: str) -> None:
    assert contract_steps([sql])


@pytest.mark.parametrize("sql", [
    "ALTER TABLE bookings ADD COLUMN note VARCHAR(16) DEFAULT 'none' NOT NULL",
    "ALTER TABLE bookings ADD COLUMN note TEXT",
    "ALTER TABLE bookings ALTER COLUMN note DROP NOT NULL",
    "DROP INDEX ix_bookings_reference",
    "ALTER TABLE inbound_messages ALTER COLUMN raw SET STORAGE EXTERNAL",
    "UPDATE bookings SET note = '' WHERE note IS NULL",
    "INSERT INTO alembic_version (version_num) VALUES ('0002')",
])
def test_the_check_lets_an_expand_step_pass(sql: str) -> None:
    assert contract_steps([sql]) == []


def test_a_constraint_on_a_table_created_in_the_same_migration_is_no_contract_step() -> None:
    assert contract_steps(["CREATE TABLE notes (id INTEGER NOT NULL, ref TEXT)",
                           "CREATE UNIQUE INDEX ix_notes_ref ON notes (ref)"]) == []


def test_a_version_older_than_the_schema_runs_on_it(database_url: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A previous version restarted during a rolling upgrade, or brought back by a rollback,
    finds a revision it does not know: it starts on that schema instead of failing."""
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        migrate(database_url)
        with engine.connect() as c:
            assert c.scalar(text("SELECT version_num FROM alembic_version")) == "9999"
    finally:
        engine.dispose()
    assert "revision 9999, newer than this version knows" in caplog.text
