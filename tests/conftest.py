"""Real servers on free loopback ports: databases, a receiving SMTP server, mailveil itself."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from mailveil.store.db import make_engine, migrate, session_factory
from tests.scan.clamd_fixture import CLAMD, ClamdInfo, running_clamd
from tests.support.dns import RELAY_DOMAIN as RELAY_DOMAIN  # re-exported for the tests
from tests.support.dns import test_dns
from tests.support.net import free_port, wait_for_port
from tests.support.sink import Sink

POSTGRES_ADMIN_URL = os.environ.get("MAILVEIL_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """The PostgreSQL server of this machine and of CI; a run without it must fail loudly."""
    url = make_url(POSTGRES_ADMIN_URL)
    with psycopg.connect(host=url.host, port=url.port, user=url.username,
                         dbname=url.database, autocommit=True, connect_timeout=5):
        pass
    yield POSTGRES_ADMIN_URL


def _fresh_postgres(admin_url: str) -> Iterator[str]:
    url = make_url(admin_url)
    name = f"mailveil_test_{uuid.uuid4().hex[:10]}"
    kw = {"host": url.host, "port": url.port, "user": url.username, "autocommit": True}
    with psycopg.connect(dbname=url.database, **kw) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dbname=url.database, **kw) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind; the whole suite runs against both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailveil.sqlite3'}"
    else:
        yield from _fresh_postgres(request.getfixturevalue("postgres_admin"))


def _require_clamd() -> None:
    if not CLAMD.exists():
        pytest.skip(f"{CLAMD} is missing (make system-packages installs clamav-daemon)")


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdInfo]:
    """One real clamd shared by the session: it starts in about 20 ms with the tiny database."""
    _require_clamd()
    with running_clamd(tmp_path_factory.mktemp("clamd")) as info:
        yield info


@pytest.fixture
def own_clamd(tmp_path: Path) -> Iterator[ClamdInfo]:
    """A clamd of the test's own, for tests that stop or kill it."""
    _require_clamd()
    with running_clamd(tmp_path) as info:
        yield info


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated, empty database of each kind."""
    migrate(database_url)
    engine = make_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink.running() as s:
        yield s


class Mailveil:
    """A ``mailveil serve`` subprocess, as an operator would run it."""

    def __init__(self, env: dict[str, str], data_dir: Path, smtp_port: int, http_port: int,
                 token: str) -> None:
        self.env, self.data_dir = env, data_dir
        self.smtp_port, self.http_port, self.token = smtp_port, http_port, token
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "mailveil.log"
        self.module = "mailveil"  # or a test's wrapper that runs mailveil's roles

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, role: str = "serve") -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, role], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for_port(self.smtp_port, proc=self.proc)
        wait_for_port(self.http_port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def mailveil_env(database_url: str, data_dir: Path, smtp_port: int, http_port: int, token: str,
                 smarthost: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILVEIL_")}
    env.update({
        "MAILVEIL_DATABASE_URL": database_url,
        "MAILVEIL_DATA_DIR": str(data_dir),
        "MAILVEIL_RELAY_DOMAIN": RELAY_DOMAIN,
        "MAILVEIL_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
        "MAILVEIL_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "MAILVEIL_API_TOKEN": token,
        "MAILVEIL_RETRY_FIRST_SECONDS": "1",
        "MAILVEIL_LEASE_SECONDS": "5",
        "MAILVEIL_PLATFORM_NAME": "Tourly",
        "MAILVEIL_CONTACT_FORM_URL": "https://tourly.example.com/contact",
        "MAILVEIL_DNS": test_dns(),
    })
    if smarthost:
        env["MAILVEIL_SMARTHOST"] = smarthost
    return env


@pytest.fixture
def extra_env() -> dict[str, str]:
    """Settings a test module adds to its mailveil process (override in the module)."""
    return {}


@pytest.fixture
def mailveil(database_url: str, sink: Sink, tmp_path: Path,
             extra_env: dict[str, str]) -> Iterator[Mailveil]:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    smtp_port, http_port = free_port(), free_port()
    token = "test-token-" + uuid.uuid4().hex
    env = mailveil_env(database_url, data_dir, smtp_port, http_port, token,
                       f"127.0.0.1:{sink.port}")
    env.update(extra_env)
    mv = Mailveil(env, data_dir, smtp_port, http_port, token)
    mv.start()
    try:
        yield mv
    finally:
        mv.stop()
        # Shown by pytest only when the test failed.
        print(mv.log.read_text(errors="replace")[-8000:])
