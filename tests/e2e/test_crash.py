"""Nothing accepted is ever lost: ``mailveil serve`` killed under load, the smarthost down,
the database down, and a graceful stop, each against real servers on loopback.

Every message that got ``250`` must reach the receiving sink at least once; duplicates may
only come from what a killed worker had in flight.
"""

from __future__ import annotations

import random
import secrets
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, create_engine, func, select

from mailveil.config import Settings
from mailveil.store.models import AttemptRow, OutboundRow
from tests.conftest import Mailveil, mailveil_env
from tests.support.load import (
    Load,
    delivered,
    duplicates,
    message,
    register_bookings,
    report,
    settle,
    wait_delivered,
)
from tests.support.net import free_port
from tests.support.private_postgres import PG_CTL, PrivatePostgres
from tests.support.sink import Sink

BATCH = Settings().worker_batch  # a killed worker has at most one batch in flight


def started(database_url: str, data_dir: Path, smarthost: str) -> Mailveil:
    data_dir.mkdir(exist_ok=True)
    smtp_port, http_port, token = free_port(), free_port(), secrets.token_hex(16)
    env = mailveil_env(database_url, data_dir, smtp_port, http_port, token, smarthost)
    mv = Mailveil(env, data_dir, smtp_port, http_port, token)
    mv.start()
    return mv


def stopped(mv: Mailveil) -> None:
    mv.stop()
    print(mv.log.read_text(errors="replace")[-8000:])  # shown by pytest only on failure


def test_kill_9_under_load_delivers_every_accepted_message(
        database_url: str, sink: Sink, tmp_path: Path) -> None:
    """SIGKILL at random moments while four sessions send; the restarted process takes
    over the killed one's leases once they run out (MAILVEIL_LEASE_SECONDS)."""
    kills, seed = 3, secrets.randbits(32)
    rng = random.Random(seed)
    mv = started(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}")
    try:
        load = Load([mv.smtp_port], register_bookings(mv, 4, "kill"), target=200,
                    sessions=4).start()
        accepted_at_kill = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 3.0))
            accepted_at_kill.append(len(load.tally.accepted))
            mv.kill()
            mv.start()
        tally = load.wait(timeout=90)
        wait_delivered(sink, list(tally.accepted), timeout=60)
        settle(database_url, timeout=30)  # re-leased copies of the last kill are sent too
        got = delivered(sink)
    finally:
        stopped(mv)
    dup = duplicates(got)
    report("kill_9_under_load", database=database_url.split(":")[0], seed=seed, kills=kills,
           accepted=len(tally.accepted), accepted_at_kill=accepted_at_kill,
           dropped_sessions=tally.dropped, refused=dict(tally.refused),
           delivered_without_250=len(set(got) - set(tally.accepted)), duplicates=dup,
           duplicates_per_kill=round(dup / kills, 1))
    assert all(got[t] >= 1 for t in tally.accepted)
    assert dup <= BATCH * kills


def test_database_outage_defers_with_451_and_recovers(sink: Sink, tmp_path: Path) -> None:
    """The PostgreSQL server goes away under load (a private one: the shared server must
    never be stopped) and comes back; mailveil must neither lie nor need a restart."""
    if not PG_CTL.exists():
        pytest.skip(f"{PG_CTL} is missing (Debian's postgresql package; or set "
                    "MAILVEIL_TEST_PG_BIN)")
    with PrivatePostgres.running() as pg:
        mv = started(pg.url, tmp_path / "var", f"127.0.0.1:{sink.port}")
        try:
            envelopes = register_bookings(mv, 4, "dbdown")
            load = Load([mv.smtp_port], envelopes, target=300, sessions=4).start()
            with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as probe:
                probe.ehlo()
                probe.mail(envelopes[0].mail_from)
                assert probe.rcpt(envelopes[0].rcpt_to)[0] == 250
                time.sleep(2)
                pg.stop()
                down = time.monotonic()
                # RCPT passed while the database was up; DATA must not be answered 250 now.
                code, text = probe.data(message(envelopes[0], "probe", 100))
            assert (code, text[:5]) == (451, b"4.3.0")
            time.sleep(4)
            up = time.monotonic()
            pg.start()
            tally = load.wait(timeout=90)
            wait_delivered(sink, list(tally.accepted), timeout=60)
            settle(pg.url, timeout=30)
            assert mv.proc is not None and mv.proc.poll() is None, "mailveil died"
        finally:
            stopped(mv)
    got = delivered(sink)
    report("database_outage", accepted=len(tally.accepted), refused=dict(tally.refused),
           dropped_sessions=tally.dropped, outage_seconds=round(up - down, 1),
           accepted_after_outage=len(tally.accepted_between(up, time.monotonic())),
           duplicates=duplicates(got))
    assert tally.refused["451 4.3.0"] > 0
    # 1 s of grace: a 250 for a commit made just before the stop may still be on its way
    assert not tally.accepted_between(down + 1.0, up), "250 while the database was down"
    assert tally.accepted_between(up, time.monotonic()), "no 250 after the database returned"
    assert all(got[t] >= 1 for t in tally.accepted)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmRSS:"))
    return int(kib) * 1024


