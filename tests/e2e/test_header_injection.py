"""Issue 16.1 end to end: a customer name from the API and a Subject whose encoded words
hide CR LF reach the supplier as one display name and one Subject, never as headers."""

from __future__ import annotations

import base64
import smtplib
from email import message_from_bytes, policy

from tests.conftest import Mailveil
from tests.support.client import CUSTOMER, SUPPLIER, register
from tests.support.sink import Sink

HIDDEN_BCC = "=?utf-8?b?QW5uDQpCY2M6IHZAby5leGFtcGxl?="  # Ann<CR><LF>Bcc: v@o.example
TAIL = "x\r\nReply-To: attacker@evil.example\r\nX-Injected: yes\r\n\r\ninjected body"


def test_hidden_line_breaks_in_a_name_and_a_subject_stay_inside_them(
    mailveil: Mailveil, sink: Sink
) -> None:
    b = register(mailveil, customer_name=HIDDEN_BCC)
    first = base64.b64encode(f"Write to {CUSTOMER} ".encode()).decode()
    second = base64.b64encode(TAIL.encode()).decode()
    raw = (
        f"From: {CUSTOMER}\r\nTo: {b['supplier_relay_address']}\r\n"
        f"Subject: =?utf-8?b?{first}?= =?utf-8?b?{second}?=\r\n"
        "Message-ID: <inj-1@customer-mail.example>\r\n\r\nHello\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        smtp.sendmail(CUSTOMER, [b["supplier_relay_address"]], raw)

    got = sink.wait_for(1)[0]
    assert got.rcpt_tos == (SUPPLIER,)
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"\r\nReply-To:" not in head
    assert b"\r\nX-Injected:" not in head and CUSTOMER.encode() not in got.data.lower()
    relayed = message_from_bytes(got.data, policy=policy.default)
    assert relayed["From"].addresses[0].display_name.startswith("Ann Bcc: v@o.example")
    assert relayed["From"].addresses[0].addr_spec == b["customer_relay_address"]
    assert relayed["Subject"] == (
        f"Write to {b['customer_relay_address']} x Reply-To: attacker@evil.example "
        "X-Injected: yes injected body"
    )
    assert relayed.get_content().rstrip().endswith("Hello")
