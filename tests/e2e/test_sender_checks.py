"""SPF, DKIM and DMARC at DATA, against ``mailveil serve`` and the test DNS server.

The client is on loopback, so each ``<spf>-<policy>.example`` of tests/support/dns.py
gives that SPF result and publishes that DMARC policy.
"""

from __future__ import annotations

import base64
import os
import select
import smtplib
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from mailveil.authn.authenticity import FromShape
from mailveil.mail.dkim import sign
from mailveil.smtp import replies
from tests.conftest import Mailveil
from tests.support.client import CUSTOMER, archive, register
from tests.support.dns import (
    DKIM_SELECTOR,
    POLICIES,
    SIGNED_DOMAIN,
    SPF,
    Held,
    dkim_key,
    dkim_key_name,
    holding_dns,
    policy_domain,
)
from tests.support.raw_smtp import RawSmtp
from tests.support.sink import Sink

# Each shape of the From header, as header lines, for a supplier writing from ``sender``.
SHAPES: dict[str, tuple[FromShape, str]] = {
    "one": (FromShape.ONE, "From: Sunny Tours <{sender}>"),
    "missing": (FromShape.MISSING, ""),
    "doubled": (FromShape.SEVERAL_FIELDS, "From: {sender}\r\nFrom: {sender}"),
    "two addresses": (FromShape.SEVERAL_ADDRESSES, "From: {sender}, boss@{domain}"),
    "group": (FromShape.GROUP, "From: undisclosed-recipients:;"),
    "empty": (FromShape.NO_ADDRESS, "From:"),
}
Reply = tuple[int, str]  # the code, and the text of a refusal ("" for 250)


@pytest.fixture
def held() -> Iterator[Held]:
    with holding_dns(dkim_key_name()) as held:
        yield held


@pytest.fixture
def extra_env(held: Held) -> dict[str, str]:
    return {"MAILVEIL_DNS": held.address}


