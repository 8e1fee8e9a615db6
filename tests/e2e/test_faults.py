"""A bug met by one message costs that message, never the relay (issue 12).

Each test breaks one stage for one message ("poison") by replacing the stage's function in
the test process, where ``serve``'s three roles run for real on their own event loop: the
real listener, store, worker and API, a real receiving SMTP server, SQLite and PostgreSQL.
The poisoned message must be refused for now (451, never 5xx) or parked with its error where
care looks (the booking's archive, the metrics); the others must be relayed; and every role
must go on answering.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from email import policy
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiosmtpd.smtp import Envelope
from prometheus_client import REGISTRY

from mailveil import service
from mailveil.authn import authenticity, upstream
from mailveil.config import from_env
from mailveil.delivery.transport import Result, SmarthostTransport
from mailveil.mail import bounces, inspect
from mailveil.pipeline import compose, process
from mailveil.scan import clamd
from mailveil.smtp import gate, listener
from mailveil.store import repository
from tests.conftest import Mailveil, mailveil_env
from tests.scan.clamd_fixture import ClamdInfo, forwarded_with_bad_padding
from tests.support.client import CUSTOMER, archive, mail, register
from tests.support.net import free_port, wait_for_port
from tests.support.sink import Received, Sink

POISON = "poison.pill@customer-mail.example"  # the other booking's customer


class InjectedFault(Exception):
    pass


class InProcess(Mailveil):
    """``mailveil serve`` with its roles on an event loop in a thread of the test process,
    so that ``monkeypatch`` reaches the stage a test breaks."""

    _thread: threading.Thread
    _loop: asyncio.AbstractEventLoop
    _rt: service.Runtime
    _roles: list[asyncio.Future[None]]

    def start(self, role: str = "serve") -> None:
        ready = threading.Event()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._rt = service.open_runtime(from_env(self.env))
            # Without a URL the webhook sender has nothing to do and returns at once.
            parts = [part for part in service.ROLES[role]
                     if part is not service.run_webhooks or self._rt.settings.webhook_url]
            self._roles = [asyncio.ensure_future(part(self._rt)) for part in parts]
            ready.set()
            await asyncio.gather(*self._roles)

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        assert ready.wait(30), "serve did not start"
        wait_for_port(self.smtp_port)
        wait_for_port(self.http_port)

    def running(self) -> bool:
        """Every role is still at work: none returned or raised."""
        return self._thread.is_alive() and not any(task.done() for task in self._roles)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._rt.stopping.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "serve did not stop"


@pytest.fixture
def start(database_url: str, sink: Sink, tmp_path: Path) -> Iterator[
        Callable[[dict[str, str]], InProcess]]:
    """Start the service once the test has broken what it breaks."""
    started: list[InProcess] = []

    def start_with(extra: dict[str, str]) -> InProcess:
        data_dir = tmp_path / "var"
        data_dir.mkdir()
        smtp_port, http_port = free_port(), free_port()
        env = mailveil_env(database_url, data_dir, smtp_port, http_port, "t" * 32,
                           f"127.0.0.1:{sink.port}") | extra
        mv = InProcess(env, data_dir, smtp_port, http_port, "t" * 32)
        mv.start()
        started.append(mv)
        return mv

    yield start_with
    for mv in started:
        mv.stop()


def poisoned(raw: bytes) -> bool:
    return b"poison" in raw


def fault(stage: str) -> InjectedFault:
    return InjectedFault(f"injected at {stage}")


def break_rcpt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = gate.rcpt_reply

    def rcpt_reply(mail_from: str, lookup: Any) -> str | None:
        if mail_from == POISON:
            raise fault("rcpt")
        return real(mail_from, lookup)

    monkeypatch.setattr(listener, "rcpt_reply", rcpt_reply)


def break_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first thing the DATA handler does with the message (not the store, whose
    failures have their own 451)."""
    real = listener.envelope_sender

    def envelope_sender(envelope: Envelope) -> str:
        if envelope.original_content is not None and poisoned(envelope.original_content):
            raise fault("data")
        return real(envelope)

    monkeypatch.setattr(listener, "envelope_sender", envelope_sender)


def break_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    real = clamd.scan_message

    async def scan_message(raw: bytes, scanner: Any) -> Any:
        if poisoned(raw):
            raise fault("scan")
        return await real(raw, scanner)

    monkeypatch.setattr(service, "scan_message", scan_message)


