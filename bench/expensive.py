"""Small messages that cost far more than their size (issue 16, item 7), and what each
costs the pipeline now, in CPU ms per MB of message.

Each shape is built here at a given size, so that the end-to-end tests send the same
bytes (``tests/e2e/test_expensive.py``). The figures are for reading, not a timed test:

    python -m bench.expensive [--mb 2]

A shape whose cost grows with the square of its size shows it as ms/MB growing with
``--mb``; the aim is under 100 ms per MB for every shape.
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import Booking, BookingStatus, Party
from mailveil.domain.verdicts import Outcome
from mailveil.mail.bounces import parse_report
from mailveil.mail.inspect import facts
from mailveil.pipeline.compose import Voice, notice, relay_copy

CUSTOMER = "ann.lee@customer-mail.example"
SUPPLIER = "bookings@sunny-tours.example"
MB = 1_000_000

Shape = Callable[[str, str, int], bytes]
"""(sender's real address, relay address written to, size in bytes) -> the message."""


def _head(sender: str, to: str, *extra: str) -> bytes:
    lines = [f"From: Ann Lee <{sender}>", f"To: {to}", "Message-ID: <x1@customer-mail.example>",
             "Date: Mon, 1 Jun 2026 12:00:00 +0000", "MIME-Version: 1.0", *extra]
    return ("\r\n".join(lines) + "\r\n").encode()


def punycode_part(sender: str, to: str, size: int) -> bytes:
    """A text part in ``charset=punycode``: the stdlib codec is quadratic in its input."""
    data = base64.encodebytes(b"a" * (size * 3 // 4)).replace(b"\n", b"\r\n")
    return _head(sender, to, "Subject: punycode", "Content-Type: text/plain; charset=punycode",
                 "Content-Transfer-Encoding: base64") + b"\r\n" + data


def punycode_subject(sender: str, to: str, size: int) -> bytes:
    """The same through encoded words: one long Subject of ``=?punycode?b?...?=``."""
    word = base64.b64encode(b"a" * (size * 3 // 4)).decode()
    return _head(sender, to, f"Subject: =?punycode?b?{word}?=",
                 "Content-Type: text/plain") + b"\r\nHello\r\n"


def folded_subject(sender: str, to: str, size: int) -> bytes:
    """A Subject folded over many lines, each holding the sender's real address."""
    line = f" write to {sender} please"
    count = max(1, size // (len(line) + 2))
    subject = "Subject: hello\r\n" + "\r\n".join([line] * count)
    return _head(sender, to, subject, "Content-Type: text/plain") + b"\r\nHello\r\n"


def folded_cc(sender: str, to: str, size: int) -> bytes:
    """A Cc folded over lines of 990 characters, full of addresses."""
    address = "someone.else@elsewhere.example, "
    line = " " + (address * (990 // len(address)))
    count = max(1, size // (len(line) + 2))
    cc = "Cc: " + sender + ",\r\n" + "\r\n".join([line] * count).rstrip(", ")
    return _head(sender, to, "Subject: cc", cc, "Content-Type: text/plain") + b"\r\nHello\r\n"


def delivery_report(sender: str, to: str, size: int) -> bytes:
    """A DSN with one per-recipient group per ~120 bytes (40,000 in 4.9 MB), sent to a VERP
    address: ``to`` is then a bounce address."""
    group = ("Final-Recipient: rfc822; r{i}@elsewhere.example\r\nAction: failed\r\n"
             "Status: 5.1.1\r\n\r\n")
    count = max(1, size // len(group.format(i=10_000)))
    groups = "".join(group.format(i=i) for i in range(count))
    return (_head("MAILER-DAEMON@mx.elsewhere.example", to, "Subject: Undelivered Mail",
                  'Content-Type: multipart/report; report-type=delivery-status; boundary="b"')
            + b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
            + b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
            + b"Reporting-MTA: dns; mx.elsewhere.example\r\n\r\n" + groups.encode()
            + b"--b--\r\n")


def tiny_parts(sender: str, to: str, size: int) -> bytes:
    """A multipart of very many tiny text parts (50,000 in 2.1 MB)."""
    part = b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    count = max(1, size // len(part))
    return (_head(sender, to, "Subject: parts", 'Content-Type: multipart/mixed; boundary="b"')
            + b"\r\n" + part * count + b"--b--\r\n")


def idna_part(sender: str, to: str, size: int) -> bytes:
    """``charset=idna``: a codec that raises on ordinary text (212 bytes in the probe)."""
    text = ("Hello, this text is declared idna.\r\n" * max(1, size // 36)).encode()
    return _head(sender, to, "Subject: idna", "Content-Type: text/plain; charset=idna") + (
        b"\r\n" + text)


def not_base64(sender: str, to: str, size: int) -> bytes:
    """A text part declared base64 whose content is plain text, not base64."""
    text = ("Call me back, this is not base64 at all...\r\n"
            * max(1, size // 80))
    return _head(sender, to, "Subject: b64", "Content-Type: text/plain; charset=utf-8",
                 "Content-Transfer-Encoding: base64") + b"\r\n" + text.encode()


SHAPES: dict[str, Shape] = {
    "punycode part": punycode_part,
    "punycode subject": punycode_subject,
    "folded subject": folded_subject,
    "folded cc": folded_cc,
    "delivery report": delivery_report,
    "tiny parts": tiny_parts,
    "idna part": idna_part,
    "not base64": not_base64,
}

BOOK = AddressBook("reply.example.com", "customer-", "local-partner-", "bounce-", "no-reply")
VOICE = Voice("Marketplace", "{name} via {platform}", True, timedelta(days=7), "")
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
BOOKING = Booking("GYG-1", Party("Sunny Tours", SUPPLIER, "fr"), Party("Ann Lee", CUSTOMER, "en"),
                  NOW, NOW + timedelta(hours=3), BookingStatus.CONFIRMED, "c" * 12, "s" * 12)


def process(raw: bytes) -> None:
    """What the worker does with a message from the customer to the supplier, or with a
    bounce report to a VERP address, without the store: read it, then relay it or, when
    a header is too long to rewrite, tell its sender why not."""
    info = facts(raw)
    if info.is_delivery_report:
        parse_report(raw)
    elif info.oversized_header is not None:
        notice(reason=Outcome.REFUSED_TOO_COMPLEX, cause=None, booking=BOOKING,
               sender_role=Role.CUSTOMER, original=raw, facts=info, book=BOOK, voice=VOICE,
               now=NOW)
    else:
        relay_copy(raw, info, BOOKING, Role.SUPPLIER, [], BOOK, VOICE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=2.0, help="size of each shape, MB")
    parser.add_argument("--only", choices=sorted(SHAPES), action="append")
    args = parser.parse_args()
    relay = BOOK.relay_address(Role.SUPPLIER, BOOKING.supplier_token)
    print(f"{'shape':<18} {'bytes':>10} {'CPU ms':>9} {'ms/MB':>9}")
    for name in args.only or SHAPES:
        raw = SHAPES[name](CUSTOMER, relay, int(args.mb * MB))
        start = time.process_time()
        process(raw)
        ms = (time.process_time() - start) * 1000
        print(f"{name:<18} {len(raw):>10} {ms:>9.0f} {ms / (len(raw) / MB):>9.0f}", flush=True)


if __name__ == "__main__":
    main()
