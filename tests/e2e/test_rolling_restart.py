"""A rolling restart under load: two listeners and two workers on one PostgreSQL, restarted
one by one (SIGTERM, as systemd does, then started again) while four sessions send. Every
message answered 250 is delivered, exactly once: a listener finishes the messages it is
receiving before it goes, a worker records the batch it is sending. (Both "versions" are
this checkout: an upgrade's schema changes are not part of it.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine

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


class Roles:
    """One process per role name, each with its own ports, all on one database and data
    directory; :meth:`restart` stops one gracefully and starts it again on the same ports."""

    def __init__(self, database_url: str, data_dir: Path, smarthost: str) -> None:
        self.data_dir = data_dir
        self.ports = {name: (free_port(), free_port()) for name in ROLES}
        self.envs = {name: mailveil_env(database_url, data_dir, smtp, http, "rolling-token-1234",
                                        smarthost) | LOAD_ENV
                     for name, (smtp, http) in self.ports.items()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        with (self.data_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "mailveil", ROLES[name]],
                                                env=self.envs[name], stdout=log,
                                                stderr=subprocess.STDOUT, cwd=REPO)
        listening = {"smtp": 0, "web": 1}.get(ROLES[name])
        if listening is not None:
            wait_for_port(self.ports[name][listening], proc=self.procs[name])

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

    def restart(self, name: str) -> int:
        status = self.stop(name)
        self.start(name)
        return status

    def api(self) -> Mailveil:
        return Mailveil({}, self.data_dir, 0, self.ports["web"][1], "rolling-token-1234")

    @contextmanager
    def running(self) -> Iterator[Roles]:
        subprocess.run([sys.executable, "-m", "mailveil", "migrate"], env=self.envs["web"],
                       cwd=REPO, check=True, timeout=120)
        try:
            for name in ROLES:
                self.start(name)
            yield self
        finally:
            for name in self.procs:
                if self.procs[name].poll() is None:
                    self.stop(name)
            for log in sorted(self.data_dir.glob("*.log")):  # shown by pytest only on failure
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_rolling_restart_under_load_loses_and_duplicates_nothing(
        database_url: str, sink: Sink, tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    engine = create_engine(database_url)
    try:
        with Roles(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}").running() as roles:
            load = Load([roles.ports["smtp-a"][0], roles.ports["smtp-b"][0]],
                        register_bookings(roles.api(), 4, "roll"), sessions=4).start()
            statuses = {}
            since = time.monotonic()
            for name in ("smtp-a", "smtp-b", "worker-a", "worker-b"):
                # Each restart comes while mail is being accepted and waits to be delivered.
                wait_until(lambda since=since: bool(  # type: ignore[misc]
                    load.tally.accepted_between(since, time.monotonic()))
                    and waiting(engine) != (0, 0), 60,
                    f"new 250s and mail waiting before restarting {name}", every=0.01)
                statuses[name] = roles.restart(name)
                since = time.monotonic()
            tally = load.run_until(lambda: bool(load.tally.accepted_between(
                since, time.monotonic())), 60, "a 250 after the last restart")
            accepted = list(tally.accepted)
            wait_delivered(sink, accepted, timeout=90)
            settle(database_url, timeout=60)
            got = delivered(sink)
    finally:
        engine.dispose()
    assert statuses == dict.fromkeys(statuses, 0)  # each stopped on its own, in time
    assert len(accepted) > 0 and set(accepted) <= set(got)
    assert duplicates(got) == 0
    print(f"rolling restart: {len(accepted)} accepted, {tally.dropped} sessions cut, "
          f"refused {dict(tally.refused)}")