def _raw(from_lines: str, to: str, subject: str = "Pickup", body: bytes = b"See you at 8.\r\n"
         ) -> bytes:
    head = (f"{from_lines}\r\n" if from_lines else "") + (
        f"To: {to}\r\nSubject: {subject}\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return head.encode() + body


def _send(smtp: smtplib.SMTP, sender: str, to: str, raw: bytes) -> Reply:
    smtp.ehlo_or_helo_if_needed()
    smtp.mail(sender)
    code, _ = smtp.rcpt(to)
    assert code == 250
    code, text = smtp.data(raw)
    return code, "" if code == 250 else text.decode()


def _reply(text: str) -> Reply:
    """A named reply as smtplib gives it back: the code, and the rest of the line."""
    return int(text[:3]), text[4:]


def _expected(shape: FromShape, spf: str, dmarc: str) -> Reply:
    """RFC 7489 as the relay applies it; see mailveil/authn/authenticity.py."""
    if shape is not FromShape.ONE:
        return _reply(replies.FROM_REFUSED[shape])
    if spf == "pass":
        return 250, ""  # aligned SPF pass: DMARC passes
    if dmarc in ("quarantine", "reject"):
        return _reply(replies.S550_DMARC_FAIL)
    if spf == "fail":
        return _reply(replies.S550_SPF_FAIL)  # p=none or no DMARC: the hard fail still counts
    return 250, ""  # accepted, unverified


def test_from_shape_by_dmarc_policy_by_spf_result(mailveil: Mailveil) -> None:
    """Issue 16.2: a From that is missing, doubled, two addresses, a group or empty never
    skips DMARC; every shape x policy x SPF result gets the reply the table says."""
    replies: dict[tuple[str, str, str], Reply] = {}
    expected: dict[tuple[str, str, str], Reply] = {}
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        for spf in SPF:
            for dmarc in POLICIES:
                domain = policy_domain(spf, dmarc)
                sender = f"ops@{domain}"
                booking = register(mailveil, f"T-{spf}-{dmarc}", supplier=sender,
                                   supplier_id=f"sup-{spf}-{dmarc}")
                to = booking["customer_relay_address"]
                for name, (shape, lines) in SHAPES.items():
                    raw = _raw(lines.format(sender=sender, domain=domain), to)
                    replies[(name, spf, dmarc)] = _send(smtp, sender, to, raw)
                    expected[(name, spf, dmarc)] = _expected(shape, spf, dmarc)
    assert replies == expected


def _text_body(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_unverified_sender_is_archived_and_the_recipient_warned(mailveil: Mailveil,
                                                               sink: Sink) -> None:
    """Issue 16.6: customer-mail.example publishes no SPF, DKIM or DMARC: relayed, with a
    warning in the supplier's language (French) and "unverified" in the archive. A sender
    whose SPF passes is relayed without it."""
    verified_supplier = f"ops@{policy_domain('pass', 'reject')}"
    b = register(mailveil, "GYG-7001", supplier=verified_supplier)
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        assert _send(smtp, CUSTOMER, b["supplier_relay_address"],
                     _raw(f"From: Ann Lee <{CUSTOMER}>", b["supplier_relay_address"])) == (250, "")
        assert _send(smtp, verified_supplier, b["customer_relay_address"],
                     _raw(f"From: {verified_supplier}", b["customer_relay_address"],
                          subject="Confirmed")) == (250, "")
    sink.wait_for(2)
    [to_supplier] = sink.to(verified_supplier)
    [to_customer] = sink.to(CUSTOMER)
    warning = "Nous n\u2019avons pas pu vérifier que ce message vient bien de Ann Lee."
    assert warning in _text_body(to_supplier.data).splitlines()
    assert "could not verify" not in _text_body(to_customer.data)
    entries = archive(mailveil, "GYG-7001", 2)
    assert {e["subject"]: e["sender_check"] for e in entries} == {
        "Pickup": "unverified", "Confirmed": "verified"}


@pytest.mark.parametrize("extra_env", [{"MAILVEIL_UNVERIFIED_SENDERS": "refuse"}])
def test_operator_may_refuse_unverified_senders(mailveil: Mailveil) -> None:
    verified_supplier = f"ops@{policy_domain('pass', 'none')}"
    b = register(mailveil, "GYG-7002", supplier=verified_supplier)
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        assert _send(smtp, CUSTOMER, b["supplier_relay_address"],
                     _raw(f"From: {CUSTOMER}", b["supplier_relay_address"])) == _reply(
            replies.S550_UNVERIFIED)
        assert _send(smtp, verified_supplier, b["customer_relay_address"],
                     _raw(f"From: {verified_supplier}", b["customer_relay_address"])) == (250, "")


def _big_signed(sender: str, to: str) -> bytes:
    """About 13 MiB, DKIM-signed by signed.example, whose SPF allows no host: only the
    signature, verified in full, gets it a 250."""
    blob = base64.encodebytes(os.urandom(9_900_000)).replace(b"\n", b"\r\n")
    raw = _raw(f"From: Sunny Tours <{sender}>", to, subject="Tickets", body=blob)
    return sign(raw, domain=SIGNED_DOMAIN, selector=DKIM_SELECTOR, private_key=dkim_key())


def _whole_transaction(mv: Mailveil, to: str, subject: str) -> Reply:
    with smtplib.SMTP("127.0.0.1", mv.smtp_port, timeout=30) as smtp:
        return _send(smtp, CUSTOMER, to, _raw(f"From: {CUSTOMER}", to, subject=subject))


def _replied(client: RawSmtp) -> bool:
    return bool(select.select([client.sock], [], [], 0)[0])


def test_other_sessions_complete_while_a_13_mib_message_is_received_and_checked(
        mailveil: Mailveil, held: Held) -> None:
    """Issue 12.4. The DNS server holds the answer for signed.example's DKIM key, so the big
    message stays in its authenticity check until the test lets it go; meanwhile another
    client's whole transaction must complete. Its dkimpy work (canonicalising and hashing
    13 MiB, RSA) runs in a worker process: tests/authn/test_authenticity.py proves that it
    never runs in the listener's process."""
    supplier = f"ops@{SIGNED_DOMAIN}"
    b = register(mailveil, "GYG-7003", supplier=supplier)
    raw = _big_signed(supplier, b["customer_relay_address"])
    assert 12 * 2**20 < len(raw) < 14 * 2**20
    big = RawSmtp(mailveil.smtp_port, timeout=60)
    try:
        big.send(b"EHLO big.example\r\n")
        assert big.reply().startswith(b"250")
        big.send(f"MAIL FROM:<{supplier}>\r\nRCPT TO:<{b['customer_relay_address']}>\r\n"
                 "DATA\r\n".encode())
        assert [r[:3] for r in big.replies(3)] == [b"250", b"250", b"354"]
        big.send(raw)
        # In DATA: all but the final dot is sent.
        assert _whole_transaction(mailveil, b["supplier_relay_address"], "During DATA") == (
            250, "")
        assert not _replied(big)
        big.send(b".\r\n")
        assert held.asked.wait(60), "the DKIM key of the big message was never asked for"
        # Being checked: its key is held.
        assert _whole_transaction(mailveil, b["supplier_relay_address"], "During check") == (
            250, "")
        assert not _replied(big)
        held.release.set()
        assert big.reply().startswith(b"250 ")
    finally:
        big.close()
    subjects = {e["subject"]: e["sender_check"] for e in archive(mailveil, "GYG-7003", 3)}
    assert subjects == {"During DATA": "unverified", "During check": "unverified",
                        "Tickets": "verified"}
