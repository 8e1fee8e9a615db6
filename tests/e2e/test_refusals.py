"""The four refusals of the help centre, end to end: each told to the sender as a DSN in
their language, each in the archive; and the BCC fan-out that is not a refusal."""

from __future__ import annotations

import smtplib
from email import message_from_bytes, policy
from email.message import EmailMessage, Message

import pytest

from tests.conftest import Mailveil
from tests.scan.clamd_fixture import ClamdInfo, eicar
from tests.support.client import (
    CUSTOMER,
    SUPPLIER,
    archive,
    archive_until_delivered,
    mail,
    register,
    send,
)
from tests.support.sink import Received, Sink


def parse_dsn(received: Received) -> tuple[EmailMessage, str, Message]:
    """The notice, its human-readable text, and the per-recipient delivery-status fields."""
    dsn = message_from_bytes(received.data, policy=policy.default)
    assert isinstance(dsn, EmailMessage)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Auto-Submitted"] == "auto-replied"
    human, status, _headers = dsn.iter_parts()
    text_part = human.get_body(("plain",)) if human.is_multipart() else human
    assert text_part is not None
    assert status.get_content_type() == "message/delivery-status"
    fields = status.get_payload()  # a delivery-status part: the message's, then each recipient's
    assert isinstance(fields, list) and isinstance(fields[1], Message)
    per_recipient: Message = fields[1]
    return dsn, text_part.get_content(), per_recipient


def test_several_customers_in_to_refused_in_french(mailveil: Mailveil, sink: Sink) -> None:
    a = register(mailveil, "GYG-A", customer="a@example.org")
    b = register(mailveil, "GYG-B", customer="b@example.org")
    msg = mail(SUPPLIER, a["customer_relay_address"], "Rappel", "Rendez-vous à 9h.\n",
               Cc=b["customer_relay_address"])
    send(mailveil, msg, SUPPLIER, [a["customer_relay_address"], b["customer_relay_address"]])
    [notice] = sink.wait_for(1)
    assert notice.rcpt_tos == (SUPPLIER,)
    dsn, text, fields = parse_dsn(notice)
    assert "GYG-" in text and "Rappel" in text
    assert "client" in text.lower()  # the supplier's locale is French
    assert fields["Action"] == "failed"
    assert dsn["In-Reply-To"] == msg["Message-ID"]
    assert b"a@example.org" not in notice.data and b"b@example.org" not in notice.data
    assert archive(mailveil, "GYG-A", 1)[0]["outcome"] == "refused_several_customers"
    assert archive(mailveil, "GYG-B", 1)[0]["outcome"] == "refused_several_customers"
    # Outbox rows are written with the archive entry: once none waits, the sink has all.
    archive_until_delivered(mailveil, "GYG-A")
    archive_until_delivered(mailveil, "GYG-B")
    assert len(sink.messages) == 1


def test_customers_in_bcc_each_get_a_copy_that_shows_no_other(mailveil: Mailveil,
                                                              sink: Sink) -> None:
    bookings = [register(mailveil, f"GYG-{n}", customer=f"guest{n}@example.org")
                for n in range(3)]
    relays = [b["customer_relay_address"] for b in bookings]
    msg = mail(SUPPLIER, relays[0], "Weather update", "Bring a raincoat.\n")
    send(mailveil, msg, SUPPLIER, relays)  # To names one, the other two are BCC
    got = sink.wait_for(3)
    assert sorted(m.rcpt_tos[0] for m in got) == [f"guest{n}@example.org" for n in range(3)]
    for m in got:
        me = m.rcpt_tos[0]
        copy = message_from_bytes(m.data, policy=policy.default)
        assert copy["To"].addresses[0].addr_spec == me
        assert "Cc" not in copy and "Bcc" not in copy
        others = [f"guest{n}@example.org" for n in range(3) if f"guest{n}@example.org" != me]
        for other in [*others, *relays, SUPPLIER]:
            assert other.encode() not in m.data.lower(), (me, other)


