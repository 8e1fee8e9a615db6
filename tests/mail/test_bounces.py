"""Reading bounces: real DSNs and text bounces from public corpora, plus the formats the
corpora lack (qmail, Exim text, RFC 6533 global DSNs), and classifying SMTP replies."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mailveil.mail.bounces import BounceReport, classify, parse_report
from mailveil.mail.notices import UndeliverableCause as Cause

CORPORA = Path(__file__).parents[1] / "corpora"
MIMEKIT = CORPORA / "MimeKit" / "UnitTests" / "TestData" / "messages"
FLANKER = CORPORA / "flanker" / "tests" / "fixtures" / "messages"


def corpus(path: Path) -> bytes:
    if not path.is_file():
        pytest.skip(f"corpus file not present: {path}")
    return path.read_bytes()


def report_of(path: Path) -> BounceReport:
    report = parse_report(corpus(path))
    assert report is not None, path.name
    return report


@pytest.mark.parametrize(("path", "permanent", "cause"), [
    # Postfix via Proofpoint: the machine part is mangled base64, so the text is read.
    (MIMEKIT / "bounce.txt", True, Cause.ADDRESS_INVALID),
    (MIMEKIT / "delivery-status.txt", True, Cause.ADDRESS_INVALID),
    (MIMEKIT / "delivery-status-no-blank-line.txt", True, Cause.ADDRESS_INVALID),
    # Only Original-Recipient, no Action, and blank lines splitting the groups oddly.
    (MIMEKIT / "delivery-status-multiple-blank-lines.txt", True, Cause.REJECTED),
    # Exim: a generic 5.0.0 and no Diagnostic-Code; "Unknown user" is in the human part.
    (MIMEKIT / "delivery-status2.txt", True, Cause.ADDRESS_INVALID),
    (FLANKER / "bounce" / "mailbox-full.eml", True, Cause.MAILBOX_FULL),
    (FLANKER / "bounce" / "zed.eml", True, Cause.ADDRESS_INVALID),
    (FLANKER / "bounce" / "office365.eml", True, Cause.ADDRESS_INVALID),
    # The sending MTA gave up after 5 days: failed, even though the last reply was a 4xx.
    (FLANKER / "bounce" / "delayed.eml", True, Cause.HOST_UNREACHABLE),
    (FLANKER / "bounce" / "no-mx.eml", False, Cause.HOST_UNREACHABLE),
    # A bare message/delivery-status with MIME headers inside its groups.
    (FLANKER / "bounce" / "delayed-broken.eml", True, Cause.MAILBOX_FULL),
    # Gmail's old plain-text notices.
    (FLANKER / "bounce" / "gmail-invalid-address.eml", True, Cause.ADDRESS_INVALID),
    (FLANKER / "bounce" / "gmail-no-dns.eml", True, Cause.ADDRESS_INVALID),
])
def test_real_bounces(path: Path, permanent: bool, cause: Cause) -> None:
    report = report_of(path)
    assert (report.permanent, report.cause) == (permanent, cause)


def test_a_text_bounce_without_a_reply_code_is_still_read() -> None:
    report = report_of(FLANKER / "bounce" / "broken-mime.eml")
    assert report.permanent and report.cause is Cause.TIMED_OUT


def test_an_anonymised_report_is_parsed_without_guessing() -> None:
    report = report_of(MIMEKIT / "delivery-status.anonymized.eml")
    assert not report.permanent


@pytest.mark.parametrize("path", [
    MIMEKIT / "disposition-notification.txt",
    MIMEKIT / "disposition-notification.anonymized.eml",
    FLANKER / "disposition-notification.eml",
    MIMEKIT / "feedback-report.txt",
    FLANKER / "complaints" / "aol.eml",
    FLANKER / "complaints" / "yahoo.eml",
    FLANKER / "text-only.eml",
    FLANKER / "long-links.eml",  # from postmaster@, but an ordinary message
    FLANKER / "multipart.eml",
])
def test_reports_and_messages_that_are_not_bounces(path: Path) -> None:
    assert parse_report(corpus(path)) is None


QMAIL = b"""\
Return-Path: <>
From: MAILER-DAEMON@mail.example.net
To: bounce-0123456789ab@reply.example.com
Subject: failure notice

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<nobody@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <bounce-0123456789ab@reply.example.com>
Subject: Pick-up time 552 5.2.2 in the original must not count
"""

EXIM = b"""\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: bounce-0123456789ab@reply.example.com
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: someone@example.org

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  someone@example.org
    host mx.example.org [192.0.2.1]
    SMTP error from remote mail server after RCPT TO:<someone@example.org>:
    452 4.2.2 The email account that you tried to reach is over quota

