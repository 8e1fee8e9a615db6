"""Limits per client address and per sender, against the real listener.

Each client is another address of 127.0.0.0/8 (the client socket is bound to 127.0.0.2,
127.0.0.3): one abusive client is capped or cooled down while another is served, in one
process and across two listener processes on one PostgreSQL. Loopback is exempt from the
limits by default (an edge MTA is one client address), so these processes exempt nothing.
Every loop is bounded in count and in time, and waits for a condition, never for a speed.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from mailveil.smtp import replies
from mailveil.store.models import InboundRow
from tests.conftest import Mailveil
from tests.e2e.test_scale_out import Cluster
from tests.support.client import CUSTOMER, SUPPLIER, mail, register
from tests.support.raw_smtp import RawSmtp
from tests.support.sink import Sink

ABUSER, OTHER = "127.0.0.2", "127.0.0.3"
HANG = 30  # the most a condition may take to hold: a bound for a hang, not a speed
LIMITS = {"MAILVEIL_SMTP_LIMIT_EXEMPT": "none", "MAILVEIL_SMTP_MAX_PER_CLIENT": "3",
          "MAILVEIL_SMTP_CONNECT_RATE": "1000/60", "MAILVEIL_SMTP_UNKNOWN_RCPT_RATE": "6/600",
          "MAILVEIL_RATE_SENDER": "3/3600"}
UNKNOWN = "customer-{n:012x}@reply.example.com"


@pytest.fixture
def extra_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return {**LIMITS, **getattr(request, "param", {})}


def line(reply: str) -> bytes:
    return reply.encode() + b"\r\n"


@contextmanager
def client(port: int, source: str) -> Iterator[RawSmtp]:
    c = RawSmtp(port, source=source)
    try:
        yield c
    finally:
        c.close()


def greeting(port: int, source: str) -> bytes:
    """The greeting a new session from ``source`` gets (the session is then closed)."""
    with client(port, source) as c:
        return c.greeting


def command(c: RawSmtp, text: str) -> bytes:
    c.send(text.encode() + b"\r\n")
    return c.reply()


def poll(condition: Callable[[], bool], what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {HANG} s"
        time.sleep(every)


def sends(port: int, source: str, frm: str, to: str, subject: str) -> None:
    """A whole message from ``source``; raises smtplib's error for a refusal."""
    with smtplib.SMTP("127.0.0.1", port, timeout=HANG, source_address=(source, 0)) as smtp:
        smtp.send_message(mail(frm, to, subject, "Hello\n"), from_addr=frm, to_addrs=[to])