class PeakRss:
    """Samples a process's resident memory every 0.1 s in a thread, keeping the largest."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_bytes(self.pid))


class Phases:
    """Seconds from creation to each named moment, for the figures."""

    def __init__(self) -> None:
        self.start, self.at = time.monotonic(), dict[str, float]()

    def mark(self, name: str) -> None:
        self.at[name] = round(time.monotonic() - self.start, 1)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.2)


def tried(engine: Engine) -> int:
    """Outgoing copies tried at least once."""
    with engine.connect() as c:
        return c.scalar(select(func.count()).select_from(OutboundRow)
                        .where(OutboundRow.attempts > 0)) or 0


def attempts_answered(engine: Engine, code: int | None) -> int:
    """Delivery attempts answered with ``code``; None: no answer (connection refused)."""
    answered = AttemptRow.code.is_(None) if code is None else AttemptRow.code == code
    with engine.connect() as c:
        return c.scalar(select(func.count()).select_from(AttemptRow).where(answered)) or 0


def attempt_logs(mv: Mailveil, reference: str) -> dict[str, list[dict[str, Any]]]:
    """The delivery attempts of each message of a booking by subject, from the archive."""
    r = httpx.get(f"{mv.api}/bookings/{reference}/messages", headers=mv.headers, timeout=10)
    assert r.status_code == 200, r.text
    return {e["subject"]: [a for o in e["outbound"] for a in o["attempts"]] for e in r.json()}


def serving(sink: Sink) -> Controller:
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    return controller


def test_smarthost_outage_backs_off_then_delivers_everything(
        database_url: str, tmp_path: Path) -> None:
    """Down (nothing listens), then 451 at RCPT and 421 at DATA, then back."""
    sink = Sink(port=free_port())
    mv = started(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}")
    with ExitStack() as cleanup:
        cleanup.callback(stopped, mv)
        envelopes = register_bookings(mv, 3, "backoff")
        tally = Load([mv.smtp_port], envelopes, target=100).start().wait(timeout=30)
        first = "load m000000"  # sent first, so its log spans the whole outage

        def log() -> list[dict[str, Any]]:
            return attempt_logs(mv, "LOAD-backoff-0").get(first, [])

        wait_until(lambda: len(log()) >= 3, 30, "three refused attempts")
        sink.rcpt_reply.update({e.recipient: "451 4.3.0 Try again later"
                                for e in envelopes[::2]})  # envelopes[0] among them
        sink.data_reply = "421 4.3.2 Service not available"
        cleanup.callback(serving(sink).stop)
        wait_until(lambda: log()[-1]["code"] == 451, 30, "deferred with 451")
        sink.rcpt_reply.clear()
        sink.data_reply = None
        got = wait_delivered(sink, list(tally.accepted), timeout=60)
        logs = {s: a for i in range(3) for s, a in attempt_logs(mv, f"LOAD-backoff-{i}").items()}
    codes = [a["code"] for a in logs[first]]
    times = [datetime.fromisoformat(a["attempted_at"]) for a in logs[first]]
    gaps = [round((b - a).total_seconds(), 2) for a, b in pairwise(times)]
    retry_first = float(mv.env["MAILVEIL_RETRY_FIRST_SECONDS"])
    report("smarthost_outage", database=database_url.split(":")[0],
           accepted=len(tally.accepted), codes=codes, gaps=gaps, duplicates=duplicates(got))
    assert codes[:3] == [None] * 3  # connection refused
    assert codes[-2:] == [451, 250]
    assert 421 in {a["code"] for attempts in logs.values() for a in attempts}
    assert all(gap >= retry_first * 2**k for k, gap in enumerate(gaps)), gaps
    assert gaps[-1] == max(gaps), gaps


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_outbox_waits_in_the_database_not_in_memory(database_url: str, tmp_path: Path) -> None:
    """500 messages of 256 KB (170 MB) wait for a smarthost that is down; the worker leases
    them in batches of a few megabytes, so the process grows by far less than what waits.
    SQLite is left out: it accepts these messages about three times slower, and the memory
    does not depend on it.
    """
    body_bytes = 256 * 1024
    dead = f"127.0.0.1:{free_port()}"
    mv = started(database_url, tmp_path / "var", dead)
    engine = create_engine(database_url)
    with ExitStack() as cleanup:
        cleanup.callback(stopped, mv)
        cleanup.callback(engine.dispose)
        assert mv.proc is not None
        envelopes = register_bookings(mv, 4, "memory")
        warm = Load([mv.smtp_port], envelopes, target=20, prefix="w").start().wait(timeout=30)
        wait_until(lambda: tried(engine) >= len(warm.accepted), 30, "warm-up tried")
        baseline = rss_bytes(mv.proc.pid)
        phases = Phases()
        with PeakRss(mv.proc.pid) as rss:
            tally = Load([mv.smtp_port], envelopes, target=500, body_bytes=body_bytes
                         ).start().wait(timeout=60)
            phases.mark("accepted")
            waiting = len(tally.accepted)
            wait_until(lambda: tried(engine) >= len(warm.accepted) + waiting, 60,
                       "every message tried")
            phases.mark("all_waiting")
        assert mv.proc.poll() is None
    waiting_bytes = waiting * len(message(envelopes[0], "m000000", body_bytes))
    report("outbox_memory", waiting=waiting, waiting_mb=round(waiting_bytes / 2**20),
           rss_baseline_mb=round(baseline / 2**20, 1), rss_peak_mb=round(rss.peak / 2**20, 1),
           phases=phases.at)
    assert rss.peak - baseline < waiting_bytes / 2, "the outbox is held in memory"


def test_sigterm_under_load_stops_promptly_and_sends_nothing_twice(
        database_url: str, sink: Sink, tmp_path: Path) -> None:
    """Unlike kill -9, a graceful stop lets the worker record the batch it is sending, so
    after a restart nothing is sent again."""
    mv = started(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}")
    try:
        assert mv.proc is not None
        tally = Load([mv.smtp_port], register_bookings(mv, 4, "term"), target=100
                     ).start().wait(timeout=60)
        sink.wait_for(1, timeout=30)  # the worker is busy with the backlog
        asked = time.monotonic()
        mv.proc.terminate()
        code = mv.proc.wait(timeout=30)
        exit_seconds = time.monotonic() - asked
        mv.start()
        wait_delivered(sink, list(tally.accepted), timeout=60)
        settle(database_url, timeout=30)
        got = delivered(sink)
    finally:
        stopped(mv)
    report("sigterm_under_load", database=database_url.split(":")[0],
           exit_seconds=round(exit_seconds, 2), accepted=len(tally.accepted),
           duplicates=duplicates(got))
    assert code == 0
    assert exit_seconds < 15
    assert duplicates(got) == 0


def test_sigterm_lets_the_message_in_data_finish_and_tells_idle_sessions_421(
        database_url: str, sink: Sink, tmp_path: Path) -> None:
    """The listener closes at once; a message half-way through DATA is still stored and
    answered (or refused with 421 4.3.2, never cut), an idle session is told 421 4.3.2."""
    mv = started(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}")
    with ExitStack() as cleanup:
        cleanup.callback(stopped, mv)
        assert mv.proc is not None
        [envelope, *_] = register_bookings(mv, 1, "drain")
        idle = smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=20)
        cleanup.callback(idle.close)  # no QUIT: the server may have hung up with a 421
        idle.ehlo()
        busy = smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=20)
        cleanup.callback(busy.close)
        busy.ehlo()
        busy.mail(envelope.mail_from)
        busy.rcpt(envelope.rcpt_to)
        assert busy.docmd("DATA")[0] == 354
        raw = message(envelope, "inflight", 2000)
        busy.send(raw[:1000])
        asked = time.monotonic()
        mv.proc.terminate()
        wait_until(lambda: not port_open(mv.smtp_port), 5, "listener closed")
        busy.send(raw[1000:] + b"\r\n.\r\n")
        finished = busy.getreply()
        told_idle = idle.docmd("NOOP")
        code = mv.proc.wait(timeout=30)
        exit_seconds = time.monotonic() - asked
        mv.start()
        if finished[0] == 250:
            wait_delivered(sink, ["inflight"], timeout=30)
        settle(database_url, timeout=30)
        got = delivered(sink)
    report("sigterm_drain", database=database_url.split(":")[0],
           exit_seconds=round(exit_seconds, 2), in_data=finished[0], idle=told_idle[0])
    assert finished[0] == 250 or finished[1].startswith(b"4.3.2"), finished
    assert got["inflight"] == (1 if finished[0] == 250 else 0)
    assert told_idle[0] == 421 and told_idle[1].startswith(b"4.3.2"), told_idle
    assert code == 0
    assert exit_seconds < 15
