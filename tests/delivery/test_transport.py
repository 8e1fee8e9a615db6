"""The smarthost transport against a real receiving SMTP server (aiosmtpd) on loopback,
in clear and over TLS (STARTTLS and implicit) with certificates of a test authority."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.delivery.transport import (
    Result,
    SmarthostTransport,
    Status,
    TlsMode,
    crlf_lines,
)
from mailveil.smtp.tls import server_context
from tests.support.certs import Authority
from tests.support.sink import Sink

RAW = b"Subject: hi\r\n\r\n.a line that starts with a dot\r\nbye\r\n"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the authority that issued the sink's certificate (for 127.0.0.1)
    wrong_ca: Path  # another authority
    server: ssl.SSLContext  # the sink's


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    authority = Authority.create()
    return Pki(authority.write(folder / "ca.pem"),
               Authority.create("another CA").write(folder / "wrong-ca.pem"),
               server_context(authority.issue("127.0.0.1", folder / "sink")))


def send_all(sink: Sink, *envelopes: tuple[str, str], raw: bytes = RAW,
             **tls: Any) -> list[Result]:
    async def run() -> list[Result]:
        transport = SmarthostTransport("127.0.0.1", sink.port, **tls)
        try:
            return [await transport.send(sender, rcpt, raw) for sender, rcpt in envelopes]
        finally:
            await transport.close()

    return asyncio.run(run())


def test_delivered_byte_for_byte_with_its_size() -> None:
    with Sink.running() as sink:
        [result] = send_all(sink, ("bounce-1@reply.example.com", "ann@example.org"))
        [got] = sink.wait_for(1)
    assert result.status is Status.DELIVERED and result.code == 250
    assert got.data == RAW and got.rcpt_tos == ("ann@example.org",)
    assert got.mail_options == (f"SIZE={len(RAW)}",)


# Pieces that make dot-stuffing and line ends hard: dots at line starts, lone dots, bare
# CR and LF, "<LF>.<CR><LF>" (SMTP smuggling), NUL and 8-bit bytes.
_PIECES = st.sampled_from([b".", b"..", b"\r\n", b"\r", b"\n", b"a", b"\x00", b"\xff"])
_ANY = st.lists(_PIECES, max_size=60).map(b"".join)
# Mail as ours always is: CRLF lines of any other bytes.
_CRLF_MAIL = st.lists(st.lists(st.sampled_from([b".", b"a", b" ", b"\x00", b"\xff"]),
                               max_size=12).map(b"".join), max_size=12).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines))


@pytest.mark.parametrize(("strategy", "exact"), [(_CRLF_MAIL, True), (_ANY, False)],
                         ids=["crlf-mail", "any-bytes"])
def test_the_data_on_the_wire_unstuffed_is_the_message(strategy: st.SearchStrategy[bytes],
                                                       exact: bool) -> None:
    """Whatever the bytes, the receiver un-stuffs exactly what was given: CRLF mail byte
    for byte, anything else with its bare CR and LF as CRLF and a final CRLF."""
    with Sink.running() as sink:

        @settings(max_examples=100, deadline=None)
        @given(strategy)
        def check(raw: bytes) -> None:
            count = len(sink.messages)
            [result] = send_all(sink, ("", "ann@example.org"), raw=raw,
                                local_hostname="relay.example.com")
            assert result.status is Status.DELIVERED, result
            got = sink.wait_for(count + 1)[count]
            assert got.data == crlf_lines(raw)
            assert got.mail_options == (f"SIZE={len(got.data)}",)
            if exact:
                assert got.data == raw

        check()


def test_refusals_keep_the_connection_usable() -> None:
    with Sink.running() as sink:
        sink.rcpt_reply["gone@example.org"] = "550 5.1.1 no such user"
        results = send_all(sink, ("", "gone@example.org"), ("", "ann@example.org"))
        sink.wait_for(1)
    assert [(r.status, r.code) for r in results] == [(Status.PERMANENT, 550),
                                                     (Status.DELIVERED, 250)]
    assert results[0].text == "5.1.1 no such user"


def test_data_refused_is_temporary_or_permanent_by_its_code() -> None:
    with Sink.running() as sink:
        sink.data_reply = "452 4.2.2 mailbox full"
        full = send_all(sink, ("", "ann@example.org"))
        sink.data_reply = "552 5.3.4 too big"
        big = send_all(sink, ("", "ann@example.org"))
    assert (full[0].status, full[0].code) == (Status.TEMPORARY, 452)
    assert (big[0].status, big[0].code) == (Status.PERMANENT, 552)


def test_an_address_beyond_ascii_needs_smtputf8() -> None:
    with Sink.running() as plain:
        [refused] = send_all(plain, ("", "anné@example.org"))
    assert refused.status is Status.PERMANENT and "SMTPUTF8" in refused.text
    with Sink.running(smtputf8=True) as sink:
        [result] = send_all(sink, ("", "anné@example.org"))
        [got] = sink.wait_for(1)
    assert result.status is Status.DELIVERED
    assert got.rcpt_tos == ("anné@example.org",) and "SMTPUTF8" in got.mail_options


def test_opportunistic_tls_is_used_when_offered(pki: Pki) -> None:
    with Sink.running(tls=pki.server) as sink:
        results = send_all(sink, ("", "ann@example.org"), ("", "bob@example.org"))
        got = sink.wait_for(2)
    assert [(r.status, r.tls) for r in results] == [(Status.DELIVERED, "TLSv1.3")] * 2
    assert [m.tls for m in got] == ["TLSv1.3"] * 2 and got[0].data == RAW


def test_opportunistic_goes_in_clear_without_starttls() -> None:
    with Sink.running() as sink:
        [result] = send_all(sink, ("", "ann@example.org"))
        [got] = sink.wait_for(1)
    assert (result.status, result.tls, got.tls) == (Status.DELIVERED, None, None)


def test_off_never_starts_tls(pki: Pki) -> None:
    with Sink.running(tls=pki.server) as sink:
        [result] = send_all(sink, ("", "ann@example.org"), tls=TlsMode.OFF)
        [got] = sink.wait_for(1)
    assert (result.status, result.tls, got.tls) == (Status.DELIVERED, None, None)


def broken_tls() -> ssl.SSLContext:
    """A server's TLS that offers STARTTLS and fails every handshake: it has no certificate."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def test_opportunistic_falls_back_to_clear_when_the_handshake_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), Sink.running(tls=broken_tls()) as sink:
        [result] = send_all(sink, ("", "ann@example.org"))
        [got] = sink.wait_for(1)
    assert (result.status, result.tls, got.tls) == (Status.DELIVERED, None, None)
    assert any("STARTTLS failed" in r.message for r in caplog.records)