def test_attachment_above_ten_megabytes_refused(mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil, "GYG-BIG")
    msg = mail(CUSTOMER, b["supplier_relay_address"], "Photos", "All our photos.\n")
    msg.add_attachment(b"\0" * (10 * 1024 * 1024 + 1), maintype="image", subtype="jpeg",
                       filename="photos.jpg")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    [notice] = sink.wait_for(1, timeout=60)
    assert notice.rcpt_tos == (CUSTOMER,)
    _, text, fields = parse_dsn(notice)
    assert "10" in text and "Photos" in text
    assert str(fields["Status"]).startswith("5.")
    assert archive(mailveil, "GYG-BIG", 1)[0]["outcome"] == "refused_too_large"


def test_far_larger_message_refused_during_data(mailveil: Mailveil) -> None:
    b = register(mailveil, "GYG-HUGE")
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=60) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("size")
        assert int(smtp.esmtp_features["size"]) >= 10 * 1024 * 1024 * 4 // 3
        smtp.mail(CUSTOMER)
        smtp.rcpt(b["supplier_relay_address"])
        code, _ = smtp.data(b"Subject: huge\r\n\r\n" + (b"x" * 998 + b"\r\n") * 21_000)
        assert code == 552


def test_expired_notice_points_to_contact_form_in_thai(mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil, "GYG-TH", days_from_now=-10, locale="th")
    msg = mail(CUSTOMER, b["supplier_relay_address"], "ลืมหมวก", "เจอหมวกของฉันไหม\n")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    [notice] = sink.wait_for(1)
    _, text, _ = parse_dsn(notice)
    assert "https://tourly.example.com/contact" in text
    assert any("\u0e00" <= ch <= "\u0e7f" for ch in text)  # written in Thai
    assert "ลืมหมวก" in text


def test_auto_reply_to_a_closed_conversation_gets_no_notice(mailveil: Mailveil,
                                                            sink: Sink) -> None:
    b = register(mailveil, "GYG-OOO", days_from_now=-10)
    msg = mail(CUSTOMER, b["supplier_relay_address"], "Out of office", "Away until Monday.\n",
               Auto_Submitted="auto-replied")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    [entry] = archive_until_delivered(mailveil, "GYG-OOO")
    assert entry["outcome"] == "refused_expired"
    assert entry["outbound"] == []  # written with the entry: no notice was queued
    assert sink.messages == []


def test_smarthost_permanent_failure_is_explained(mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil, "GYG-550")
    sink.rcpt_reply[SUPPLIER] = "550 5.1.1 <bookings@sunny-tours.example>: no such user"
    msg = mail(CUSTOMER, b["supplier_relay_address"], "Question", "Is lunch included?\n")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    [notice] = sink.wait_for(1)
    assert notice.rcpt_tos == (CUSTOMER,)
    _, text, fields = parse_dsn(notice)
    assert "Question" in text
    assert str(fields["Status"]).startswith("5.")
    assert b"sunny-tours" not in notice.data  # nothing about the recipient's provider
    [entry] = [e for e in archive(mailveil, "GYG-550", 2) if e["outcome"] != "relayed"]
    assert entry["outcome"] == "refused_undeliverable"
    relay = next(o for e in archive(mailveil, "GYG-550", 2) for o in e["outbound"]
                 if o["kind"] == "relay")
    assert relay["state"] == "failed"
    assert relay["attempts"][0]["code"] == 550


@pytest.fixture
def extra_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if "retried" in request.node.name:
        return {"MAILVEIL_RETRY_SECONDS": "4"}
    return {}


def test_mailbox_full_is_retried_then_explained(mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil, "GYG-452")
    sink.rcpt_reply[SUPPLIER] = "452 4.2.2 Mailbox full"
    msg = mail(CUSTOMER, b["supplier_relay_address"], "Retry me", "Hello?\n")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    [notice] = sink.wait_for(1, timeout=40)
    assert notice.rcpt_tos == (CUSTOMER,)
    parse_dsn(notice)
    relay = next(o for e in archive_until_delivered(mailveil, "GYG-452")
                 for o in e["outbound"] if o["kind"] == "relay")
    assert relay["state"] == "failed"
    codes = [a["code"] for a in relay["attempts"]]
    assert len(codes) >= 2 and set(codes) == {452}
    times = [a["attempted_at"] for a in relay["attempts"]]
    assert times == sorted(times)


