"""mailveil as real processes with its whole pipeline, on SQLite or on a fresh PostgreSQL
database (``mailveil_bench_<random>``, dropped afterwards).

Topology ``serve``: one process (SMTP + worker + web). ``split`` or ``split:W``: separate
``smtp``, ``web`` and W ``worker`` processes, so the listener and the worker use both cores.

SPF and DMARC are checked for real: a DNS server on loopback publishes the customers'
domain as most senders' domains do (SPF ``-all`` but for the sending host, DMARC
``p=reject``); without it, mailveil would ask the machine's resolver, off the loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench import fill
from bench.dns_server import running_dns
from bench.loadgen import Envelope
from bench.systems import RELAY_DOMAIN, REPO, System, free_port, stop_process, wait_for_port

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
TOKEN = "bench-" + secrets.token_hex(16)
CUSTOMER_DOMAIN = "customer.example"
DNS_RECORDS = {
    (f"{CUSTOMER_DOMAIN}.", "TXT"): ["v=spf1 ip4:127.0.0.0/8 -all"],
    (f"_dmarc.{CUSTOMER_DOMAIN}.", "TXT"): ["v=DMARC1; p=reject"],
}


def roles(topology: str) -> list[str]:
    if topology == "serve":
        return ["serve"]
    name, _, workers = topology.partition(":")
    if name != "split" or not (workers or "1").isdigit():
        raise ValueError(f"topology {topology!r}: expected serve, split or split:N")
    return ["smtp", "web"] + ["worker"] * int(workers or "1")


class Mailveil(System):
    def __init__(self, sink_port: int, workdir: Path, bookings: int, *, database: str,
                 topology: str = "serve", fill_bookings: int = 0, count_sql: bool = False) -> None:
        super().__init__(sink_port, workdir, bookings)
        self.database, self.topology, self.fill_bookings = database, topology, fill_bookings
        self.count_sql = count_sql
        self.name = f"mailveil-{'pg' if database == 'postgresql' else 'sqlite'}"
        if topology != "serve":
            self.name += f"[{topology}]"
        if fill_bookings:
            self.name += f"+{fill_bookings}"
        self.data_dir = workdir / self.name
        self.smtp_port = self.port  # mailveil's listener; another port with an MTA in front
        self.http_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.db_name = ""
        self.fill_seconds = 0.0
        self._envelopes: list[Envelope] = []
        self._admin: psycopg.Connection[Any] | None = None
        self._dns = contextlib.ExitStack()
        self._dns_address = ""

    def _url(self) -> str:
        if self.database == "sqlite":
            return f"sqlite:///{self.data_dir / 'mailveil.sqlite3'}"
        self.db_name = self.db_name or f"mailveil_bench_{secrets.token_hex(5)}"
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db_name}"

    def env(self) -> dict[str, str]:
        return {**os.environ,
                "MAILVEIL_DATA_DIR": str(self.data_dir),
                "MAILVEIL_DATABASE_URL": self._url(),
                "MAILVEIL_RELAY_DOMAIN": RELAY_DOMAIN,
                "MAILVEIL_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
                "MAILVEIL_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                "MAILVEIL_SMARTHOST": f"127.0.0.1:{self.sink_port}",
                "MAILVEIL_API_TOKEN": TOKEN,
                "MAILVEIL_DNS": self._dns_address,
                "MAILVEIL_RATE_SENDER": "1000000/1"}  # the load is not a person

    def start(self) -> None:
        self.data_dir.mkdir(parents=True)
        host, port = self._dns.enter_context(running_dns(DNS_RECORDS))
        self._dns_address = f"{host}:{port}"
        if self.database == "postgresql":
            self._admin = psycopg.connect(**PG_ADMIN, autocommit=True)  # type: ignore[arg-type]
            self._url()
            self._admin.execute(f'CREATE DATABASE "{self.db_name}"')
        env = self.env()
        subprocess.run([sys.executable, "-m", "mailveil", "migrate"], cwd=self.data_dir, env=env,
                       check=True, capture_output=True)
        if self.fill_bookings:
            self.fill_seconds = fill.fill(env["MAILVEIL_DATABASE_URL"], self.fill_bookings)
        module = "bench.sqlcount" if self.count_sql else "mailveil"
        for i, role in enumerate(roles(self.topology)):
            log = open(self.data_dir / f"{role}-{i}.log", "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", module, role], cwd=self.data_dir, stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, "PYTHONPATH": str(REPO),
                     "BENCH_SQLCOUNT_FILE": str(self.data_dir / f"sql-{i}.json")}))
        wait_for_port(self.smtp_port, procs=tuple(self.procs))
        wait_for_port(self.http_port, procs=tuple(self.procs))
        self._envelopes = self._register()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api/v1/{path}", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer: dict[str, Any] = json.load(resp)
            return answer

    def _register(self) -> list[Envelope]:
        """One supplier, N bookings; message i goes from customer i to supplier address i."""
        self._post("suppliers", {"id": "bench-sup", "name": "Bench Tours",
                                 "email": "ops@supplier.example", "locale": "en"})
        out = []
        start = datetime.now(UTC) + timedelta(days=30)  # within the API's booking horizon
        for i in range(self.bookings):
            customer = f"customer{i:06d}@{CUSTOMER_DOMAIN}"
            b = self._post("bookings", {
                "reference": f"BENCH-{i:06d}", "supplier_id": "bench-sup",
                "customer": {"name": f"Customer {i}", "email": customer, "locale": "en"},
                "activity_start": start.isoformat(),
                "activity_end": (start + timedelta(hours=3)).isoformat()})
            out.append((customer, str(b["supplier_relay_address"])))
        return out

    def envelopes(self) -> list[Envelope]:
        return self._envelopes

    def sql_counts(self) -> dict[str, int] | None:
        """Statements by verb and commits so far, over all processes (``--count-sql``)."""
        if not self.count_sql:
            return None
        files = [self.data_dir / f"sql-{i}.json" for i in range(len(self.procs))]
        before = [f.stat().st_mtime_ns if f.exists() else 0 for f in files]
        for p in self.procs:
            p.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                (f.stat().st_mtime_ns if f.exists() else 0) == b for f, b in zip(files, before,
                                                                                strict=True)):
            time.sleep(0.02)
        total: dict[str, int] = {}
        for f in files:
            for k, v in (json.loads(f.read_text()) if f.exists() else {}).items():
                total[k] = total.get(k, 0) + int(v)
        return total

    def roots(self) -> list[int]:
        return self.mailveil_pids()

    def mailveil_pids(self) -> list[int]:
        """mailveil's own processes, in the order of :attr:`role_names` (for py-spy)."""
        return [p.pid for p in self.procs]

    @property
    def role_names(self) -> list[str]:
        return roles(self.topology)

    def extra(self) -> list[int]:
        if self._admin is None:
            return []
        rows = self._admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                   (self.db_name,)).fetchall()
        return [int(r[0]) for r in rows]

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p)
        if self._admin is not None:
            self._admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self._admin.close()
            self._admin = None
        self._dns.close()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "database": self.database, "topology": self.topology,
                "roles": roles(self.topology), "fill_bookings": self.fill_bookings,
                "fill_seconds": round(self.fill_seconds, 1),
                "what": "python -m mailveil <role>: full pipeline, DKIM, no clamd"}
