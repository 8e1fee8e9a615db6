"""Backup and restore as README "Backups" says: the PostgreSQL database (``pg_dump``) and
the data directory's keys. A mailveil started on the restored copy passes ``archive verify``
and goes on relaying the same conversation, signed with the same DKIM key."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import REPO, Mailveil
from tests.e2e.test_real_mail import dkim_verifier
from tests.support.client import CUSTOMER, SUPPLIER, mail, register, send
from tests.support.net import free_port
from tests.support.sink import Sink

# What the data directory holds that the database does not (api-token only when generated:
# this test sets MAILVEIL_API_TOKEN).
KEYS = ("dkim", "api-token", "tls")


def archive_verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailveil", "archive", "verify"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def restored(database_url: str, dump: Path) -> str:
    """A new database holding ``dump``; its URL."""
    url = make_url(database_url)
    name = f"mailveil_restored_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(["pg_restore", "--no-owner", "-h", str(url.host), "-p", str(url.port or 5432),
                    "-U", str(url.username), "-d", name, str(dump)], check=True, timeout=120)
    return url.set(database=name).render_as_string(hide_password=False)


def drop(database_url: str) -> None:
    url = make_url(database_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_restored_backup_verifies_and_relays_on(mailveil: Mailveil, sink: Sink,
                                                  tmp_path: Path) -> None:
    if shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is missing (postgresql-client)")
    relay = register(mailveil, "GYG-BACKUP")["supplier_relay_address"]
    send(mailveil, mail(CUSTOMER, relay, "Before", "Before the backup\n"), CUSTOMER, [relay])
    [before] = sink.wait_for(1)
    signed_by_original: Callable[[bytes], bool] = dkim_verifier(mailveil)
    mailveil.stop()

    url = make_url(mailveil.env["MAILVEIL_DATABASE_URL"])
    dump = tmp_path / "mailveil.dump"
    subprocess.run(["pg_dump", "-Fc", "-h", str(url.host), "-p", str(url.port or 5432),
                    "-U", str(url.username), "-f", str(dump), str(url.database)],
                   check=True, timeout=120)
    data_dir = tmp_path / "restored-var"
    data_dir.mkdir()
    for key in KEYS:
        source = mailveil.data_dir / key
        if source.is_dir():
            shutil.copytree(source, data_dir / key)
        elif source.exists():
            shutil.copy2(source, data_dir / key)
    assert (data_dir / "dkim").is_dir()

    database_url = restored(mailveil.env["MAILVEIL_DATABASE_URL"], dump)
    env = {**mailveil.env, "MAILVEIL_DATABASE_URL": database_url,
           "MAILVEIL_DATA_DIR": str(data_dir), "MAILVEIL_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
           "MAILVEIL_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    again = Mailveil(env, data_dir, int(env["MAILVEIL_SMTP_LISTEN"].rsplit(":", 1)[1]),
                     int(env["MAILVEIL_HTTP_LISTEN"].rsplit(":", 1)[1]), mailveil.token)
    try:
        verified = archive_verify(env)
        assert (verified.returncode, verified.stdout.strip().splitlines()[-1]) == (
            0, "archive verify: 0 mismatch(es)")
        again.start()
        send(again, mail(CUSTOMER, relay, "After", "After the restore\n"), CUSTOMER, [relay])
        after = sink.wait_for(2)[1]
        assert after.rcpt_tos == before.rcpt_tos == (SUPPLIER,)
        assert signed_by_original(before.data) and signed_by_original(after.data)
        again.stop()

        # archive verify is no formality: a body changed behind its back is found.
        with psycopg.connect(make_url(database_url).set(drivername="postgresql")
                             .render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute("UPDATE outbound_messages SET raw = raw || 'x'::bytea "
                         "WHERE id = (SELECT min(id) FROM outbound_messages)")
        tampered = archive_verify(env)
        assert tampered.returncode == 1 and "digest mismatch: outbound_messages#" in tampered.stdout
    finally:
        again.stop()
        print(again.log.read_text(errors="replace")[-4000:] if again.log.exists() else "")
        drop(database_url)