def metric(mv: Mailveil, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{mv.http_port}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, name
    return float(found[1])


def stored(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            return c.scalar(select(func.count()).select_from(InboundRow)) or 0
    finally:
        engine.dispose()


def test_sessions_at_once_are_capped_per_client(mailveil: Mailveil) -> None:
    relay = register(mailveil)["supplier_relay_address"]
    with ExitStack() as stack:
        held = [stack.enter_context(client(mailveil.smtp_port, ABUSER)) for _ in range(3)]
        assert all(c.greeting.startswith(b"220 ") for c in held)
        with client(mailveil.smtp_port, ABUSER) as refused:
            assert refused.greeting == line(replies.S421_CLIENT_SESSIONS.format(limit=3))
            assert refused.reply() == b""  # and closed
        sends(mailveil.smtp_port, OTHER, CUSTOMER, relay, "served meanwhile")
        assert all(command(c, "NOOP").startswith(b"250 ") for c in held)
        held.pop().close()
        poll(lambda: greeting(mailveil.smtp_port, ABUSER).startswith(b"220 "),
             "a freed slot is usable")
    assert metric(mailveil, 'mailveil_limit_refusals_total{limit="client_sessions"}') >= 1
    assert metric(mailveil, 'mailveil_limit{name="max_per_client"}') == 3


@pytest.mark.parametrize("extra_env", [{"MAILVEIL_SMTP_CONNECT_RATE": "5/60"}],
                         indirect=True, ids=["5/60"])
def test_new_sessions_per_minute_are_capped_per_client(mailveil: Mailveil) -> None:
    got = [greeting(mailveil.smtp_port, ABUSER) for _ in range(6)]
    assert all(g.startswith(b"220 ") for g in got[:5])
    assert got[5] == line(replies.S421_CLIENT_RATE.format(count=5, seconds=60))
    assert greeting(mailveil.smtp_port, OTHER).startswith(b"220 ")


@pytest.mark.parametrize("extra_env", [{"MAILVEIL_SMTP_SESSION_SECONDS": "4"}],
                         indirect=True, ids=["4s"])
def test_a_trickling_upload_is_cut_and_an_honest_one_finishes(mailveil: Mailveil,
                                                              sink: Sink,
                                                              database_url: str) -> None:
    """Before issue 10, a byte every 2 s ran on and got 250. Now each byte of data buys
    1/500 s (MAILVEIL_SMTP_MIN_DATA_RATE): the trickle is cut at the session's deadline,
    while a megabyte sent in pauses that outlast the deadline finishes."""
    relay = register(mailveil)["supplier_relay_address"]
    with client(mailveil.smtp_port, ABUSER) as slow:
        for text, code in (("EHLO slow.example", b"250"), (f"MAIL FROM:<{CUSTOMER}>", b"250"),
                           (f"RCPT TO:<{relay}>", b"250"), ("DATA", b"354")):
            assert command(slow, text).startswith(code), text
        slow.send(f"From: {CUSTOMER}\r\nTo: {relay}\r\nSubject: slow\r\n\r\n".encode())
        slow.sock.settimeout(0.2)
        reply = b""
        for _ in range(HANG * 5):  # a byte every 0.2 s, at most HANG seconds
            slow.send(b"x")
            try:
                reply = slow.sock.recv(4096)
                break
            except TimeoutError:
                continue
        assert reply == line(replies.S421_SESSION_TOO_LONG)
    with client(mailveil.smtp_port, OTHER) as honest:
        started = time.monotonic()
        for text, code in (("EHLO honest.example", b"250"), (f"MAIL FROM:<{CUSTOMER}>", b"250"),
                           (f"RCPT TO:<{relay}>", b"250"), ("DATA", b"354")):
            assert command(honest, text).startswith(code), text
        honest.send(f"From: {CUSTOMER}\r\nTo: {relay}\r\nSubject: honest\r\n\r\n".encode())
        for _ in range(32):  # 1 MB in 32 pieces, 0.15 s apart: past the 4 s deadline
            honest.send((b"y" * 76 + b"\r\n") * 409)
            time.sleep(0.15)
        honest.send(b".\r\n")
        assert honest.reply().startswith(b"250 ")
        assert time.monotonic() - started > 4  # it did outlast the bare deadline
    assert stored(database_url) == 1
    assert metric(mailveil, 'mailveil_limit_refusals_total{limit="session_time"}') == 1


def test_address_harvesting_cools_the_client_down(mailveil: Mailveil) -> None:
    """6 unknown relay addresses in 10 minutes, over several sessions: the client's next
    command and next sessions get 421 for 10 minutes; another client is served."""
    relay = register(mailveil)["supplier_relay_address"]
    tried = 0
    for _ in range(3):
        with client(mailveil.smtp_port, ABUSER) as c:
            assert command(c, "EHLO harvester.example").startswith(b"250")
            assert command(c, f"MAIL FROM:<{CUSTOMER}>").startswith(b"250")
            for _ in range(2):
                assert command(c, f"RCPT TO:<{UNKNOWN.format(n=tried)}>") == line(
                    replies.S550_UNKNOWN)
                tried += 1
            if tried == 6:  # the sixth started the cool-down: the next command is refused
                assert command(c, f"RCPT TO:<{relay}>") == line(
                    replies.S421_COOLDOWN.format(minutes=10))
    assert greeting(mailveil.smtp_port, ABUSER) == line(replies.S421_COOLDOWN.format(minutes=10))
    with client(mailveil.smtp_port, OTHER) as c:
        assert command(c, "EHLO other.example").startswith(b"250")
        assert command(c, f"MAIL FROM:<{CUSTOMER}>").startswith(b"250")
        assert command(c, f"RCPT TO:<{UNKNOWN.format(n=99)}>") == line(replies.S550_UNKNOWN)
        assert command(c, f"RCPT TO:<{relay}>").startswith(b"250")
    assert metric(mailveil, "mailveil_harvest_cooldowns_total") == 1
    assert metric(mailveil, 'mailveil_limit{name="unknown_rcpt_count"}') == 6
    log = mailveil.log.read_text()
    assert log.count("address harvesting: client cooled down") == 1


def test_a_sender_writing_too_often_to_a_conversation_is_told_when_to_retry(
        mailveil: Mailveil) -> None:
    addresses = register(mailveil)
    to_supplier, to_customer = (addresses["supplier_relay_address"],
                                addresses["customer_relay_address"])
    for n in range(3):
        sends(mailveil.smtp_port, OTHER, CUSTOMER, to_supplier, f"message {n}")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        sends(mailveil.smtp_port, OTHER, CUSTOMER, to_supplier, "one too many")
    assert refused.value.smtp_code == 451
    error = refused.value.smtp_error
    text = error.decode() if isinstance(error, bytes) else error
    assert text.startswith("4.7.1 ")
    retry = re.search(r"try again in (\d+) seconds", text)
    assert retry and 0 < int(retry[1]) <= 3600
    # The other party, writing back in the same conversation, is another sender.
    sends(mailveil.smtp_port, OTHER, SUPPLIER, to_customer, "the reply")
    assert metric(mailveil, 'mailveil_limit_refusals_total{limit="sender_rate"}') == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_limits_hold_across_two_listener_processes(database_url: str, sink: Sink,
                                                   tmp_path: Path) -> None:
    """Sessions held at one listener count at the other, and a client cooled down at one is
    refused by the other, within the second or two the listeners take to share counts."""
    with Cluster.running(database_url, tmp_path / "var", f"127.0.0.1:{sink.port}") as cluster:
        cluster.env.update({**LIMITS, "MAILVEIL_SMTP_MAX_PER_CLIENT": "4"})
        cluster.spawn("a", "smtp")
        cluster.spawn("b", "smtp")
        cluster.ready()
        a, b = cluster.ports["a"], cluster.ports["b"]
        with ExitStack() as stack:
            held = [stack.enter_context(client(port, ABUSER)) for port in (a, a, b, b)]
            assert all(c.greeting.startswith(b"220 ") for c in held)
            poll(lambda: greeting(a, ABUSER) == line(
                replies.S421_CLIENT_SESSIONS.format(limit=4)),
                "listener a counts the sessions held at b")
            assert greeting(a, OTHER).startswith(b"220 ")
            for c in held[2:]:
                c.close()
            poll(lambda: greeting(a, ABUSER).startswith(b"220 "),
                 "listener a sees the sessions at b closed")

        with client(a, ABUSER) as c:
            assert command(c, "EHLO harvester.example").startswith(b"250")
            assert command(c, f"MAIL FROM:<{CUSTOMER}>").startswith(b"250")
            for n in range(6):
                assert command(c, f"RCPT TO:<{UNKNOWN.format(n=n)}>") == line(
                    replies.S550_UNKNOWN)
        poll(lambda: greeting(b, ABUSER) == line(replies.S421_COOLDOWN.format(minutes=10)),
             "listener b refuses the client listener a cooled down")
        assert greeting(b, OTHER).startswith(b"220 ")

