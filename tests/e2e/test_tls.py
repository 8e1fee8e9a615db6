"""TLS both ways against a real ``mailveil serve``, on SQLite and PostgreSQL: STARTTLS on the
listener with the generated and with a configured certificate (Python's ``ssl`` and
``swaks --tls`` as clients), its renewal without a restart, the STARTTLS command injection
(CVE-2011-0411's class), and the smarthost over TLS, verified or not."""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailveil.smtp import replies
from mailveil.smtp.tls import KeyPair, server_context
from tests.conftest import RELAY_DOMAIN, Mailveil
from tests.support.certs import Authority, der
from tests.support.client import CUSTOMER, Entry, archive, mail, register
from tests.support.raw_smtp import RawSmtp
from tests.support.sink import Sink

MX = "mx.reply.example.com"  # the name of the configured certificate
HANG = 60  # the most a step may take: a bound for a hang, not a measure of speed


@dataclass(frozen=True)
class Pki:
    authority: Authority
    ca: Path
    wrong_ca: Path
    listener: KeyPair  # the configured certificate, for MX
    sink: KeyPair  # the smarthost's, for 127.0.0.1


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    authority = Authority.create()
    return Pki(authority, authority.write(tmp_path / "ca.pem"),
               Authority.create("another CA").write(tmp_path / "wrong-ca.pem"),
               authority.issue(MX, tmp_path / "listener"),
               authority.issue("127.0.0.1", tmp_path / "sink"))


@pytest.fixture
def sink(pki: Pki) -> Iterator[Sink]:
    """The smarthost offers STARTTLS with a certificate of the test's authority."""
    with Sink.running(tls=server_context(pki.sink)) as s:
        yield s


@pytest.fixture
def extra_env(request: pytest.FixtureRequest, pki: Pki) -> dict[str, str]:
    """Nothing by default (a generated certificate, opportunistic TLS to the smarthost);
    ``configured``: the listener's certificate from the test's authority; ``right CA`` /
    ``wrong CA``: TLS to the smarthost required, verified against that authority."""
    env: dict[str, str] = {}
    for case in getattr(request, "param", ()):
        if case == "one slot":
            env |= {"MAILVEIL_SMTP_MAX_CONNECTIONS": "1", "MAILVEIL_SMTP_TIMEOUT": "1"}
        elif case == "configured":
            env |= {"MAILVEIL_TLS_CERT": str(pki.listener.cert),
                    "MAILVEIL_TLS_KEY": str(pki.listener.key)}
        else:
            env |= {"MAILVEIL_SMARTHOST_TLS": "required",
                    "MAILVEIL_SMARTHOST_CA": str(pki.ca if case == "right CA" else pki.wrong_ca)}
    return env


def verifying(cafile: Path, *, name: bool = True) -> ssl.SSLContext:
    """A client that checks the chain and the name, as a strict sender would; smtplib
    can only check the name it connected to, 127.0.0.1 (``name=False``)."""
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = name
    return context


@contextmanager
def starttls(mv: Mailveil, context: ssl.SSLContext, name: str,
             pipelined: bytes = b"") -> Iterator[RawSmtp]:
    """A raw session after EHLO and STARTTLS (with ``pipelined`` behind it, in clear)."""
    client = RawSmtp(mv.smtp_port)
    try:
        client.send(b"EHLO client.example\r\n")
        assert b"250-STARTTLS\r\n" in client.reply()
        assert client.starttls(context, name, pipelined) == b"220 Ready to start TLS\r\n"
        yield client
    finally:
        client.close()


def tls_of(client: RawSmtp) -> tuple[bytes | None, str | None]:
    """The certificate (DER) the listener presented to ``client``, and the TLS version."""
    assert isinstance(client.sock, ssl.SSLSocket)
    return client.sock.getpeercert(binary_form=True), client.sock.version()