------ This is a copy of the message, including all the headers. ------

Subject: hello
"""

EXIM_WARNING = b"""\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
Subject: Warning: message 1abcde-000001-AB delayed 24 hours
X-Failed-Recipients: someone@example.org

This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on mx.example.net.

  someone@example.org
    Connection timed out

No action is required on your part. Delivery attempts will continue.
"""


@pytest.mark.parametrize(("raw", "expected"), [
    (QMAIL, BounceReport(True, Cause.ADDRESS_INVALID)),
    (EXIM, BounceReport(True, Cause.MAILBOX_FULL)),
    (EXIM_WARNING, BounceReport(False, Cause.HOST_UNREACHABLE)),
])
def test_text_bounces(raw: bytes, expected: BounceReport) -> None:
    assert parse_report(raw) == expected


def global_dsn(cte: str) -> bytes:
    groups = ("Reporting-MTA: dns; mx.example.de\n\n"
              "Final-Recipient: utf-8; jörg@bücher.example\nAction: failed\nStatus: 5.2.2\n"
              "Diagnostic-Code: smtp; 552 5.2.2 Postfach voll\n").encode()
    body = base64.encodebytes(groups) if cte == "base64" else groups
    return (b"From: MAILER-DAEMON@mx.example.de\n"
            b"Subject: Undelivered Mail Returned to Sender\n"
            b"Content-Type: multipart/report; report-type=global-delivery-status; "
            b'boundary="b"\n\n--b\nContent-Type: text/plain\n\nSee below.\n\n--b\n'
            b"Content-Type: message/global-delivery-status\n"
            b"Content-Transfer-Encoding: " + cte.encode() + b"\n\n" + body + b"\n--b--\n")


@pytest.mark.parametrize("cte", ["8bit", "base64"])
def test_global_delivery_status_rfc6533(cte: str) -> None:
    report = parse_report(global_dsn(cte))
    assert report is not None and report.permanent and report.cause is Cause.MAILBOX_FULL


def test_one_failed_recipient_makes_the_report_permanent() -> None:
    # No blank line between the two recipients' groups, as some MTAs write them.
    raw = b"""\
From: MAILER-DAEMON@mx.example.net
Subject: Delivery Status Notification
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

Two recipients.
--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; slow@example.org
Action: delayed
Status: 4.4.1
Final-Recipient: rfc822; gone@example.org
Action: failed
Status: 5.1.1
--b--
"""
    report = parse_report(raw)
    assert report is not None and report.permanent and report.cause is Cause.ADDRESS_INVALID


@pytest.mark.parametrize(("code", "enhanced", "text", "expected"), [
    (552, "5.2.2", "Mailbox full", (True, Cause.MAILBOX_FULL)),
    (452, "4.2.2", "over quota", (False, Cause.MAILBOX_FULL)),
    (552, None, "Requested mail action aborted: exceeded storage allocation",
     (True, Cause.MAILBOX_FULL)),
    (550, "5.1.1", "User unknown", (True, Cause.ADDRESS_INVALID)),
    # aiosmtplib hands over the reply text with the enhanced code at its start.
    (550, None, "5.1.1 <bob@example.org>: Recipient address rejected", (True,
                                                                          Cause.ADDRESS_INVALID)),
    (550, None, "No such user here", (True, Cause.ADDRESS_INVALID)),
    (553, None, "mailbox name not allowed", (True, Cause.ADDRESS_INVALID)),
    (554, "5.4.4", "Host or domain name not found", (True, Cause.HOST_UNREACHABLE)),
    (421, "4.4.2", "Connection dropped", (False, Cause.HOST_UNREACHABLE)),
    (451, "4.4.7", "Delivery time expired", (False, Cause.TIMED_OUT)),
    (554, "5.7.1", "Message rejected as spam", (True, Cause.REJECTED)),
    (553, "5.7.1", "Sender address rejected: not owned by user", (True, Cause.REJECTED)),
    (550, None, "Requested action not taken", (True, Cause.REJECTED)),
    (None, None, "ConnectionRefusedError: [Errno 111] Connect call failed",
     (False, Cause.HOST_UNREACHABLE)),
    (None, None, "TimeoutError: ", (False, Cause.HOST_UNREACHABLE)),
    (None, None, "", (False, Cause.HOST_UNREACHABLE)),
    (None, "5.1.1", "", (True, Cause.ADDRESS_INVALID)),
])
def test_classify(code: int | None, enhanced: str | None, text: str,
                  expected: tuple[bool, Cause]) -> None:
    assert classify(code, enhanced, text) == expected
