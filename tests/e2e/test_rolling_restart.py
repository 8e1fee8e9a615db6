"""An upgrade by rolling restart, under load: two listeners, two workers and the web role of
the previous version run on one PostgreSQL while four sessions send; the new version's
``mailveil migrate`` expands the schema under them; then each process is stopped (SIGTERM, as
systemd does) and replaced by the new version, one by one. Every message answered 250 is
delivered, exactly once: a listener finishes the messages it is receiving before it goes, a
worker records the batch it is sending, and each mix of versions on the expanded schema
accepts and delivers.

The previous version is the code of the commit before the newest migration was added, taken
from git: the test needs the repository's history (a shallow clone fails it, loudly).
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text

from mailveil.store.db import alembic_config
from tests.conftest import REPO, Mailveil, mailveil_env
from tests.support.load import (
    LOAD_ENV,
    Load,
    delivered,
    duplicates,
    register_bookings,
    settle,
    wait_delivered,
    wait_until,
    waiting,
)
from tests.support.net import free_port, wait_for_port
from tests.support.sink import Sink

ROLES = {"smtp-a": "smtp", "smtp-b": "smtp", "worker-a": "worker", "worker-b": "worker",
         "web": "web"}


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode:
        pytest.fail(f"git {' '.join(args)}: {done.stderr.strip()}; the rolling upgrade test "
                    "takes the previous version from the repository's history", pytrace=False)
    return done.stdout.strip()


def previous_version(into: Path) -> tuple[str, str]:
    """Export the code of the commit before the newest migration was added into ``into``;
    returns (its schema head, this checkout's head). A migration not committed yet makes
    HEAD the previous version."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = scripts.get_revision(scripts.get_current_head() or "head")
    assert head is not None and isinstance(head.down_revision, str)
    if git("rev-parse", "--is-shallow-repository") == "true":
        pytest.fail("this clone is shallow: the rolling upgrade test needs the history "
                    "(git fetch --unshallow, or clone without --depth)", pytrace=False)
    newest = Path(head.path).relative_to(REPO).as_posix()
    added = git("log", "--diff-filter=A", "--format=%H", "-1", "--", newest)
    commit = git("rev-parse", "--verify", f"{added}^" if added else "HEAD")
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "mailveil"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    versions = into / "mailveil" / "store" / "migrations" / "versions"
    assert not (versions / Path(newest).name).exists()
    assert any(versions.glob(f"{head.down_revision}_*.py"))
    return head.down_revision, head.revision


def schema_revision(engine: Engine) -> str:
    with engine.connect() as c:
        return str(c.scalar(text("SELECT version_num FROM alembic_version")))


class Roles:
    """One process per role name, each with its own ports, all on one database and data
    directory; :meth:`replace` stops one gracefully and starts it on the same ports with
    the code of another tree."""

    def __init__(self, database_url: str, data_dir: Path, smarthost: str) -> None:
        self.data_dir = data_dir
        self.ports = {name: (free_port(), free_port()) for name in ROLES}
        self.envs = {name: mailveil_env(database_url, data_dir, smtp, http, "rolling-token-1234",
                                        smarthost) | LOAD_ENV
                     for name, (smtp, http) in self.ports.items()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @staticmethod
    def _code(env: dict[str, str], code: Path) -> dict[str, str]:
        """``python -m mailveil`` run in ``code`` imports that tree's package: the current
        directory comes first on the module path, before the installed checkout."""
        return env | {"PYTHONPATH": str(code)}

    def command(self, code: Path, *args: str) -> str:
        """``mailveil <args>`` from the tree ``code``, to completion; its output."""
        return subprocess.run([sys.executable, "-m", "mailveil", *args], cwd=code,
                              env=self._code(self.envs["web"], code), check=True,
                              capture_output=True, text=True, timeout=120).stdout

    def imports_from(self, code: Path) -> Path:
        """Where a process started from ``code`` finds the mailveil package."""
        return Path(subprocess.run(
            [sys.executable, "-c", "import mailveil; print(mailveil.__file__)"], cwd=code,
            env=self._code(self.envs["web"], code), check=True, capture_output=True,
            text=True, timeout=60).stdout.strip())

    def start(self, name: str, code: Path) -> None:
        with (self.data_dir / f"{name}.log").open("ab") as log:
            log.write(f"--- started from {code}\n".encode())
            log.flush()
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mailveil", ROLES[name]], cwd=code,
                env=self._code(self.envs[name], code), stdout=log, stderr=subprocess.STDOUT)
        listening = {"smtp": 0, "web": 1}.get(ROLES[name])
        if listening is not None:
            wait_for_port(self.ports[name][listening], timeout=60, proc=self.procs[name])

    def stop(self, name: str) -> int:
        """SIGTERM and wait; the exit status (0: it stopped on its own, in time)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9

    def replace(self, name: str, code: Path) -> int:
        status = self.stop(name)
        self.start(name, code)
        return status

    def api(self) -> Mailveil:
        return Mailveil({}, self.data_dir, 0, self.ports["web"][1], "rolling-token-1234")

    @contextmanager
    def running(self, code: Path) -> Iterator[Roles]:
        self.command(code, "migrate")
        try:
            for name in ROLES:
                self.start(name, code)
            yield self
        finally:
            for name in self.procs:
                if self.procs[name].poll() is None:
                    self.stop(name)
            for log in sorted(self.data_dir.glob("*.log")):  # shown by pytest only on failure
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_rolling_upgrade_under_load_loses_and_duplicates_nothing(
        database_url: str, sink: Sink, tmp_path: Path) -> None:
    old = tmp_path / "previous"
    old_head, new_head = previous_version(old)
    (tmp_path / "var").mkdir()
    engine = create_engine(database_url)
    roles = Roles(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}")
    assert roles.imports_from(old).is_relative_to(old)
    assert roles.imports_from(REPO).is_relative_to(REPO)
    try:
        with roles.running(old):
            assert schema_revision(engine) == old_head
            load = Load([roles.ports["smtp-a"][0], roles.ports["smtp-b"][0]],
                        register_bookings(roles.api(), 4, "roll"), sessions=4).start()

            def delivered_since(since: float) -> Callable[[], bool]:
                """A condition: a message accepted since ``since`` reached the sink (the
                processes running since then work together)."""
                return lambda: bool(set(load.tally.accepted_between(since, time.monotonic()))
                                    & set(delivered(sink)))

            def step(what: str, since: float) -> None:
                """Until the processes of now delivered, then until mail waits."""
                wait_until(delivered_since(since), 90,
                           f"a message accepted and delivered before {what}", every=0.1)
                wait_until(lambda: waiting(engine) != (0, 0), 60,
                           f"mail waiting before {what}", every=0.01)

            step("the migration", load.started)
            roles.command(REPO, "migrate")  # expand, under the previous version
            assert schema_revision(engine) == new_head
            since = time.monotonic()
            statuses = {}
            for name in ("smtp-a", "smtp-b", "worker-a", "worker-b", "web"):
                step(f"replacing {name}", since)
                statuses[name] = roles.replace(name, REPO)
                since = time.monotonic()
            tally = load.run_until(delivered_since(since), 90,
                                   "a message accepted and delivered by the new version alone")
            accepted = list(tally.accepted)
            wait_delivered(sink, accepted, timeout=90)
            settle(database_url, timeout=60)
            got = delivered(sink)
    finally:
        engine.dispose()
    assert statuses == dict.fromkeys(statuses, 0)  # each stopped on its own, in time
    assert len(accepted) > 0 and set(accepted) <= set(got)
    assert duplicates(got) == 0
    print(f"rolling upgrade {old_head} -> {new_head}: {len(accepted)} accepted, "
          f"{tally.dropped} sessions cut, refused {dict(tally.refused)}")