def send_over_tls(mv: Mailveil, context: ssl.SSLContext, relay: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.send_message(mail(CUSTOMER, relay, subject, "Hello over TLS\n"),
                          from_addr=CUSTOMER, to_addrs=[relay])


def swaks(mv: Mailveil, relay: str, subject: str, *tls: str) -> str:
    done = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mv.smtp_port}", "--tls", *tls,
         "--from", CUSTOMER, "--to", relay, "--header", f"Subject: {subject}",
         "--header", f"From: {CUSTOMER}", "--body", "Hello from swaks"],
        capture_output=True, text=True, timeout=HANG, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def inbound_tls(mv: Mailveil, reference: str, count: int) -> list[tuple[str, bool, str | None]]:
    """(subject, encrypted, TLS version) of each message in the archive, once ``count`` are."""
    entries = archive(mv, reference, count)
    assert len(entries) == count, entries
    return [(e["subject"], e["encrypted"], e["tls_version"]) for e in entries]


def attempts_until(mv: Mailveil, reference: str, done: int) -> list[Entry]:
    """The delivery attempts of the booking's outgoing copies, once there are ``done``."""
    deadline = time.monotonic() + HANG
    while True:
        entries = archive(mv, reference, 1)
        attempts: list[Entry] = [a for e in entries for o in e["outbound"]
                                 for a in o["attempts"]]
        if len(attempts) >= done:
            return attempts
        assert time.monotonic() < deadline, entries
        time.sleep(0.1)


def test_starttls_with_the_generated_certificate(mailveil: Mailveil, sink: Sink) -> None:
    generated = mailveil.data_dir / "tls" / "self-signed.pem"
    assert "generated a self-signed certificate" in mailveil.log.read_text()
    relay = register(mailveil)["supplier_relay_address"]
    with starttls(mailveil, verifying(generated), RELAY_DOMAIN) as client:
        assert tls_of(client) == (der(generated), "TLSv1.3")
        client.send(b"EHLO client.example\r\n")
        ehlo = client.reply()
        assert ehlo.startswith(b"250-") and b"STARTTLS" not in ehlo
        client.send(b"STARTTLS\r\n")  # once per connection (RFC 3207 4.2)
        assert client.reply() == f"{replies.S554_TLS_ACTIVE}\r\n".encode()
    send_over_tls(mailveil, verifying(generated, name=False), relay, "python ssl")
    smtplib.SMTP("127.0.0.1", mailveil.smtp_port).sendmail(  # in clear still works
        CUSTOMER, [relay], mail(CUSTOMER, relay, "in clear", "Hello\n").as_bytes())
    assert "TLS started" in swaks(mailveil, relay, "swaks")
    assert inbound_tls(mailveil, "GYG-1001", 3) == [
        ("python ssl", True, "TLSv1.3"), ("in clear", False, None), ("swaks", True, "TLSv1.3")]
    # The smarthost offers STARTTLS: opportunistic TLS uses it, and the archive says so.
    assert [m.tls for m in sink.wait_for(3)] == ["TLSv1.3"] * 3
    for attempt in attempts_until(mailveil, "GYG-1001", 3):
        assert (attempt["outcome"], attempt["encrypted"], attempt["tls_version"]) == (
            "delivered", True, "TLSv1.3")


@pytest.mark.parametrize("injected", [b"RSET\r\n", b"NOOP\r\nQUIT\r\n",
                                      b"MAIL FROM:<mallory@example.org>\r\n"])
