"""A fuzz run through the pipeline's rewriting (issue 16): the real-mail corpora, then
``FUZZ_MESSAGES`` hostile messages from a seeded generator (malformed MIME, nested and
broken encoded words, charsets Python decodes but mail does not, CR/LF/NUL in headers,
RFC 2231 parameters, long lines, forwards, undecodable parts).

For every copy: it parses, its header block holds only allow-listed fields (plus those the
relay writes), exactly one From and one To, and no text a reader can decode — Subject,
text parts and text attachments, file names, forwarded headers — shows either party's
real address, except inside a signed or encrypted subtree, which is relayed as signed.

The seed is printed on failure; ``MAILVEIL_FUZZ_SEED`` replays one, ``MAILVEIL_FUZZ_MESSAGES``
runs more.
"""

from __future__ import annotations

import base64
import binascii
import email
import os
import random
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import Message

import pytest

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import Booking, BookingStatus, Party
from mailveil.mail import charsets
from mailveil.mail.inspect import facts
from mailveil.mail.mime import header_block
from mailveil.mail.rewrite import KEPT_HEADERS, SEALED
from mailveil.pipeline.compose import Voice, relay_copy
from tests.support.corpora import corpus_messages

FUZZ_MESSAGES = int(os.environ.get("MAILVEIL_FUZZ_MESSAGES", "10000"))
SEED = int(os.environ.get("MAILVEIL_FUZZ_SEED", "16007"))

CUSTOMER = "ann.lee@customer-mail.example"
SUPPLIER = "bookings@sunny-tours.example"
BOOK = AddressBook("reply.example.com", "customer-", "local-partner-", "bounce-", "no-reply")
VOICE = Voice("Tourly", "{name} via {platform}", True, timedelta(days=7), "")
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
BOOKING = Booking("GYG-1", Party("Sunny Tours", SUPPLIER, "fr"), Party("Ann Lee", CUSTOMER, "en"),
                  NOW, NOW + timedelta(hours=3), BookingStatus.CONFIRMED, "c" * 12, "s" * 12)
RELAY = BOOK.relay_address(Role.SUPPLIER, BOOKING.supplier_token)

GENERATED = frozenset({"from", "to", "date", "message-id", "in-reply-to", "references",
                       "mime-version"})
HEADER_LINE = re.compile(rb"(?:[!-9;-~]+:|[ \t])[^\r\n\x00]*")
REAL = [re.compile(rf"(?<![\w.+-]){re.escape(a)}(?![\w-]|\.[\w-])", re.I)
        for a in (CUSTOMER, SUPPLIER)]
"""An address as a reader takes it: ``cafébookings@…`` is someone else's."""


def relayed(raw: bytes) -> bytes:
    """The supplier's copy of ``raw``, from the customer, as the worker composes it."""
    return relay_copy(raw, facts(raw), BOOKING, Role.SUPPLIER, [], BOOK, VOICE).raw


# --- the checks --------------------------------------------------------------------------


def problems(out: bytes) -> list[str]:
    """What is wrong with a relayed copy; empty when nothing is."""
    found: list[str] = []
    head = header_block(out)
    lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    found += [f"bad header line {line[:80]!r}" for line in lines
              if not HEADER_LINE.fullmatch(line) or len(line) > 998]
    msg = email.message_from_bytes(out, policy=policy.compat32)
    names = [name.lower() for name in msg]
    found += [f"header {name} not allowed" for name in names
              if name not in KEPT_HEADERS | GENERATED]
    found += [f"{name} {names.count(name)} times" for name in ("from", "to")
              if names.count(name) != 1]
    found += [f"address in {where}" for where, text in readable(msg, top=True)
              if any(real.search(text) for real in REAL)]
    return found


def readable(msg: Message, *, top: bool) -> Iterator[tuple[str, str]]:
    """(where, text) for everything a reader decodes, outside signed subtrees."""
    if msg.get_content_type() in SEALED:
        return
    for name, value in msg.items():
        if top and name.lower() in ("to",):  # the recipient's own address, as it must be
            continue
        yield name, charsets.decode_words(str(value))
    filename = msg.get_param("filename", header="content-disposition") or msg.get_param("name")
    if filename:
        yield "file name", str(email.utils.collapse_rfc2231_value(filename))
    if msg.is_multipart():
        for part in msg.get_payload():
            if isinstance(part, Message):
                yield from readable(part, top=False)
        return
    if msg.get_content_maintype() == "text":
        data = msg.get_payload(decode=True)
        codec = charsets.codec(msg.get_content_charset() or "us-ascii") or "latin-1"
        text = data.decode(codec, "replace") if isinstance(data, bytes) else ""
        yield msg.get_content_type(), text


