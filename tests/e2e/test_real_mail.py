"""Real mail's long lines end to end, on SQLite and PostgreSQL: the shapes of the golden files
in tests/mail/golden (Outlook's 7bit HTML, a provider's 1,242-character header, one-line
base64, JSON lines, smtplib's bare LF) and the shared corpora go through the real SMTP
listener and ``mailveil serve`` to the receiving server.

What arrives has no line over 998 (the receiving server, aiosmtpd, refuses longer ones
anyway), parses, carries the same decoded content with the sender's address replaced in
the text, and verifies against the relay's DKIM key: the signature covers what was sent.
The archive keeps the bytes as received.
"""

from __future__ import annotations

import email
import smtplib
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from mailveil.mail.calendar import CARD_SUFFIXES, CARD_TYPES
from mailveil.mail.dkim import dns_txt_record
from mailveil.mail.mime import parse, serialize
from mailveil.store.db import make_engine
from mailveil.store.models import InboundRow
from tests.conftest import RELAY_DOMAIN, Mailveil
from tests.support.client import CUSTOMER, SUPPLIER, archive, archive_until_delivered, register
from tests.support.corpora import corpus_messages
from tests.support.long_lines import Leaf, decoded_leaves, long_lines
from tests.support.sink import Received, Sink

GOLDEN = Path(__file__).parents[1] / "mail" / "golden"
SHAPES = ("outlook_long_line", "gmx_long_header", "one_line_base64", "json_long_lines",
          "smtplib_bare_lf")
GOLDEN_SENDER, GOLDEN_RELAY = b"ann@example.org", b"local-partner-0a1b2c3d4e5f@reply.example.com"


@pytest.fixture
def extra_env() -> dict[str, str]:
    """No banner: what arrives must decode to exactly what was sent, the address aside; and
    room for the corpora's messages, all from one sender to one conversation."""
    return {"MAILVEIL_BANNER": "off", "MAILVEIL_RATE_SENDER": "1000/3600"}


def dkim_verifier(mailveil: Mailveil) -> Callable[[bytes], bool]:
    """Checks a signature against the key ``mailveil serve`` made in its data directory."""
    key = (mailveil.data_dir / "dkim" / "mailveil.pem").read_bytes()
    name, value = dns_txt_record(key, "mailveil", RELAY_DOMAIN)

    def lookup(qname: bytes, timeout: float = 5) -> bytes | None:
        return value.encode() if qname == f"{name}.".encode() else None

    return lambda raw: bool(dkim.verify(raw, dnsfunc=lookup))


def expected_leaves(sent: bytes, customer_relay: str) -> list[Leaf]:
    """The decoded parts the recipient must get: the sender's, the address replaced in text."""
    return [leaf._replace(data=leaf.data.replace(CUSTOMER.encode(), customer_relay.encode()))
            if leaf.kind.startswith("text/") else leaf for leaf in decoded_leaves(sent)]


def assert_arrived_intact(received: Received, sent: bytes, customer_relay: str,
                          verified: Callable[[bytes], bool]) -> None:
    assert received.rcpt_tos == (SUPPLIER,)
    assert long_lines(received.data) == []
    assert not email.message_from_bytes(received.data).defects
    assert decoded_leaves(received.data) == expected_leaves(sent, customer_relay)
    assert verified(received.data)


def as_stored(sent: bytes) -> bytes:
    """What the archive must hold for what ``smtplib.sendmail`` was given: smtplib ends the
    data with CRLF if it did not, the listener makes bare line ends CRLF; nothing else."""
    wire = sent if sent.endswith(b"\r\n") else sent + b"\r\n"
    return wire.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def stored_inbound(database_url: str) -> list[bytes]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.scalars(select(InboundRow.raw).order_by(InboundRow.id))
            return [bytes(raw) for raw in rows]
    finally:
        engine.dispose()


def test_real_mail_shapes_go_through_whole(mailveil: Mailveil, sink: Sink,
                                          database_url: str) -> None:
    b = register(mailveil, "GYG-LONG")
    relay, customer_relay = b["supplier_relay_address"], b["customer_relay_address"]
    sent = {}
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=30) as smtp:
        for shape in SHAPES:
            raw = (GOLDEN / f"{shape}_incoming.eml").read_bytes()
            raw = raw.replace(GOLDEN_SENDER, CUSTOMER.encode()).replace(GOLDEN_RELAY,
                                                                        relay.encode())
            smtp.sendmail(CUSTOMER, [relay], raw)  # bytes go as they are: bare LF too
            sent[email.message_from_bytes(raw)["Subject"]] = as_stored(raw)
    received = sink.wait_for(len(SHAPES), timeout=60)
    verified = dkim_verifier(mailveil)
    for got in received:
        subject = email.message_from_bytes(got.data)["Subject"]
        assert_arrived_intact(got, sent[subject], customer_relay, verified)
        assert CUSTOMER.encode() not in got.data.lower()
    assert stored_inbound(database_url) == list(sent.values())


def as_customers(raw: bytes, index: int, relay: str) -> bytes:
    """A corpus message as the booking's customer sends it: their From, our To, a Subject to
    find it by; every other byte as it is."""
    root = parse(raw).with_field("From", f"Ann Lee <{CUSTOMER}>").with_field("To", relay)
    return serialize(root.with_field("Subject", f"corpus {index}"))


def attachments(leaves: list[Leaf]) -> list[Leaf]:
    """The leaves carried byte for byte: not text, calendars or vCards, which are scrubbed
    (their file names may be too)."""
    return [leaf._replace(filename=None) for leaf in leaves
            if not (leaf.kind.startswith("text/") or leaf.kind in CARD_TYPES
                    or (leaf.filename or "").lower().endswith(CARD_SUFFIXES))]


def test_shared_corpora_go_through_whole(mailveil: Mailveil, sink: Sink) -> None:
    """Every message is refused for good with its reason, or accepted; every relayed copy is
    within the limit, verifies, parses as well as what was sent, and carries the same
    attachments."""
    relay = register(mailveil, "GYG-CORPUS")["supplier_relay_address"]
    sent: dict[str, bytes] = {}
    refused: dict[str, tuple[int, bytes | str]] = {}
    with smtplib.SMTP("127.0.0.1", mailveil.smtp_port, timeout=60) as smtp:
        for index, (name, raw) in enumerate(corpus_messages()):
            message = as_customers(raw, index, relay)
            try:
                smtp.sendmail(CUSTOMER, [relay], message)
                sent[f"corpus {index}"] = as_stored(message)
            except smtplib.SMTPDataError as error:
                refused[name] = (error.smtp_code, error.smtp_error)
                smtp.rset()
    assert all(code >= 500 and text for code, text in refused.values()), refused
    assert len(archive(mailveil, "GYG-CORPUS", len(sent), timeout=180)) == len(sent)
    entries = archive_until_delivered(mailveil, "GYG-CORPUS", timeout=120)
    relayed = {e["subject"] for e in entries if e["outcome"] == "relayed"}
    by_subject = {email.message_from_bytes(m.data)["Subject"]: m for m in sink.to(SUPPLIER)}
    assert set(by_subject) == relayed
    verified = dkim_verifier(mailveil)
    for subject, got in by_subject.items():
        assert long_lines(got.data) == [] and verified(got.data), subject
        before = email.message_from_bytes(sent[subject])
        after = email.message_from_bytes(got.data)
        assert len(after.defects) <= len(before.defects), subject
        assert attachments(decoded_leaves(got.data)) == attachments(
            decoded_leaves(sent[subject])), subject
