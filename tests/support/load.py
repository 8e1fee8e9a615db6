"""A load generator for the crash, outage and scale-out tests.

Several SMTP sessions run in threads; every message carries a unique token in its Subject,
so what the receiving sink got can be matched against what mailveil answered ``250`` for.
A message whose session dies before the final reply is counted as dropped and never sent
again under the same token: a duplicate at the sink is then always mailveil's doing.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, func, select

from mailveil.store.models import InboundRow, OutboundRow
from tests.conftest import REPO, Mailveil
from tests.support.sink import Sink

LOAD_ENV = {"MAILVEIL_RATE_SENDER": "1000000/1"}
"""Settings of a relay under load: a load writes to each conversation far more often than a
person may (``MAILVEIL_RATE_SENDER``), and those ``451`` would pass for the event a test is
about (an outage, a kill)."""

FIGURES = REPO / "bench" / "results" / "ci-figures.jsonl"
TOKEN = re.compile(rb"^Subject: load ([0-9a-z-]+)\r?$", re.MULTILINE)


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_to: str  # a relay address
    recipient: str  # the real address behind it


@dataclass
class Tally:
    """What the senders saw, shared by the session threads (guarded by ``lock``)."""

    accepted: dict[str, float] = field(default_factory=dict)  # token -> monotonic time of 250
    refused: Counter[str] = field(default_factory=Counter)  # "451 4.3.0" -> count
    refusals: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, reply)
    dropped: int = 0  # the session died before the final reply
    dropped_in_data: int = 0  # ... while sending or waiting for the reply to its data
    in_data: int = 0  # sessions now sending data or waiting for its reply
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self, code: int, text: bytes) -> None:
        reply = f"{code} {text.decode(errors='replace').split(' ', 1)[0]}"
        with self.lock:
            self.refused[reply] += 1
            self.refusals.append((time.monotonic(), reply))

    def accepted_between(self, start: float, end: float) -> list[str]:
        with self.lock:
            return [t for t, at in self.accepted.items() if start <= at <= end]

    def refused_between(self, start: float, end: float, reply: str) -> int:
        with self.lock:
            return sum(1 for at, r in self.refusals if start <= at <= end and r == reply)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def register_bookings(mv: Mailveil, count: int, prefix: str) -> list[Envelope]:
    """``count`` bookings with distinct parties; both directions of each are envelopes.

    The API may answer before its transaction is committed (FastAPI ends a ``yield``
    dependency after the response), so each step is retried until the data is readable.
    """
    start = datetime.now(UTC) + timedelta(days=3)
    envelopes = []
    with httpx.Client(base_url=mv.api, headers=mv.headers, timeout=10) as http:
        for i in range(count):
            customer = f"guest{i}.{prefix}@customer-mail.example"
            supplier = f"desk{i}.{prefix}@supplier-mail.example"
            r = http.post("/suppliers", json={"id": f"sup-{prefix}-{i}", "name": "Sunny Tours",
                                              "email": supplier, "locale": "fr"})
            assert r.status_code == 201, r.text
            booking = {"reference": f"LOAD-{prefix}-{i}", "supplier_id": f"sup-{prefix}-{i}",
                       "customer": {"name": "Ann Lee", "email": customer, "locale": "en"},
                       "activity_start": start.isoformat(),
                       "activity_end": (start + timedelta(hours=3)).isoformat()}
            b = _until_ok(partial(http.post, "/bookings", json=booking))
            _until_ok(partial(http.get, f"/bookings/{booking['reference']}"))
            envelopes += [Envelope(customer, b["supplier_relay_address"], supplier),
                          Envelope(supplier, b["customer_relay_address"], customer)]
    return envelopes


def _until_ok(call: Callable[[], httpx.Response], timeout: float = 5.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (r := call()).status_code not in (200, 201) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code in (200, 201), r.text
    body: dict[str, str] = r.json()
    return body


def message(envelope: Envelope, token: str, body_bytes: int) -> bytes:
    filler = base64.encodebytes((token.encode() * (body_bytes // len(token) + 1))[:body_bytes])
    return (f"From: {envelope.mail_from}\r\nTo: {envelope.rcpt_to}\r\n"
            f"Subject: load {token}\r\nMessage-ID: <{token}@load.example>\r\n"
            f"Date: Mon, 01 Jun 2026 09:00:00 +0000\r\n\r\nHello, this is {token}.\r\n"
            ).encode() + filler.replace(b"\n", b"\r\n")


class Load:
    """``sessions`` threads sending over ``ports`` in turn until :meth:`stop`; a refused
    connection (mailveil down) is retried every 0.1 s.

    A load runs until a condition holds (:meth:`run_until`), never for a number of
    messages tuned to one machine's speed: what a test is about must happen during it.
    """

    def __init__(self, ports: Sequence[int], envelopes: Sequence[Envelope], *,
                 sessions: int = 4, prefix: str = "m", body_bytes: int = 300,
                 per_session: int = 20) -> None:
        self.tally = Tally()
        self._ports, self._envelopes = list(ports), list(envelopes)
        self._sessions, self._prefix = sessions, prefix
        self._body_bytes, self._per_session = body_bytes, per_session
        self._issued = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> Load:
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(self._sessions)]
        for t in self._threads:
            t.start()
        return self

    def run_until(self, condition: Callable[[], bool], timeout: float, what: str) -> Tally:
        """Keep sending until ``condition`` holds, then stop; raises after ``timeout``."""
        try:
            wait_until(condition, timeout, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {self.tally.count()} accepted, refused "
                               f"{dict(self.tally.refused)}") from None
        finally:
            self.stop()
        return self.tally

    def accepted_at_least(self, count: int) -> Callable[[], bool]:
        """A condition: ``count`` messages got 250 (a volume, for tests about volume)."""
        return lambda: self.tally.count() >= count

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join(35)
        return self.tally

    def _next(self) -> tuple[Envelope, str]:
        with self.tally.lock:
            n = self._issued
            self._issued += 1
        return self._envelopes[n % len(self._envelopes)], f"{self._prefix}{n:06d}"

    def _run(self, index: int) -> None:
        port = self._ports[index % len(self._ports)]
        while not self._stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                    smtp.ehlo()
                    for _ in range(self._per_session):
                        if self._stop.is_set() or not self._send(smtp):
                            break
            except (smtplib.SMTPException, OSError):
                self._stop.wait(0.1)

    def _send(self, smtp: smtplib.SMTP) -> bool:
        """One message; False when the session should be dropped for a fresh one."""
        envelope, token = self._next()
        in_data = False
        try:
            code, text = smtp.mail(envelope.mail_from)
            if code == 250:
                code, text = smtp.rcpt(envelope.rcpt_to)
            if code == 250:
                in_data = self._in_data(+1)
                code, text = smtp.data(message(envelope, token, self._body_bytes))
        except smtplib.SMTPDataError as exc:
            code, error = exc.smtp_code, exc.smtp_error
            text = error if isinstance(error, bytes) else error.encode()
        except (smtplib.SMTPException, OSError):
            with self.tally.lock:
                self.tally.dropped += 1
                self.tally.dropped_in_data += in_data
            raise
        finally:
            if in_data:
                self._in_data(-1)
        if code == 250:
            with self.tally.lock:
                self.tally.accepted[token] = time.monotonic()
            return True
        self.tally.refuse(code, text)
        if code == 421:
            return False
        smtp.rset()
        self._stop.wait(0.1)  # a sending MTA waits before trying again, if not this long
        return True

    def _in_data(self, step: int) -> bool:
        with self.tally.lock:
            self.tally.in_data += step
        return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               every: float = 0.05) -> None:
    """Poll ``condition`` until it holds; raises naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(every)


