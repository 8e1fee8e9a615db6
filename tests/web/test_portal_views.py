"""What the portal's pages show, from plain values (mailveil/web/portal/views.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from mailveil.web.portal.views import (
    MAX_TEXT,
    Request,
    Status,
    attachment_bytes,
    may_request_cancellation,
    readable,
    request_state,
    status,
    visible,
)

NOW = datetime(2027, 6, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(("outcome", "copy", "expected"), [
    ("relayed", "queued", Status.SENDING),
    ("relayed", "delivered", Status.DELIVERED),
    ("relayed", "undeliverable", Status.UNDELIVERABLE),
    ("relayed", "failed", Status.UNDELIVERABLE),
    ("relayed", "returned", Status.BOUNCED),
    ("relayed", "bounced", Status.BOUNCED),
    ("refused_virus", None, Status.REFUSED),
    ("refused_expired", None, Status.REFUSED),
    ("failed", None, Status.FAILED),
])
def test_status(outcome: str, copy: str | None, expected: Status) -> None:
    assert status(outcome, copy) is expected


def _message(text: str | None = None, html: str | None = None) -> EmailMessage:
    m = EmailMessage()
    m["Subject"] = "x"
    if text is not None:
        m.set_content(text)
    if html is not None:
        if text is None:
            m.set_content(html, subtype="html")
        else:
            m.add_alternative(html, subtype="html")
    return m


def test_plain_text_is_preferred_and_attachments_listed() -> None:
    m = _message("Hello\nworld", "<p>HTML</p>")
    m.add_attachment(b"\x00\x01", maintype="application", subtype="pdf",
                     filename='../../etc/"passwd".pdf')
    r = readable(m.as_bytes())
    assert r.text == "Hello\nworld" and not r.truncated
    [a] = r.attachments
    assert a.filename == "etcpasswd.pdf"  # no path, no quote
    assert (a.content_type, a.size) == ("application/pdf", 2)
    assert attachment_bytes(m.as_bytes(), a.index) == (a.filename, b"\x00\x01")
    assert attachment_bytes(m.as_bytes(), 0) is None  # a part that is no attachment


def test_html_only_mail_is_shown_as_its_text_never_as_markup() -> None:
    r = readable(_message(html="<html><head><style>p{}</style><script>alert(1)</script>"
                               "</head><body><p>Meet at <b>9</b></p><p>Bye&amp;</p></body>"
                               "</html>").as_bytes())
    assert r.text == "Meet at 9\nBye&"


def test_long_text_is_cut() -> None:
    r = readable(_message("a" * (MAX_TEXT + 10)).as_bytes())
    assert len(r.text) == MAX_TEXT and r.truncated


def test_a_broken_charset_still_reads() -> None:
    raw = (b"Subject: x\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\nhello \xff\r\n")
    assert readable(raw).text.startswith("hello")


def test_request_state() -> None:
    later = NOW + timedelta(days=1)
    assert request_state(None, None, NOW) is Request.NONE
    assert request_state("requested", later, NOW) is Request.WAITING
    assert request_state("requested", NOW - timedelta(seconds=1), NOW) is Request.UNANSWERED
    assert request_state("confirmed", later, NOW) is Request.CONFIRMED
    assert request_state("declined", NOW - timedelta(days=3), NOW) is Request.DECLINED


@pytest.mark.parametrize(("is_open", "cancelled", "latest", "allowed"), [
    (True, False, Request.NONE, True),
    (True, False, Request.DECLINED, True),
    (True, False, Request.UNANSWERED, True),
    (True, False, Request.WAITING, False),
    (False, False, Request.NONE, False),
    (True, True, Request.CONFIRMED, False),
])
def test_who_may_ask_to_cancel(is_open: bool, cancelled: bool, latest: Request,
                               allowed: bool) -> None:
    assert may_request_cancellation(is_open, cancelled, latest) is allowed


def test_the_customers_undelivered_original_is_never_shown() -> None:
    assert visible(False, b"copy", b"original") == b"copy"
    assert visible(True, b"copy", b"original") == b"copy"  # what the customer received
    assert visible(True, None, b"original") == b"original"  # the supplier's own, refused
    assert visible(False, None, b"original") is None  # not cleaned of the real address
