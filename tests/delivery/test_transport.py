"""The smarthost transport against a real receiving SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio

from mailveil.delivery.transport import Result, SmarthostTransport, Status
from tests.support.sink import Sink

RAW = b"Subject: hi\r\n\r\n.a line that starts with a dot\r\nbye\r\n"


def send_all(sink: Sink, *envelopes: tuple[str, str]) -> list[Result]:
    async def run() -> list[Result]:
        transport = SmarthostTransport("127.0.0.1", sink.port)
        try:
            return [await transport.send(sender, rcpt, RAW) for sender, rcpt in envelopes]
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