def break_authenticity(monkeypatch: pytest.MonkeyPatch) -> None:
    real = authenticity.check

    async def check(raw: bytes, **kw: Any) -> Any:
        if poisoned(raw):
            raise fault("authenticity")
        return await real(raw, **kw)

    monkeypatch.setattr(upstream, "check", check)


def break_processing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = inspect.facts

    def facts(raw: bytes) -> Any:
        if poisoned(raw):
            raise fault("processing")
        return real(raw)

    monkeypatch.setattr(process, "facts", facts)


def break_composing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = compose.relay_copy

    def relay_copy(raw: bytes, *args: Any, **kw: Any) -> Any:
        if poisoned(raw):
            raise fault("composing")
        return real(raw, *args, **kw)

    monkeypatch.setattr(compose, "relay_copy", relay_copy)


def break_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    real = SmarthostTransport.send

    async def send(self: SmarthostTransport, mail_from: str, rcpt_to: str,
                   raw: bytes) -> Result:
        if poisoned(raw):
            raise fault("delivery")
        return await real(self, mail_from, rcpt_to, raw)

    monkeypatch.setattr(SmarthostTransport, "send", send)


def break_bounce_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bounces.parse_report

    def parse_report(raw: bytes) -> Any:
        if poisoned(raw):
            raise fault("bounce parsing")
        return real(raw)

    monkeypatch.setattr(process, "parse_report", parse_report)


# stage -> (how to break it, the stage the metric names)
AT_SMTP = {
    "rcpt": (break_rcpt, "rcpt"),
    "data": (break_data, "data"),
    "scan": (break_scan, "data"),
    "authenticity": (break_authenticity, "data"),
}
AFTER_250 = {
    "processing": (break_processing, "processing"),
    "composing": (break_composing, "processing"),
    "delivery": (break_delivery, "delivery"),
}


def errors(stage: str) -> float:
    return REGISTRY.get_sample_value("mailveil_unexpected_errors_total", {"stage": stage}) or 0


T = TypeVar("T")


def until(probe: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)
    return found


def relayed(sink: Sink, subject: str) -> Received:
    return until(lambda: next((m for m in sink.messages if subject.encode() in m.data), None),
                 f"{subject!r} was not relayed")


def setup(mv: InProcess) -> tuple[str, str]:
    """The supplier's relay addresses of a healthy booking and of the poisoned one."""
    good = register(mv, "GYG-GOOD")["supplier_relay_address"]
    bad = register(mv, "GYG-BAD", customer=POISON, supplier_id="sup-2")["supplier_relay_address"]
    return good, bad


def message(sender: str, to: str, subject: str) -> bytes:
    return mail(sender, to, subject, "Hello.\n").as_bytes(policy=policy.SMTP)