def test_bounce_to_verp_address_is_explained(mailveil: Mailveil, sink: Sink) -> None:
    b = register(mailveil, "GYG-DSN")
    msg = mail(CUSTOMER, b["supplier_relay_address"], "Dinner?", "Shall we?\n")
    send(mailveil, msg, CUSTOMER, [b["supplier_relay_address"]])
    [relayed] = sink.wait_for(1)
    verp = relayed.mail_from
    copy = message_from_bytes(relayed.data, policy=policy.default)
    bounce = (
        "From: MAILER-DAEMON@mx.sunny-tours.example\r\n"
        f"To: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nMailbox full.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.sunny-tours.example\r\n\r\n"
        f"Final-Recipient: rfc822; {SUPPLIER}\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        "Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {copy['Message-ID']}\r\nSubject: Dinner?\r\n\r\n--B--\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        smtp.sendmail("<>", [verp], bounce)
    notice = sink.wait_for(2)[1]
    assert notice.rcpt_tos == (CUSTOMER,)
    _, text, _ = parse_dsn(notice)
    assert "Dinner?" in text
    assert b"sunny-tours" not in notice.data
    outcomes = {e["outcome"] for e in archive(mailveil, "GYG-DSN", 3)}
    assert {"relayed", "bounce_recorded", "refused_undeliverable"} <= outcomes


class TestVirusScan:
    @pytest.fixture
    def extra_env(self, clamd: ClamdInfo) -> dict[str, str]:
        return {"MAILVEIL_CLAMD": clamd.tcp_address}

    def test_eicar_is_refused_and_quarantined(self, mailveil: Mailveil, sink: Sink) -> None:
        b = register(mailveil, "GYG-V")
        msg = mail(SUPPLIER, b["customer_relay_address"], "Your ticket", "Ticket attached.\n")
        msg.add_attachment(eicar(), maintype="application", subtype="pdf",
                           filename="ticket.pdf")
        send(mailveil, msg, SUPPLIER, [b["customer_relay_address"]])
        [notice] = sink.wait_for(1)
        assert notice.rcpt_tos == (SUPPLIER,)
        _, text, _ = parse_dsn(notice)
        assert "ticket.pdf" in text or "Your ticket" in text
        assert eicar() not in notice.data
        [entry] = archive(mailveil, "GYG-V", 1)
        assert entry["outcome"] == "refused_virus"
        assert entry["scan"].startswith("infected")

    def test_clean_mail_is_recorded_as_scanned(self, mailveil: Mailveil, sink: Sink) -> None:
        b = register(mailveil, "GYG-C")
        send(mailveil, mail(CUSTOMER, b["supplier_relay_address"], "Hi", "Hello\n"), CUSTOMER,
             [b["supplier_relay_address"]])
        sink.wait_for(1)
        assert archive(mailveil, "GYG-C", 1)[0]["scan"] == "clean"


class TestScannerDown:
    @pytest.fixture
    def extra_env(self) -> dict[str, str]:
        from tests.support.net import free_port

        return {"MAILVEIL_CLAMD": f"127.0.0.1:{free_port()}"}

    def test_unreachable_scanner_defers_with_451(self, mailveil: Mailveil) -> None:
        b = register(mailveil, "GYG-D")
        with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.mail(CUSTOMER)
            smtp.rcpt(b["supplier_relay_address"])
            code, text = smtp.data(f"From: {CUSTOMER}\r\nSubject: x\r\n\r\nhello\r\n".encode())
        assert (code, text[:5]) == (451, b"4.7.1")
        assert archive(mailveil, "GYG-D", 0) == []