def delivered(sink: Sink) -> Counter[str]:
    """How many copies of each load token the sink received."""
    found = [TOKEN.search(m.data) for m in sink.wait_for(0)]  # a copy of what it has now
    return Counter(m.group(1).decode() for m in found if m)


def wait_delivered(sink: Sink, tokens: Sequence[str], timeout: float) -> Counter[str]:
    """Until every token reached the sink at least once; raises with the missing count."""
    deadline = time.monotonic() + timeout
    while True:
        got = delivered(sink)
        missing = [t for t in tokens if t not in got]
        if not missing:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} of {len(tokens)} accepted messages never "
                               f"reached the sink, e.g. {missing[:5]}")
        time.sleep(0.2)


def duplicates(got: Counter[str]) -> int:
    """Copies beyond the first, over all tokens."""
    return sum(n - 1 for n in got.values() if n > 1)


def report(name: str, **figures: Any) -> None:
    """Print the figures and keep them as one JSON line for CI to collect."""
    line = json.dumps({"test": name, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                       **figures}, sort_keys=True)
    print(line)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a") as f:
        f.write(line + "\n")


def waiting(engine: Engine) -> tuple[int, int]:
    """Messages waiting for processing, and in the outbox (queued, leased or not)."""
    with engine.connect() as c:
        return (c.scalar(select(func.count()).select_from(InboundRow)
                         .where(InboundRow.state == "received")) or 0,
                c.scalar(select(func.count()).select_from(OutboundRow)
                         .where(OutboundRow.state == "queued")) or 0)


def leased(engine: Engine) -> int:
    """Messages a worker holds now: taken for processing or for a delivery attempt."""
    with engine.connect() as c:
        return sum(c.scalar(select(func.count()).select_from(table).where(
            table.state == state, table.lease_until.is_not(None))) or 0
            for table, state in ((InboundRow, "received"), (OutboundRow, "queued")))


def settle(database_url: str, timeout: float) -> None:
    """Until nothing waits for processing or delivery, so late duplicates have arrived."""
    engine = create_engine(database_url)
    try:
        wait_until(lambda: waiting(engine) == (0, 0), timeout, "every message processed and "
                   "delivered", every=0.3)
    finally:
        engine.dispose()
