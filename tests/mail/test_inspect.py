"""The facts rules decide on, read tolerantly from real-world headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailveil.mail.inspect import MessageFacts, facts

CORPORA = Path(__file__).parents[1] / "corpora"
CORPUS_FILES = [
    pytest.param(path, id=str(path.relative_to(CORPORA)))
    for path in (sorted(CORPORA.rglob("*")) if CORPORA.is_dir() else [])
    if path.is_file()
] or [pytest.param(None, marks=pytest.mark.skip(reason=f"corpus folder {CORPORA} not present"))]

MESSAGE = (
    b"From: =?utf-8?q?Ann_L=C3=A9a?= <ann@example.org>\r\n"
    b"To: Customer <CUSTOMER-12ab3456cd78@reply.example.com>, undisclosed:;\r\n"
    b"Cc: Team: x@y.org, <z@y.org>;, =?utf-8?q?bob=40y.org?=, broken <b@q.org\r\n"
    b"Subject: =?utf-8?q?R=C3=A9servation?=\r\n =?utf-8?q?_confirm=C3=A9e?= \xe0\xb9\x84\r\n"
    b"Message-ID: <abc@example.org>\r\n"
    b"In-Reply-To: junk <r1@relay.example>\r\n"
    b"References: <r0@relay.example>\r\n\t<r1@relay\r\n .example> (comment) <r0@relay.example>\r\n"
    b"Date: Tue, 3 Mar 2026 10:00:00 +0700\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--b\r\nContent-Type: text/plain\r\n"
    b"Content-Disposition: attachment; filename=a.txt\r\n\r\n12345\r\n"
    b"--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n"
    b"--b--\r\n"
)


def test_facts_of_a_typical_message() -> None:
    assert facts(MESSAGE) == MessageFacts(
        subject="Réservation confirmée ไ",
        message_id="<abc@example.org>",
        in_reply_to=["<r1@relay.example>"],
        references=["<r0@relay.example>", "<r1@relay.example>"],
        to_cc=[
            "customer-12ab3456cd78@reply.example.com",
            "x@y.org",
            "z@y.org",
            "bob@y.org",
            "b@q.org",
        ],
        auto_submitted=False,
        is_delivery_report=False,
        attachment_bytes=5 + 4,
        date="Tue, 3 Mar 2026 10:00:00 +0700",
        from_name="Ann Léa",
    )


def test_empty_message() -> None:
    assert facts(b"") == MessageFacts("", None, [], [], [], False, False, 0, None, "")


def test_message_id_without_brackets() -> None:
    assert facts(b"Message-ID: abc@example.org\r\n\r\n").message_id == "<abc@example.org>"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Auto-Submitted: auto-replied\n", True),
        (b"Auto-Submitted: No (really)\n", False),
        (b"Precedence: BULK\n", True),
        (b"Precedence: list\n", True),
        (b"Precedence: first-class\n", False),
        (b"X-Autoreply: yes\n", True),
        (b"X-Autorespond: vacation\n", True),
        (b"Subject: out of office\n", False),
    ],
)
def test_auto_submitted(header: bytes, expected: bool) -> None:
    assert facts(header + b"\nbody").auto_submitted is expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b'multipart/report; report-type="Delivery-Status"; boundary=r', True),
        (b"multipart/report; report-type=disposition-notification; boundary=r", False),
        (b"multipart/mixed; report-type=delivery-status; boundary=r", False),
    ],
)
def test_delivery_report(content_type: bytes, expected: bool) -> None:
    raw = b"Content-Type: " + content_type + b"\n\n--r\n\nx\n--r--\n"
    assert facts(raw).is_delivery_report is expected


def test_huge_recipient_header_falls_back_to_a_search() -> None:
    to = b", ".join(b"User %d <u%d@example.org>" % (i, i) for i in range(2000))
    found = facts(b"To: " + to + b"\n\n").to_cc
    assert len(found) == 2000 and found[0] == "u0@example.org"


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_never_raises(raw: bytes) -> None:
    assert isinstance(facts(raw), MessageFacts)


@pytest.mark.parametrize("path", CORPUS_FILES)
def test_corpus(path: Path) -> None:
    found = facts(path.read_bytes())
    assert found.attachment_bytes >= 0
    assert all(one.startswith("<") and one.endswith(">") for one in found.references)