def test_required_delivers_over_a_verified_certificate(pki: Pki) -> None:
    with Sink.running(tls=pki.server) as sink:
        [result] = send_all(sink, ("", "ann@example.org"), tls=TlsMode.REQUIRED, ca=pki.ca)
        [got] = sink.wait_for(1)
    assert (result.status, result.tls, got.tls) == (Status.DELIVERED, "TLSv1.3", "TLSv1.3")


@pytest.mark.parametrize("case", ["wrong CA", "system store", "no STARTTLS", "broken TLS"])
def test_required_never_falls_back_to_clear(pki: Pki, case: str) -> None:
    """Each failure is temporary (the worker retries), and the sink never sees the message:
    not after the failed handshake, nor on the next attempt."""
    server: ssl.SSLContext | None = pki.server
    if case == "no STARTTLS":
        server = None
    elif case == "broken TLS":
        server = broken_tls()
    ca = pki.wrong_ca if case == "wrong CA" else None
    with Sink.running(tls=server) as sink:
        results = send_all(sink, ("", "ann@example.org"), ("", "ann@example.org"),
                           tls=TlsMode.REQUIRED, ca=ca)
        assert sink.messages == []
    assert [(r.status, r.code, r.tls) for r in results] == [(Status.TEMPORARY, None, None)] * 2
    expected = {"wrong CA": "CERTIFICATE_VERIFY_FAILED", "system store":
                "CERTIFICATE_VERIFY_FAILED", "no STARTTLS": "does not offer STARTTLS",
                "broken TLS": "STARTTLS with the smarthost failed"}[case]
    assert all(expected in r.text for r in results), results


def test_implicit_tls_as_on_port_465(pki: Pki) -> None:
    with Sink.running(tls=pki.server, implicit=True) as sink:
        [ok] = send_all(sink, ("", "ann@example.org"), implicit_tls=True,
                        tls=TlsMode.REQUIRED, ca=pki.ca)
        [bad] = send_all(sink, ("", "ann@example.org"), implicit_tls=True,
                         tls=TlsMode.REQUIRED, ca=pki.wrong_ca)
        [got] = sink.wait_for(1)
    assert (ok.status, ok.tls, got.tls) == (Status.DELIVERED, "TLSv1.3", "TLSv1.3")
    assert bad.status is Status.TEMPORARY and "CERTIFICATE_VERIFY_FAILED" in bad.text
    assert len(sink.messages) == 1
