"""Test messages of a given size, each carrying a unique token in its Subject.

mailveil rewrites the top-level headers of what it relays but keeps the Subject, so the
sink finds the token there and matches arrivals to the ``250`` the sender saw.
"""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass
from email.utils import formatdate

SIZES = {"2k": 2 * 1024, "100k": 100 * 1024, "5m": 5 * 1024 * 1024}
HEADER_ROOM = 300  # what the per-message headers take, roughly
TOKEN_RE = re.compile(rb"mvb\d{3}x[0-9a-z]{7}")


def token(phase: int, seq: int) -> str:
    """14 characters; ``seq`` is written in base 36 so 7 digits hold 78 billion."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(7):
        seq, r = divmod(seq, 36)
        out = digits[r] + out
    return f"mvb{phase:03d}x{out}"


def size_bytes(name: str) -> int:
    if name in SIZES:
        return SIZES[name]
    m = re.fullmatch(r"(\d+)([km]?)", name.lower())
    if not m:
        raise ValueError(f"size {name!r}: expected 2k, 100k, 5m or a number of bytes")
    return int(m[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[m[2]]


_TEXT = (
    "Hello,\r\n\r\nWe booked the sunset tour for next Saturday. Where exactly do we meet, and\r\n"
    "is there parking nearby? My phone is +44 20 7946 0000 if that is easier.\r\n\r\n"
    "Thanks a lot,\r\nAnn (ann.lee@customer.example)\r\n"
)


def _filler_text(n: int) -> str:
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return (line * (n // len(line) + 1))[:max(n - 2, 0)] + "\r\n"


def _attachment(name: str, ctype: str, size: int, seed: int) -> str:
    data = random.Random(seed).randbytes(size)
    b64 = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (f'Content-Type: {ctype}; name="{name}"\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + b64)


def body(total: int) -> tuple[str, str]:
    """(Content-Type header value, body) making a message of about ``total`` bytes.

    Up to 10 KB: one text part. Above: text plus one attachment, and above 1 MB two
    attachments (incompressible bytes, as photos and PDFs are).
    """
    room = total - HEADER_ROOM
    if total <= 10 * 1024:
        return "text/plain; charset=utf-8", _TEXT + _filler_text(room - len(_TEXT))
    boundary = "=_mvbench_boundary_0"
    raw_room = (room - len(_TEXT) - 600) * 3 // 4  # base64 grows 4/3 (plus CRLFs)
    raw_room -= raw_room // 57 * 2 * 3 // 4
    files = [("pass.pdf", "application/pdf", raw_room)] if total <= 1024 * 1024 else [
        ("photo1.jpg", "image/jpeg", raw_room // 2),
        ("photo2.jpg", "image/jpeg", raw_room - raw_room // 2)]
    parts = ["Content-Type: text/plain; charset=utf-8\r\n\r\n" + _TEXT]
    parts += [_attachment(n, t, s, seed=i) for i, (n, t, s) in enumerate(files)]
    text = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    return f'multipart/mixed; boundary="{boundary}"', text


@dataclass(frozen=True)
class Template:
    """Headers are made per message (sender, recipient, token); the body is shared."""

    content_type: str
    body: bytes
    size: int

    @classmethod
    def of_size(cls, total: int) -> Template:
        ctype, text = body(total)
        return cls(ctype, text.encode(), total)

    def message(self, mail_from: str, rcpt: str, tok: str) -> bytes:
        head = (f"From: Ann Lee <{mail_from}>\r\nTo: {rcpt}\r\n"
                f"Subject: Meeting point? {tok}\r\nDate: {formatdate(localtime=False)}\r\n"
                f"Message-ID: <{tok}@customer.example>\r\nMIME-Version: 1.0\r\n"
                f"Content-Type: {self.content_type}\r\n\r\n")
        return head.encode() + self.body
