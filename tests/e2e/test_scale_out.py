"""Scale-out on one PostgreSQL: listeners and workers as separate processes.

Workers share the outbox through ``FOR UPDATE SKIP LOCKED`` and leases, so with two of
them every message must still reach the sink exactly once. The same run measures the
end-to-end throughput of one listener + one worker, then of two + two.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import REPO, Mailveil, mailveil_env
from tests.support.load import (
    LOAD_ENV,
    Envelope,
    Load,
    delivered,
    register_bookings,
    report,
    settle,
    wait_delivered,
)
from tests.support.net import free_port, wait_for_port
from tests.support.sink import Sink

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def postgres_backends(database_url: str) -> list[int]:
    """The server processes serving this database's connections (pooled, so long-lived)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            return list(c.scalars(text(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")))
    finally:
        engine.dispose()


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / TICKS, sum(ticks) / TICKS


@dataclass
class Cluster:
    """``mailveil`` role processes sharing one database and data directory."""

    database_url: str
    data_dir: Path
    smarthost: str
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # settings added to every process

    def spawn(self, name: str, role: str) -> None:
        """Start ``mailveil <role>`` with listen ports of its own; see :meth:`ready`."""
        smtp_port, http_port = free_port(), free_port()
        env = mailveil_env(self.database_url, self.data_dir, smtp_port, http_port, self.token,
                           self.smarthost) | LOAD_ENV | self.env
        self.ports[name] = {"smtp": smtp_port, "web": http_port}.get(role, 0)
        with (self.data_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "mailveil", role],
                                                env=env, stdout=log,
                                                stderr=subprocess.STDOUT, cwd=REPO)

    def ready(self) -> None:
        """Until every listener answers; workers need nothing but the database."""
        for name, port in self.ports.items():
            if port:
                wait_for_port(port, proc=self.procs[name])

    def api(self) -> Mailveil:
        """A handle on the web role for the test helpers that call the API."""
        return Mailveil({}, self.data_dir, 0, self.ports["web"], self.token)

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each role process, and of PostgreSQL serving them."""
        used = {name: cpu_seconds(p.pid) for name, p in self.procs.items()}
        used["postgres"] = sum(map(cpu_seconds, postgres_backends(self.database_url)))
        return used

    def stop(self) -> None:
        """SIGTERM: a worker finishes and records the batch it is sending."""
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    @classmethod
    @contextmanager
    def running(cls, database_url: str, data_dir: Path, smarthost: str) -> Iterator[Cluster]:
        data_dir.mkdir()
        cluster = cls(database_url, data_dir, smarthost)
        try:
            yield cluster
        finally:
            cluster.stop()
            for log in sorted(data_dir.glob("*.log")):  # shown by pytest only on failure
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@dataclass(frozen=True)
class Phase:
    name: str
    messages: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds per process (and the test's load generator + sink)
    machine_busy: float  # fraction of all cores busy

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


def measure(cluster: Cluster, sink: Sink, envelopes: list[Envelope], name: str,
            listeners: list[str], count: int) -> tuple[Phase, list[str]]:
    """Send ``count`` messages over ``listeners`` and time them until the last is delivered."""
    cpu_before, busy_before, own_before = cluster.cpu(), machine_busy(), time.process_time()
    load = Load([cluster.ports[n] for n in listeners], envelopes, prefix=name,
                sessions=4).start()
    tally = load.run_until(load.accepted_at_least(count), 60, f"{count} messages accepted")
    wait_delivered(sink, list(tally.accepted), timeout=60)
    seconds = time.monotonic() - load.started
    busy_after = machine_busy()
    cpu = {n: round(c - cpu_before.get(n, 0.0), 1) for n, c in cluster.cpu().items()}
    cpu["test (load + sink)"] = round(time.process_time() - own_before, 1)
    busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
    return Phase(name, len(tally.accepted), seconds, cpu, round(busy, 2)), list(tally.accepted)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_listeners_two_workers_deliver_every_message_exactly_once(
        database_url: str, sink: Sink, tmp_path: Path) -> None:
    count = 200
    with Cluster.running(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}") as cluster:
        # started together on an empty database: each runs the migrations on start
        for name, role in (("web", "web"), ("smtp-1", "smtp"), ("worker-1", "worker")):
            cluster.spawn(name, role)
        cluster.ready()
        envelopes = register_bookings(cluster.api(), 4, "scale")
        one, tokens_one = measure(cluster, sink, envelopes, "a", ["smtp-1"], count)
        cluster.spawn("smtp-2", "smtp")
        cluster.spawn("worker-2", "worker")
        cluster.ready()
        two, tokens_two = measure(cluster, sink, envelopes, "b", ["smtp-1", "smtp-2"], count)
        settle(database_url, timeout=30)
        cluster.stop()  # workers finish the batch they are on: any late copy is in
    got = delivered(sink)
    for phase in (one, two):
        report(f"scale_out_{phase.name}", listeners_workers="1+1" if phase is one else "2+2",
               messages=phase.messages, seconds=round(phase.seconds, 1),
               per_second=round(phase.per_second, 1), cpu_seconds=phase.cpu,
               machine_busy=phase.machine_busy, cores=os.cpu_count())
    assert {t: got[t] for t in tokens_one + tokens_two if got[t] != 1} == {}
    assert sum(got.values()) == len(tokens_one) + len(tokens_two)