def still_serving(mv: InProcess, sink: Sink, good: str, metric_stage: str,
                  errors_before: float) -> None:
    """After the fault: the listener relays, the API and the metrics answer."""
    assert mv.running()
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        smtp.sendmail(CUSTOMER, [good], message(CUSTOMER, good, "after the fault"))
    relayed(sink, "after the fault")
    metrics = httpx.get(f"http://127.0.0.1:{mv.http_port}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert errors(metric_stage) == errors_before + 1
    assert f'mailveil_unexpected_errors_total{{stage="{metric_stage}"}}' in metrics.text
    assert mv.running()


@pytest.mark.parametrize("stage", sorted(AT_SMTP))
def test_a_fault_during_the_smtp_dialogue_answers_451_and_the_session_goes_on(
        stage: str, start: Callable[[dict[str, str]], InProcess], sink: Sink,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    breaks, metric_stage = AT_SMTP[stage]
    breaks(monkeypatch)
    extra = ({"MAILVEIL_CLAMD": request.getfixturevalue("clamd").tcp_address}
             if stage == "scan" else {})
    mv = start(extra)
    good, bad = setup(mv)
    before = errors(metric_stage)
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail(POISON)
        code, text = smtp.rcpt(bad)
        if stage != "rcpt":
            assert code == 250
            code, text = smtp.data(message(POISON, bad, "poison"))
        assert (code, text[:6]) == (451, b"4.3.0 "), text  # the sender's server retries
        assert b"trace " in text
        smtp.rset()
        # The same session is still usable: the next transaction goes through.
        smtp.mail(CUSTOMER)
        assert smtp.rcpt(good)[0] == 250
        assert smtp.data(message(CUSTOMER, good, "same session"))[0] == 250
    relayed(sink, "same session")
    still_serving(mv, sink, good, metric_stage, before)
    assert archive(mv, "GYG-BAD", 0) == []  # nothing of it was accepted
    assert not [m for m in sink.messages if poisoned(m.data)]


@pytest.mark.parametrize("stage", sorted(AFTER_250))
def test_a_fault_after_250_parks_only_that_message(
        stage: str, start: Callable[[dict[str, str]], InProcess], sink: Sink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    breaks, metric_stage = AFTER_250[stage]
    breaks(monkeypatch)
    mv = start({})
    good, bad = setup(mv)
    before = errors(metric_stage)
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        smtp.sendmail(POISON, [bad], message(POISON, bad, "poison"))
        smtp.sendmail(CUSTOMER, [good], message(CUSTOMER, good, "healthy"))
    relayed(sink, "healthy")
    # Parked where care looks: the booking's archive says why, with the error.
    entries = until(lambda: next((e for e in archive(mv, "GYG-BAD", 1, timeout=0)
                                  if e["outcome"] == "failed"), None), "nothing parked")
    assert f"injected at {stage}" in entries["detail"]
    if stage == "delivery":
        copies = [o for e in archive(mv, "GYG-BAD", 1) for o in e["outbound"]]
        assert {o["state"] for o in copies} == {"failed"}
    still_serving(mv, sink, good, metric_stage, before)
    assert not [m for m in sink.messages if poisoned(m.data)]


def test_a_fault_while_reading_a_bounce_parks_only_the_bounce(
        start: Callable[[dict[str, str]], InProcess], sink: Sink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    break_bounce_parsing(monkeypatch)
    mv = start({})
    good, _ = setup(mv)
    before = errors("processing")
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        smtp.sendmail(CUSTOMER, [good], message(CUSTOMER, good, "first"))
    verp = relayed(sink, "first").mail_from
    bounce = (f"From: MAILER-DAEMON@mx.example\r\nTo: {verp}\r\n"
              "Subject: Undelivered Mail Returned to Sender (poison)\r\n\r\n"
              "550 5.1.1 no such user\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        smtp.sendmail("<>", [verp], bounce)
    until(lambda: errors("processing") > before or None, "the bounce was not parked")
    metrics = httpx.get(f"http://127.0.0.1:{mv.http_port}/metrics", timeout=10).text
    assert "mailveil_inbound_failed 1.0" in metrics
    assert [e["outcome"] for e in archive(mv, "GYG-GOOD", 1)] == ["relayed"]
    still_serving(mv, sink, good, "processing", before)


def test_a_round_that_raises_outside_any_message_costs_only_that_round(
        start: Callable[[dict[str, str]], InProcess], sink: Sink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a runner itself, not in one message's work: the runner logs it, counts it
    and goes on with its next round; the other roles never notice."""
    real = repository.claim_owed
    rounds = 0

    def claim_owed(*args: Any, **kw: Any) -> Any:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise fault("a round")
        return real(*args, **kw)

    monkeypatch.setattr(repository, "claim_owed", claim_owed)
    before = errors("processing")
    mv = start({})
    good, _ = setup(mv)
    until(lambda: errors("processing") > before or None, "the round did not raise")
    still_serving(mv, sink, good, "processing", before)
    assert rounds > 1


class TestBadBase64ForwardedMessage:
    """The message that once got ``500 Error: (Error) Incorrect padding``, through the real
    listener and a real clamd (``mailveil serve`` in its own process)."""

    @pytest.fixture
    def extra_env(self, clamd: ClamdInfo) -> dict[str, str]:
        return {"MAILVEIL_CLAMD": clamd.tcp_address}

    def test_it_is_accepted_and_relayed_never_refused_for_good(
            self, mailveil: Mailveil, sink: Sink) -> None:
        good = register(mailveil, "GYG-B64")["supplier_relay_address"]
        inner = message(CUSTOMER, good, "forwarded inside")
        raw = (f"From: {CUSTOMER}\r\nTo: {good}\r\nSubject: a forwarded booking\r\n"
               "Message-ID: <b64@customer-mail.example>\r\n").encode()
        raw += forwarded_with_bad_padding(inner)
        with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.mail(CUSTOMER)
            assert smtp.rcpt(good)[0] == 250
            code, text = smtp.data(raw)
        assert code == 250, text  # neither 5xx nor even 451: the scan reads what it can
        [entry] = archive(mailveil, "GYG-B64", 1)
        assert (entry["outcome"], entry["scan"]) == ("relayed", "clean")
        relayed(sink, "a forwarded booking")
