"""The relay end to end: smtplib as the sender's mail program -> mailveil (a real
``mailveil serve`` process) -> a real receiving SMTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import smtplib
from email import message_from_bytes, policy
from pathlib import Path

import httpx

from tests.conftest import Mailveil, mailveil_env
from tests.support.client import (
    CUSTOMER,
    SUPPLIER,
    archive,
    archive_until_delivered,
    mail,
    register,
    send,
)
from tests.support.dns import SPOOFED_DOMAIN
from tests.support.net import free_port
from tests.support.sink import Sink


def test_customer_writes_supplier_replies_in_thread(mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil)
    first = mail(f"Ann Lee <{CUSTOMER}>", b["supplier_relay_address"], "Pick-up point?",
                 f"Hello, where do we meet? You can reach me at {CUSTOMER}.\n",
                 X_Originating_IP="[203.0.113.9]", Reply_To=CUSTOMER)
    send(mailveil, first, CUSTOMER, [b["supplier_relay_address"]])

    got = sink.wait_for(1)[0]
    assert got.rcpt_tos == (SUPPLIER,)
    assert CUSTOMER.encode() not in got.data.lower()
    assert b"203.0.113.9" not in got.data
    relayed = message_from_bytes(got.data, policy=policy.default)
    assert relayed["From"].addresses[0].addr_spec == b["customer_relay_address"]
    assert "Ann Lee" in relayed["From"].addresses[0].display_name
    assert relayed["To"].addresses[0].addr_spec == SUPPLIER
    assert relayed["Subject"] == "Pick-up point?"
    assert got.mail_from.startswith("bounce-") and got.mail_from.endswith("@reply.example.com")
    assert "DKIM-Signature" in relayed

    # The supplier hits "reply" in their mail program.
    reply = mail(f"Sunny Tours <{SUPPLIER}>", str(relayed["Reply-To"] or relayed["From"]),
                 "Re: Pick-up point?", f"At the fountain.\n\nOn Tue, Ann Lee <{CUSTOMER}> wrote:\n"
                 "> Hello, where do we meet?\n",
                 In_Reply_To=relayed["Message-ID"], References=relayed["Message-ID"])
    send(mailveil, reply, SUPPLIER, [b["customer_relay_address"]])
    back = sink.wait_for(2)[1]
    assert back.rcpt_tos == (CUSTOMER,)
    assert SUPPLIER.encode() not in back.data.lower()
    answer = message_from_bytes(back.data, policy=policy.default)
    assert answer["From"].addresses[0].addr_spec == b["supplier_relay_address"]
    # The customer's program threads it under the message it sent.
    assert answer["In-Reply-To"] == first["Message-ID"]
    assert first["Message-ID"] in answer["References"]
    assert answer["Message-ID"] != reply["Message-ID"]

    metrics = httpx.get(f"http://127.0.0.1:{mailveil.http_port}/metrics").text
    assert "mailveil_messages_accepted_total 2.0" in metrics
    assert 'mailveil_messages_decided_total{outcome="relayed"} 2.0' in metrics
    entries = archive(mailveil, "GYG-1001", 2)
    assert [e["outcome"] for e in entries] == ["relayed", "relayed"]
    assert [e["sender"] for e in entries] == ["customer", "supplier"]
    # Each copy's real address in the text was scrubbed; no line was too long.
    assert [o["steps"] for e in entries for o in e["outbound"]] == [
        ["scrub", "banner", "headers", "dkim-sign"]] * 2
    assert all(e["outbound"][0]["state"] == "delivered" for e in
               archive_until_delivered(mailveil, "GYG-1001"))


def test_supplier_starts_new_message_with_attachment_byte_identical(
        mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil, "GYG-2002")
    payload = os.urandom(9 * 1024 * 1024)
    msg = mail(SUPPLIER, b["customer_relay_address"], "Your tickets", "Tickets attached.\n")
    msg.add_attachment(payload, maintype="application", subtype="pdf", filename="tickets.pdf")
    send(mailveil, msg, SUPPLIER, [b["customer_relay_address"]])
    got = sink.wait_for(1, timeout=60)[0]
    assert got.rcpt_tos == (CUSTOMER,)
    out = message_from_bytes(got.data, policy=policy.default)
    attachments = list(out.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_filename() == "tickets.pdf"
    assert attachments[0].get_content() == payload
    assert SUPPLIER.encode() not in got.data.lower()


def test_unknown_address_and_non_party_are_refused_at_rcpt(mailveil: Mailveil) -> None:
    b = register(mailveil, "GYG-3003")
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail(CUSTOMER)
        code, text = smtp.rcpt("local-partner-000000000000@reply.example.com")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = smtp.rcpt("someone@elsewhere.example")
        assert (code, text[:5]) == (550, b"5.1.1")
        smtp.rset()
        smtp.mail("mallory@attacker.example")
        code, text = smtp.rcpt(b["supplier_relay_address"])
        assert (code, text[:5]) == (550, b"5.7.1")
        smtp.rset()
        # The customer may not write to their own relay address.
        smtp.mail(CUSTOMER)
        code, text = smtp.rcpt(b["customer_relay_address"])
        assert (code, text[:5]) == (550, b"5.7.1")


def test_expired_booking_is_refused_with_a_notice(mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil, "GYG-4004", days_from_now=-10)
    msg = mail(CUSTOMER, b["supplier_relay_address"], "Lost my hat", "Did you find my hat?\n")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    notice = sink.wait_for(1)[0]
    assert notice.rcpt_tos == (CUSTOMER,)
    assert notice.mail_from == ""
    dsn = message_from_bytes(notice.data, policy=policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["In-Reply-To"] == msg["Message-ID"]
    assert SUPPLIER.encode() not in notice.data.lower()
    entries = archive_until_delivered(mailveil, "GYG-4004")
    assert entries[0]["outcome"] == "refused_expired"
    assert [(o["kind"], o["steps"]) for e in entries for o in e["outbound"]] == [
        ("notice", None)]
    assert sink.to(SUPPLIER) == []


def test_accepted_message_survives_kill_9(database_url: str, sink: Sink,
                                          tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    smtp_port, http_port = free_port(), free_port()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: delivery must wait
    env = mailveil_env(database_url, data_dir, smtp_port, http_port, "t" * 32, dead)
    mv = Mailveil(env, data_dir, smtp_port, http_port, "t" * 32)
    mv.start()
    try:
        b = register(mv, "GYG-5005")
        send(mv, mail(CUSTOMER, b["supplier_relay_address"], "Hi", "Hello\n"), CUSTOMER,
             [b["supplier_relay_address"]])
        mv.kill()
        mv.env["MAILVEIL_SMARTHOST"] = f"127.0.0.1:{sink.port}"
        mv.start()
        got = sink.wait_for(1, timeout=30)
        assert got[0].rcpt_tos == (SUPPLIER,)
    finally:
        mv.stop()


def test_spoofed_sender_is_refused_at_data(mailveil: Mailveil, sink: Sink) -> None:
    """spoofed.example publishes SPF -all and DMARC p=reject: mail claiming to come from
    it through this host is forged, even from the booking's registered address."""
    spoofed = f"ann@{SPOOFED_DOMAIN}"
    b = register(mailveil, "GYG-6006", customer=spoofed)
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail(spoofed)
        assert smtp.rcpt(b["supplier_relay_address"])[0] == 250
        code, text = smtp.data(mail(spoofed, b["supplier_relay_address"], "Pay here",
                                    "New bank details.\n").as_bytes(policy=policy.SMTP))
    assert (code, text[:2]) == (550, b"5.")
    assert archive(mailveil, "GYG-6006", 0) == []
    assert sink.messages == []


def test_the_archive_names_the_client_that_connected(mailveil: Mailveil, sink: Sink) -> None:
    """With no trusted peer, the client is the TCP peer and its HELO name, whatever an
    XFORWARD it tries says (to it, an unknown command)."""
    relay = register(mailveil)["supplier_relay_address"]
    msg = mail(CUSTOMER, relay, "From a second address", "Hello\n")
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30,
                      local_hostname="mx.customer-mail.example",
                      source_address=("127.0.0.2", 0)) as smtp:
        assert smtp.docmd("XFORWARD", "ADDR=192.0.2.7 HELO=forged.example")[0] == 500
        smtp.send_message(msg, from_addr=CUSTOMER, to_addrs=[relay])
    sink.wait_for(1)
    [entry] = archive(mailveil, "GYG-1001", 1)
    assert (entry["client_address"], entry["client_helo"]) == ("127.0.0.2",
                                                              "mx.customer-mail.example")
