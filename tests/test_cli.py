"""The console script as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import update

from mailveil.store import repository as repo
from mailveil.store.db import make_engine, session_factory
from mailveil.store.models import InboundRow


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailveil", *args], env=env, text=True,
                          capture_output=True, timeout=60)


def test_wrong_setting_fails_at_start_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "MAILVEIL_DATA_DIR": str(tmp_path), "MAILVEIL_SMTP_LISTEN": "nowhere"}
    result = run("serve", env=env)
    assert result.returncode == 2
    assert "MAILVEIL_SMTP_LISTEN" in result.stderr


def test_migrate_then_verify_and_purge(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "MAILVEIL_DATA_DIR": str(tmp_path),
           "MAILVEIL_DATABASE_URL": database_url}
    assert run("migrate", env=env).returncode == 0
    engine = make_engine(database_url)
    with session_factory(engine)() as s, s.begin():
        inbound_id = repo.store_inbound(s, mail_from="a@x", rcpt_to=["b@y"], raw=b"x\r\n\r\n",
                                        scan="clean", now=datetime.now(UTC))
    ok = run("archive", "verify", env=env)
    assert ok.returncode == 0 and "0 mismatch" in ok.stdout
    with session_factory(engine)() as s, s.begin():
        s.execute(update(InboundRow).where(InboundRow.id == inbound_id)
                  .values(raw=b"y"))
    engine.dispose()
    bad = run("archive", "verify", env=env)
    assert bad.returncode == 1 and f"inbound_messages#{inbound_id}" in bad.stdout
    purged = run("archive", "purge", env=env)
    assert purged.returncode == 0 and "archive purge" in purged.stdout