# --- the generator -----------------------------------------------------------------------

CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "utf-16", "utf-7", "shift_jis", "koi8-r",
            "us-ascii", "punycode", "idna", "rot13", "utf-32", "x-unknown", "UTF-8", "",
            "utf-8\x01", "a" * 300]
CTES = ["7bit", "8bit", "quoted-printable", "base64", "BASE64", "x-uuencode", "binary", None,
        "not-base64"]


class Hostile:
    """One generator of hostile messages; every choice comes from ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, choices: list[str]) -> str:
        return self.rng.choice(choices)

    def address(self) -> str:
        real = self.pick([CUSTOMER, SUPPLIER, CUSTOMER.upper(), "someone@else.example"])
        return self.pick(["{a}", "<{a}>", "mailto:{a}", "({a})", '"{a}"', "{a}."]).format(a=real)

    def text(self) -> str:
        words = ["Hello", "pickup at 9", "café", "Grüße", "東京", "ok", "\u200b", "=?", "?=",
                 "\x1b", "\x7f", "--b1", "\t", "line\r\nbreak", "%40", "&#64;", self.address(),
                 self.address(), "x" * self.rng.choice([1, 80, 1200])]
        return " ".join(self.rng.choices(words, k=self.rng.randint(1, 12)))

    def encoded_word(self, text: str, depth: int = 0) -> str:
        charset = self.pick(["utf-8", "iso-8859-1", "punycode", "idna", "utf-7", "bogus",
                             "utf-8*en"])
        codec = charsets.codec(charset.partition("*")[0]) or "utf-8"
        data = text.encode(codec, "replace")
        if self.rng.random() < 0.5:
            word = f"=?{charset}?b?{base64.b64encode(data).decode()}?="
        else:
            word = f"=?{charset}?q?{binascii.b2a_qp(data, header=True).decode()}?="
        if depth < 3 and self.rng.random() < 0.3:
            return self.encoded_word(word, depth + 1)  # a word inside a word
        return word

    def header_value(self) -> str:
        pieces = [self.text(), self.encoded_word(self.text()),
                  self.encoded_word("x\r\nBcc: v@o.example\r\nX-Injected: yes"),
                  self.encoded_word(self.address()), "\r\n folded " + self.address()]
        return " ".join(self.rng.choices(pieces, k=self.rng.randint(1, 4)))

    def headers(self) -> list[str]:
        fields = [f"From: Ann <{CUSTOMER}>", f"To: {RELAY}",
                  f"Subject: {self.header_value()}"]
        optional = [f"Cc: {self.address()}", f"Reply-To: {self.address()}",
                    f"Received: from mx by x for <{CUSTOMER}>", f"Sender: {self.address()}",
                    f"Disposition-Notification-To: {CUSTOMER}", "X-Mailer: fuzz\x01",
                    f"Content-Language: {self.header_value()}", "Thread-Topic: " + self.text(),
                    f"Message-ID: <{self.rng.randint(0, 10**6)}.{CUSTOMER}>",
                    "Date: " + self.pick(["Mon, 1 Jun 2026 12:00:00 +0000", "yesterday", ""]),
                    f"Subject: second {self.address()}", f"From: {SUPPLIER}",
                    "X-Long: " + "y" * 3000, "Bad Name: value", "Keywords:\x1b" + self.text()]
        return fields + self.rng.sample(optional, self.rng.randint(0, len(optional)))

    def params(self) -> str:
        name = self.pick([f"{CUSTOMER}.txt", "voucher.pdf", "ticket-" + CUSTOMER + ".ics"])
        quoted = name.replace("@", "%40")
        return self.pick([
            f'; name="{name}"',
            f"; filename*=utf-8''{quoted}",
            f"; filename*0*=utf-8''{quoted[:8]}; filename*1*={quoted[8:]}",
            f'; filename="{self.encoded_word(name)}"',
            "; filename*=punycode''" + quoted,
            "",
        ])

    def leaf(self) -> str:
        ctype = self.pick(["text/plain", "text/html", "text/plain", "text/calendar",
                           "text/x-vcard", "application/octet-stream", "image/png"])
        charset = self.pick(CHARSETS)
        cte = self.rng.choice(CTES)
        text = self.text()
        if ctype == "text/calendar":
            text = f"BEGIN:VCALENDAR\r\nORGANIZER;CN=Ann:mailto:{CUSTOMER}\r\nEND:VCALENDAR\r\n"
        codec = charsets.codec(charset) if charset else None
        data = text.encode(codec or "utf-8", "replace")
        body = self.body(data, cte)
        head = [f"Content-Type: {ctype}; charset=\"{charset}\"{self.params()}"]
        if cte is not None:
            head.append("Content-Transfer-Encoding: " + ("base64" if cte == "not-base64"
                                                         else cte))
        if self.rng.random() < 0.3:
            head.append("Content-Disposition: " + self.pick(["attachment", "inline"])
                        + self.params())
        if self.rng.random() < 0.2:
            head.append(f"Content-Description: {self.header_value()}")
        return "\r\n".join(head) + "\r\n\r\n" + body

    def body(self, data: bytes, cte: str | None) -> str:
        if cte in ("base64", "BASE64"):
            return base64.encodebytes(data).decode().replace("\n", "\r\n")
        if cte == "quoted-printable":
            return binascii.b2a_qp(data).decode()
        return data.decode("utf-8", "replace")

    def entity(self, depth: int) -> str:
        roll = self.rng.random()
        if depth >= 4 or roll < 0.4:
            return self.leaf()
        if roll < 0.5:
            inner = "\r\n".join(self.headers()) + "\r\n" + self.entity(depth + 1)
            return f"Content-Type: message/rfc822\r\n\r\n{inner}"
        boundary = self.pick(["b1", "b2 b", "=_x", "b" * 69, "b1"]) + str(depth)
        subtype = self.pick(["mixed", "alternative", "related", "signed", "digest"])
        parts = [self.entity(depth + 1) for _ in range(self.rng.randint(0, 4))]
        closing = self.pick([f"\r\n--{boundary}--\r\n", "\r\n", f"\r\n--{boundary}--"])
        preamble = self.pick(["", f"preamble {self.address()}\r\n", "x" * 2000 + "\r\n"])
        body = preamble + "".join(f"\r\n--{boundary}\r\n{p}" for p in parts) + closing
        return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n{body}'

    def message(self) -> bytes:
        raw = ("\r\n".join(self.headers()) + "\r\nMIME-Version: 1.0\r\n"
               + self.entity(0)).encode("utf-8", "replace")
        if self.rng.random() < 0.1:
            raw = raw.replace(b"\r\n", self.pick(["\n", "\r"]).encode())
        return raw


# --- the runs ----------------------------------------------------------------------------


def run(messages: Iterator[tuple[str, bytes]], check: Callable[[bytes], list[str]]) -> None:
    failures = [(name, found) for name, raw in messages if (found := check(relayed(raw)))]
    assert not failures, f"seed {SEED}: {len(failures)} failed, first: {failures[:3]}"


def test_corpora_relay_cleanly() -> None:
    """Real mail, written to the supplier with the customer's address planted in it."""
    messages = list(corpus_messages())
    assert messages, "tests/corpora is missing"

    def planted() -> Iterator[tuple[str, bytes]]:
        for name, raw in messages:
            head = (f"From: Ann <{CUSTOMER}>\r\nTo: {RELAY}\r\nCc: {SUPPLIER}\r\n"
                    f"Subject: write to {CUSTOMER}\r\n").encode()
            yield name, head + raw

    run(planted(), problems)


@pytest.mark.parametrize("start", range(0, FUZZ_MESSAGES, 1000))
def test_hostile_messages_relay_cleanly(start: int) -> None:
    """1,000 generated messages a test, each from its own seed (so a failure replays)."""
    def generated() -> Iterator[tuple[str, bytes]]:
        for index in range(start, min(start + 1000, FUZZ_MESSAGES)):
            rng = random.Random(SEED * 1_000_003 + index)
            yield f"message {index}", Hostile(rng).message()

    run(generated(), problems)
