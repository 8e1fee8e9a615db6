"""Mail as real programs send it into a real ``mailveil serve``, on SQLite and PostgreSQL: the
Debian Postfix relaying to it (8BITMIME, PIPELINING), and Python's smtplib handed
``msg.as_bytes()`` (bare LF line ends). What reaches the receiving server has the same
decoded content as what the sender wrote.
"""

from __future__ import annotations

import base64
import hashlib
import re
import smtplib
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import RELAY_DOMAIN, Mailveil
from tests.support.client import CUSTOMER, register
from tests.support.net import free_port
from tests.support.postfix import POSTFIX, Postfix, running_postfix
from tests.support.sink import Sink

TEXT = "Bonjour, le café est réservé pour 10 h à l'hôtel Müller. Ça marche ?"
LONG_LINE = "Détails : " + " ".join(f"étape-{n:04d}" for n in range(140))  # 1,500 characters
BLOB = hashlib.sha512(b"ticket").digest() * 52  # 3,328 bytes: one base64 line of 4,440


def raw_message(relay: str, subject: str) -> bytes:
    """What a script writes by hand: LF line ends, an 8-bit text part with a 1,500-character
    line, and an attachment whose base64 is one line."""
    lines = [
        f"From: Ann Lee <{CUSTOMER}>", f"To: {relay}", f"Subject: {subject}",
        "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', "",
        "--b", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "",
        TEXT, LONG_LINE, "",
        "--b", 'Content-Type: application/octet-stream; name="ticket.bin"',
        "Content-Transfer-Encoding: base64", "",
        base64.b64encode(BLOB).decode(), "--b--", ""]
    return "\n".join(lines).encode()


def assert_intact(relayed: bytes) -> None:
    """The decoded text and attachment are the sender's, and no line over 998 left the relay."""
    assert max(len(line) for line in relayed.split(b"\r\n")) <= 998
    msg = message_from_bytes(relayed, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    text = msg.get_body(("plain",))
    assert text is not None
    lines = text.get_content().splitlines()
    assert TEXT in lines and LONG_LINE in lines
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "ticket.bin"
    assert attachment.get_payload(decode=True) == BLOB


@pytest.fixture
def postfix(mailveil: Mailveil) -> Iterator[Postfix]:
    """Postfix relaying the relay domain to mailveil, as a sender's provider would.

    ``smtpd_forbid_bare_newline = normalize`` is Postfix 3.9's default (this is 3.7).
    ``smtp_line_length_limit = 0``: Postfix sends lines as they came, as many providers'
    servers do, instead of breaking them at 998 with an inserted space (its default, which
    would change the text before mailveil sees it). ``debug_peer_list`` logs the dialogue.
    """
    if not Path(POSTFIX).exists():
        pytest.fail(f"{POSTFIX} is missing (make system-packages installs postfix)")
    with running_postfix(free_port(), relay_domain=RELAY_DOMAIN,
                         next_hop_port=mailveil.smtp_port,
                         settings={"smtpd_forbid_bare_newline": "normalize",
                                   "smtp_line_length_limit": "0",
                                   "debug_peer_list": "127.0.0.1"}) as running:
        yield running
        print(running.log_text()[-8000:])  # shown by pytest only when the test failed


def test_postfix_relays_real_mail_into_mailveil(mailveil: Mailveil, sink: Sink,
                                                postfix: Postfix) -> None:
    relay = register(mailveil, "GYG-POSTFIX")["supplier_relay_address"]
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
        smtp.sendmail(CUSTOMER, [relay], raw_message(relay, "via postfix"),
                      mail_options=["BODY=8BITMIME"])
    [received] = sink.wait_for(1, timeout=60)
    assert_intact(received.data)

    # What Postfix's SMTP client and mailveil said: 8BITMIME and PIPELINING offered, then
    # MAIL with BODY=8BITMIME, RCPT and DATA sent in one go, before any reply was read.
    said = re.compile(rf"/smtp\[\d+\]: ([<>]) 127\.0\.0\.1\[127\.0\.0\.1\]:"
                      rf"{mailveil.smtp_port}: (.*)")
    dialogue = [" ".join(m.groups()) for line in postfix.log_text().splitlines()
                if (m := said.search(line))]
    mail = next(n for n, line in enumerate(dialogue) if line.startswith("> MAIL FROM:"))
    assert {"< 250-8BITMIME", "< 250-PIPELINING"} <= set(dialogue[:mail])
    assert dialogue[mail].endswith(" BODY=8BITMIME")
    assert dialogue[mail + 1:mail + 4] == [f"> RCPT TO:<{relay}>", "> DATA", "< 250 OK"]


def test_smtplib_sendmail_of_as_bytes_is_accepted(mailveil: Mailveil, sink: Sink) -> None:
    """``smtplib.SMTP.sendmail(from, to, msg.as_bytes())``, the most common way to send from
    Python: LF line ends, dot-stuffed after them, and an attachment."""
    relay = register(mailveil, "GYG-SMTPLIB")["supplier_relay_address"]
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"Ann Lee <{CUSTOMER}>", relay, "via smtplib"
    msg.set_content(f"{TEXT}\n.a line with a leading dot\n.\n{LONG_LINE}\n")
    msg.add_attachment(BLOB, maintype="application", subtype="octet-stream",
                       filename="ticket.bin")
    data = msg.as_bytes()
    assert b"\n" in data and b"\r\n" not in data
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        assert smtp.sendmail(CUSTOMER, [relay], data) == {}
    [received] = sink.wait_for(1)
    assert_intact(received.data)
    text = message_from_bytes(received.data, policy=policy.default).get_body(("plain",))
    assert text is not None
    lines = text.get_content().splitlines()
    assert ".a line with a leading dot" in lines and "." in lines