def test_commands_pipelined_behind_starttls_are_dropped(mailveil: Mailveil,
                                                        injected: bytes) -> None:
    """CVE-2011-0411's class: a man in the middle appends commands to the client's
    STARTTLS in clear; a server that read them after the handshake would run them as the
    client's. Here the first reply over TLS must be the answer to the first command sent
    over TLS."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with starttls(mailveil, context, RELAY_DOMAIN, pipelined=injected) as client:
        client.send(b"MAIL FROM:<ann@example.org>\r\n")  # a new session wants EHLO first
        assert client.reply() == b"503 Error: send HELO first\r\n"
        client.send(b"QUIT\r\n")
        assert client.replies(2) == [b"221 Bye\r\n", b""]


@pytest.mark.parametrize("extra_env", [["one slot"]], indirect=True)
def test_a_client_silent_after_starttls_is_cut_and_frees_its_slot(mailveil: Mailveil) -> None:
    """asyncio reports a handshake cut short as done without ever saying the connection is
    lost: the session must end all the same, or each such client would hold a slot for
    ever. With one slot, the next client is served only if it was freed."""
    silent = served(mailveil)  # the fixture's own probe of the port may hold the slot a moment
    silent.send(b"EHLO client.example\r\nSTARTTLS\r\n")
    assert b"250-STARTTLS\r\n" in silent.reply()
    assert silent.reply() == b"220 Ready to start TLS\r\n"
    # No handshake: the idle timeout (1 s) cuts the session.
    assert silent.replies(2) == [f"{replies.S421_TIMEOUT}\r\n".encode(), b""]
    silent.close()
    served(mailveil).close()


def served(mv: Mailveil) -> RawSmtp:
    """A session greeted with 220 (not 421 for want of a slot), within :data:`HANG`."""
    deadline = time.monotonic() + HANG
    while True:
        client = RawSmtp(mv.smtp_port)
        if client.greeting.startswith(b"220 "):
            return client
        client.close()
        assert time.monotonic() < deadline, client.greeting
        time.sleep(0.2)


@pytest.mark.parametrize("extra_env", [["configured"]], indirect=True)
def test_starttls_with_a_configured_certificate_renewed_without_restart(
        mailveil: Mailveil, pki: Pki) -> None:
    relay = register(mailveil)["supplier_relay_address"]
    with starttls(mailveil, verifying(pki.ca), MX) as client:
        assert tls_of(client) == (der(pki.listener.cert), "TLSv1.3")
    send_over_tls(mailveil, verifying(pki.ca, name=False), relay, "python ssl")
    assert "TLS started" in swaks(mailveil, relay, "swaks", "--tls-verify",
                                  "--tls-ca-path", str(pki.ca), "--tls-sni", MX)
    assert inbound_tls(mailveil, "GYG-1001", 2) == [("python ssl", True, "TLSv1.3"),
                                                    ("swaks", True, "TLSv1.3")]
    renewed = pki.authority.issue(MX, pki.listener.cert.parent / "renewed")
    os.replace(renewed.key, pki.listener.key)
    os.replace(renewed.cert, pki.listener.cert)
    with starttls(mailveil, verifying(pki.ca), MX) as client:
        assert tls_of(client) == (der(pki.listener.cert), "TLSv1.3")
    assert "TLS certificate reloaded" in mailveil.log.read_text()


@pytest.mark.parametrize("extra_env", [["right CA"]], indirect=True)
def test_required_tls_to_a_verified_smarthost(mailveil: Mailveil, sink: Sink) -> None:
    relay = register(mailveil)["supplier_relay_address"]
    smtplib.SMTP("127.0.0.1", mailveil.smtp_port).sendmail(
        CUSTOMER, [relay], mail(CUSTOMER, relay, "verified", "Hello\n").as_bytes())
    [got] = sink.wait_for(1)
    assert got.tls == "TLSv1.3"
    [attempt] = attempts_until(mailveil, "GYG-1001", 1)
    assert (attempt["outcome"], attempt["encrypted"], attempt["tls_version"]) == (
        "delivered", True, "TLSv1.3")


@pytest.mark.parametrize("extra_env", [["wrong CA"]], indirect=True)
def test_required_tls_to_an_unverified_smarthost_is_retried_never_sent_in_clear(
        mailveil: Mailveil, sink: Sink) -> None:
    relay = register(mailveil)["supplier_relay_address"]
    smtplib.SMTP("127.0.0.1", mailveil.smtp_port).sendmail(
        CUSTOMER, [relay], mail(CUSTOMER, relay, "unverified", "Hello\n").as_bytes())
    attempts = attempts_until(mailveil, "GYG-1001", 2)  # MAILVEIL_RETRY_FIRST_SECONDS is 1
    for attempt in attempts:
        assert (attempt["outcome"], attempt["encrypted"], attempt["tls_version"]) == (
            "temporary", False, None)
        assert "CERTIFICATE_VERIFY_FAILED" in attempt["response"]
    [entry] = archive(mailveil, "GYG-1001", 1)
    assert entry["outbound"][0]["state"] == "queued"
    assert sink.messages == []
